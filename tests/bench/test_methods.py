"""Domino and DSpark drafters in the benchmark: SGLang 0.5.23 serves them (Domino as a DFLASH sub-mode, DSpark as
``--speculative-algorithm DSPARK``), 0.5.14 does not; ``--backend sglang`` launches them with the version's flags
and refuses, before anything is launched, what the version cannot serve or would measure wrong.  The SGLang
servers here are the loopback stand-in (SGLang cannot serve DFlash-family drafters on a CPU), speaking the
0.5.23 dialect; ``--backend hf`` measures the same drafters with the offline evaluator, decoded as SGLang 0.5.23
decodes them."""

import json
import sys

import pytest

from specforge_dpace.cli import main

evaluate = pytest.importorskip("specforge_dpace.evaluate")
pytest.importorskip("specforge")

LOOPBACK = f"{sys.executable} -m specforge_dpace.bench.loopback"


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
    heads = {"dflash": None, "domino": {"pure_draft_prefix_len": 1}, "dspark": None}
    for method, head in heads.items():
        evaluate.save_draft_checkpoint(
            evaluate.tiny_draft(target, block_size=4, method=method, head=head), root / method
        )
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


def _records(out):
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("version", [None, "0.5.14"])
def test_sglang_backend_refuses_domino_and_dspark_before_launching(tmp_path, capsys, monkeypatch, pair, version):
    import specforge_dpace.bench.server as server

    monkeypatch.setattr(server, "sglang_version", lambda: version)
    marker = tmp_path / "launched"
    launcher = f"{sys.executable} -c \"open({str(marker)!r}, 'w')\""
    argv = _argv(pair, tmp_path / "o", "--drafter", f"dom={pair / 'domino'}", "--drafter", f"dsp={pair / 'dspark'}")
    assert main(argv + ["--launcher", launcher]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "SGLang cannot serve these drafters, so nothing was launched" in err
    assert "drafter 'dom'" in err and "drafter 'dsp'" in err
    if version is None:
        assert "a Domino drafter needs a known SGLang version (no sglang package is installed" in err
        assert "give --sglang-version" in err and "sglang-0.5.23: DFlash" in err
    else:
        assert "sglang-0.5.14 does not serve Domino drafters" in err and "serve it with SGLang 0.5.23" in err
        assert "sglang-0.5.14 does not serve DSpark drafters" in err
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_sglang_0_5_23_launches_domino_and_dspark_with_their_flags(tmp_path, monkeypatch, pair):
    """Domino: DFLASH with the verify window K; DSpark: DSPARK with gamma = the config's block_size, verified
    in a window of gamma + 1 (the stand-in resolves and checks the flags as speculative_hook.py does)."""
    monkeypatch.setenv("SPECFORGE_DPACE_LOOPBACK_VERSION", "0.5.23")
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "9")  # capped by the window: every step accepts all
    out = tmp_path / "o"
    drafters = ["--drafter", f"dom={pair / 'domino'}", "--drafter", f"dsp={pair / 'dspark'}"]
    argv = _argv(pair, out, *drafters, "--launcher", LOOPBACK, "--sglang-version", "0.5.23", "--warmup", "1")
    assert main(argv) == 0
    logs = {name: (out / "logs" / f"{name}.log").read_text().splitlines()[0] for name in ("dom", "dsp")}
    assert "--speculative-algorithm DFLASH" in logs["dom"] and "--speculative-num-draft-tokens 4" in logs["dom"]
    assert "--speculative-algorithm DSPARK" in logs["dsp"] and "--speculative-dspark-block-size 4" in logs["dsp"]
    assert "--speculative-num-draft-tokens" not in logs["dsp"]
    records = {(r["drafter"], r["prompt_id"]): r for r in _records(out)}
    # "hello": 5 tokens = the prefill token + 4 from verify steps; K = 4 accepts <= 4 a step, DSpark <= 5
    dom, dsp = records[("dom", "q0")], records[("dsp", "q0")]
    assert (dom["verify_ct"], len(dom["histogram"])) == (1, 4)
    assert (dsp["verify_ct"], len(dsp["histogram"])) == (1, 5) and dsp["num_proposed_drafts"] == 4
    assert dsp["settings"]["drafter"]["method"] == "dspark" and "method" not in records[("baseline", "q0")]["settings"]
    assert dsp["settings"]["run"]["serving_rules"] == "sglang-0.5.23"


