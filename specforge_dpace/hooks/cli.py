"""``specforge-dpace doctor``: is the plugin active where SpecForge will run?

The question behind most "loss_type: dpace is rejected" reports is whether the ``.pth``
autoload reaches the processes SpecForge starts.  This command answers it the way those
processes see it: a fresh interpreter with this environment imports SpecForge's modules (and
nothing of this package by hand) and reports which hook targets applied.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .._numbers import SECONDS
from .._versions import package_version, package_versions
from ._autoload import ENV_VAR, enabled, switch

HELP = "check that the plugin is installed and active in the processes SpecForge starts"
DESCRIPTION = """Check the installation: versions, the autoload .pth file, SPECFORGE_DPACE_AUTOLOAD
(1/true/yes/on or unset: on; 0/false/no/off: off; any other value warns and keeps it on), the
SpecForge layout, and, in a fresh Python process of this environment (like the ones `specforge
train` starts), which SpecForge modules the plugin patched on import. Also lists third-party
objectives and any entry point that failed to load, and recommends the best-checkpoint metric
(training.best_metric: eval/tau_walk; docs/eval-metrics.md).

Exit status: 0 when nothing failed (warnings allowed), 1 otherwise.

  specforge-dpace doctor
  specforge-dpace doctor --json"""

PTH_NAME = "specforge_dpace_autoload.pth"
OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"

# Runs in the child: import what SpecForge itself imports, then report what the autoload applied.
_CHILD = """
import importlib, json
from specforge_dpace import hooks
report = {"applied": [], "layout": None, "error": None, "missing": []}
try:
    report["layout"] = hooks.detect_layout()
    for target in hooks.TARGETS:
        if target.layout == report["layout"]:
            try:
                importlib.import_module(target.module)
            except ImportError:
                report["missing"].append(target.module)
except Exception as exc:
    report["error"] = f"{type(exc).__name__}: {exc}"
report["applied"] = hooks.installed_targets()
print(json.dumps(report))
"""


@dataclass
class Check:
    check: str
    status: str
    detail: str


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON instead of a table")
    parser.add_argument(
        "--timeout", type=SECONDS, default=120.0, help="seconds allowed for the fresh-process check (default 120)"
    )


def versions() -> Check:
    import platform

    found = package_versions(("specforge-dpace", "torch", "transformers", "specforge"))
    parts = [f"python {platform.python_version()}", *(f"{n} {v or 'not installed'}" for n, v in found.items())]
    return Check("versions", INFO, ", ".join(parts))


def _site_dirs() -> list[Path]:
    import site
    import sysconfig

    dirs = [
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
        *getattr(site, "getsitepackages", list)(),
    ]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(Path(d) for d in dirs))


def pth_file() -> Check:
    dirs = _site_dirs()
    found = [d / PTH_NAME for d in dirs if (d / PTH_NAME).is_file()]
    if found:
        return Check("autoload .pth", OK, str(found[0]))
    return Check(
        "autoload .pth",
        FAIL,
        f"{PTH_NAME} is in none of {[str(d) for d in dirs]}: SpecForge's processes will not load the plugin. "
        "Reinstall: pip install -c constraints-cpu.txt specforge-dpace (or -e . from a checkout)",
    )


def autoload_switch() -> Check:
    value = os.environ.get(ENV_VAR)
    on, problem = switch()
    if problem:
        return Check(ENV_VAR, WARN, f"{problem} (every Python process of this environment warns about it)")
    if on:
        return Check(ENV_VAR, OK, "unset (on)" if value is None else f"{value!r} (on)")
    return Check(ENV_VAR, WARN, f"{value!r}: the autoload is off; unset it to let SpecForge processes load the plugin")


def fresh_process(timeout: float) -> list[Check]:
    """What a process started by SpecForge gets: layout, patched targets, missing modules."""
    if package_version("specforge") is None:
        return [
            Check(
                "SpecForge",
                WARN,
                "not installed: the objectives work as a library; pip install --no-deps specforge==0.2.0",
            )
        ]
    try:
        result = subprocess.run(
            [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
        )
    except subprocess.TimeoutExpired:
        return [Check("fresh process", FAIL, f"importing SpecForge took more than {timeout:g}s")]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        return [Check("fresh process", FAIL, f"exit {result.returncode}: " + " | ".join(tail))]
    report = json.loads(lines[-1])
    if report["error"]:
        return [Check("SpecForge layout", FAIL, report["error"])]
    from . import TARGETS

    checks = [Check("SpecForge layout", OK, report["layout"])]
    missing = set(report["missing"])
    for target in (t for t in TARGETS if t.layout == report["layout"]):
        if target.name in report["applied"]:
            checks.append(Check(f"patched on import: {target.name}", OK, target.module))
        elif target.module in missing:
            status = FAIL if target.required else INFO
            checks.append(Check(f"patched on import: {target.name}", status, f"{target.module} not importable"))
        else:
            why = "SPECFORGE_DPACE_AUTOLOAD is off" if not enabled() else "the autoload did not apply it"
            checks.append(
                Check(f"patched on import: {target.name}", FAIL, f"{target.module} imported unpatched: {why}")
            )
    warnings_seen = [
        line
        for line in result.stderr.splitlines()
        if "specforge-dpace" in line and "Warning" in line and f"{ENV_VAR}=" not in line  # the switch row says it
    ]
    checks.extend(Check("fresh process warning", WARN, line.strip()) for line in warnings_seen)
    return checks


def objectives() -> list[Check]:
    import warnings

    from ..losses import available_losses, loss_info

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = available_losses()
    third_party = sorted(name for name in names if loss_info(name).source != "built-in")
    detail = f"{len(names)} registered" + (f"; from entry points: {', '.join(third_party)}" if third_party else "")
    checks = [Check("objectives", OK, detail)]
    checks.extend(Check("objective entry point", WARN, str(w.message)) for w in caught)
    return checks


def best_metric() -> Check:
    """The recommendation for SpecForge's best-checkpoint metric (docs/eval-metrics.md)."""
    from ._eval_settings import RECOMMENDED_METRIC, SPECFORGE_DEFAULT_METRIC

    return Check(
        "best checkpoint metric",
        INFO,
        f"recommended: training.best_metric: {RECOMMENDED_METRIC} (the walk predictor of served tau at T = 0), "
        "with data.eval_hidden_states_path and training.eval_interval; unset, SpecForge keeps the best checkpoint "
        f"by {SPECFORGE_DEFAULT_METRIC}, the mean token accuracy (docs/eval-metrics.md)",
    )


def run_checks(timeout: float = 120.0) -> list[Check]:
    return [versions(), pth_file(), autoload_switch(), *fresh_process(timeout), *objectives(), best_metric()]


def run(args: argparse.Namespace) -> int:
    from ..report import format_table

    checks = run_checks(args.timeout)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(format_table([asdict(c) for c in checks], title="specforge-dpace doctor"))
    failed = [c for c in checks if c.status == FAIL]
    if not args.json:
        print(
            f"\n{len(failed)} failed"
            if failed
            else "\nall checks passed" + (" (with warnings)" if any(c.status == WARN for c in checks) else "")
        )
    return 1 if failed else 0
