"""The ``unified-composition`` hook: DFlash's data path carries ``target_last_hidden_states`` for soft objectives.

Real SpecForge 0.2.0 parts throughout: its config schema, ``resolve_run`` / ``bind_run``, the
registration checks (``make_registration``), the offline reader, feature store, loader, collator,
the DFlash step strategy and ``OnlineDFlashModel``.  Feature files come from a tiny real Qwen3
target decoding greedily, so a correctly aligned p agrees with every label (``teacher_agreement`` 1).
"""

from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("specforge")

# Import every patched SpecForge module up front (see test_unified_hook.py).
import specforge.algorithms.common.dflash_family_model  # noqa: E402,F401
import specforge.algorithms.model_providers  # noqa: E402,F401
import specforge.application  # noqa: E402,F401
import specforge.config.schema  # noqa: E402,F401

import specforge_dpace  # noqa: E402
from specforge_dpace import hooks  # noqa: E402
from specforge_dpace.hooks import _composition, _target_hidden  # noqa: E402
from specforge_dpace.hooks._blocks import MISSING_TARGET_HIDDEN  # noqa: E402
from specforge_dpace.hooks._blocks import TARGET_HIDDEN_KEY as MODEL_KEY  # noqa: E402

KEY = _target_hidden.TARGET_HIDDEN_KEY
HARD = ["dflash", "dpace", "chain", "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"]
SOFT = ["lk-lambda", "dpace + 0.5*lk-lambda", "soft-dpace", "renyi-half", "topk-kl(k=4)", "dflash(labels=target)"]
VOCAB, HIDDEN, BLOCK = 64, 32, 4


def _composition_module():
    from specforge.application import composition

    return composition


@pytest.fixture(autouse=True)
def _plugin_installed():
    specforge_dpace.install()
    yield
    specforge_dpace.install()


@pytest.fixture(scope="module")
def target():
    from specforge_dpace.evaluate import tiny_target

    model = tiny_target(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=3, seed=0)
    for module in (model.lm_head, model.model.embed_tokens):
        module.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def features(tmp_path_factory, target):
    """``(with_key_dir, without_key_dir)``: two greedy sequences (24 and 20 tokens), context layers 0 and 1."""
    root = tmp_path_factory.mktemp("features")
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, VOCAB - 1, (2, 4), generator=gen)
    with torch.no_grad():
        ids = target.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
        out = target(input_ids=ids, output_hidden_states=True)
    context = torch.cat([out.hidden_states[1], out.hidden_states[2]], dim=-1)
    for name, with_key in (("with", True), ("without", False)):
        (root / name).mkdir()
        for row, length in enumerate((24, 20)):
            mask = torch.ones(length, dtype=torch.long)
            mask[:4] = 0  # the prompt is not supervised
            payload = {"input_ids": ids[row, :length], "loss_mask": mask, "hidden_states": context[row, :length]}
            if with_key:
                payload[KEY] = out.hidden_states[-1][row, :length]
            torch.save(payload, root / name / f"sample_{row:08d}.ckpt")
    return root / "with", root / "without"


def _config(loss_type, hidden_states_path="no-such-features", strategy="dflash", **training):
    from specforge.config.schema import Config

    return Config.model_validate(
        {
            "model": {"target_model_path": "tiny-target", "draft_model_config": "draft/config.json"},
            "data": {"hidden_states_path": str(hidden_states_path), "max_length": 64},
            "training": {"strategy": strategy, "loss_type": loss_type, "attention_backend": "sdpa", **training},
        }
    )


def _registry():
    from specforge.algorithms.builtin import builtin_algorithm_registry

    return builtin_algorithm_registry()


def _batch(registration, path, max_len=64):
    from specforge.runtime.data_plane.feature_dataloader import FeatureDataLoader
    from specforge.runtime.data_plane.feature_store import LocalFeatureStore

    provider = registration.providers.offline_for("text")
    refs = provider.build_reader(str(path), run_id="t", ttt_length=7, max_len=max_len).read()
    loader = FeatureDataLoader(
        LocalFeatureStore("t"),
        refs=refs,
        batch_size=2,
        collate_fn=provider.build_collator(),
        per_sample_transform=provider.build_normalizer(max_len),
        drop_last=False,
        strategy=registration.name,
    )
    return next(iter(loader))


