"""The demo writes drafters SGLang can serve: its default layer ids on its shipped target pass the
bench validator (and the evaluator's loader) against that target, and its Domino and DSpark drafters are
written in the layout SGLang 0.5.23 loads (``specforge_dpace.serving``)."""

from __future__ import annotations

import pytest

from specforge_dpace.bench.validate import validate_draft_dir
from specforge_dpace.demo import assets_dir
from specforge_dpace.demo.pipeline import DemoConfig, DemoPipeline
from specforge_dpace.serving import capturable_layer_ids


def test_default_layer_ids_are_capturable_on_the_shipped_target():
    import json

    n_layers = json.loads((assets_dir() / "config.json").read_text())["num_hidden_layers"]
    assert set(DemoConfig().target_layer_ids) <= set(capturable_layer_ids(n_layers))


def tiny_demo(out, method: str = "dflash"):
    """A demo run on a tiny budget (seconds), returning its pipeline."""
    config = DemoConfig(
        objectives=("dpace",),
        method=method,
        num_train_seqs=8,
        gen_len=24,
        steps=2,
        batch_size=4,
        num_anchors=4,
        block_size=4,
        eval_prompts=1,
        eval_max_new_tokens=4,
        threads=1,
    )
    pipe = DemoPipeline(out, config, show_progress=False, log=lambda message: None)
    pipe.run()
    return pipe


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-servable")
    return out, tiny_demo(out)


def _drafter(out):
    drafters = sorted(p for p in (out / "drafters").iterdir() if (p / "config.json").is_file())
    assert len(drafters) == 1
    return drafters[0]


@pytest.mark.parametrize("server", ["sglang-0.5.14", "sglang-0.5.23"])
def test_a_demo_drafter_passes_the_validator_against_the_demo_target(demo_run, server):
    out, pipe = demo_run
    info = validate_draft_dir(_drafter(out), target=assets_dir(), server=server)
    assert info.target_checked and info.target_layer_ids == [1, 2] and info.notes == []
    assert info.block_size == 4 and info.mask_token_id == pipe.special["mask"]


@pytest.mark.parametrize("method", ["domino", "dspark"])
def test_demo_domino_and_dspark_drafters_pass_sglang_0_5_23(tmp_path, method):
    """SGLang 0.5.23 serves Domino as DFLASH + projector_type domino (pure_draft_prefix_len 1, a boolean
    shift_label) and DSpark with its Markov / confidence fields at the top level; 0.5.14 serves neither."""
    import json

    from specforge_dpace.bench.validate import DraftValidationError

    pipe = tiny_demo(tmp_path, method)
    path = _drafter(tmp_path)
    config = json.loads((path / "config.json").read_text())
    for mode in ("static", "cap-accept"):  # a confidence head is built (and loaded) outside the static mode
        info = validate_draft_dir(
            path, target=assets_dir(), server="sglang-0.5.23", options={"ragged_verify_mode": mode}
        )
        assert info.method == method and info.mask_token_id == pipe.special["mask"]
    if method == "domino":
        assert config["architectures"] == ["DFlashDraftModel"]
        assert config["dflash_config"]["projector_type"] == "domino"
        assert config["dflash_config"]["pure_draft_prefix_len"] == 1 and config["dflash_config"]["shift_label"] is False
    else:
        assert config["architectures"] == ["DSparkDraftModel"] and config["markov_rank"] > 0
        assert config["markov_head_type"] == "vanilla" and config["enable_confidence_head"] is True
        assert config["confidence_head_with_markov"] is False
    with pytest.raises(DraftValidationError, match="sglang-0.5.14 does not serve"):
        validate_draft_dir(path, target=assets_dir(), server="sglang-0.5.14")


def test_the_old_default_is_refused_by_the_demo_capture():
    """(1, 3) was the default before: id 3 is the shipped 4-layer target's last layer, never captured."""
    import torch

    from specforge_dpace.demo.capture import capture_features
    from specforge_dpace.demo.target import load_target_dir

    target = load_target_dir(assets_dir())
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"id 3 is the last decoder layer.*Accepted: .*within 0\.\.2"):
        capture_features(target, ids, (1, 3), show_progress=False)
    assert capture_features(target, ids, (1, 2), show_progress=False).shape == (1, 4, 2 * target.config.hidden_size)
