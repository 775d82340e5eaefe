"""Draft-directory validation against the names SGLang's DFlash loader looks up."""

import json
import struct

import pytest

from specforge_dpace.bench.validate import (
    DraftValidationError,
    checkpoint_hash,
    read_safetensors_header,
    validate_draft_dir,
)
from tests.bench._helpers import draft_state_and_config, write_draft_dir


@pytest.fixture(scope="module")
def real_draft():
    return draft_state_and_config(num_layers=2, block_size=8)


def test_real_specforge_draft_is_valid(tmp_path, real_draft):
    state, config = real_draft
    info = validate_draft_dir(write_draft_dir(tmp_path / "d", state, config))
    assert info.block_size == 8 and info.num_hidden_layers == 2 and info.target_layer_ids == [0, 1]
    assert set(info.weight_names) == set(state)


def test_sharded_draft_with_index_is_valid(tmp_path, real_draft):
    state, config = real_draft
    info = validate_draft_dir(write_draft_dir(tmp_path / "d", state, config, index=True))
    assert len(info.weight_files) == 2 and set(info.weight_names) == set(state)


def test_missing_and_unknown_weights_are_named(tmp_path, real_draft):
    state, config = real_draft
    state = dict(state)
    state.pop("layers.1.mlp.down_proj.weight")
    state["model.fc.weight"] = state.pop("fc.weight")
    with pytest.raises(DraftValidationError) as err:
        validate_draft_dir(write_draft_dir(tmp_path / "d", state, config))
    msg = str(err.value)
    assert "layers.1.mlp.down_proj.weight" in msg and "missing" in msg
    assert "model.fc.weight" in msg and "silently skip" in msg and "'model.' prefix" in msg
    missing_line = next(line for line in msg.splitlines() if "missing weights" in line)
    assert "fc.weight" in missing_line and "model.fc.weight" not in missing_line


def test_extra_layer_beyond_config_is_unknown(tmp_path, real_draft):
    state, config = real_draft
    config = dict(config, num_hidden_layers=1)
    with pytest.raises(DraftValidationError, match=r"layers \[1\] exceed num_hidden_layers=1"):
        validate_draft_dir(write_draft_dir(tmp_path / "d", state, config))


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda c: c.update(architectures=["Qwen3ForCausalLM"]), "architectures must contain 'DFlashDraftModel'"),
        (lambda c: c.pop("block_size"), "missing 'block_size'"),
        (lambda c: c.update(block_size=1), "block_size must be >= 2"),
        (lambda c: c.pop("num_target_layers"), "missing 'num_target_layers'"),
        (lambda c: c.pop("dflash_config"), "missing the 'dflash_config'"),
        (lambda c: c["dflash_config"].pop("mask_token_id"), "mask_token_id"),
        (lambda c: c["dflash_config"].update(target_layer_ids=[0, 5]), "target_layer_ids [5] outside 0..1"),
    ],
)
def test_config_problems_are_named(tmp_path, real_draft, edit, needle):
    state, config = real_draft
    config = json.loads(json.dumps(config))
    edit(config)
    with pytest.raises(DraftValidationError) as err:
        validate_draft_dir(write_draft_dir(tmp_path / "d", state, config))
    assert needle in str(err.value)


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
