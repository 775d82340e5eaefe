"""`specforge-dpace bench` validates every drafter against the real target before launching anything."""

import json

from specforge_dpace.cli import main
from tests._servable_variants import BY_NAME, build_bases, write_variant
from tests.bench._helpers import LOOPBACK


def _bench(tmp_path, target, drafter):
    return main(
        [
            "bench",
            "--target",
            str(target),
            "--drafter",
            f"d={drafter}",
            "--chat-template",
            "raw",
            "--launcher",
            LOOPBACK,
            "--out",
            str(tmp_path / "out"),
        ]
    )


def test_a_drafter_the_target_cannot_feed_is_refused_before_launch(tmp_path, capsys):
    draft = write_variant(tmp_path, BY_NAME["good"], build_bases(tmp_path / "bases"))  # ids [1, 2]
    target = tmp_path / "target"
    target.mkdir()
    # A 3-layer target: id 2 is its last layer, which SGLang never captures (the draft says 4 layers).
    (target / "config.json").write_text(
        json.dumps({"model_type": "qwen3", "hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 3})
    )
    code = _bench(tmp_path, target, draft)
    err = capsys.readouterr().err
    assert code == 2 and "id 2 is the last decoder layer" in err and "within 0..1 for a 3-layer target" in err
    assert not (tmp_path / "out" / "logs").exists()  # nothing was launched
