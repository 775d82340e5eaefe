"""Resume never reuses (or reports) results measured with other settings; torn lines; duplicate ids.

Real runs of ``specforge-dpace bench`` against the loopback stand-in on 127.0.0.1; a rerun with
one setting changed is refused before anything is launched, naming what changed, and leaves every
file of the output directory as it was.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from specforge_dpace.bench import provenance
from specforge_dpace.bench.datasets import Prompt
from specforge_dpace.bench.results import ResultStore, record_key, repair_torn_tail
from specforge_dpace.bench.runner import BenchConfig, WorkItem, make_record, pending_items, run_sglang
from specforge_dpace.cli import main
from tests.bench._helpers import LOOPBACK, draft_state_and_config, write_draft_dir


def _write_prompts(path, ids, length=24):
    path.write_text("".join(json.dumps({"id": i, "prompt": chr(97 + n) * length}) + "\n" for n, i in enumerate(ids)))
    return path


def _chat_tokenizer(path):
    """A local word-level tokenizer with a chat template (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    fast.save_pretrained(path)
    return path


def _argv(root, **flags):
    base = {
        "--target": str(root / "target"),
        "--drafter": f"k4={root / 'k4'}",
        "--dataset": f"prompts={root / 'p.jsonl'}",
        "--chat-template": "raw",
        "--max-new-tokens": "24",
        "--launcher": LOOPBACK,
        "--out": str(root / "out"),
        "--warmup": "0",
        "--health-timeout": "30",
    }
    for flag, value in flags.items():
        flag = "--" + flag.replace("_", "-")
        if value is None:
            base.pop(flag, None)
        else:
            base[flag] = value
    argv = ["bench", "--no-baseline", "--no-plot"]
    for flag, value in base.items():
        argv += [flag, value]
    return argv


def _snapshot(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One finished run: target directory, drafter, 3 prompts, loopback server."""
    from specforge_dpace.evaluate import tiny_target

    root = tmp_path_factory.mktemp("resume")
    tiny_target(num_hidden_layers=2).config.save_pretrained(root / "target")
    state, config = draft_state_and_config(block_size=4)
    write_draft_dir(root / "k4", state, config)
    _write_prompts(root / "p.jsonl", ["t0", "t1", "t2"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SGLANG_SIMULATE_ACC_LEN", "3")
        assert main(_argv(root)) == 0
    records = [json.loads(line) for line in (root / "out" / "requests.jsonl").read_text().splitlines()]
    assert len(records) == 3 and len({r["setting_id"] for r in records}) == 1
    return root


def _other_draft(root):
    state, config = draft_state_and_config(block_size=4)
    name = sorted(state)[0]
    state[name] = state[name] + 1.0  # same names and shapes, other weights
    return write_draft_dir(root / "k4-retrained", state, config)


def _copy_target(root):
    shutil.copytree(root / "target", root / "target-copy", dirs_exist_ok=True)
    return root / "target-copy"


def _copy_dataset(root):
    shutil.copy(root / "p.jsonl", root / "p-copy.jsonl")
    return root / "p-copy.jsonl"


CHANGES = [
    ("top-k", lambda root: {"top_k": "20"}, "sampling.top_k: -1 (recorded) -> 20 (now)"),
    ("top-p", lambda root: {"top_p": "0.9"}, "sampling.top_p: 1.0 (recorded) -> 0.9 (now)"),
    ("seed", lambda root: {"seed": "7"}, "sampling.seed: null (recorded) -> 7 (now)"),
    ("max-new-tokens", lambda root: {"max_new_tokens": "16"}, "sampling.max_new_tokens: 24 (recorded) -> 16"),
    ("concurrency", lambda root: {"concurrency": "2"}, "concurrency: 1 (recorded) -> 2 (now)"),
    ("target path", lambda root: {"target": str(_copy_target(root))}, "the run: target.path"),
    (
        "chat template",
        lambda root: {"chat_template": "tokenizer", "tokenizer": str(_chat_tokenizer(root / "tok"))},
        'template: "raw (no chat template)" (recorded) -> "tokenizer chat template, thinking off" (now)',
    ),
    ("drafter checkpoint", lambda root: {"drafter": f"k4={_other_draft(root)}"}, "drafter 'k4': checkpoint_sha256"),
    ("dataset path", lambda root: {"dataset": f"prompts={_copy_dataset(root)}"}, "dataset 'prompts': path"),
    ("server args", lambda root: {"server_args": "--tp 1"}, "drafter 'k4': server.server_args"),
    ("launcher", lambda root: {"launcher": LOOPBACK.replace(" -m ", " -X utf8 -m ")}, "server.launcher"),
    (
        "backend",
        lambda root: {"backend": "hf", "launcher": None, "warmup": None, "health_timeout": None},
        'backend: "sglang" (recorded) -> "hf" (now)',
    ),
]


@pytest.mark.parametrize("name, change, expected", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_rerun_with_other_settings_is_refused_and_changes_nothing(measured, capsys, name, change, expected):
    out = measured / "out"
    before = _snapshot(out)
    capsys.readouterr()
    assert main(_argv(measured, **change(measured))) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "already holds results measured with other settings" in err and "nothing was run" in err
    assert _snapshot(out) == before  # no record reused or added, no summary rewritten, no server launched


def test_a_changed_file_behind_the_same_path_is_refused(measured, capsys):
    out = measured / "out"
    before = _snapshot(out)
    for path, needle in (
        (measured / "p.jsonl", "dataset 'prompts': sha256"),
        (measured / "target" / "config.json", "target.config_sha256"),
    ):
        original = path.read_bytes()
        try:
            if path.suffix == ".jsonl":
                _write_prompts(path, ["t0", "t1", "t2", "t3"])  # one more prompt: another file
            else:
                data = json.loads(original)
                data["rope_theta"] = float(data.get("rope_theta") or 10000.0) * 2
                path.write_text(json.dumps(data))
            capsys.readouterr()
            assert main(_argv(measured)) == 2
            assert needle in capsys.readouterr().err
        finally:
            path.write_bytes(original)
    assert _snapshot(out) == before


def test_other_results_schema_is_refused(measured, capsys, monkeypatch):
    monkeypatch.setattr(provenance, "RESULTS_SCHEMA", provenance.RESULTS_SCHEMA + 1)
    before = _snapshot(measured / "out")
    assert main(_argv(measured)) == 2
    assert "versions.results_schema" in capsys.readouterr().err
    assert _snapshot(measured / "out") == before


def test_the_same_command_reuses_everything(measured, capsys, monkeypatch):
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "3")
    requests = (measured / "out" / "requests.jsonl").read_bytes()
    assert main(_argv(measured)) == 0
    assert "already complete" in capsys.readouterr().out
    assert (measured / "out" / "requests.jsonl").read_bytes() == requests


def test_new_temperatures_drafters_and_prompts_are_added(tmp_path, capsys, monkeypatch, draft_dirs):
    """What an output directory may grow by: each addition is measured, nothing already there is redone."""
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "2")
    prompts = _write_prompts(tmp_path / "p.jsonl", ["a", "b", "c"])
    argv = _argv(tmp_path, target="t", drafter=f"k4={draft_dirs['k4']}", dataset=f"prompts={prompts}")
    assert main(argv + ["--num-prompts", "2"]) == 0
    lines = (tmp_path / "out" / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert main(argv + ["--temperature", "0", "--temperature", "0.5", "--drafter", f"k8={draft_dirs['k8']}"]) == 0
    after = (tmp_path / "out" / "requests.jsonl").read_text().splitlines()
    assert after[:2] == lines
    keys = [(r["drafter"], r["temperature"], r["prompt_id"]) for r in map(json.loads, after)]
    assert sorted(keys) == sorted((d, t, p) for d in ("k4", "k8") for t in (0.0, 0.5) for p in "abc")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["settings"]) == 2  # one settings record per (drafter, dataset), all in the summary


def test_results_recorded_without_settings_are_refused(tmp_path, capsys, draft_dirs):
    out = tmp_path / "out"
    out.mkdir()
    legacy = {"backend": "sglang", "drafter": "k4", "dataset": "smoke", "temperature": 0.0, "prompt_id": "0"}
    (out / "requests.jsonl").write_text(json.dumps({**legacy, "completion_tokens": 5, "latency_s": 0.1}) + "\n")
    argv = _argv(tmp_path, target="t", drafter=f"k4={draft_dirs['k4']}", dataset="smoke")
    assert main(argv) == 2
    assert "recorded without their settings" in capsys.readouterr().err
    assert not (out / "logs").exists()


def _config(tmp_path, draft, **kw):
    base = dict(
        target="t",
        drafters={"k4": str(draft)},
        prompts={"toy": [Prompt("toy", f"p{i}", "x" * 12) for i in range(2)]},
        out_dir=tmp_path,
        max_new_tokens=12,
        launcher=LOOPBACK,
        health_timeout_s=30,
        warmup=0,
        baseline=False,
    )
    base.update(kw)
    return BenchConfig(**base)


@pytest.mark.parametrize(
    "change",
    [
        dict(top_k=5),
        dict(top_p=0.5),
        dict(seed=3),
        dict(max_new_tokens=6),
        dict(target="other"),
        dict(concurrency=2),
        dict(server_args=["--tp", "1"]),
        dict(datasets={"toy": {"kind": "prompts", "path": "/elsewhere.jsonl", "sha256": "0" * 64}}),
    ],
    ids=lambda c: next(iter(c)),
)
def test_the_resume_key_holds_every_setting(tmp_path, draft_dirs, change):
    """Library level: a record of one configuration is never "done" for another, and running the
    other configuration into the same store is refused."""
    first, second = _config(tmp_path, draft_dirs["k4"]), _config(tmp_path, draft_dirs["k4"], **change)
    item = WorkItem("toy", 0.0, first.prompts["toy"][0], "")
    assert record_key(make_record(first, "k4", item)) != record_key(make_record(second, "k4", item))
    store = ResultStore(tmp_path)
    store.add(make_record(first, "k4", item, completion_tokens=12, verify_ct=4, latency_s=0.1))
    assert len(pending_items(first, store, "k4", lambda m: m)) == 1
    assert len(pending_items(second, store, "k4", lambda m: m)) == 2  # nothing reused
    with pytest.raises(provenance.ResumeMismatch, match="What changed"):
        run_sglang(second, store, lambda m: m)
    assert not (tmp_path / "logs").exists()


def test_a_torn_last_line_is_dropped_and_the_next_record_starts_on_a_new_line(tmp_path, draft_dirs):
    prompts = _write_prompts(tmp_path / "p.jsonl", ["t0", "t1", "t2"])
    argv = _argv(tmp_path, target="t", drafter=f"k4={draft_dirs['k4']}", dataset=f"prompts={prompts}")
    env = {**os.environ, "SGLANG_SIMULATE_ACC_LEN": "3", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "specforge_dpace.cli", *argv]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    requests = tmp_path / "out" / "requests.jsonl"
    lines = requests.read_text().splitlines()
    torn = lines[2][: len(lines[2]) // 2]  # the run was killed while writing its third record
    requests.write_text(lines[0] + "\n" + lines[1] + "\n" + torn)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"{requests}:3: dropped a torn last record" in again.stderr
    after = requests.read_text()
    assert after.endswith("\n")
    records = [json.loads(line) for line in after.splitlines()]  # every line is a whole record
    assert after.splitlines()[:2] == lines[:2]
    assert sorted(r["prompt_id"] for r in records) == ["t0", "t1", "t2"]  # the torn one measured again, once


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}')
    repair_torn_tail(path)
    assert path.read_text() == '{"a": 1}\n{"b": 2}\n'
    path.write_text('{"a": 1}\n{"b": ')
    with pytest.warns(UserWarning, match=r"x.jsonl:2: dropped a torn last record"):
        repair_torn_tail(path)
    assert path.read_text() == '{"a": 1}\n'


def test_duplicate_prompt_ids_are_refused_before_any_launch(tmp_path, capsys, draft_dirs):
    prompts = _write_prompts(tmp_path / "dup.jsonl", ["a", "b", "a"])
    argv = _argv(tmp_path, target="t", drafter=f"k4={draft_dirs['k4']}", dataset=f"prompts={prompts}")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "prompt id 'a' appears twice (records #0 and #2)" in err and str(prompts) in err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_out_is_refused_before_any_launch(tmp_path, capsys, draft_dirs):
    (tmp_path / "file").write_text("x")
    argv = _argv(tmp_path, target="t", drafter=f"k4={draft_dirs['k4']}", dataset="smoke", out=str(tmp_path / "file"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {str(tmp_path / 'file')!r}: is a file; accepted: a directory" in err
