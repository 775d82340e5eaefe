"""The demo's output directory: checked and locked before any work; the target's context window respected;
``--no-progress`` also silences transformers' weight-loading bar."""

from __future__ import annotations

import os

import pytest

from specforge_dpace._outdir import locked_output
from specforge_dpace.cli import main
from specforge_dpace.demo.pipeline import DemoConfig, DemoPipeline


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["demo", "--quick", "--no-progress", "--output-dir", str(blocker / "out")]) == 2
    assert f"--output-dir {str(blocker / 'out')!r}: sits under {str(blocker)!r}, which is a file" in (
        capsys.readouterr().err
    )


def test_a_report_path_holding_a_directory_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "report.json").mkdir()
    assert main(["demo", "--quick", "--no-progress", "--output-dir", str(tmp_path)]) == 2
    assert "report.json' is a directory where this run writes its file report.json" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # nothing else: no work began


def test_a_second_demo_into_one_directory_is_refused_naming_the_holder(tmp_path, capsys):
    with locked_output(tmp_path, "specforge-dpace demo", "--output-dir"):
        assert main(["demo", "--quick", "--no-progress", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"is in use by another run: pid {os.getpid()} (specforge-dpace demo" in err
    assert not (tmp_path / "cache").exists()


def test_generation_past_the_targets_context_window_is_refused(tmp_path):
    """The shipped target has 1024 positions: before, 2000 tokens were generated past them without a word."""
    pipeline = DemoPipeline(tmp_path, DemoConfig(gen_len=2000), show_progress=False, log=lambda _m: None)
    with pytest.raises(ValueError, match=r"prompt_len \+ gen_len = 32 \+ 2000 = 2032 runs past .*=1024"):
        pipeline.load_target()
    pipeline = DemoPipeline(tmp_path, DemoConfig(eval_max_new_tokens=1000), show_progress=False, log=print)
    with pytest.raises(ValueError, match=r"eval_prompt_len \+ eval_max_new_tokens = 32 \+ 1000 = 1032"):
        pipeline.load_target()


@pytest.mark.parametrize("show", [False, True])
def test_no_progress_silences_transformers_weight_loading_bar(tmp_path, capsys, show):
    DemoPipeline(tmp_path, DemoConfig(), show_progress=show, log=lambda _m: None).load_target()
    err = capsys.readouterr().err
    assert ("Loading weights" in err) is show  # the bar is transformers' own (core_model_loading.py)
