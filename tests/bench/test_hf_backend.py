"""`--backend hf`: the same records and reports from the offline evaluator (real tiny models)."""

import json

import pytest

from specforge_dpace.cli import main
from tests.bench._helpers import write_draft_dir

evaluate = pytest.importorskip("specforge_dpace.evaluate", reason="the offline evaluator is not built yet")
if not hasattr(evaluate, "evaluate_paths"):
    pytest.skip("specforge_dpace.evaluate does not export evaluate_paths yet", allow_module_level=True)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf")
    target = evaluate.tiny_target(num_hidden_layers=2)
    target.save_pretrained(root / "target")
    vocab = {"[UNK]": 0, **{chr(97 + i): i + 1 for i in range(26)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(root / "target")
    draft = evaluate.tiny_draft(target, block_size=4)
    config = draft.config.to_dict()
    config.update(architectures=["DFlashDraftModel"], block_size=4, num_target_layers=2)
    config.pop("_attn_implementation_autoset", None)
    write_draft_dir(root / "draft", {k: v.detach().contiguous() for k, v in draft.state_dict().items()}, config)
    prompts = root / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": w}) + "\n"
            for i, w in enumerate(["hello world", "abcabc", "speculative"])
        )
    )
    return root / "target", root / "draft", prompts


def test_hf_backend_matches_the_evaluator(tmp_path, pair):
    target, draft, prompts = pair
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "--backend",
            "hf",
            "--target",
            str(target),
            "--drafter",
            f"d={draft}",
            "--dataset",
            f"prompts={prompts}",
            "--chat-template",
            "raw",
            "--max-new-tokens",
            "8",
            "--hf-chunk",
            "2",
            "--out",
            str(out),
            "--no-plot",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    spec = [r for r in records if r["drafter"] == "d"]
    assert len(spec) == 3 and len([r for r in records if r["drafter"] == "baseline"]) == 3
    direct = evaluate.evaluate_paths(
        target,
        draft,
        [{"prompt": t} for t in ("hello world", "abcabc", "speculative")],
        evaluate.EvalConfig(temperature=0.0, max_new_tokens=8, seed=0, show_progress=False),
    )
    for rec, ref in zip(spec, direct.per_prompt):
        assert (rec["completion_tokens"], rec["verify_ct"]) == (ref["completion_tokens"], ref["verify_steps"])
        # records speak SGLang's meta_info convention (spec_accept_length = completion / verify, prefill included);
        # the evaluator's own tau (prefill excluded) sits beside it under its own name
        assert rec["accept_length"] == pytest.approx(ref["completion_tokens"] / ref["verify_steps"])
        assert rec["accept_length_per_step"] == pytest.approx(ref["tau"]) and rec["histogram"] == ref["accept_hist"]
    rows = {r["drafter"]: r for r in json.loads((out / "summary.json").read_text())["results"]}
    # both conventions side by side: SGLang's (completion / verify steps, prefill token included) and the
    # evaluator's (per verify step, prefill token excluded); no server, so no server average
    assert rows["d"]["tau_token_weighted"] == pytest.approx(direct.overall["tau_sglang"])
    assert rows["d"]["tau_token_weighted"] == pytest.approx(
        sum(r["completion_tokens"] for r in direct.per_prompt) / sum(r["verify_steps"] for r in direct.per_prompt)
    )
    assert rows["d"]["tau_mean_per_request"] == pytest.approx(direct.overall["tau_sglang_mean_per_prompt"])
    assert rows["d"]["tau_per_step"] == pytest.approx(direct.overall["tau"])
    assert rows["d"]["tau_server_avg"] is None
    assert rows["d"]["speedup"] is not None and rows["d"]["speedup"] > 0
    # rerun: everything is already there, nothing is recomputed
    assert (
        main(
            [
                "bench",
                "--backend",
                "hf",
                "--target",
                str(target),
                "--drafter",
                f"d={draft}",
                "--dataset",
                f"prompts={prompts}",
                "--chat-template",
                "raw",
                "--max-new-tokens",
                "8",
                "--out",
                str(out),
                "--no-plot",
            ]
        )
        == 0
    )
    assert len((out / "requests.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--server-args", "--tp 1"),
        ("--server-args", ""),
        ("--concurrency", "1"),
        ("--server-url", "d=http://127.0.0.1:1"),
        ("--launcher", "python -m specforge_dpace.bench.loopback"),
        ("--warmup", "0"),
        ("--health-timeout", "5"),
        ("--request-timeout", "5"),
    ],
)
def test_hf_backend_refuses_server_only_flags(tmp_path, capsys, flag, value):
    code = main(
        ["bench", "--backend", "hf", "--target", "t", "--drafter", "d=x", "--out", str(tmp_path / "o"), flag, value]
    )
    assert code == 2
    assert f"{flag} does not apply to --backend hf" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sglang_backend_refuses_hf_only_flags(tmp_path, capsys):
    code = main(["bench", "--target", "t", "--drafter", "d=x", "--out", str(tmp_path / "o"), "--hf-chunk", "2"])
    assert code == 2 and "--hf-chunk applies to --backend hf only" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--top-k", "0", "--top-k: 0 is invalid; accepted: -1 (off) or an int in [1, 2147483647]"),
        ("--top-p", "0", "--top-p: 0 is invalid; accepted: a finite number in (0, 1]"),
        ("--top-p", "1.5", "--top-p: 1.5 is invalid"),
        ("--top-p", "nan", "--top-p: nan is invalid (not finite)"),
        ("--temperature", "-0.5", "--temperature: -0.5 is invalid"),
        ("--temperature", "inf", "--temperature: inf is invalid (not finite)"),
        ("--temperature", "1e309", "--temperature: 1e309 is invalid (not finite)"),  # was stored as null
    ],
)
def test_sampling_values_outside_sglangs_ranges_are_refused(tmp_path, capsys, flag, value, message):
    for backend in ("hf", "sglang"):
        argv = ["bench", "--backend", backend, "--target", "t", "--drafter", "d=x", "--out", str(tmp_path / "o")]
        with pytest.raises(SystemExit) as exc:  # at parse time, before anything else
            main(argv + [flag, value])
        assert exc.value.code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def forced_pair(tmp_path_factory, pair):
    """A real target and draft whose logits are all zero (final norms zeroed): every token is
    equally likely for both, so at temperature 1 an unfiltered draft is almost never accepted,
    while top-k 1 (or a tiny top-p) leaves token 0 alone for both and every draft is accepted."""
    import torch

    target_dir, _, prompts = pair
    root = tmp_path_factory.mktemp("forced")
    target = evaluate.load_target(target_dir)
    with torch.no_grad():
        target.model.norm.weight.zero_()
    target.save_pretrained(root / "target")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (root / "target" / name).write_bytes((target_dir / name).read_bytes())
    draft = evaluate.tiny_draft(target, block_size=4)
    with torch.no_grad():
        draft.norm.weight.zero_()
    config = draft.config.to_dict()
    config.update(architectures=["DFlashDraftModel"], block_size=4, num_target_layers=2)
    config.pop("_attn_implementation_autoset", None)
    write_draft_dir(root / "draft", {k: v.detach().contiguous() for k, v in draft.state_dict().items()}, config)
    return root / "target", root / "draft", prompts


