"""The legacy-layout hook against the stand-in ``specforge/core/dflash.py`` of each generation.

The stand-in (tests/hooks/legacy_standin) reproduces the legacy constructor signatures and
forward contracts; the draft model is a real tiny SpecForge ``DFlashDraftModel`` (sdpa, CPU).
Real checkouts: test_legacy_checkout.py (opt-in, tests/README.md).
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("specforge.modeling.draft.dflash")

from legacy_standin import GENERATIONS, build, dflash_source, load_dflash, run_forward, tiny_batch, tiny_parts

from specforge_dpace.hooks import _legacy
from specforge_dpace.losses import build_loss

_counter = itertools.count()


def _fresh(tmp_path, generation, source=None):
    path = tmp_path / f"dflash_{next(_counter)}.py"
    path.write_text(source or dflash_source(generation))
    return load_dflash(path, f"legacy_standin_{generation.replace('-', '_')}_{next(_counter)}")


@pytest.fixture
def parts():
    return tiny_parts()


@pytest.fixture
def batch():
    return tiny_batch()


def _own_names(module):
    return sorted(getattr(module, "_VALID_LOSS_TYPES", {"dflash"}))


def _ctor(module, name, **kwargs):
    return kwargs if name == "dflash" and not hasattr(module, "_VALID_LOSS_TYPES") else {"loss_type": name, **kwargs}


@pytest.mark.parametrize("generation", GENERATIONS)
def test_apply_is_idempotent_and_revert_restores_the_same_objects(tmp_path, generation):
    module = _fresh(tmp_path, generation)
    cls = module.OnlineDFlashModel
    init, forward = vars(cls)["__init__"], vars(cls)["forward"]
    record = _legacy.apply(module)
    assert len(record) > 0 and vars(cls)["__init__"] is not init and vars(cls)["forward"] is not forward
    patched_init = vars(cls)["__init__"]
    assert len(_legacy.apply(module)) == 0  # second apply records nothing new
    assert vars(cls)["__init__"] is patched_init
    _legacy.revert(module)
    assert vars(cls)["__init__"] is init and vars(cls)["forward"] is forward
    assert not hasattr(module, "_specforge_dpace_legacy_patches")
    _legacy.revert(module)  # reverting twice is a no-op
    assert vars(cls)["__init__"] is init


@pytest.mark.parametrize("generation", GENERATIONS)
def test_checkout_names_are_bit_identical_to_the_checkout(tmp_path, generation, parts, batch):
    module = _fresh(tmp_path, generation)
    cases = [(name, {}) for name in _own_names(module)] + [("dflash", {"loss_decay_gamma": 7.0})]
    if hasattr(module, "_VALID_LOSS_TYPES"):
        cases.append(("dpace", {"dpace_alpha": 0.2}))
    before = [run_forward(build(module, parts=parts, **_ctor(module, n, **kw)), batch) for n, kw in cases]
    _legacy.apply(module)
    try:
        for (name, kwargs), own in zip(cases, before):
            model = build(module, parts=parts, **_ctor(module, name, **kwargs))
            assert model._specforge_dpace_plan is None, name
            out = run_forward(model, batch)
            assert len(out) == len(own) == (3 if generation == "dpace-metrics" else 2)
            assert torch.equal(out[0], own[0]) and torch.equal(out[1], own[1]), (name, kwargs)
    finally:
        _legacy.revert(module)


def test_plugin_dpace_on_a_pre_dpace_checkout_matches_the_later_checkouts_own(tmp_path, parts, batch):
    later = _fresh(tmp_path, "dpace")
    earlier = _fresh(tmp_path, "pre-dpace")
    _legacy.apply(earlier)
    for name in ("dpace", "dpace-cumulative-confidence-only", "dpace-continuation-value-only"):
        own = run_forward(build(later, name, parts=parts, dpace_alpha=0.3), batch)
        model = build(earlier, name, parts=parts, dpace_alpha=0.3)
        assert model.loss_type == model._specforge_dpace_plan.spec == f"{name}(alpha=0.3)"
        plugin = run_forward(model, batch)
        torch.testing.assert_close(plugin[0], own[0], rtol=1e-6, atol=1e-6)
        assert torch.equal(plugin[1], own[1])


@pytest.mark.parametrize("generation", GENERATIONS)
def test_registered_objectives_and_composites_run_with_gradients(tmp_path, generation, parts, batch):
    module = _fresh(tmp_path, generation)
    _legacy.apply(module)
    values = {}
    for spec in ("dflash(gamma=7)", "first-error-focal", "chain", "auf"):
        model = build(module, spec, parts=parts)
        if spec.startswith("dflash"):  # the checkout's own dflash with its decay
            assert model._specforge_dpace_plan.passthrough and model.loss_decay_gamma == 7
        else:
            assert model.loss_type == build_loss(spec).spec() and not model._specforge_dpace_plan.passthrough
        out = run_forward(model, batch)
        assert out[0].ndim == 0 and torch.isfinite(out[0])
        values[spec] = out[0].detach()
    composite = build(module, "dflash(gamma=7) + 0.3*first-error-focal + 40*chain", parts=parts)
    parts[0].zero_grad(set_to_none=True)
    out = run_forward(composite, batch)
    expected = values["dflash(gamma=7)"] + 0.3 * values["first-error-focal"] + 40 * values["chain"]
    torch.testing.assert_close(out[0].detach(), expected, rtol=1e-5, atol=1e-6)
    out[0].backward()
    grads = [p.grad for p in parts[0].parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_registry_dflash_equals_the_checkouts_decayed_dflash(tmp_path, parts, batch):
    # Forced through the plugin by a composite weight; differs from the checkout only by its +1e-6.
    module = _fresh(tmp_path, "dpace")
    own = run_forward(build(module, "dflash", parts=parts, loss_decay_gamma=7.0), batch)[0]
    _legacy.apply(module)
    doubled = run_forward(build(module, "2*dflash(gamma=7)", parts=parts), batch)[0]
    torch.testing.assert_close(doubled / 2, own, rtol=1e-5, atol=1e-7)


def test_loss_options_and_process_defaults(tmp_path, parts, batch):
    module = _fresh(tmp_path, "pre-dpace")
    _legacy.apply(module)
    model = build(module, "dpace", parts=parts, loss_options={"alpha": 0.25})
    assert model._specforge_dpace_plan.objective.alpha == 0.25 and model.loss_options == {"alpha": 0.25}
    with _legacy.objective_defaults(loss_type="chain"):
        assert build(module, parts=parts).loss_type == "chain"  # the pre-D-PACE script passes no loss_type
        assert build(module, "dflash", parts=parts)._specforge_dpace_plan is None  # explicit wins
    assert getattr(build(module, parts=parts), "_specforge_dpace_plan", None) is None


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"loss_type": "no-such-loss"}, ValueError, "dpace"),  # lists registered names
        ({"loss_type": "dpace", "loss_options": {"fused": True}}, ValueError, "unified runtime"),
        ({"loss_type": "dpace(alpha=0.3)", "dpace_alpha": 0.7}, ValueError, "conflicts"),
        ({"loss_type": "dpace", "loss_options": {"beta": 1}}, ValueError, "beta"),
    ],
)
def test_bad_objectives_fail_with_clear_errors(tmp_path, parts, kwargs, error, fragment):
    module = _fresh(tmp_path, "dpace")
    _legacy.apply(module)
    with pytest.raises(error, match=fragment):
        build(module, parts=parts, **kwargs)


def test_checkout_only_names_pass_through(tmp_path, parts, batch):
    module = _fresh(tmp_path, "dpace-metrics")
    own = run_forward(build(module, "checkout-uniform-ce", parts=parts), batch)
    _legacy.apply(module)
    out = run_forward(build(module, "checkout-uniform-ce", parts=parts), batch)
    assert torch.equal(out[0], own[0]) and out[2].keys() == own[2].keys()


def test_unrecognized_forward_layouts_are_refused(tmp_path, parts, batch):
    no_anchors = dflash_source("pre-dpace").replace("_sample_anchor_positions", "_draw_blocks")
    module = _fresh(tmp_path, "pre-dpace", no_anchors)
    _legacy.apply(module)
    build(module, "dflash", parts=parts)  # the checkout's own loss still works
    with pytest.raises(RuntimeError, match="anchor"):
        build(module, "dpace", parts=parts)

    mean_ce = dflash_source("dpace").replace(
        'F.cross_entropy(flat_logits, flat_targets, reduction="none")',
        'F.cross_entropy(flat_logits, flat_targets, reduction="none") * 1.0 + 0 * F.cross_entropy(flat_logits, '
        'flat_targets, reduction="none")',
    )
    module = _fresh(tmp_path, "dpace", mean_ce)
    _legacy.apply(module)
    with pytest.raises(RuntimeError, match="per-token cross-entropies"):
        run_forward(build(module, "chain", parts=parts), batch)
    assert module.F is torch.nn.functional  # restored after the failed forward


def test_the_lead_dispatcher_applies_and_uninstalls_the_legacy_target(tmp_path):
    from specforge_dpace import hooks

    if hooks.installed_targets():
        pytest.skip("other hook targets are installed in this process; uninstall() would revert them too")
    module = _fresh(tmp_path, "dpace")
    original = vars(module.OnlineDFlashModel)["__init__"]
    hooks.apply_target("legacy-model", module)
    try:
        assert getattr(vars(module.OnlineDFlashModel)["__init__"], _legacy.MARKER, False)
    finally:
        hooks.uninstall()
    assert vars(module.OnlineDFlashModel)["__init__"] is original


@pytest.mark.parametrize("autoload, patched", [("1", True), ("0", False)])
def test_automatic_activation_patches_a_checkout_on_import(tmp_path, autoload, patched):
    import os
    import subprocess
    import sys

    from legacy_standin import write_tree

    tree = write_tree(tmp_path / "checkout", "pre-dpace")
    code = (
        "import specforge.core.dflash as m\n"
        "init = m.OnlineDFlashModel.__init__\n"
        "print(bool(getattr(init, '__specforge_dpace_patched__', False)), m.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tree), "SPECFORGE_DPACE_AUTOLOAD": autoload}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    flag, path = proc.stdout.split()
    assert flag == str(patched) and path.startswith(str(tree))
