"""``specforge-dpace evaluate`` end to end on a tiny saved target + draft, and prompt files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("specforge")

from specforge_dpace.cli import main  # noqa: E402
from specforge_dpace.evaluate import load_prompts, save_draft_checkpoint, tiny_draft, tiny_target  # noqa: E402


def _word_tokenizer(vocab_size):
    """A word-level tokenizer over words ``w0 .. w{V-1}`` (built locally, nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


@pytest.fixture(scope="module")
def checkpoint_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    target = tiny_target(vocab_size=64, seed=0)
    target.save_pretrained(root / "target")
    _word_tokenizer(64).save_pretrained(root / "target")
    save_draft_checkpoint(tiny_draft(target, block_size=4, seed=1), root / "draft")
    prompts = root / "prompts.jsonl"
    lines = [{"input_ids": [1, 2, 3]}, {"prompt": "w5 w6 w7 w8"}, {"input_ids": [10]}, {"input_ids": [4, 4]}]
    prompts.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    return root


def test_cli_end_to_end(checkpoint_dirs, tmp_path, capsys):
    root = checkpoint_dirs
    out = tmp_path / "out"
    argv = [
        "evaluate",
        "--target",
        str(root / "target"),
        "--draft",
        str(root / "draft"),
        "--prompts",
        str(root / "prompts.jsonl"),
        "--temperature",
        "0.7",
        "--max-new-tokens",
        "9",
        "--num-prompts",
        "3",
        "--seed",
        "5",
        "--output-dir",
        str(out),
        "--no-progress",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tau" in printed and "accepted-length histogram" in printed
    data = json.loads((out / "eval.json").read_text())
    overall = data["overall"]
    assert overall["num_prompts"] == 3 and overall["temperature"] == 0.7 and overall["block_size"] == 4
    assert overall["completion_tokens"] == 27
    assert sum(overall["accept_hist"]) == overall["verify_steps"]
    assert overall["tau"] == pytest.approx((27 - 3) / overall["verify_steps"])
    assert overall["draft_s"] > 0 and overall["verify_s"] > 0 and overall["tokens_per_s"] > 0
    lines = (out / "per_prompt.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[1])["prompt_tokens"] == 4  # the text prompt went through the tokenizer
    # same seed, same numbers
    assert main(argv) == 0
    again = json.loads((out / "eval.json").read_text())
    assert [r["output_ids"] for r in again["per_prompt"]] == [r["output_ids"] for r in data["per_prompt"]]


def test_cli_reports_both_tau_conventions_and_applies_top_k_top_p(checkpoint_dirs, tmp_path, capsys):
    root = checkpoint_dirs
    out = tmp_path / "out"
    argv = [
        "evaluate",
        "--target",
        str(root / "target"),
        "--draft",
        str(root / "draft"),
        "--prompts",
        str(root / "prompts.jsonl"),
        "--temperature",
        "0.9",
        "--top-k",
        "5",
        "--top-p",
        "0.8",
        "--max-new-tokens",
        "7",
        "--num-prompts",
        "2",
        "--no-progress",
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tau (per verify step, prefill excluded)" in printed
    assert "tau (SGLang convention: completion_tokens / spec_verify_ct, prefill token included)" in printed
    overall = json.loads((out / "eval.json").read_text())["overall"]
    assert overall["top_k"] == 5 and overall["top_p"] == 0.8
    assert overall["tau_sglang"] == pytest.approx(overall["completion_tokens"] / overall["verify_steps"])
    assert overall["tau"] == pytest.approx((overall["completion_tokens"] - 2) / overall["verify_steps"])
    for flag, value, message in (
        ("--top-k", "0", "--top-k: 0 is invalid; accepted: -1 (off) or an int in [1, 2147483647]"),
        ("--top-p", "0", "--top-p: 0 is invalid; accepted: a finite number in (0, 1]"),
    ):
        bad = list(argv)
        bad[bad.index(flag) + 1] = value
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_output_dir_that_cannot_be_written_fails_before_decoding(checkpoint_dirs, tmp_path, capsys):
    root = checkpoint_dirs
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "out"  # cannot be created, even by root
    argv = [
        "evaluate",
        "--target",
        str(root / "target"),
        "--draft",
        str(root / "draft"),
        "--prompts",
        str(root / "prompts.jsonl"),
        "--max-new-tokens",
        "5",
        "--no-progress",
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert f"--output-dir {str(out)!r}: sits under {str(blocker)!r}, which is a file" in captured.err
    assert "accepted-length histogram" not in captured.out  # nothing was decoded
    # checked before any model is loaded: a missing target is not even looked at
    argv[argv.index("--target") + 1] = str(tmp_path / "no-such-target")
    assert main(argv) == 2 and "--output-dir" in capsys.readouterr().err
    # an empty value is refused, not treated as "no output"
    argv[argv.index("--output-dir") + 1] = ""
    assert main(argv) == 2 and "--output-dir '' is invalid" in capsys.readouterr().err


def test_cli_block_size_and_stop_tokens(checkpoint_dirs, tmp_path):
    root = checkpoint_dirs
    out = tmp_path / "out"
    base = [
        "evaluate",
        "--target",
        str(root / "target"),
        "--draft",
        str(root / "draft"),
        "--prompts",
        str(root / "prompts.jsonl"),
        "--no-progress",
        "--output-dir",
        str(out),
    ]
    assert main(base + ["--block-size", "6", "--max-new-tokens", "6", "--num-prompts", "1", "--baseline"]) == 0
    data = json.loads((out / "eval.json").read_text())
    assert data["overall"]["block_size"] == 6 and len(data["overall"]["accept_hist"]) == 6
    assert data["overall"]["speedup"] > 0
    first = data["per_prompt"][0]["output_ids"]
    assert main(base + ["--stop-token-id", str(first[1]), "--max-new-tokens", "6", "--num-prompts", "1"]) == 0
    stopped = json.loads((out / "eval.json").read_text())["per_prompt"][0]
    assert stopped["stopped"] and stopped["output_ids"] == first[: first.index(first[1]) + 1]


def test_cli_reports_bad_input_without_traceback(checkpoint_dirs, tmp_path, capsys):
    root = checkpoint_dirs
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1]}\nnot json\n')
    code = main(["evaluate", "--target", str(root / "target"), "--draft", str(root / "draft"), "--prompts", str(bad)])
    assert code == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # refused at parse time, before anything is loaded
        main(
            ["evaluate", "--target", str(root / "target"), "--draft", str(root / "draft"), "--prompts", str(bad)]
            + [
                "--block-size",
                "1",
            ]
        )
    assert exc.value.code == 2 and "--block-size: 1 is invalid; accepted: an int in [2, 256]" in capsys.readouterr().err


def test_cli_help_explains_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "specforge_dpace", "evaluate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--target",
        "--draft",
        "--prompts",
        "--temperature",
        "--max-new-tokens",
        "--top-k",
        "--top-p",
        "--block-size",
        "--stop-token-id",
        "--num-prompts",
        "--seed",
        "--output-dir",
        "--tokenizer",
        "--device",
        "--threads",
        "--baseline",
        "--no-progress",
    ):
        assert flag in out


def test_load_prompts_forms_and_errors(tmp_path):
    import torch

    assert load_prompts([[1, 2], torch.tensor([3, 4]), {"input_ids": [5]}]) == [[1, 2], [3, 4], [5]]
    assert load_prompts(["a b"], encode=lambda s: [len(w) for w in s.split()]) == [[1, 1]]
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_prompts(["text"])
    with pytest.raises(ValueError, match="neither 'input_ids' nor 'prompt'"):
        load_prompts([{"text": "x"}])
    with pytest.raises(ValueError, match="non-empty list"):
        load_prompts([[]])
    with pytest.raises(ValueError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts([])


def test_cli_draft_sampling_is_applied_recorded_and_documented(checkpoint_dirs, tmp_path, capsys):
    """--draft-sampling: 'sample' and 'greedy' give different decodes of the same seeds at temperature > 0; the
    default is what the convention's server does for DFlash (SGLang 0.5.23: greedy); eval.json records which one
    ran, --help states the default, and a value outside the two is refused by the parser."""
    root = checkpoint_dirs
    base = [
        "evaluate",
        "--target",
        str(root / "target"),
        "--draft",
        str(root / "draft"),
        "--prompts",
        str(root / "prompts.jsonl"),
        "--temperature",
        "0.9",
        "--max-new-tokens",
        "12",
        "--no-progress",
    ]
    runs = {}
    for mode in (None, "sample", "greedy"):
        out = tmp_path / str(mode)
        assert main(base + ["--output-dir", str(out)] + (["--draft-sampling", mode] if mode else [])) == 0
        runs[mode] = json.loads((out / "eval.json").read_text())
    assert (
        runs[None]["overall"]["draft_sampling"] == "greedy" and runs["sample"]["overall"]["draft_sampling"] == "sample"
    )
    assert runs[None]["overall"]["convention"] == "sglang-0.5.23"
    assert [r["output_ids"] for r in runs[None]["per_prompt"]] == [
        r["output_ids"] for r in runs["greedy"]["per_prompt"]
    ]
    assert [r["output_ids"] for r in runs["greedy"]["per_prompt"]] != [
        r["output_ids"] for r in runs["sample"]["per_prompt"]
    ]
    assert "draft sampling" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(base + ["--draft-sampling", "argmax"])
    assert exit_info.value.code == 2 and "invalid choice: 'argmax'" in capsys.readouterr().err
    help_text = " ".join(
        subprocess.run(
            [sys.executable, "-m", "specforge_dpace", "evaluate", "--help"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "--draft-sampling {sample,greedy}" in help_text and "default: what the --convention server does" in help_text
    assert "DSpark (DSPARK) drafts gamma = the config's block_size tokens from the anchor row" in help_text
    assert "Domino (DFLASH + projector_type domino) with SGLang's GRU rollout" in help_text and "0..n-2" in help_text


def test_evaluate_paths_honours_a_given_block_size_for_a_draft_without_one(checkpoint_dirs, tmp_path):
    """A draft whose config gives no block size loads with the one the caller gives (it is refused, naming
    the field, without one)."""
    from specforge_dpace.evaluate import EvalConfig, evaluate_paths

    root = checkpoint_dirs
    bare = tmp_path / "draft"
    bare.mkdir()
    config = json.loads((root / "draft" / "config.json").read_text())
    config.pop("block_size")
    config["dflash_config"].pop("block_size", None)
    (bare / "config.json").write_text(json.dumps(config))
    (bare / "model.safetensors").write_bytes((root / "draft" / "model.safetensors").read_bytes())
    result = evaluate_paths(root / "target", bare, [[1, 2, 3]], EvalConfig(block_size=3, show_progress=False))
    assert result.overall["block_size"] == 3 and len(result.overall["accept_hist"]) == 3
    with pytest.raises(ValueError, match=r"block_size is missing \(SGLang 0.5.23 reads dflash_config.block_size"):
        evaluate_paths(root / "target", bare, [[1, 2, 3]], EvalConfig(show_progress=False))


def _evaluate_argv(root, out, *extra):
    return ["evaluate", "--target", str(root / "target"), "--draft", str(root / "draft")] + [
        "--prompts",
        str(root / "prompts.jsonl"),
        "--no-progress",
        "--output-dir",
        str(out),
        *extra,
    ]


def test_output_dir_problems_are_reported_before_any_model_is_loaded(checkpoint_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "eval.json").mkdir(parents=True)  # a directory where the report file goes
    argv = _evaluate_argv(checkpoint_dirs, out)
    argv[argv.index("--target") + 1] = str(tmp_path / "no-such-target")  # never looked at
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{str(out / 'eval.json')!r} is a directory where this run writes its file eval.json" in err


def test_a_second_evaluate_into_one_output_dir_is_refused_naming_the_holder(checkpoint_dirs, tmp_path, capsys):
    from specforge_dpace._outdir import locked_output

    out = tmp_path / "out"
    out.mkdir()
    with locked_output(out, "another evaluate", "--output-dir"):
        assert main(_evaluate_argv(checkpoint_dirs, out)) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {str(out)!r} is in use by another run: pid {os.getpid()} (another evaluate" in err
    assert not (out / "eval.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE behaviour is Linux's")
def test_a_full_disk_leaves_the_previous_reports_not_an_empty_per_prompt_jsonl(checkpoint_dirs, tmp_path):
    """per_prompt.jsonl is written whole (it was unlinked, then appended line by line: a disk filling up left
    it empty or torn beside a complete eval.json), before eval.json, so a failed run changes neither report and
    names the file, without a traceback or a temporary file left behind.  RLIMIT_FSIZE in the child stands in
    for the full disk (writes past it fail with EFBIG, as they fail with ENOSPC); being a per-file limit it
    cannot let eval.json (the larger file) through and stop per_prompt.jsonl, so the old code failed here on
    eval.json: with a traceback, leaving its torn temporary file."""
    root = tmp_path / "many"
    root.mkdir()
    for name in ("target", "draft"):
        shutil.copytree(checkpoint_dirs / name, root / name)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"input_ids": [i % 60 + 1]}) + "\n" for i in range(30)))
    out = tmp_path / "out"
    out.mkdir()
    previous = {"eval.json": '{"previous": true}\n', "per_prompt.jsonl": '{"previous": 1}\n'}
    for name, text in previous.items():
        (out / name).write_text(text)
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))\n"
        "from specforge_dpace.cli import main\n"
        f"sys.exit(main({_evaluate_argv(root, out, '--max-new-tokens', '40')!r}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"could not write {out / 'per_prompt.jsonl'}" in result.stderr and "Traceback" not in result.stderr
    for name, text in previous.items():
        assert (out / name).read_text() == text, name
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_max_new_tokens_past_the_targets_context_window_is_refused(checkpoint_dirs, tmp_path, capsys):
    """tiny_target has 1024 positions: before, decoding ran on past them without a word."""
    argv = _evaluate_argv(checkpoint_dirs, tmp_path / "out", "--max-new-tokens", "1022")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens=1022 is invalid for these prompts: prompt 1 has 4 tokens" in err
    assert "(max_position_embeddings=1024); accepted: max_new_tokens <= 1020" in err


@pytest.mark.parametrize("quiet", [True, False])
def test_no_progress_also_silences_transformers_weight_loading_bar(checkpoint_dirs, tmp_path, capsys, quiet):
    argv = _evaluate_argv(checkpoint_dirs, tmp_path / "out", "--max-new-tokens", "2", "--num-prompts", "1")
    if not quiet:
        argv.remove("--no-progress")
    assert main(argv) == 0
    assert ("Loading weights" in capsys.readouterr().err) is not quiet