@pytest.mark.parametrize("filters", [["--top-k", "1"], ["--top-p", "0.01"]], ids=["top-k", "top-p"])
def test_hf_backend_applies_top_k_and_top_p(tmp_path, forced_pair, filters):
    target, draft, prompts = forced_pair
    out = tmp_path / "out"
    argv = [
        "bench",
        "--backend",
        "hf",
        "--target",
        str(target),
        "--drafter",
        f"d={draft}",
        "--dataset",
        f"prompts={prompts}",
        "--chat-template",
        "raw",
        "--max-new-tokens",
        "9",
        "--temperature",
        "1.0",
        "--seed",
        "11",
        "--no-baseline",
        "--no-plot",
        "--out",
        str(out),
        *filters,
    ]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    # 1 prefill token + two verify steps accepting all 3 drafts: SGLang's convention 9 / 2, per step 8 / 2
    for r in records:
        assert (r["completion_tokens"], r["verify_ct"], r["histogram"]) == (9, 2, [0, 0, 0, 2])
        assert r["accept_length"] == 4.5 and r["accept_length_per_step"] == 4.0
    assert [r["seed"] for r in records] == [11, 12, 13]  # --seed + the prompt's position in its dataset
    (row,) = json.loads((out / "summary.json").read_text())["results"]
    assert row["tau_token_weighted"] == 4.5 and row["tau_per_step"] == 4.0
