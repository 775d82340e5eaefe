"""Domino and DSpark drafters in the benchmark: SGLang 0.5.14 serves DFlash only, so ``--backend sglang``
refuses them before anything is launched (naming the method and the SGLang version found); ``--backend hf``
measures them with the offline evaluator, drafting like SGLang (greedy proposals) unless told otherwise."""

import json
import sys

import pytest

from specforge_dpace import draft_methods
from specforge_dpace.cli import main

evaluate = pytest.importorskip("specforge_dpace.evaluate")
pytest.importorskip("specforge")


def test_sglang_serving_facts():
    served = draft_methods.SGLANG_SERVES["0.5.14"]
    assert served["dflash_architectures"] == ("DFlashDraftModel",) and "DFLASH" in served["algorithms"]
    assert draft_methods.sglang_serving_problem("dflash", "0.5.14") is None
    assert draft_methods.sglang_serving_problem("dflash", None) is None  # the DFlash validator decides
    text = draft_methods.sglang_serving_problem("dspark", "0.5.14")
    assert "SGLang 0.5.14 (found here) cannot serve a DSpark drafter (architectures ['DSparkDraftModel'])" in text
    assert "DFLASH loads only DFlashDraftModel" in text and "accepted: a DFlash drafter" in text
    text = draft_methods.sglang_serving_problem("domino", None)
    assert "SGLang's version could not be read (no sglang package is installed" in text and "Domino" in text
    text = draft_methods.sglang_serving_problem("domino", "0.6.0")
    assert "SGLang 0.6.0 (found here) is not a version this runner has checked" in text
    assert "--backend hf" in text


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("methods")
    target = evaluate.tiny_target(num_hidden_layers=2)
    target.save_pretrained(root / "target")
    vocab = {"[UNK]": 0, **{chr(97 + i): i + 1 for i in range(26)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(root / "target")
    for method in ("domino", "dspark"):
        evaluate.save_draft_checkpoint(evaluate.tiny_draft(target, block_size=4, method=method), root / method)
    prompts = root / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": w}) + "\n" for i, w in enumerate(["hello", "abc"])))
    return root


def _argv(root, out, *extra):
    return [
        "bench",
        "--target",
        str(root / "target"),
        "--dataset",
        f"prompts={root / 'p.jsonl'}",
        "--chat-template",
        "raw",
        "--max-new-tokens",
        "6",
        "--no-plot",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize("version", [None, "0.5.14"])
def test_sglang_backend_refuses_domino_and_dspark_before_launching(tmp_path, capsys, monkeypatch, pair, version):
    import specforge_dpace.bench.server as server

    monkeypatch.setattr(server, "sglang_version", lambda: version)
    marker = tmp_path / "launched"
    launcher = f"{sys.executable} -c \"open({str(marker)!r}, 'w')\""
    argv = _argv(pair, tmp_path / "o", "--drafter", f"dom={pair / 'domino'}", "--drafter", f"dsp={pair / 'dspark'}")
    assert main(argv + ["--launcher", launcher]) == 2
    err = capsys.readouterr().err
    assert "SGLang cannot serve these drafters, so nothing was launched" in err
    assert "drafter 'dom'" in err and "Domino drafter (architectures ['DominoDraftModel'])" in err
    assert "drafter 'dsp'" in err and "DSparkDraftModel" in err
    if version is None:
        assert "SGLang's version could not be read (no sglang package is installed in this Python)" in err
    else:
        assert "SGLang 0.5.14 (found here) cannot serve a Domino drafter" in err
    assert "accepted: a DFlash drafter (architectures ['DFlashDraftModel']" in err
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_draft_sampling_is_an_hf_only_flag(tmp_path, capsys):
    code = main(
        ["bench", "--target", "t", "--drafter", "d=x", "--out", str(tmp_path / "o"), "--draft-sampling", "sample"]
    )
    assert code == 2
    assert "--draft-sampling applies to --backend hf only (SGLang's DFlash always proposes" in capsys.readouterr().err


def _records(out):
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


def test_hf_backend_measures_domino_and_dspark_like_sglang_drafts(tmp_path, capsys, pair):
    out = tmp_path / "out"
    drafters = ["--drafter", f"dom={pair / 'domino'}", "--drafter", f"dsp={pair / 'dspark'}"]
    argv = _argv(pair, out, "--backend", "hf", "--no-baseline", "--temperature", "0.8", "--seed", "3", *drafters)
    assert main(argv) == 0
    records = _records(out)
    assert sorted(r["drafter"] for r in records) == ["dom", "dom", "dsp", "dsp"]
    assert all(r["settings"]["run"]["sampling"]["draft_sampling"] == "greedy" for r in records)
    # the same numbers as the evaluator with SGLang's convention, prompt i seeded with --seed + i
    for name, method in (("dom", "domino"), ("dsp", "dspark")):
        direct = evaluate.evaluate_paths(
            pair / "target",
            pair / method,
            [{"prompt": "hello"}, {"prompt": "abc"}],
            evaluate.EvalConfig(
                temperature=0.8, max_new_tokens=6, draft_sampling="greedy", prompt_seeds=[3, 4], show_progress=False
            ),
            tokenizer_path=pair / "target",
        )
        mine = [r for r in records if r["drafter"] == name]
        assert [(r["completion_tokens"], r["verify_ct"], r["histogram"]) for r in mine] == [
            (d["completion_tokens"], d["verify_steps"], d["accept_hist"]) for d in direct.per_prompt
        ]
    # a rerun with the other draft sampling is refused before anything is measured, naming the field
    capsys.readouterr()
    assert main(argv + ["--draft-sampling", "sample"]) == 2
    assert 'sampling.draft_sampling: "greedy" (recorded) -> "sample" (now)' in capsys.readouterr().err
    assert len(_records(out)) == 4


def test_hf_backend_refuses_a_domino_drafter_without_its_head_fields(tmp_path, capsys, pair):
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((pair / "domino" / "config.json").read_text())
    del config["dflash_config"]["gru_hidden_dim"]
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((pair / "domino" / "model.safetensors").read_bytes())
    assert main(_argv(pair, tmp_path / "o", "--backend", "hf", "--drafter", f"d={bad}")) == 2
    err = capsys.readouterr().err
    assert "Domino draft" in err and "dflash_config.gru_hidden_dim is missing; accepted: an int >= 1" in err
    assert not (tmp_path / "o").exists()


def test_bench_help_states_the_rules_and_the_draft_sampling_each_backend_uses():
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "specforge_dpace", "bench", "--help"], capture_output=True, text=True, check=True
    ).stdout
    text = " ".join(out.split())
    assert "SGLang 0.5.14's DFlash loader rules" in text and "target layer ids 0..n-2 only" in text
    assert "SGLang 0.5.14 serves DFlash drafters only" in text and "--backend hf measures them" in text
    assert "--draft-sampling {greedy,sample}" in text and "'greedy' (the default; SGLang's DFlash convention" in text