def _model(target, loss_type, seed=7):
    from specforge.algorithms.common.dflash_family_model import OnlineDFlashModel

    from specforge_dpace.evaluate import tiny_draft

    draft = tiny_draft(target, block_size=BLOCK, target_layer_ids=[0, 1], seed=seed).train()
    return OnlineDFlashModel(
        draft_model=draft,
        target_lm_head=target.lm_head,
        target_embed_tokens=target.model.embed_tokens,
        mask_token_id=VOCAB - 1,
        block_size=BLOCK,
        attention_backend="sdpa",
        num_anchors=6,
        objective_chunk_blocks=2,
        loss_type=loss_type,
    )


def _train_step(registration, batch, model):
    strategy = registration.providers.step.build(model)
    torch.manual_seed(11)  # anchors are sampled
    out = strategy.forward_loss(batch)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.draft_model.parameters() if p.grad is not None]
    return out, grads


def test_the_key_is_the_one_the_model_reads():
    assert KEY == MODEL_KEY == "target_last_hidden_states"
    assert KEY in MISSING_TARGET_HIDDEN


def test_apply_is_idempotent_and_revert_restores_the_same_objects():
    import specforge.application as package

    composition = _composition_module()
    hooks.uninstall()
    try:
        original = composition.bind_run
        assert not getattr(original, _composition.MARKER, False) and package.bind_run is original
        record = _composition.apply(composition)
        patched = composition.bind_run
        assert len(record) == 2 and patched is not original and package.bind_run is patched
        assert len(_composition.apply(composition)) == 0 and composition.bind_run is patched  # no-op
        record.revert()
        assert composition.bind_run is original and package.bind_run is original
    finally:
        specforge_dpace.install()
    assert "unified-composition" in hooks.installed_targets()
    assert getattr(composition.bind_run, _composition.MARKER, False)


@pytest.mark.parametrize("loss_type", HARD)
def test_hard_objectives_get_specforges_own_registration_object(loss_type, features):
    registry = _registry()
    plain = registry.resolve("dflash")
    resolved = _composition_module().resolve_run(_config(loss_type, features[1]), registry)
    assert resolved.algorithm is plain  # features without the key are fine: nothing asks for it


@pytest.mark.parametrize("strategy", ["dspark"])  # eagle3 refuses a DFlash loss_type at validation; domino:
def test_other_strategies_are_left_alone(strategy):  # tests/hooks/test_method_data.py
    registry = _registry()
    own = registry.resolve(strategy)
    assert _composition.registration_for(_config("lk-lambda", strategy=strategy), own) is own


@pytest.mark.parametrize("loss_type", SOFT)
def test_soft_objectives_get_a_registration_that_carries_the_key(loss_type, features):
    from specforge.algorithms.contracts import FeatureMode

    registry = _registry()
    plain = registry.resolve("dflash")
    got = _composition_module().resolve_run(_config(loss_type, features[0]), registry).algorithm
    assert got is not plain and got.name == "dflash" and _target_hidden.carries_target_hidden(got)
    for contract in got.spec.feature_contracts:
        assert contract.required_tensors == {"input_ids", "loss_mask", "hidden_states", KEY}
        assert contract.default_target_representation == "hidden_state"
        if contract.mode is FeatureMode.OFFLINE:
            assert contract.storage.required_tensors == contract.required_tensors
    offline, streaming = got.providers.offline_for("text"), got.providers.server_streaming_for("text")
    assert offline.capture_layout.output_names == ("input_ids", "loss_mask", "hidden_states", KEY)
    assert offline.capture_layout.capture_method == streaming.capture_method == "dflash"
    assert streaming.layout.last_hidden_feature == KEY and streaming.target_representation == "hidden_state"
    # Everything else is DFlash's own, and SpecForge's plain registration is untouched.
    assert got.providers.model is plain.providers.model and got.spec.draft is plain.spec.draft
    assert got.providers.step.resume_contract is plain.providers.step.resume_contract
    assert plain.providers.offline_for("text").capture_layout.last_hidden_feature is None
    assert KEY not in plain.spec.feature_contracts[0].required_tensors
    assert _target_hidden.with_target_hidden(got) is got  # deriving twice changes nothing


