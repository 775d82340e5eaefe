"""Automatic activation through the installed ``.pth`` file, checked in real child processes."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PTH = "specforge_dpace_autoload.pth"

CHILD_BUILDS_CHAIN_MODEL = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from _tiny_specforge import tiny_online_model  # imports SpecForge only, never specforge_dpace
    assert "specforge_dpace.losses" not in sys.modules
    model, batch = tiny_online_model(loss_type="chain")
    loss, accuracy, metrics = model(**batch)
    loss.backward()
    print("OK", model.loss_type, sorted(metrics["ratio_metrics"])[:2], float(loss.detach()))
    """
).format(tests=str(REPO / "tests"))


def _run(code: str, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "SPECFORGE_DPACE_AUTOLOAD"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd or "/", timeout=180
    )


def test_pth_file_is_installed_in_site_packages():
    locations = [Path(p) / PTH for p in site.getsitepackages() + [site.getusersitepackages()]]
    assert any(p.exists() for p in locations), f"{PTH} not found in {locations}; install with pip install -e ."


def test_python_start_up_imports_neither_torch_nor_specforge():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, cwd="/", timeout=60
    )
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "specforge_dpace.hooks._autoload" in modules, "the .pth hook did not run"
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "specforge", "transformers", "numpy"))
    assert heavy == []


def test_child_that_only_imports_specforge_gets_the_plugin():
    pytest.importorskip("specforge")
    result = _run(CHILD_BUILDS_CHAIN_MODEL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK chain ['acc', 'accept_pos_1']" in result.stdout


def test_autoload_switch_off_leaves_specforge_validation_in_charge():
    pytest.importorskip("specforge")
    result = _run(CHILD_BUILDS_CHAIN_MODEL, {"SPECFORGE_DPACE_AUTOLOAD": "0"})
    assert result.returncode != 0
    assert "loss_type='chain'; must be one of" in result.stderr


def _fake_specforge(root: Path, files: dict[str, str]) -> Path:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


def test_broken_specforge_never_breaks_an_unrelated_process(tmp_path):
    fake = _fake_specforge(tmp_path, {"specforge/__init__.py": "raise RuntimeError('broken install')\n"})
    result = _run("import json; print('fine')", {"PYTHONPATH": str(fake)})
    assert result.returncode == 0 and result.stdout.strip() == "fine" and result.stderr == ""


def test_specforge_with_an_unexpected_layout_imports_with_a_warning(tmp_path):
    fake = _fake_specforge(
        tmp_path,
        {
            "specforge/__init__.py": "",
            "specforge/config/__init__.py": "",
            "specforge/config/schema.py": "VALUE = 1  # no TrainingConfig here\n",
        },
    )
    result = _run("import specforge.config.schema as s; print(s.VALUE)", {"PYTHONPATH": str(fake)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert "specforge-dpace: could not patch specforge.config.schema" in result.stderr


def test_install_reports_what_was_found_for_an_unknown_layout(tmp_path):
    fake = _fake_specforge(tmp_path, {"specforge/__init__.py": "__version__ = '9.9'\n"})
    code = textwrap.dedent(
        """
        import specforge_dpace
        try:
            specforge_dpace.install()
        except specforge_dpace.hooks.LayoutError as exc:
            print(exc)
        """
    )
    result = _run(code, {"PYTHONPATH": str(fake), "SPECFORGE_DPACE_AUTOLOAD": "0"})
    assert result.returncode == 0, result.stderr
    assert "no supported SpecForge layout found" in result.stdout
    assert "version 9.9" in result.stdout and "Supported: the unified runtime" in result.stdout


@pytest.mark.slow
def test_built_wheel_ships_the_pth_at_the_site_packages_root(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert PTH in names and "specforge_dpace_bootstrap.py" in names
    assert zipfile.ZipFile(wheel).read(PTH).decode().strip() == "import specforge_dpace_bootstrap"


CHILD_ASKS_THE_SWITCH = textwrap.dedent(
    """
    from specforge_dpace.hooks import _autoload
    _autoload.enabled(), _autoload.enabled()  # asked again: still one warning per process
    print("armed" if _autoload.armed() else "not armed")
    """
)


@pytest.mark.parametrize("value", ["maybe", "disable", "2", "of"])
def test_a_switch_value_neither_on_nor_off_warns_once_and_keeps_the_default(value):
    result = _run(CHILD_ASKS_THE_SWITCH, {"SPECFORGE_DPACE_AUTOLOAD": value})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "armed"  # the default (on) is kept, as the .pth bootstrap does
    warned = [line for line in result.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warned) == 1, result.stderr
    assert f"SPECFORGE_DPACE_AUTOLOAD={value!r}" in warned[0]
    assert "1/true/yes/on" in warned[0] and "0/false/no/off" in warned[0] and "keeping the default: on" in warned[0]


def test_the_switch_warning_never_breaks_a_process_even_with_warnings_as_errors():
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import json; print('fine')"],
        capture_output=True,
        text=True,
        env={**os.environ, "SPECFORGE_DPACE_AUTOLOAD": "maybe"},
        cwd="/",
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "fine", result.stderr
    assert result.stderr.count("SPECFORGE_DPACE_AUTOLOAD='maybe'") == 1


@pytest.mark.parametrize("value, state", [("1", "armed"), (" TRUE ", "armed"), ("", "armed"), ("Off", "not armed")])
def test_accepted_switch_values_do_not_warn(value, state):
    result = _run(CHILD_ASKS_THE_SWITCH, {"SPECFORGE_DPACE_AUTOLOAD": value})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.strip() == state
