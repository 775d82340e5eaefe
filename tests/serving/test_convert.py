"""``specforge-dpace convert``: SpecForge's ``export --to hf`` layout (written here by SpecForge's own
``save_pretrained`` + ``apply_legacy_rope_scaling``, what ``specforge/export/to_hf.py`` runs after reading its
training checkpoint) and plugin-trained drafters, rewritten in the layout a server version loads, refused with
the reasons when it cannot serve them.  Real SpecForge classes and safetensors files."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("specforge")

from specforge_dpace import serving  # noqa: E402
from specforge_dpace.cli import main  # noqa: E402
from specforge_dpace.evaluate import (  # noqa: E402
    EvalConfig,
    evaluate_drafter,
    load_draft,
    save_draft_checkpoint,
    tiny_draft,
    tiny_target,
)
from specforge_dpace.serving._convert import convert  # noqa: E402

TARGET = {"hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 4}


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=4, seed=0)


def specforge_export(draft, path):
    """The directory SpecForge's export --to hf writes for a materialized draft model."""
    from specforge.export.checkpoint_io import apply_legacy_rope_scaling

    draft.save_pretrained(str(path))
    apply_legacy_rope_scaling(str(path))
    return path


def _draft(target, method, head=None):
    draft = tiny_draft(target, block_size=4, target_layer_ids=[1, 2], method=method, head=head, seed=3)
    with torch.no_grad():
        for name, param in draft.named_parameters():
            if name.startswith(("embed_proj.", "markov_head.")):
                param.mul_(8.0)
    return draft


@pytest.mark.parametrize("method, head", [("dflash", None), ("domino", {"pure_draft_prefix_len": 1}), ("dspark", None)])
def test_a_specforge_export_becomes_what_sglang_0_5_23_loads(tmp_path, target, method, head):
    draft = _draft(target, method, head)
    source = specforge_export(draft, tmp_path / "export")
    assert json.loads((source / "config.json").read_text())["architectures"] == [serving.ARCHITECTURES[method]]
    done = convert(source, tmp_path / "served", server="sglang-0.5.23", target=TARGET)
    layout = "sglang-0.5.23" if method == "dflash" else "specforge-0.2.0"  # one DFlash layout serves both
    assert (done.method, done.source_rules, done.rules) == (method, layout, "sglang-0.5.23")
    config = json.loads((tmp_path / "served" / "config.json").read_text())
    if method == "domino":
        assert config["architectures"] == ["DFlashDraftModel"] and done.launch[:2] == [
            "--speculative-algorithm",
            "DFLASH",
        ]
        assert config["dflash_config"]["projector_type"] == "domino" and config["dflash_config"]["shift_label"] is False
    elif method == "dspark":
        assert config["architectures"] == ["DSparkDraftModel"] and done.launch[:2] == [
            "--speculative-algorithm",
            "DSPARK",
        ]
        assert (config["markov_rank"], config["markov_head_type"]) == (16, "vanilla")
        assert config["enable_confidence_head"] is True and config["confidence_head_with_markov"] is False
        assert done.launch[-2:] == ["--speculative-dspark-block-size", "4"]
    for mode in ("static", "cap-accept"):
        verdict = serving.check_draft(
            config, _shapes(tmp_path / "served"), server="sglang-0.5.23", target=TARGET,
            options={"ragged_verify_mode": mode},
        )  # fmt: skip
        assert verdict.ok, verdict.errors
    loaded = load_draft(tmp_path / "served", target.config)
    for name, tensor in draft.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    prompts, cfg = [[1, 5, 9, 2]], EvalConfig(max_new_tokens=16, show_progress=False)
    mine, theirs = (evaluate_drafter(target, d, prompts, cfg).per_prompt[0] for d in (loaded, draft))
    assert (mine["output_ids"], mine["accept_hist"]) == (theirs["output_ids"], theirs["accept_hist"])


def _shapes(path):
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        return {n: tuple(handle.get_slice(n).get_shape()) for n in handle.keys()}


