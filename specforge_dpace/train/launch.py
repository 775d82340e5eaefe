"""Run the train_dflash wrapper: a legacy checkout's own script in-process, or ``specforge train``.

Legacy: the checkout's ``scripts/train_dflash.py`` runs in *this* process (``runpy``), so
``torchrun scripts/train_dflash.py ...`` keeps working rank by rank; the legacy hook is applied
to its ``specforge.core.dflash``, its ``--loss-type`` choices are widened, and objective settings
its constructor call does not pass (all of them before PR #578, ``loss_options`` after) reach the
model through :func:`specforge_dpace.hooks._legacy.objective_defaults`.

Unified: the flags become a YAML config written to the output directory, then
``python -m specforge.cli train -c CONFIG`` runs as a child process (the plugin's start-up hook
re-activates inside SpecForge's own child processes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

from .args import LEGACY_FLAGS, UNIFIED_ONLY, given, is_set, legacy_value_errors, objective_of, strategy_of

LEGACY_MODULE = os.path.join("specforge", "core", "dflash.py")
UNIFIED_MODULE = os.path.join("specforge", "algorithms", "common", "dflash_family_model.py")
LEGACY_SCRIPT = os.path.join("scripts", "train_dflash.py")


class LaunchError(RuntimeError):
    """The requested runtime cannot be found or started."""


def _importable_specforge_root() -> Optional[Path]:
    spec = importlib.util.find_spec("specforge")  # locates without importing (legacy imports sglang)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


def _legacy_root(root: Path, origin: str) -> Path:
    missing = [rel for rel in (LEGACY_MODULE, LEGACY_SCRIPT) if not (root / rel).is_file()]
    if missing:
        raise LaunchError(
            f"{origin} {root} is not a legacy SpecForge checkout: missing {', '.join(missing)} "
            "(legacy layout = SpecForge main 2026-01-11..2026-07-18)"
        )
    return root


def detect_runtime(args: argparse.Namespace) -> tuple[str, Optional[Path]]:
    """``("legacy", checkout_root)`` or ``("unified", None)`` from --runtime/--specforge-root/imports."""
    if args.runtime == "unified":
        if args.specforge_root:
            raise LaunchError("--specforge-root names a legacy checkout; it cannot be combined with --runtime unified")
        return "unified", None
    if args.specforge_root:
        return "legacy", _legacy_root(Path(args.specforge_root).resolve(), "--specforge-root")
    root = _importable_specforge_root()
    is_legacy = root is not None and (root / LEGACY_MODULE).is_file() and not (root / UNIFIED_MODULE).is_file()
    if is_legacy:
        return "legacy", _legacy_root(root, "the importable specforge package's parent")
    if args.runtime == "legacy":
        raise LaunchError(
            "--runtime legacy needs a legacy SpecForge checkout: pass --specforge-root PATH "
            f"(importable specforge: {root or 'none'})"
        )
    return "unified", None


def script_generation(script: Path) -> str:
    """``"dpace"`` when the checkout's script has ``--loss-type`` (PR #578 and later), else ``"pre-dpace"``."""
    return "dpace" if '"--loss-type"' in script.read_text(encoding="utf-8") else "pre-dpace"


def legacy_argv(args: argparse.Namespace, generation: str) -> list[str]:
    """The checkout script's command line: the given legacy flags (``0`` included), objective flags it knows,
    passthrough.  Flags not given are left out, so the script's own argparse defaults apply."""
    argv: list[str] = []
    for flag in LEGACY_FLAGS:
        if given(args, flag):
            argv += [flag.name] if flag.store_true else [flag.name, str(getattr(args, flag.dest))]
    if generation == "dpace":
        if args.loss_type is not None:
            argv += ["--loss-type", args.loss_type]
        if args.dpace_alpha is not None:
            argv += ["--dpace-alpha", str(args.dpace_alpha)]
    return argv + list(getattr(args, "passthrough", None) or [])