@pytest.mark.parametrize(
    "server_args, temperature, needle",
    [
        ("--dtype float32", "0", "--dtype float32 with DFlash drafters ['d']: SGLang 0.5.23's DFLASH crashes"),
        ("--device cpu", "0.7", "temperature [0.7] with DFlash drafters ['d'] on device 'cpu' (--device)"),
        ("--device xpu", "1", "silently verifies greedily after the first token"),
    ],
)
def test_sglang_refuses_what_0_5_23_would_crash_on_or_verify_greedily(
    tmp_path, capsys, pair, server_args, temperature, needle
):
    marker = tmp_path / "launched"
    launcher = f"{sys.executable} -c \"open({str(marker)!r}, 'w')\""
    argv = _argv(pair, tmp_path / "o", "--drafter", f"d={pair / 'dflash'}", "--temperature", temperature)
    argv += ["--launcher", launcher, "--sglang-version", "0.5.23", "--server-args", server_args]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "refusing to launch, nothing was started" in err and needle in err
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_float32_dflash_is_fine_on_0_5_14_and_dspark_on_a_cpu_at_t0(tmp_path, monkeypatch, pair):
    monkeypatch.setenv("SPECFORGE_DPACE_LOOPBACK_VERSION", "0.5.14")
    argv = _argv(pair, tmp_path / "o", "--drafter", f"d={pair / 'dflash'}", "--launcher", LOOPBACK)
    assert main(argv + ["--sglang-version", "0.5.14", "--server-args", "--dtype float32 --device cpu"]) == 0


@pytest.mark.parametrize("version", ["0.5.11", "0.5.23"])
def test_the_flush_after_the_warm_up_waits_until_the_server_is_idle(tmp_path, monkeypatch, pair, version):
    """The stand-in finds a request pending at the first two flushes: 0.5.23 waits with ?timeout=S
    (flush_wrapper.py), the 0.5.11 dialect answers 400 and the runner asks again."""
    monkeypatch.setenv("SPECFORGE_DPACE_LOOPBACK_VERSION", version)
    monkeypatch.setenv("SPECFORGE_DPACE_LOOPBACK_BUSY_FLUSHES", "2")
    out = tmp_path / "o"
    argv = _argv(pair, out, "--drafter", f"d={pair / 'dflash'}", "--launcher", LOOPBACK, "--sglang-version", version)
    assert main(argv) == 0
    log = (out / "logs" / "d.log").read_text()
    busy = log.count('"POST /flush_cache?timeout=') if version == "0.5.11" else 0
    assert len(_records(out)) == 4 and (version == "0.5.23" or busy >= 3)


def test_draft_sampling_and_convention_are_hf_only_flags(tmp_path, capsys):
    base = ["bench", "--target", "t", "--drafter", "d=x", "--out", str(tmp_path / "o")]
    assert main(base + ["--draft-sampling", "sample"]) == 2
    assert "--draft-sampling applies to --backend hf only (a server's proposal mode" in capsys.readouterr().err
    assert main(base + ["--convention", "specforge-0.2.0"]) == 2
    assert "--convention applies to --backend hf only" in capsys.readouterr().err
    assert main(base + ["--backend", "hf", "--sglang-version", "0.5.23"]) == 2
    assert "--sglang-version does not apply to --backend hf" in capsys.readouterr().err


