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
        assert rec["accept_length"] == pytest.approx(ref["tau"]) and rec["histogram"] == ref["accept_hist"]
    rows = {r["drafter"]: r for r in json.loads((out / "summary.json").read_text())["results"]}
    # SGLang's convention (completion / verify steps, prefill token included) in the first two columns,
    # the evaluator's own tau (prefill token excluded) in the third
    assert rows["d"]["tau_token_weighted"] == pytest.approx(
        sum(r["completion_tokens"] for r in direct.per_prompt) / sum(r["verify_steps"] for r in direct.per_prompt)
    )
    assert rows["d"]["tau_server_avg"] == pytest.approx(direct.overall["tau"])
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