def _apply_legacy_hook() -> None:
    """Patch the checkout's ``specforge.core.dflash`` (imported now, from the checkout on sys.path)."""
    from ..hooks import _legacy

    with contextlib.suppress(Exception):  # the auto-loader, when present, does the same (idempotent)
        import specforge_dpace

        specforge_dpace.install()
    _legacy.apply(importlib.import_module(_legacy.TARGET_MODULE))


@contextlib.contextmanager
def _script_context(root: Path, script: Path, argv: list[str]) -> Iterator[None]:
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(script), *argv]
    sys.path[:0] = [str(root), str(script.parent)]
    try:
        yield
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path


def run_legacy(args: argparse.Namespace, root: Path) -> int:
    from ..hooks._legacy import objective_defaults, soft_objective_error
    from .legacy_args import widened_loss_type_choices

    strategy = strategy_of(args)
    if strategy != "dflash":
        print(
            f"error: --strategy {strategy}: {root} is a legacy checkout, whose script trains DFlash only "
            "(Domino and DSpark exist in SpecForge's unified runtime: --runtime unified)",
            file=sys.stderr,
        )
        return 2
    unified_only = [name for name in UNIFIED_ONLY if is_set(getattr(args, name, None))]
    if unified_only:
        flags = ", ".join(UNIFIED_ONLY[name] for name in unified_only)
        print(f"error: {flags}: unified runtime only, but {root} is a legacy checkout", file=sys.stderr)
        return 2
    refused = legacy_value_errors(args)
    if refused:
        lines = ["the legacy checkout's script cannot run these values:", *refused]
        print("error: " + "\n  ".join(lines), file=sys.stderr)
        return 2
    loaded = sys.modules.get("specforge")
    loaded_from = Path(getattr(loaded, "__file__", None) or "").resolve() if loaded else None
    if loaded_from is not None and root not in loaded_from.parents:
        print(
            f"error: another specforge is already imported in this process ({loaded_from}); run the legacy "
            f"checkout {root} in a fresh process",
            file=sys.stderr,
        )
        return 2
    script = root / LEGACY_SCRIPT
    generation = script_generation(script)
    loss_type, dpace_alpha, loss_options = objective_of(args)
    soft = soft_objective_error(loss_type, dpace_alpha, loss_options)
    if soft:
        print(f"error: {soft} ({root} is a legacy checkout)", file=sys.stderr)
        return 2
    argv = legacy_argv(args, generation)
    if args.dry_run:
        print(
            f"legacy checkout {root} ({generation} script), objective {loss_type!r}"
            + (f", loss_options {loss_options}" if loss_options else "")
        )
        print(shlex.join([sys.executable, str(script), *argv]))
        return 0
    with (
        _script_context(root, script, argv),
        widened_loss_type_choices(),
        objective_defaults(loss_type=loss_type, dpace_alpha=dpace_alpha, loss_options=loss_options or None),
    ):
        _apply_legacy_hook()
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run_unified(args: argparse.Namespace) -> int:
    from .translate import TranslationError, dump_yaml, unified_config, validate

    try:
        config = unified_config(args)
    except TranslationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = dump_yaml(config)
    unchecked = None
    try:
        validate(config)  # SpecForge's own schema, plugin installed; refusals name the flag and the field
    except ImportError as exc:
        unchecked = f"not checked against SpecForge's schema ({exc})"
    except ValueError as exc:  # SchemaError: refused, a dry run included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(text, end="")
        if unchecked:
            print(f"warning: {unchecked}", file=sys.stderr)
        return 0
    if unchecked:
        print(f"error: {unchecked}", file=sys.stderr)
        return 2
    config_out = args.config_out
    path = Path(os.path.join(config["output_dir"], "specforge_config.yaml") if config_out is None else config_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    command = [sys.executable, "-m", "specforge.cli", "train", "-c", str(path), *(["--plan"] if args.plan else [])]
    print(f"specforge-dpace: wrote {path}; running {' '.join(command[2:])}", file=sys.stderr)
    return subprocess.call(command)


def launch(args: argparse.Namespace) -> int:
    try:
        runtime, root = detect_runtime(args)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_legacy(args, root) if runtime == "legacy" else run_unified(args)