def test_hf_backend_measures_domino_and_dspark_as_sglang_0_5_23_decodes_them(tmp_path, capsys, pair):
    out = tmp_path / "out"
    drafters = ["--drafter", f"dom={pair / 'domino'}", "--drafter", f"dsp={pair / 'dspark'}"]
    argv = _argv(pair, out, "--backend", "hf", "--no-baseline", "--temperature", "0.8", "--seed", "3", *drafters)
    assert main(argv) == 0
    records = _records(out)
    assert sorted(r["drafter"] for r in records) == ["dom", "dom", "dsp", "dsp"]
    assert all(r["settings"]["run"]["convention"] == "sglang-0.5.23" for r in records)
    assert all(r["settings"]["run"]["sampling"]["draft_sampling"] is None for r in records)  # the server's own
    # the same numbers as the evaluator with SGLang 0.5.23's decoding, prompt i seeded with --seed + i
    for name, method in (("dom", "domino"), ("dsp", "dspark")):
        direct = evaluate.evaluate_paths(
            pair / "target",
            pair / method,
            [{"prompt": "hello"}, {"prompt": "abc"}],
            evaluate.EvalConfig(temperature=0.8, max_new_tokens=6, prompt_seeds=[3, 4], show_progress=False),
            tokenizer_path=pair / "target",
        )
        assert direct.overall["draft_sampling"] == {"dom": "greedy", "dsp": "sample"}[name]
        mine = [r for r in records if r["drafter"] == name]
        assert [(r["completion_tokens"], r["verify_ct"], r["histogram"]) for r in mine] == [
            (d["completion_tokens"], d["verify_steps"], d["accept_hist"]) for d in direct.per_prompt
        ]
    assert len(next(r for r in records if r["drafter"] == "dsp")["histogram"]) == 5  # gamma 4 + 1
    # each offline column says which vLLM 0.33 setting it stands for (SGLang's DSpark samples: vLLM's probabilistic)
    rows = {r["drafter"]: r for r in json.loads((out / "summary.json").read_text())["results"]}
    assert rows["dom"]["vllm_setting"] == "none: vLLM 0.33 serves no Domino"
    assert rows["dsp"]["vllm_setting"] == 'vLLM draft_sample_method "probabilistic", rejection_sample_method "standard"'
    assert "vLLM setting: dsp" in capsys.readouterr().out
    # a rerun with another draft sampling is refused before anything is measured, naming the field
    capsys.readouterr()
    assert main(argv + ["--draft-sampling", "greedy"]) == 2
    assert 'sampling.draft_sampling: null (recorded) -> "greedy" (now)' in capsys.readouterr().err
    assert len(_records(out)) == 4


def test_hf_backend_refuses_what_the_convention_does_not_perform(tmp_path, capsys, pair):
    argv = _argv(pair, tmp_path / "o", "--backend", "hf", "--drafter", f"d={pair / 'domino'}", "--temperature", "1")
    assert main(argv + ["--draft-sampling", "sample"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "draft_sampling='sample' is not what sglang-0.5.23 does for Domino drafters" in err
    assert not (tmp_path / "o").exists()  # refused before anything was measured


def test_hf_backend_refuses_a_domino_drafter_without_its_head_fields(tmp_path, capsys, pair):
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((pair / "domino" / "config.json").read_text())
    del config["dflash_config"]["gru_hidden_dim"]
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((pair / "domino" / "model.safetensors").read_bytes())
    assert main(_argv(pair, tmp_path / "o", "--backend", "hf", "--drafter", f"d={bad}")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "Domino draft" in err and "gru_hidden_dim is missing (SGLang 0.5.23 reads dflash_config.gru_hidden_dim" in err
    )
    assert not (tmp_path / "o").exists()


def test_bench_help_says_which_version_serves_which_method():
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "specforge_dpace", "bench", "--help"], capture_output=True, text=True, check=True
    ).stdout
    text = " ".join(out.split())
    assert "SGLang 0.5.14: DFlash (--speculative-algorithm DFLASH" in text
    assert "SGLang 0.5.23: DFlash; Domino as a DFLASH sub-mode" in text
    assert "DSpark (--speculative-algorithm DSPARK, --speculative-dspark-block-size gamma" in text
    assert "target layer ids 0..n-2 only" in text and "--dtype float32 with DFLASH on 0.5.23" in text
    assert "--sglang-version" in text and "/flush_cache?timeout=S" in text


def test_hf_backend_decodes_as_vllm_and_names_the_vllm_setting(tmp_path, capsys, pair):
    """``--convention vllm-0.33.0``: DSpark decoded as vLLM decodes it, ``--draft-sampling sample`` standing for
    ``draft_sample_method: "probabilistic"``; Domino refused (vLLM serves none)."""
    out = tmp_path / "out"
    argv = _argv(pair, out, "--backend", "hf", "--no-baseline", "--temperature", "0.8", "--seed", "3")
    vllm = ["--convention", "vllm-0.33.0", "--draft-sampling", "sample"]
    assert main([*argv, "--drafter", f"dsp={pair / 'dspark'}", *vllm]) == 0
    rows = json.loads((out / "summary.json").read_text())["results"]
    assert [r["vllm_setting"] for r in rows] == [
        'vLLM draft_sample_method "probabilistic", rejection_sample_method "standard"'
    ]
    assert all(r["settings"]["run"]["convention"] == "vllm-0.33.0" for r in _records(out))
    capsys.readouterr()
    assert main([*argv, "--drafter", f"dom={pair / 'domino'}", *vllm[:2], "--out", str(tmp_path / "o2")]) == 2
    assert "vllm-0.33.0 does not serve Domino" in capsys.readouterr().err
