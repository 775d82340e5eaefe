"""The pipeline caches every phase: a second run reuses all artefacts and gives the same
report; losing one artefact (an interrupted run) reruns only that phase."""

from __future__ import annotations

import json

import pytest

from specforge_dpace.demo import assets_dir
from specforge_dpace.demo.pipeline import DemoConfig, DemoPipeline

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


def _run(out, **overrides):
    messages = []
    pipe = DemoPipeline(out, DemoConfig(**{**TINY, **overrides}), show_progress=False, log=messages.append)
    return pipe, pipe.run()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, *_run(out)


def test_shipped_assets_exist_and_are_small():
    files = [p for p in assets_dir().iterdir() if p.is_file()]
    names = {p.name for p in files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert sum(p.stat().st_size for p in files) < 10 * 1024 * 1024


def test_first_run_runs_every_phase_and_writes_the_report(first_run):
    out, pipe, report = first_run
    assert [w for _, w in pipe.events] == ["cached"] + ["ran"] * 6  # target is shipped; data, capture, 2x(train, eval)
    assert [r["objective"] for r in report["rows"]] == list(TINY["objectives"])
    assert report["baseline"] == "dflash(gamma=7)" and report["rows"][0]["relative_change"] == 0.0
    for name in ("report.json", "report.md", "report.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "report.json").read_text())["rows"][1]["tau"] == report["rows"][1]["tau"]
    assert all(r["tau"] >= 1.0 for r in report["rows"])
    assert sum(report["rows"][0]["accept_hist_counts"]) > 0


def test_second_run_reuses_everything(first_run):
    out, _, report = first_run
    pipe, again = _run(out)
    assert all(what == "cached" for _, what in pipe.events), pipe.events
    assert [r["tau"] for r in again["rows"]] == [r["tau"] for r in report["rows"]]
    assert [r["train_s"] for r in again["rows"]] == [r["train_s"] for r in report["rows"]]


def test_interrupted_run_resumes_only_missing_phase(first_run):
    out, _, report = first_run
    (next((out / "eval").glob("dpace-*.json"))).unlink()  # as if killed during the last evaluation
    pipe, again = _run(out)
    ran = [phase for phase, what in pipe.events if what == "ran"]
    assert ran == ["evaluate dpace"]
    assert again["rows"][1]["tau"] == report["rows"][1]["tau"]  # same seed, same number


def test_changed_setting_invalidates_downstream_only(first_run):
    out, _, _ = first_run
    pipe, _ = _run(out, objectives=("dpace",), steps=4)
    assert dict(pipe.events)["data"] == "cached" and dict(pipe.events)["capture"] == "cached"
    assert dict(pipe.events)["train dpace"] == "ran"


def test_bad_objective_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="no-such-loss"):
        DemoPipeline(tmp_path, DemoConfig(**{**TINY, "objectives": ("no-such-loss",)}), show_progress=False)
    assert not any(tmp_path.iterdir())