def test_the_worker_rebind_keeps_the_derived_registration(features):
    """``specforge train`` workers call ``bind_run(role_config, resolved.algorithm)`` again."""
    from specforge.application import bind_run

    cfg = _config("lk-lambda", features[0])
    first = _composition_module().resolve_run(cfg).algorithm
    assert bind_run(cfg, first).algorithm is first


@pytest.mark.parametrize("loss_type", HARD)
def test_hard_objectives_train_bit_identically_with_and_without_the_hook(loss_type, target, features):
    """The whole offline data path and one training step, with the composition hook applied vs reverted."""
    composition = _composition_module()
    runs = []
    for applied in (False, True):
        hooks.uninstall()
        for hook in hooks.TARGETS:  # every unified target, the composition hook only in the second run
            if hook.layout == hooks.UNIFIED and (applied or hook.name != "unified-composition"):
                hooks.apply_target(hook.name, importlib.import_module(hook.module))
        assert hooks.is_installed("unified-composition") is applied
        try:
            registration = composition.resolve_run(_config(loss_type, features[0])).algorithm
            batch = _batch(registration, features[0])
            runs.append((set(batch.tensors), *_train_step(registration, batch, _model(target, loss_type))))
        finally:
            specforge_dpace.install()
    (keys_a, out_a, grads_a), (keys_b, out_b, grads_b) = runs
    assert keys_a == keys_b == {"input_ids", "loss_mask", "hidden_states"}  # the file's extra key is not read
    assert torch.equal(out_a.loss, out_b.loss)
    assert grads_a and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_builtin_name_matches_unpatched_specforge(target, features):
    composition = _composition_module()
    runs = []
    for patched in (False, True):
        hooks.uninstall()
        if patched:
            specforge_dpace.install()
        try:
            registration = composition.resolve_run(_config("dpace", features[0])).algorithm
            batch = _batch(registration, features[0])
            runs.append(_train_step(registration, batch, _model(target, "dpace")))
        finally:
            specforge_dpace.install()
    (out_a, grads_a), (out_b, grads_b) = runs
    assert torch.equal(out_a.loss, out_b.loss) and torch.equal(out_a.loss_terms[0], out_b.loss_terms[0])
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize(
    "loss_type", ["lk-lambda", "dpace + 0.5*lk-lambda", "dpace(labels=target) + 0.5*renyi-half; normalize=true"]
)
def test_soft_objectives_train_through_specforges_offline_data_path(loss_type, target, features):
    registration = _composition_module().resolve_run(_config(loss_type, features[0])).algorithm
    batch = _batch(registration, features[0])
    saved = [torch.load(path, weights_only=True) for path in sorted(features[0].glob("*.ckpt"))]
    assert batch.tensors[KEY].shape == (2, 24, HIDDEN)
    for row, record in enumerate(saved):  # the collator pads the shorter sample with zeros
        length = record["input_ids"].numel()
        assert torch.equal(batch.tensors[KEY][row, :length], record[KEY])
        assert not batch.tensors[KEY][row, length:].any()
    model = _model(target, loss_type)
    out, grads = _train_step(registration, batch, model)
    assert torch.isfinite(out.loss) and grads
    ratio = out.ratio_metrics
    agree_num, agree_den = ratio["teacher_agreement"]
    assert agree_den.item() > 0 and agree_num.item() == agree_den.item()  # aligned p: greedy labels agree
    assert 1.0 <= (ratio["soft_tau"][0] / ratio["soft_tau"][1]).item() <= BLOCK
    assert out.loss_terms is not None and out.loss_terms[0].requires_grad
    assert model.loss_type == _target_hidden.soft_spec(_config(loss_type).training)  # the resume contract's spec


def test_a_soft_objective_on_features_without_the_key_is_refused_at_resolve_time(features):
    with pytest.raises(ValueError) as caught:
        _composition_module().resolve_run(_config("dpace + 0.5*lk-lambda", features[1]))
    message = str(caught.value)
    assert "training.loss_type='dpace + 0.5*lk-lambda'" in message and f"no '{KEY}'" in message
    assert "capture_offline_features(" in message and "last_hidden=True" in message
    assert "make_tiny_setup.py" in message and str(features[1]) in message
    # The same directory as eval features is checked too.
    with pytest.raises(ValueError, match="data.eval_hidden_states_path"):
        cfg = _config("lk-lambda", features[0])
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval_hidden_states_path": str(features[1])})})
        _composition_module().resolve_run(cfg)


