"""Draft-directory validation: the verdict of SGLang's DFlash loader (0.5.14 and 0.5.23), from headers only."""

import json
import struct

import pytest

from specforge_dpace.bench.validate import (
    DraftValidationError,
    checkpoint_hash,
    read_safetensors_header,
    validate_draft_dir,
)
from tests._servable_variants import BY_NAME, VARIANTS, Variant, build_bases, write_target, write_variant
from tests.bench._helpers import draft_state_and_config, write_draft_dir


@pytest.fixture(scope="module")
def real_draft():
    return draft_state_and_config(num_layers=2, block_size=8)


def test_real_specforge_draft_is_valid(tmp_path, real_draft):
    state, config = real_draft
    info = validate_draft_dir(write_draft_dir(tmp_path / "d", state, config))
    assert info.block_size == 8 and info.num_hidden_layers == 2 and info.target_layer_ids == [0]
    assert set(info.weight_names) == set(state) and info.notes == [] and not info.target_checked


def test_sharded_draft_with_index_is_valid(tmp_path, real_draft):
    state, config = real_draft
    info = validate_draft_dir(write_draft_dir(tmp_path / "d", state, config, index=True))
    assert len(info.weight_files) == 2 and set(info.weight_names) == set(state)


def test_missing_and_unknown_weights_are_named(tmp_path, real_draft):
    state, config = real_draft
    state = dict(state)
    state.pop("layers.1.mlp.down_proj.weight")
    state["layers.0.mlp.down.weight"] = state.pop("layers.0.mlp.down_proj.weight")
    with pytest.raises(DraftValidationError) as err:
        validate_draft_dir(write_draft_dir(tmp_path / "d", state, config))
    msg = str(err.value)
    assert "layers.0.mlp.down.weight" in msg and "silently skip" in msg
    missing_line = next(line for line in msg.splitlines() if "missing weights" in line)
    assert "layers.1.mlp.down_proj.weight" in missing_line and "layers.0.mlp.down_proj.weight" in missing_line
    assert "layers.0.mlp.down.weight" not in missing_line


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda c: c.update(architectures=["Qwen3ForCausalLM"]), "architectures=['Qwen3ForCausalLM']; accepted:"),
        (lambda c: c.pop("block_size"), "block_size is missing (SGLang 0.5.23 reads dflash_config.block_size"),
        (lambda c: c.update(block_size=1), "block size 1 is invalid (top-level block_size); accepted: an int >= 2"),
        (lambda c: c.pop("num_target_layers"), "num_target_layers is missing"),
        (lambda c: c.pop("dflash_config"), "mask_token_id is missing"),
        (lambda c: c["dflash_config"].pop("mask_token_id"), "mask_token_id is missing"),
        (lambda c: c["dflash_config"].update(target_layer_ids=[0, 5]), "[5] out of range"),
        (lambda c: c["dflash_config"].update(target_layer_ids=[0, 1]), "id 1 is the last decoder layer"),
        (lambda c: c.update(hidden_size="32"), "'hidden_size' must be a positive integer"),
    ],
)
def test_config_problems_are_named(tmp_path, real_draft, edit, needle):
    state, config = real_draft
    config = json.loads(json.dumps(config))
    edit(config)
    with pytest.raises(DraftValidationError) as err:
        validate_draft_dir(write_draft_dir(tmp_path / "d", state, config))
    assert needle in str(err.value)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return build_bases(tmp_path_factory.mktemp("bases"))


@pytest.mark.parametrize("version", ["0.5.14", "0.5.23"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_validator_agrees_with_sglang_on_every_variant(tmp_path, bases, variant, version):
    """Written as real safetensors directories; validated against a target directory, as the bench CLI does."""
    draft = write_variant(tmp_path, variant, bases)
    target = write_target(tmp_path, variant)
    server = f"sglang-{version}"
    if variant.verdict_for(version) == "ok":
        info = validate_draft_dir(draft, target=target, server=server)
        assert info.target_checked and info.target_layer_ids == [1, 2]
        assert variant.needle_for(version) in " ".join(info.notes), info.notes
    else:
        with pytest.raises(DraftValidationError) as err:
            validate_draft_dir(draft, target=target, server=server)
        assert variant.needle_for(version) in str(err.value)


def test_only_the_real_target_reveals_its_layer_count(tmp_path, bases):
    """num_target_layers says 4; the target has 3, so id 2 is its last layer: caught only given the target."""
    variant = BY_NAME["layer_id_last_of_target"]
    draft = write_variant(tmp_path, variant, bases)
    assert validate_draft_dir(draft).target_layer_ids == [1, 2]
    with pytest.raises(DraftValidationError, match="id 2 is the last decoder layer"):
        validate_draft_dir(draft, target=write_target(tmp_path, variant))


def test_a_target_without_config_is_noted_not_checked(tmp_path, bases):
    draft = write_variant(tmp_path, BY_NAME["good"], bases)
    info = validate_draft_dir(draft, target="Qwen/Qwen3-8B")
    assert not info.target_checked and any("target checks skipped" in note for note in info.notes)


def test_every_problem_is_listed_at_once(tmp_path, bases):
    def edit(state, config):
        state["fc.bias"] = state["norm.weight"].clone()
        state["norm.weight"] = state["norm.weight"][:-1].clone()
        config["dflash_config"]["target_layer_ids"] = [1, 3]

    draft = write_variant(tmp_path, Variant("many", "error", "", edit), bases)
    with pytest.raises(DraftValidationError) as err:
        validate_draft_dir(draft)
    msg = str(err.value)
    assert "id 3 is the last decoder layer" in msg and "fc.bias" in msg and "norm.weight has shape [31]" in msg


def test_no_weights_and_not_a_directory(tmp_path, real_draft):
    _, config = real_draft
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(DraftValidationError, match="no \\*.safetensors"):
        validate_draft_dir(d)
    with pytest.raises(DraftValidationError, match="not a directory"):
        validate_draft_dir(tmp_path / "nope")


def test_header_is_read_without_the_tensor_bytes(tmp_path):
    header = {
        "fc.weight": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]},
        "__metadata__": {"format": "pt"},
    }
    raw = json.dumps(header).encode()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)  # 4 MB of tensor data absent
    assert list(read_safetensors_header(path)) == ["fc.weight"]
    path.write_bytes(b"\x00")
    with pytest.raises(DraftValidationError, match="too short"):
        read_safetensors_header(path)


def test_checkpoint_hash_changes_with_the_weights(tmp_path, real_draft):
    state, config = real_draft
    a = write_draft_dir(tmp_path / "a", state, config)
    b = write_draft_dir(tmp_path / "b", {**state, "norm.weight": state["norm.weight"] + 1}, config)
    c = write_draft_dir(tmp_path / "c", state, config)
    assert checkpoint_hash(a) == checkpoint_hash(c) != checkpoint_hash(b)
