"""The demo's cache is checked, not trusted: every artefact carries the sha256 it was written with; a
changed, unverifiable or unreadable one is recomputed with a warning naming the file; missing optional
dependencies stop the demo before any work; Ctrl-C exits 130 with a one-line message (real child
processes, real signal)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from specforge_dpace.demo import _cache
from specforge_dpace.demo._cache import CacheWarning
from specforge_dpace.demo.pipeline import DemoConfig, DemoPipeline

REPO = Path(__file__).resolve().parents[2]
TINY = dict(
    objectives=("dflash(gamma=7)", "dpace"),
    num_train_seqs=8,
    gen_len=24,
    steps=3,
    batch_size=4,
    num_anchors=4,
    block_size=4,
    eval_prompts=2,
    eval_max_new_tokens=8,
    threads=1,
)
# the same settings as CLI flags (a child process reaches the same cache keys)
TINY_FLAGS = [
    "--num-train-seqs",
    "8",
    "--gen-len",
    "24",
    "--batch-size",
    "4",
    "--num-anchors",
    "4",
    "--block-size",
    "4",
    "--eval-prompts",
    "2",
    "--eval-max-new-tokens",
    "8",
    "--threads",
    "1",
    "--no-progress",
]


def _run(out, **overrides):
    pipe = DemoPipeline(out, DemoConfig(**{**TINY, **overrides}), show_progress=False, log=lambda _: None)
    return pipe, pipe.run()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-first")
    _, report = _run(out)
    return out, report


@pytest.fixture
def cache(first_run, tmp_path):
    """A private copy of the first run's output directory, to tamper with."""
    out = tmp_path / "demo"
    shutil.copytree(first_run[0], out)
    return out


def _ran(pipe) -> list[str]:
    return [phase for phase, what in pipe.events if what == "ran"]


def _one(directory: Path, pattern: str) -> Path:
    (path,) = sorted(directory.glob(pattern))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_artefact_records_the_sha256_it_was_written_with(first_run):
    out, _ = first_run
    files = [*(out / "cache").glob("*.pt"), *(out / "eval").glob("*.json")]
    assert len(files) == 4  # data, features, 2 evaluations
    for path in files:
        digest, name = (path.parent / (path.name + ".sha256")).read_text().split()
        assert (digest, name) == (_sha(path), path.name)
    for drafter in (out / "drafters").iterdir():
        listed = dict(reversed(line.split()) for line in (drafter / "SHA256SUMS").read_text().splitlines())
        assert {"config.json", "model.safetensors", "train_log.json"} <= set(listed)
        assert all(_sha(drafter / name) == digest for name, digest in listed.items())
    assert not [p for p in out.rglob(".*tmp*")]  # no temporary file left


def test_a_drafter_whose_weights_changed_is_retrained_with_a_warning_naming_the_file(first_run, cache):
    weights = _one(cache / "drafters", "dpace-*/model.safetensors")
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # still a loadable safetensors file
    with pytest.warns(CacheWarning, match=r"model\.safetensors: its content no longer matches the sha256"):
        pipe, report = _run(cache)
    assert weights.read_bytes() == original  # same seed, same drafter ...
    assert _ran(pipe) == ["train dpace"]  # ... so its evaluation (keyed by the drafter's checksums) is reused
    assert [r["tau"] for r in report["rows"]] == [r["tau"] for r in first_run[1]["rows"]]
    assert _cache.verify_directory(weights.parent) is None


def test_a_corrupted_cache_file_is_named_and_recomputed_not_a_traceback(cache):
    data = _one(cache / "cache", "data-*.pt")
    data.write_bytes(b"not a torch file")
    with pytest.warns(CacheWarning, match=rf"{data.name}: its content no longer matches"):
        pipe, _ = _run(cache)
    assert _ran(pipe) == ["data"]  # same content again: the features and everything after stay cached
    # unreadable although its checksum matches (written corrupt): still a named warning, still recomputed
    evaluation = _one(cache / "eval", "dpace-*.json")
    evaluation.write_text("{truncated")
    (evaluation.parent / (evaluation.name + ".sha256")).write_text(f"{_sha(evaluation)}  {evaluation.name}\n")
    with pytest.warns(CacheWarning, match=rf"{evaluation.name}: it cannot be read \(JSONDecodeError"):
        pipe, _ = _run(cache)
    assert _ran(pipe) == ["evaluate dpace"]
    assert json.loads(evaluation.read_text())["overall"]["tau"] >= 1.0


