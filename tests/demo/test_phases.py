"""Small phases are deterministic for a seed, and the objective really changes the drafter."""

from __future__ import annotations

import pytest
import torch

from specforge_dpace.demo._util import seed_everything
from specforge_dpace.demo.capture import capture_features
from specforge_dpace.demo.data import generate, sample_prompts
from specforge_dpace.demo.target import TargetConfig, build_target
from specforge_dpace.demo.train_drafter import DrafterConfig, train_drafter

LAYERS = [0, 1]


@pytest.fixture(scope="module")
def tiny():
    seed_everything(0, 1)
    cfg = TargetConfig(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=3,  # ids 0 and 1 are capturable (SGLang never captures the last layer)
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
        seed=3,
    )
    target = build_target(cfg).eval()
    docs = [torch.randint(0, 94, (60,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(4)]
    prompts = sample_prompts(docs, 6, 8, seed=0)
    ids, mask = generate(target, prompts, 16, show_progress=False)
    feats = capture_features(target, ids, LAYERS, show_progress=False)
    return target, prompts, ids, mask, feats


def test_prompt_sampling_is_seeded():
    docs = [list(range(i, i + 50)) for i in range(5)]
    assert sample_prompts(docs, 4, 8, 1) == sample_prompts(docs, 4, 8, 1)
    assert sample_prompts(docs, 4, 8, 1) != sample_prompts(docs, 4, 8, 2)
    with pytest.raises(ValueError, match="longer than prompt_len=80"):
        sample_prompts(docs, 1, 80, 0)


def test_generation_is_the_targets_greedy_continuation(tiny):
    target, prompts, ids, mask, _ = tiny
    assert ids.shape == (6, 24) and ids[:, :8].tolist() == prompts
    assert mask[:, :8].sum() == 0 and mask[:, 8:].min() == 1
    with torch.no_grad():  # a full forward over the result predicts the same greedy tokens
        pred = target(input_ids=ids).logits.argmax(-1)
    assert torch.equal(pred[:, 7:-1], ids[:, 8:])
    again, _ = generate(target, prompts, 16, show_progress=False)
    assert torch.equal(again, ids)


def test_capture_shape_and_layer_check(tiny):
    target, _, ids, _, feats = tiny
    assert feats.shape == (6, 24, 2 * 32)
    with pytest.raises(ValueError, match="target_layer_ids=\\[5\\] invalid"):
        capture_features(target, ids, [5], show_progress=False)


def _train(tiny, objective, seed=0):
    target, _, ids, mask, feats = tiny
    cfg = DrafterConfig(block_size=4, steps=3, batch_size=4, num_anchors=4, seed=seed)
    return train_drafter(
        target, ids, mask, feats, objective, cfg, target_layer_ids=LAYERS, mask_token_id=95, show_progress=False
    )


def test_drafter_training_is_deterministic_and_objective_dependent(tiny):
    d1, log1 = _train(tiny, "dpace")
    d2, log2 = _train(tiny, "dpace")
    d3, log3 = _train(tiny, "dflash(gamma=7)")
    s1, s2, s3 = d1.state_dict(), d2.state_dict(), d3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert log1["loss_curve"] == log2["loss_curve"]
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)
    assert log1["canonical_loss_type"] == "dpace"
    _, composite = _train(tiny, "dflash(gamma=10) + 0.3*first-error-focal + 40*chain")
    assert "chain" in composite["canonical_loss_type"]


def test_training_leaves_the_hook_state_as_found(tiny):
    import specforge_dpace

    before = specforge_dpace.is_installed()
    _train(tiny, "dpace")
    assert specforge_dpace.is_installed() == before


def test_capture_returns_the_last_hidden_state_from_the_same_pass(tiny):
    target, _, ids, _, feats = tiny
    again, last = capture_features(target, ids, LAYERS, show_progress=False, last_hidden=True)
    assert torch.equal(again, feats) and last.shape == (6, 24, 32)
    with torch.no_grad():  # the target's own head on it gives the target's logits: p is the target's
        torch.testing.assert_close(target.lm_head(last), target(input_ids=ids).logits)


@pytest.mark.parametrize("objective", ["lk-lambda", "dpace + 0.5*lk-lambda", "soft-dpace"])
def test_soft_objectives_train_with_the_last_hidden_state(tiny, objective):
    target, _, ids, mask, feats = tiny
    _, last = capture_features(target, ids, LAYERS, show_progress=False, last_hidden=True)
    cfg = DrafterConfig(block_size=4, steps=3, batch_size=4, num_anchors=4, seed=0)
    kwargs = dict(target_layer_ids=LAYERS, mask_token_id=95, show_progress=False)
    draft, log = train_drafter(target, ids, mask, feats, objective, cfg, target_last_hidden_states=last, **kwargs)
    assert all(torch.isfinite(torch.tensor(log["loss_curve"])))
    with pytest.raises(ValueError, match="target_last_hidden_states"):
        train_drafter(target, ids, mask, feats, objective, cfg, **kwargs)


def test_the_pipeline_captures_the_last_hidden_state_only_for_soft_objectives(tmp_path):
    from specforge_dpace.demo.pipeline import DemoConfig, DemoPipeline

    hard = DemoPipeline(tmp_path, DemoConfig(objectives=("dpace",)), show_progress=False, log=lambda _: None)
    soft = DemoPipeline(tmp_path, DemoConfig(objectives=("dpace", "kl")), show_progress=False, log=lambda _: None)
    hard.target_key = soft.target_key = "t"
    assert not hard.needs_target_hidden and soft.needs_target_hidden
    assert hard.features_key() != soft.features_key()


@pytest.mark.parametrize("objective", ["dpace", "chain"])  # SpecForge's own built-in / the plugin's objective
def test_a_non_finite_loss_stops_training_naming_the_objective_and_step(tiny, objective):
    """``lr`` inf (what ``--lr inf`` reached before it was refused at parse time): the first step makes the
    weights non-finite, the second step's loss is NaN.  Before, training went on and saved a NaN drafter."""
    from specforge_dpace._finite import NonFiniteTraining

    target, _, ids, mask, feats = tiny
    cfg = DrafterConfig(block_size=4, steps=3, batch_size=4, num_anchors=4, seed=0, lr=float("inf"))
    kwargs = dict(target_layer_ids=LAYERS, mask_token_id=95, show_progress=False)
    with pytest.raises(
        NonFiniteTraining, match=rf"objective '{objective}': the loss is nan.* at step 2 of 3 \(lr inf\)"
    ):
        train_drafter(target, ids, mask, feats, objective, cfg, **kwargs)
    _, log = train_drafter(target, ids, mask, feats, objective, cfg, allow_non_finite=True, **kwargs)
    assert [s["step"] for s in log["non_finite_steps"]] == [2, 3]  # the user opted in: recorded, not hidden


def test_non_finite_features_stop_training_at_the_first_step(tiny):
    from specforge_dpace._finite import NonFiniteTraining

    target, _, ids, mask, feats = tiny
    broken = feats.clone()
    broken[:, 3] = float("nan")  # a damaged feature file
    cfg = DrafterConfig(block_size=4, steps=3, batch_size=4, num_anchors=4, seed=0)
    kwargs = dict(target_layer_ids=LAYERS, mask_token_id=95, show_progress=False)
    with pytest.raises(NonFiniteTraining, match=r"objective 'dflash\(gamma=7\)': the loss is nan.*at step 1 of 3"):
        train_drafter(target, ids, mask, broken, "dflash(gamma=7)", cfg, **kwargs)


def test_a_cached_drafter_trained_through_non_finite_steps_needs_the_opt_in(tmp_path):
    from specforge_dpace._finite import NonFiniteTraining
    from specforge_dpace.demo.pipeline import DemoConfig, DemoPipeline

    log = {"non_finite_steps": [{"step": 2, "problem": "the loss is nan"}]}
    strict = DemoPipeline(tmp_path, DemoConfig(), show_progress=False, log=lambda _: None)
    with pytest.raises(NonFiniteTraining, match="trained through 1 non-finite step.*--allow-non-finite"):
        strict._refuse_non_finite("dpace", log, tmp_path)
    lenient = DemoPipeline(tmp_path, DemoConfig(allow_non_finite=True), show_progress=False, log=lambda _: None)
    lenient._refuse_non_finite("dpace", log, tmp_path)  # opted in: reused
