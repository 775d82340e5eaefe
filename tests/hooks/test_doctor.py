"""``specforge-dpace doctor`` (``specforge_dpace/hooks/cli.py``): real child processes, real SpecForge."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from specforge_dpace.hooks import cli as doctor


def _doctor(extra_env: dict | None = None, *args: str) -> tuple[int, list[dict]]:
    env = {**os.environ, **(extra_env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "specforge_dpace", "doctor", "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return result.returncode, json.loads(result.stdout)


def _by_check(rows: list[dict]) -> dict[str, dict]:
    return {row["check"]: row for row in rows}


def test_installed_plugin_patches_every_unified_module_in_a_fresh_process():
    pytest.importorskip("specforge")
    code, rows = _doctor({"SPECFORGE_DPACE_AUTOLOAD": "1"})
    checks = _by_check(rows)
    assert code == 0, rows
    assert checks["SpecForge layout"]["detail"] == "unified"
    for target in ("unified-model", "unified-schema", "unified-providers", "unified-composition"):
        assert checks[f"patched on import: {target}"]["status"] == "ok"
    assert checks["autoload .pth"]["status"] == "ok"
    assert "specforge 0.2.0" in checks["versions"]["detail"]
    for target in ("unified-evaluation", "unified-trainer", "unified-checkpoint", "unified-dflash-providers"):
        assert checks[f"patched on import: {target}"]["status"] == "ok"
    recommended = checks["best checkpoint metric"]
    assert recommended["status"] == "info" and "training.best_metric: eval/tau_walk" in recommended["detail"]


def test_autoload_switched_off_fails_and_says_why():
    pytest.importorskip("specforge")
    code, rows = _doctor({"SPECFORGE_DPACE_AUTOLOAD": "0"})
    checks = _by_check(rows)
    assert code == 1
    assert checks["SPECFORGE_DPACE_AUTOLOAD"]["status"] == "warn"
    row = checks["patched on import: unified-model"]
    assert row["status"] == "FAIL" and "SPECFORGE_DPACE_AUTOLOAD is off" in row["detail"]


def test_a_specforge_of_neither_layout_fails_with_what_was_found(tmp_path):
    pytest.importorskip("specforge")  # metadata says installed; the shadowing package has no DFlash module
    fake = tmp_path / "fake"
    (fake / "specforge").mkdir(parents=True)
    (fake / "specforge" / "__init__.py").write_text("__version__ = '9.9'\n")
    code, rows = _doctor({"PYTHONPATH": str(fake)})
    row = _by_check(rows)["SpecForge layout"]
    assert code == 1 and row["status"] == "FAIL"
    assert "no supported SpecForge layout found" in row["detail"] and "9.9" in row["detail"]


def test_missing_pth_file_is_a_failure_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "_site_dirs", lambda: [tmp_path])
    row = doctor.pth_file()
    assert row.status == "FAIL" and "Reinstall" in row.detail and str(tmp_path) in row.detail
    (tmp_path / doctor.PTH_NAME).write_text("import specforge_dpace_bootstrap\n")
    assert doctor.pth_file().status == "ok"


def test_without_specforge_the_library_still_counts_as_healthy(monkeypatch):
    real = doctor.package_version
    monkeypatch.setattr(doctor, "package_version", lambda name: None if name == "specforge" else real(name))
    [row] = doctor.fresh_process(timeout=30)
    assert row.check == "SpecForge" and row.status == "warn" and "--no-deps specforge==0.2.0" in row.detail


@pytest.mark.parametrize("value", ["0", "inf", "nan", "1e309"])
def test_bad_timeout_is_a_clean_error(value):
    result = subprocess.run(
        [sys.executable, "-m", "specforge_dpace", "doctor", "--timeout", value], capture_output=True, text=True
    )
    assert result.returncode == 2 and f"argument --timeout: {value} is invalid" in result.stderr
    assert "accepted: a finite number in (0, 1000000]" in result.stderr and "Traceback" not in result.stderr


def test_a_switch_value_neither_on_nor_off_is_reported():
    code, rows = _doctor({"SPECFORGE_DPACE_AUTOLOAD": "maybe"})
    row = _by_check(rows)["SPECFORGE_DPACE_AUTOLOAD"]
    assert row["status"] == "warn"
    assert "'maybe' is neither on nor off" in row["detail"] and "keeping the default: on" in row["detail"]
    assert not [r for r in rows if r["check"] == "fresh process warning" and "maybe" in r["detail"]]  # said once