def test_an_artefact_without_its_checksum_is_not_trusted(cache):
    features = _one(cache / "cache", "features-*.pt")
    (features.parent / (features.name + ".sha256")).unlink()  # e.g. written by a version without checksums
    drafter = _one(cache / "drafters", "dflash*")
    (drafter / "SHA256SUMS").unlink()
    with pytest.warns(CacheWarning) as caught:
        pipe, _ = _run(cache)
    messages = [str(w.message) for w in caught if w.category is CacheWarning]
    assert any(features.name in m and "no checksum recorded" in m for m in messages), messages
    assert any(drafter.name in m and "SHA256SUMS is missing" in m for m in messages), messages
    assert "capture" in _ran(pipe) and "train dflash(gamma=7)" in _ran(pipe)
    assert _cache.verify_file(features) is None and _cache.verify_directory(drafter) is None


def test_an_interrupted_write_leaves_neither_artefact_nor_temporary_file(tmp_path):
    target = tmp_path / "x.json"

    def writer(path):
        path.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _cache.write_file(writer, target)
    assert list(tmp_path.iterdir()) == []


def _demo_child(out: Path, *flags: str, prelude: str = "") -> subprocess.Popen:
    code = prelude + "\nimport sys\nfrom specforge_dpace.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, "demo", "--output-dir", str(out), *TINY_FLAGS, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )


BLOCK_MATPLOTLIB = textwrap.dedent(
    """
    import sys

    class NoMatplotlib:  # as if matplotlib were not installed
        def find_spec(self, name, path=None, target=None):
            if name == "matplotlib" or name.startswith("matplotlib."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoMatplotlib())
    """
)


def test_without_the_demo_extra_the_demo_stops_before_any_work_and_names_the_extra(tmp_path):
    out = tmp_path / "demo"
    proc = _demo_child(out, "--steps", "3", "--objectives", "dpace", prelude=BLOCK_MATPLOTLIB)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "matplotlib (report.png; not installed)" in stderr
    assert 'pip install -c constraints-cpu.txt "specforge-dpace[demo]"' in stderr
    assert not out.exists()  # nothing was generated, captured or trained


def test_ctrl_c_prints_one_line_exits_130_and_keeps_finished_artefacts(tmp_path):
    out = tmp_path / "demo"
    proc = _demo_child(out, "--steps", "100000", "--objectives", "dpace")  # training outlasts the signal
    deadline = time.monotonic() + 300
    while not list((out / "cache").glob("features-*.pt")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the capture phase never finished"
        time.sleep(0.2)
    time.sleep(1.0)  # into the training phase
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted, rerun to resume" in stderr and "Traceback" not in stderr
    for path in (*(out / "cache").glob("*.pt"),):
        assert _cache.verify_file(path) is None  # finished artefacts are intact
    assert not list(out.rglob("train_log.json")) and not list(out.rglob(".*tmp*"))
    pipe, _ = _run(out, objectives=("dpace",))  # a rerun resumes: data and features come from the cache
    assert dict(pipe.events)["data"] == "cached" and dict(pipe.events)["capture"] == "cached"
    assert pipe.stale == []


def test_a_retrained_target_whose_files_changed_is_rebuilt_with_a_warning(tmp_path):
    settings = dict(objectives=("dpace",), retrain_target=True, target_steps=2)
    pipe, _ = _run(tmp_path, **settings)
    assert dict(pipe.events)["target"] == "ran"
    tokenizer = tmp_path / "target" / "tokenizer.json"
    assert _cache.verify_directory(tokenizer.parent) is None
    tokenizer.write_text(tokenizer.read_text().replace('"', "'", 1))
    with pytest.warns(CacheWarning, match=r"target/tokenizer\.json: its content no longer matches"):
        pipe, _ = _run(tmp_path, **settings)
    assert dict(pipe.events)["target"] == "ran" and _cache.verify_directory(tokenizer.parent) is None
    pipe, _ = _run(tmp_path, **settings)
    assert all(what == "cached" for _, what in pipe.events) and pipe.stale == []
