"""Domino with a soft-label objective: its data path carries ``target_last_hidden_states`` (real SpecForge parts).

The composition hook derives from SpecForge's Domino registration one that reads, collates and feeds the
key (the DFlash derivation of ``_target_hidden``, generalized by strategy); its step is SpecForge's
``DominoTrainStrategy`` (``lambda_base`` schedule included) whose model call also gets the key.  DSpark's
own registration carries the key already and is never swapped.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

import specforge.algorithms.common.dflash_family_model  # noqa: E402,F401  (see test_unified_hook)
import specforge.algorithms.domino.providers  # noqa: E402,F401
import specforge.algorithms.model_providers  # noqa: E402,F401
import specforge.application  # noqa: E402,F401
import specforge.config.schema  # noqa: E402,F401
from _tiny_methods import HIDDEN, tiny_domino  # noqa: E402

import specforge_dpace  # noqa: E402
from specforge_dpace.hooks import _target_hidden  # noqa: E402

KEY = _target_hidden.TARGET_HIDDEN_KEY


@pytest.fixture(autouse=True)
def _plugin_installed():
    specforge_dpace.install()
    yield
    specforge_dpace.install()


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """``(with_key, without_key)`` directories: the tiny target's greedy continuation (24 and 20 tokens), context
    features of width 2 * HIDDEN, the last hidden state under the key in the first one."""
    _, batch = tiny_domino(greedy=True)
    root = tmp_path_factory.mktemp("domino_features")
    for name, with_key in (("with", True), ("without", False)):
        (root / name).mkdir()
        for row, length in enumerate((24, 20)):
            mask = torch.ones(length, dtype=torch.long)
            mask[:4] = 0
            payload = {
                "input_ids": batch["input_ids"][row, :length],
                "loss_mask": mask,
                "hidden_states": batch["hidden_states"][row, :length],
            }
            if with_key:
                payload[KEY] = batch["target_last_hidden_states"][row, :length]
            torch.save(payload, root / name / f"sample_{row:08d}.ckpt")
    return root / "with", root / "without"


def _config(loss_type, path="no-such-features", strategy="domino"):
    from specforge.config.schema import Config

    return Config.model_validate(
        {
            "model": {"target_model_path": "tiny-target", "draft_model_config": "draft/config.json"},
            "data": {"hidden_states_path": str(path), "max_length": 64},
            "training": {"strategy": strategy, "loss_type": loss_type, "attention_backend": "sdpa"},
        }
    )


def _resolve(cfg):
    from specforge.application import composition

    return composition.resolve_run(cfg).algorithm


def _batch(registration, path):
    from specforge.runtime.data_plane.feature_dataloader import FeatureDataLoader
    from specforge.runtime.data_plane.feature_store import LocalFeatureStore

    provider = registration.providers.offline_for("text")
    refs = provider.build_reader(str(path), run_id="t", ttt_length=7, max_len=64).read()
    loader = FeatureDataLoader(
        LocalFeatureStore("t"),
        refs=refs,
        batch_size=2,
        collate_fn=provider.build_collator(),
        per_sample_transform=provider.build_normalizer(64),
        drop_last=False,
        strategy=registration.name,
    )
    return next(iter(loader))


def test_hard_objectives_keep_dominos_own_registration(features):
    from specforge.algorithms.builtin import builtin_algorithm_registry

    registry = builtin_algorithm_registry()
    from specforge.application import composition

    for loss_type in ("dflash", "dpace", "dpace + 0.3*first-error-focal"):
        assert composition.resolve_run(_config(loss_type, features[1]), registry).algorithm is registry.resolve(
            "domino"
        )


def test_dspark_keeps_its_own_registration(features):
    from specforge.algorithms.builtin import builtin_algorithm_registry
    from specforge.application import composition

    registry = builtin_algorithm_registry()
    got = composition.resolve_run(_config("lk-lambda", features[0], strategy="dspark"), registry).algorithm
    assert got is registry.resolve("dspark")


@pytest.mark.parametrize("loss_type", ["lk-lambda", "dpace + 0.5*lk-lambda"])
def test_soft_objectives_get_a_domino_registration_that_carries_the_key(loss_type, features):
    from specforge.algorithms.builtin import builtin_algorithm_registry

    plain = builtin_algorithm_registry().resolve("domino")
    got = _resolve(_config(loss_type, features[0]))
    assert got.name == "domino" and got is not plain and _target_hidden.carries_target_hidden(got)
    for contract in got.spec.feature_contracts:
        assert contract.required_tensors == {"input_ids", "loss_mask", "hidden_states", KEY}
    offline = got.providers.offline_for("text")
    assert offline.capture_layout.output_names == ("input_ids", "loss_mask", "hidden_states", KEY)
    assert got.providers.model == plain.providers.model
    assert got.providers.step.resume_contract is plain.providers.step.resume_contract  # the patched one
    assert got.providers.step.options is plain.providers.step.options


def test_the_step_is_dominos_with_its_schedule_and_the_key_reaches_the_model(features):
    from specforge.training.strategies.base import DominoTrainStrategy, StepContext

    registration = _resolve(_config("lk-lambda", features[0]))
    batch = _batch(registration, features[0])
    assert batch.tensors[KEY].shape == (2, 24, HIDDEN)
    model, _ = tiny_domino(loss_type="lk-lambda")
    step = registration.providers.step.build(model, lambda_start=0.8, decay_ratio=0.5)
    assert isinstance(step, DominoTrainStrategy) and (step.lambda_start, step.decay_ratio) == (0.8, 0.5)
    torch.manual_seed(3)
    out = step.forward_loss(batch, StepContext(global_step=1, total_steps=4))
    out.loss.backward()
    assert torch.isfinite(out.loss) and step.domino_model is model
    assert out.metrics["lambda_base"].item() == pytest.approx(0.4)  # SpecForge's linear schedule
    assert out.metrics["teacher_agreement"].item() == 1.0  # greedy data, aligned p
    assert any(p.grad is not None for p in model.draft_model.prefix_gru.parameters())


def test_features_without_the_key_are_refused_before_training(features):
    with pytest.raises(ValueError, match=f"training.loss_type='lk-lambda' is a soft-label objective.*no '{KEY}'"):
        _resolve(_config("lk-lambda", features[1]))


def test_the_domino_step_names_the_key_when_a_batch_lacks_it(features):
    from specforge.algorithms.builtin import builtin_algorithm_registry

    registration = _resolve(_config("lk-lambda", features[0]))
    batch = _batch(builtin_algorithm_registry().resolve("domino"), features[0])  # Domino's own reader drops it
    step = registration.providers.step.build(tiny_domino(loss_type="lk-lambda")[0])
    with pytest.raises(ValueError, match=f"domino batch has no '{KEY}'.*last_hidden=True"):
        step.forward_loss(batch)
