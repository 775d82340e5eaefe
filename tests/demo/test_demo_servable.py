"""The demo writes drafters SGLang can serve: its default layer ids on its shipped target pass the
bench validator (and the evaluator's loader) against that target."""

from __future__ import annotations

import pytest

from specforge_dpace.bench.validate import validate_draft_dir
from specforge_dpace.demo import assets_dir
from specforge_dpace.demo.pipeline import DemoConfig, DemoPipeline
from specforge_dpace.servable import capturable_layer_ids


def test_default_layer_ids_are_capturable_on_the_shipped_target():
    import json

    n_layers = json.loads((assets_dir() / "config.json").read_text())["num_hidden_layers"]
    assert set(DemoConfig().target_layer_ids) <= set(capturable_layer_ids(n_layers))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-servable")
    config = DemoConfig(
        objectives=("dpace",),
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
    return out, pipe


def test_a_demo_drafter_passes_the_validator_against_the_demo_target(demo_run):
    out, pipe = demo_run
    drafters = sorted(p for p in (out / "drafters").iterdir() if (p / "config.json").is_file())
    assert len(drafters) == 1
    info = validate_draft_dir(drafters[0], target=assets_dir())
    assert info.target_checked and info.target_layer_ids == [1, 2] and info.notes == []
    assert info.block_size == 4 and info.mask_token_id == pipe.special["mask"]


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