def test_the_step_names_the_key_when_a_batch_lacks_it(target, features):
    registration = _composition_module().resolve_run(_config("lk-lambda", features[0])).algorithm
    plain = _registry().resolve("dflash")
    batch = _batch(plain, features[0])  # DFlash's own reader leaves the key out
    strategy = registration.providers.step.build(_model(target, "lk-lambda"))
    with pytest.raises(ValueError, match=f"no '{KEY}'.*last_hidden=True"):
        strategy.forward_loss(batch)


def test_the_normalizer_checks_shape_and_length():
    raw = {
        "input_ids": torch.arange(10),
        "loss_mask": torch.ones(10, dtype=torch.long),
        "hidden_states": torch.zeros(10, 8),
        KEY: torch.zeros(1, 10, 4),
    }
    out = _target_hidden.normalize_offline_sample(raw, max_len=6)
    assert out[KEY].shape == (1, 6, 4) and out["input_ids"].shape == (1, 6)
    with pytest.raises(ValueError, match=f"mismatched sequence lengths.*{KEY}=9"):
        _target_hidden.normalize_offline_sample({**raw, KEY: torch.zeros(9, 4)}, max_len=64)
    with pytest.raises(ValueError, match=rf"{KEY} must have shape \[seq, hidden\]"):
        _target_hidden.normalize_offline_sample({**raw, KEY: torch.zeros(10)}, max_len=64)
    with pytest.raises(ValueError, match=f"lack '{KEY}'.*last_hidden=True"):
        _target_hidden.normalize_offline_sample({k: v for k, v in raw.items() if k != KEY}, max_len=64)


def test_specforges_local_capture_plan_persists_the_key_for_soft_objectives(tmp_path, target):
    """``resolve_offline_capture`` (SpecForge's feature-preparation planner) goes through the same bind_run."""
    import json

    from specforge.application import resolve_offline_capture

    draft = tmp_path / "draft.json"
    draft.write_text(
        json.dumps(
            {
                "architectures": ["DFlashDraftModel"],
                "model_type": "qwen3",
                "vocab_size": VOCAB,
                "hidden_size": HIDDEN,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "intermediate_size": 64,
                "block_size": BLOCK,
                "num_target_layers": 3,
                "dflash_config": {"target_layer_ids": [0, 1], "mask_token_id": VOCAB - 1},
            }
        )
    )
    (tmp_path / "features").mkdir()
    layouts = {}
    for loss_type in ("dpace", "lk-lambda"):
        cfg = _config(loss_type, tmp_path / "features")
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"draft_model_config": str(draft)})})
        plan = resolve_offline_capture(cfg, target_config=target.config)
        assert plan.capture_method == "dflash" and plan.capture_layers == (0, 1)
        layouts[loss_type] = plan.layout
    sources = {"input_ids": 1, "loss_mask": 2, "aux_hidden_states": 3, "last_hidden_states": 4}
    assert layouts["dpace"].materialize(sources) == {"input_ids": 1, "loss_mask": 2, "hidden_states": 3}
    assert layouts["lk-lambda"].materialize(sources) == {"input_ids": 1, "loss_mask": 2, "hidden_states": 3, KEY: 4}


@pytest.mark.parametrize("loss_type", ["dflash", "dpace", "lk-lambda"])
def test_a_dspark_run_on_features_without_the_key_is_refused_at_resolve_time(features, loss_type):
    """DSpark's own data path reads the key whatever the objective; before, such a run died in SpecForge's
    reader with a 48-line traceback (also with a hard objective), the pre-check not looking."""
    with pytest.raises(ValueError) as caught:
        _composition_module().resolve_run(_config(loss_type, features[1], strategy="dspark"))
    message = str(caught.value)
    assert "training.strategy='dspark' trains against the target's distribution p whatever the objective" in message
    assert f"training.loss_type={loss_type!r}" in message and f"no '{KEY}'" in message and str(features[1]) in message
    assert "last_hidden=True" in message and "hard objective" not in message  # no way out through the objective
    resolved = _composition_module().resolve_run(_config(loss_type, features[0], strategy="dspark"))
    assert resolved.algorithm.name == "dspark"  # with the key: SpecForge's own DSpark registration
