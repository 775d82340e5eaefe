"""Smoke runs of scripts/bench_loss_path.py at toy sizes: every section runs and its numbers are sane."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_loss_path.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_loss_path", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOY = [
    "--hidden-size", "32", "--vocab", "300", "--blocks", "6", "--block-size", "4", "--reps", "2", "--warmup", "0",
    "--small-reps", "2", "--tiny-hidden", "16", "--tiny-vocab", "64", "--tiny-blocks", "4",
    "--step-hidden", "32", "--step-vocab", "128", "--step-seq", "48", "--step-anchors", "4", "--threads", "1",
]  # fmt: skip


def test_help_documents_every_flag(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--sections",
        "--quick",
        "--sub-chunk-tokens",
        "--fused-objectives",
        "--soft-objectives",
        "--markdown",
    ):
        assert flag in text
    assert "0.67x" in text  # the flop-floor note is part of the help


def test_bad_section_is_rejected(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--sections", "fused,nope"])
    assert "unknown section" in capsys.readouterr().err


def test_fused_and_overhead_sections(bench, tmp_path, capsys):
    pytest.importorskip("specforge")
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    assert bench.main(["--sections", "overhead,fused", *TOY, "--json", str(out), "--markdown", str(md)]) == 0
    data = json.loads(out.read_text())
    fused = data["fused"]
    assert {row["objective"] for row in fused} == {"dflash", "dpace"}
    for row in fused:
        assert row["grad_rel_err"] <= 1e-5 and row["loss_rel_err"] <= 1e-5
        assert row["time_ratio"] > 0 and row["sub_chunk"] % 4 == 0
        assert row["kernels"] == "pytorch"  # CPU tensors: the PyTorch path unless forced
        # PyTorch's chunked linear cross-entropy feeding the objective (torch 2.13 has it): same gradient
        assert row["torch_lce_x"] > 0 and row["torch_lce_grad_rel_err"] <= 1e-5
    names = [row["objective"] for row in data["overhead"]]
    assert bench.COMPOSITE in names and "chain" in names
    assert "[fused]" in md.read_text() and "[overhead]" in capsys.readouterr().out


def test_step_sections_with_the_hook(bench, tmp_path):
    pytest.importorskip("specforge")
    import specforge_dpace

    was = specforge_dpace.is_installed("unified-model")
    out = tmp_path / "bench.json"
    try:
        assert bench.main(["--sections", "step,fused-step", *TOY, "--json", str(out)]) == 0
    finally:
        if was and not specforge_dpace.is_installed("unified-model"):
            specforge_dpace.install()
        elif not was and specforge_dpace.is_installed("unified-model"):
            specforge_dpace.uninstall()
    data = json.loads(out.read_text())
    assert data["step"][0]["case"] == "unpatched dflash" and len(data["step"]) == 9
    for row in data["fused-step"]:
        assert 0 < row["objective_share"] and row["step_ratio"] > 0


def test_soft_section(bench, tmp_path):
    """Soft objectives, plain and fused, beside upstream dflash: every row, its ratios, floors and errors."""
    pytest.importorskip("specforge")
    out = tmp_path / "bench.json"
    specs = "lk-alpha;lk-lambda;lk-lambda(lagged=true);dpace + 0.5*lk-lambda"
    assert bench.main(["--sections", "soft", *TOY, "--soft-objectives", specs, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["soft"]
    assert [row["objective"] for row in rows] == specs.split(";")
    floors = {row["objective"]: (row["grad_buffers"], row["fused_floor_x"]) for row in rows}
    assert floors == {
        "lk-alpha": (1, 1.0),
        "lk-lambda": (2, 8 / 6),
        "lk-lambda(lagged=true)": (1, 1.0),
        "dpace + 0.5*lk-lambda": (3, 10 / 6),
    }
    for row in rows:
        assert row["grad_rel_err"] <= 1e-5 and row["loss_rel_err"] <= 1e-5
        assert row["fused_x"] > 0 and row["plain_x"] > 0 and row["upstream_ms"] > 0
        assert row["fused_x"] == pytest.approx(row["fused_ms"] / row["upstream_ms"])
        assert len(row["meets"].split()) == 3


def test_kernels_forced_and_anchors_skipped_on_cpu(bench, tmp_path, capsys, kernel_device):
    """``--kernels force`` runs both paths' element-wise work in the Triton kernels (the interpreter here),
    with the same values as upstream and plain; the GPU-only anchors say why they are skipped."""
    pytest.importorskip("specforge")
    if kernel_device != "cpu":
        pytest.skip("the CPU run of the kernels")
    out = tmp_path / "bench.json"
    argv = ["--sections", "fused,soft", *TOY, "--soft-objectives", "kl;lk-lambda", "--kernels", "force"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    for row in data["fused"] + data["soft"]:
        assert row["kernels"] == "triton" and row["grad_rel_err"] <= 1e-5
    text = capsys.readouterr().out
    assert (
        "kernels force (Triton" in text
        and "[soft-anchors] skipped: Liger's and speculators' kernels need a CUDA GPU" in text
    )
    assert "soft-anchors" not in data
