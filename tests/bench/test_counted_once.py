"""Nothing counted twice, nothing stale: the four wrong results of issue 19 are impossible by construction.

Real runs of ``specforge-dpace bench`` (real processes, the loopback stand-in for SGLang on 127.0.0.1,
since SGLang cannot serve DFlash on a CPU): two runs into one ``--out`` (a lock), a repeated temperature
(refused at parse time, tests/test_numbers.py), a target changed in place (content identity), a
non-finite key (refused), records repeated or damaged in ``requests.jsonl`` (counted once by key; a
damaged line refused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specforge_dpace import _hashing
from specforge_dpace._outdir import locked_output
from specforge_dpace.bench.results import ResultStore
from specforge_dpace.cli import main
from tests.bench._helpers import LOOPBACK

REPO = Path(__file__).resolve().parents[2]


def _argv(root: Path, drafter: Path, out: Path, *extra: str) -> list[str]:
    return [
        "bench",
        "--target",
        str(root / "target"),
        "--drafter",
        f"k4={drafter}",
        "--chat-template",
        "raw",
        "--max-new-tokens",
        "16",
        "--launcher",
        LOOPBACK,
        "--warmup",
        "0",
        "--health-timeout",
        "30",
        "--no-plot",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture
def target(tmp_path):
    """A target directory with a config and a weight file (the loopback server does not load it)."""
    from specforge_dpace.evaluate import tiny_target

    tiny_target(num_hidden_layers=2).config.save_pretrained(tmp_path / "target")
    (tmp_path / "target" / "model.safetensors").write_bytes(b"\x01" * 4096)
    return tmp_path


def _requests(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


def _summary_requests(out: Path) -> dict:
    rows = json.loads((out / "summary.json").read_text())["results"]
    return {(r["drafter"], r["temperature"]): r["requests"] for r in rows}


def test_two_runs_into_one_out_at_once_measure_everything_once(target, draft_dirs, monkeypatch):
    """Both start together; one holds --out and measures, the other is refused (or, if it starts after the
    first finished, finds everything done).  Before: both measured all 8 prompts and the summary said 16."""
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "2")
    out = target / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "specforge_dpace", *_argv(target, draft_dirs["k4"], out)]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    runs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    for code, err in results:
        assert code == 0 or (code == 2 and "is in use by another run: pid " in err), err
    keys = [(r["drafter"], r["prompt_id"]) for r in _requests(out)]
    assert len(keys) == len(set(keys)) == 16  # baseline + k4, 8 smoke prompts each, each once
    assert _summary_requests(out) == {("baseline", 0.0): 8, ("k4", 0.0): 8}


def test_a_run_into_an_out_in_use_is_refused_naming_the_holder(target, draft_dirs, capsys):
    out = target / "out"
    out.mkdir()
    with locked_output(out, "specforge-dpace bench (another)", "--out"):
        assert main(_argv(target, draft_dirs["k4"], out)) == 2
    err = capsys.readouterr().err
    assert f"--out {str(out)!r} is in use by another run: pid {os.getpid()}" in err
    assert not (out / "requests.jsonl").exists() and not (out / "logs").exists()


def test_repeated_records_in_the_file_are_counted_once(target, draft_dirs, monkeypatch, capsys):
    """Whatever the history of requests.jsonl (two old concurrent runs, files concatenated), a key counts once."""
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "2")
    out = target / "out"
    assert main(_argv(target, draft_dirs["k4"], out)) == 0
    path = out / "requests.jsonl"
    path.write_text(path.read_text() * 2)  # every record twice
    capsys.readouterr()
    assert main(_argv(target, draft_dirs["k4"], out)) == 0
    err = capsys.readouterr().err
    assert "requests.jsonl: 16 record(s) repeat the key of an earlier one" in err and "counted once" in err
    assert _summary_requests(out) == {("baseline", 0.0): 8, ("k4", 0.0): 8}
    assert len(ResultStore(out).records()) == 16


def test_a_damaged_middle_line_is_refused_not_skipped_and_measured_again(target, draft_dirs, monkeypatch, capsys):
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "2")
    out = target / "out"
    assert main(_argv(target, draft_dirs["k4"], out)) == 0
    path = out / "requests.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = lines[3][:40] + "\n"  # a corrupt line in the middle (not a torn last line)
    path.write_text("".join(lines))
    before = path.read_bytes()
    capsys.readouterr()
    assert main(_argv(target, draft_dirs["k4"], out)) == 2
    err = capsys.readouterr().err
    assert f"{path}:4 is not valid JSON" in err and "nothing was run" in err and "delete line 4" in err
    assert path.read_bytes() == before  # nothing measured again, nothing appended


def test_a_target_changed_in_place_is_another_target(target, draft_dirs, monkeypatch, capsys):
    """Same file names and sizes, other weights: before, the rerun reprinted the old tau and measured nothing."""
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "2")
    out = target / "out"
    assert main(_argv(target, draft_dirs["k4"], out)) == 0
    weights = target / "target" / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\x02" * 4096)  # same size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even the mtime put back
    capsys.readouterr()
    assert main(_argv(target, draft_dirs["k4"], out)) == 2
    err = capsys.readouterr().err
    assert "already holds results measured with other settings" in err
    assert "target.weights_sha256.model.safetensors" in err


def test_the_target_hash_is_computed_once_and_recomputed_when_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv(_hashing.CACHE_ENV, str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 1000)
    calls = []
    real = _hashing.sha256_file
    monkeypatch.setattr(_hashing, "sha256_file", lambda p: calls.append(p) or real(p))
    first = _hashing.sha256_file_cached(weights)
    assert _hashing.sha256_file_cached(weights) == first and len(calls) == 1  # remembered
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: ctime still moves
    assert _hashing.sha256_file_cached(weights) == real(weights) != first and len(calls) == 2


def test_a_non_finite_key_is_never_stored(tmp_path):
    store = ResultStore(tmp_path / "out")
    record = {"backend": "sglang", "drafter": "k4", "dataset": "smoke", "prompt_id": "0", "setting_id": "s"}
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="not finite"):
            store.add({**record, "temperature": bad})
    store.add({**record, "temperature": 0.0})
    with pytest.raises(ValueError, match="already in"):
        store.add({**record, "temperature": 0.0})
    assert len(store.records()) == 1
