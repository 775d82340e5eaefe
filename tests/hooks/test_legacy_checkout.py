"""Opt-in: the legacy hook and patches/ against REAL legacy SpecForge checkouts (marker legacy_checkout).

``SPECFORGE_LEGACY_ROOT`` names one or more checkout roots separated by ``os.pathsep`` (see
tests/README.md for the exact commands).  The real package ``__init__`` imports sglang/triton, so
each ``specforge/core/dflash.py`` is loaded by file path; its one SpecForge import
(``specforge.modeling.draft.dflash.DFlashDraftModel``) comes from the installed unified package,
and the draft model is a real tiny ``DFlashDraftModel`` on CPU with sdpa.  Nothing is stubbed.
"""

from __future__ import annotations

import inspect
import os
import py_compile
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from legacy_standin import load_dflash, run_forward, tiny_batch, tiny_parts

from specforge_dpace.hooks import _legacy

REPO = Path(__file__).resolve().parents[2]
PATCHES = sorted((REPO / "patches").glob("legacy-*.diff"))
ROOTS = [Path(p) for p in os.environ.get("SPECFORGE_LEGACY_ROOT", "").split(os.pathsep) if p]
pytestmark = [
    pytest.mark.legacy_checkout,
    pytest.mark.skipif(not ROOTS, reason="set SPECFORGE_LEGACY_ROOT to legacy SpecForge checkout root(s)"),
]
PLUGIN_SPECS = ("dpace", "chain", "dflash(gamma=10) + 0.3*first-error-focal + 40*chain")


def _load(root: Path, tag: str):
    path = root / "specforge" / "core" / "dflash.py"
    assert path.is_file(), f"{root} has no specforge/core/dflash.py (not the legacy layout)"
    return load_dflash(path, f"legacy_checkout_{tag}_{abs(hash(str(root)))}")


def _sdpa(module) -> bool:
    return hasattr(module, "create_dflash_sdpa_mask")  # flex-only revisions cannot train on CPU


def _build(module, parts, **kwargs):
    params = inspect.signature(module.OnlineDFlashModel.__init__).parameters
    extra = {key: value for key, value in (("attention_backend", "sdpa"), ("num_anchors", 6)) if key in params}
    draft, head, embed = parts
    return module.OnlineDFlashModel(
        draft_model=draft,
        target_lm_head=head,
        target_embed_tokens=embed,
        mask_token_id=63,
        block_size=4,
        **extra,
        **kwargs,
    )


def _own_cases(module):
    names = sorted(getattr(module, "_VALID_LOSS_TYPES", None) or {"dflash"})
    has_loss_type = "loss_type" in inspect.signature(module.OnlineDFlashModel.__init__).parameters
    cases = [({"loss_type": n} if has_loss_type else {}) for n in names if n != "vp_drafter"]
    return cases + [{**cases[0], "loss_decay_gamma": 7.0}]


@pytest.mark.parametrize("root", ROOTS, ids=str)
def test_checkout_objectives_unchanged_and_plugin_objectives_run(root):
    module = _load(root, "hook")
    if not _sdpa(module):
        pytest.skip(f"{root}: no sdpa backend (before 2026-03-02); flex_attention has no CPU backward")
    parts, batch = tiny_parts(), tiny_batch()
    cases = _own_cases(module)
    own = [run_forward(_build(module, parts, **kwargs), batch) for kwargs in cases]
    cls = module.OnlineDFlashModel
    originals = (vars(cls)["__init__"], vars(cls)["forward"])
    _legacy.apply(module)
    try:
        for kwargs, expected in zip(cases, own):
            out = run_forward(_build(module, parts, **kwargs), batch)
            assert len(out) == len(expected)
            assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1]), kwargs
        for spec in PLUGIN_SPECS:
            model = _build(module, parts, loss_type=spec)
            out = run_forward(model, batch)
            assert torch.isfinite(out[0]) and len(out) == len(own[0])
            out[0].backward()
    finally:
        _legacy.revert(module)
    assert (vars(cls)["__init__"], vars(cls)["forward"]) == originals


def test_plugin_dpace_on_pre_dpace_checkouts_equals_dpace_checkouts_own():
    modules = [_load(root, "cross") for root in ROOTS]
    modules = [m for m in modules if _sdpa(m)]
    before = [m for m in modules if not hasattr(m, "_VALID_LOSS_TYPES")]
    after = [m for m in modules if "dpace" in getattr(m, "_VALID_LOSS_TYPES", ())]
    if not (before and after):
        pytest.skip("needs a pre-D-PACE and a D-PACE checkout in SPECFORGE_LEGACY_ROOT")
    parts, batch = tiny_parts(), tiny_batch()
    for name in ("dpace", "dpace-cumulative-confidence-only", "dpace-continuation-value-only"):
        reference = run_forward(_build(after[0], parts, loss_type=name, dpace_alpha=0.3), batch)
        for module in before:
            _legacy.apply(module)
            try:
                out = run_forward(_build(module, parts, loss_type=name, dpace_alpha=0.3), batch)
            finally:
                _legacy.revert(module)
            assert torch.equal(out[0], reference[0]), (name, out[0].item(), reference[0].item())  # bitwise
            assert torch.equal(out[1], reference[1])


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("root", ROOTS, ids=str)
def test_exactly_one_patch_applies_and_the_result_compiles(root, tmp_path):
    script = root / "scripts" / "train_dflash.py"
    if not script.is_file():
        pytest.skip(f"{root}: scripts/train_dflash.py was removed (2026-07-13 and later)")
    fits = []
    for patch in PATCHES:
        copy = tmp_path / patch.stem
        (copy / "scripts").mkdir(parents=True)
        shutil.copy(script, copy / "scripts" / "train_dflash.py")
        if subprocess.run(["git", "apply", str(patch)], cwd=copy, capture_output=True).returncode == 0:
            py_compile.compile(str(copy / "scripts" / "train_dflash.py"), doraise=True)
            fits.append(patch.name)
    assert len(fits) == 1, f"{root}: patches that apply: {fits}"