@pytest.mark.parametrize(
    "method, head, server, needle",
    [
        ("domino", None, "sglang-0.5.23", "pure_draft_prefix_len=0: SGLang 0.5.23 serves Domino only with"),
        ("domino", {"pure_draft_prefix_len": 2}, "sglang-0.5.23", "a drafter trained with another value cannot"),
        ("dspark", {"markov_rank": 0, "enable_confidence_head": False}, "sglang-0.5.23", "without a Markov head"),
        ("domino", {"pure_draft_prefix_len": 1}, "sglang-0.5.14", "sglang-0.5.14 does not serve Domino drafters"),
        ("dspark", None, "sglang-0.5.14", "sglang-0.5.14 does not serve DSpark drafters"),
    ],
)
def test_what_the_server_cannot_serve_is_refused_with_the_reason(tmp_path, target, method, head, server, needle):
    source = specforge_export(_draft(target, method, head), tmp_path / "export")
    with pytest.raises(ValueError) as err:
        convert(source, tmp_path / "served", server=server)
    assert needle in " ".join(str(err.value).split())
    assert not (tmp_path / "served" / "config.json").exists()


def test_server_layouts_round_trip_through_specforges(tmp_path, target):
    draft = _draft(target, "dspark", {"markov_head_type": "gated", "confidence_head_with_markov": True})
    save_draft_checkpoint(draft, tmp_path / "served")  # the plugin's saver: SGLang 0.5.23's layout
    convert(tmp_path / "served", tmp_path / "sf", server="specforge-0.2.0")
    convert(tmp_path / "sf", tmp_path / "again", server="sglang-0.5.23")
    first, again = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("served", "again"))
    assert first == again
    assert json.loads((tmp_path / "sf" / "config.json").read_text())["architectures"] == ["DSparkDraftModel"]
    for name, tensor in draft.state_dict().items():
        assert torch.equal(load_draft(tmp_path / "again").state_dict()[name], tensor), name


def test_early_logit_head_names_are_rewritten_for_sglang(tmp_path, target):
    """SpecForge maps 'logit_head.<head>.' names when loading; SGLang does not (the head would be untrained)."""
    from safetensors.torch import load_file, save_file

    source = specforge_export(_draft(target, "dspark"), tmp_path / "export")
    state = load_file(str(source / "model.safetensors"))
    state = {
        ("logit_head." + n if n.startswith(("markov_head.", "confidence_head.")) else n): t for n, t in state.items()
    }
    save_file(state, str(source / "model.safetensors"))
    verdict = serving.check_draft(
        json.loads((source / "config.json").read_text()), _shapes(source), server="sglang-0.5.23"
    )
    assert any("early 'logit_head.' weight names" in e for e in verdict.errors)
    convert(source, tmp_path / "served", server="sglang-0.5.23")
    assert not any(n.startswith("logit_head.") for n in _shapes(tmp_path / "served"))


def test_the_command_prints_the_launch_flags_and_keeps_existing_directories(tmp_path, target, capsys):
    source = specforge_export(_draft(target, "domino", {"pure_draft_prefix_len": 1}), tmp_path / "export")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text(json.dumps({"model_type": "qwen3", **TARGET}))
    argv = ["convert", str(source), "--out", str(tmp_path / "served"), "--target", str(tmp_path / "t")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "a domino drafter read as specforge-0.2.0, written for sglang-0.5.23" in out
    assert f"launch flags: --speculative-algorithm DFLASH --speculative-draft-model-path {tmp_path / 'served'}" in out
    assert main(argv) == 2
    assert "exists and is not empty; accepted: a new directory, or --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--server", "sglang-9"]) == 2
    assert (
        "unknown server 'sglang-9'; accepted: sglang-0.5.14, sglang-0.5.23, specforge-0.2.0" in capsys.readouterr().err
    )
    (tmp_path / "t" / "config.json").write_text(json.dumps({"model_type": "qwen3", **TARGET, "num_hidden_layers": 2}))
    assert main(argv + ["--overwrite"]) == 2
    assert "[2] out of range" in capsys.readouterr().err


def test_convert_help_says_which_version_serves_which_method():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "specforge_dpace", "convert", "--help"], capture_output=True, text=True, check=True
    ).stdout
    text = " ".join(out.split())
    assert "sglang-0.5.14: DFlash (--speculative-algorithm DFLASH)" in text
    assert (
        "sglang-0.5.23: DFlash; Domino as a DFLASH sub-mode" in text
        and "DSpark (--speculative-algorithm DSPARK" in text
    )
