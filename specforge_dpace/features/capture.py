"""Capture a Hugging Face target's hidden states into SpecForge's offline feature files.

SpecForge's own preparation script captures through a local SGLang engine, which needs a GPU.
This module does the same job with a plain ``transformers`` forward pass, so the real
``specforge train`` offline path (``data.hidden_states_path``) can run on a CPU.

The on-disk contract (``specforge_hidden_states_v1``, read by
``specforge.runtime.data_plane.offline_reader`` and normalized by
``specforge.algorithms.common.dflash_family_data.normalize_offline_sample``):
one ``torch.save`` file per sample, named ``*.ckpt``, anywhere below the directory, holding

- ``input_ids``      int64 ``[seq]``
- ``loss_mask``      int64 ``[seq]`` (1 = supervised token; at least two adjacent ones)
- ``hidden_states``  ``[seq, len(layer_ids) * hidden_size]``: the outputs of target layers
  ``layer_ids`` (0-based decoder-layer index, i.e. HF ``output_hidden_states[layer_id + 1]``,
  the same offset SpecForge's ``extract_context_feature`` uses), concatenated in that order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

FEATURE_FORMAT = "specforge_hidden_states_v1"
FEATURE_SUFFIX = ".ckpt"
_DTYPES = ("float32", "bfloat16", "float16")


def _as_long_row(value: Any, name: str, index: int):
    import torch

    tensor = torch.as_tensor(value)
    if tensor.dim() == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 1:
        raise ValueError(f"record {index}: {name} must be one row [seq] or [1, seq], got shape {tuple(tensor.shape)}")
    return tensor.to(torch.long)


def _check_record(input_ids, loss_mask, index: int) -> None:
    if input_ids.numel() < 2:
        raise ValueError(f"record {index}: needs at least 2 tokens, got {input_ids.numel()}")
    if input_ids.shape != loss_mask.shape:
        raise ValueError(
            f"record {index}: input_ids has {input_ids.numel()} tokens but loss_mask has {loss_mask.numel()}"
        )
    bad = sorted(set(loss_mask.unique().tolist()) - {0, 1})
    if bad:
        raise ValueError(f"record {index}: loss_mask values must be 0 or 1, found {bad}")
    if not bool((loss_mask[1:].bool() & loss_mask[:-1].bool()).any()):
        raise ValueError(
            f"record {index}: loss_mask needs two adjacent supervised tokens "
            "(SpecForge's DFlash reader rejects the sample otherwise)"
        )


def _check_layers(layer_ids: Sequence[int], num_layers: int) -> list[int]:
    layers = [int(layer) for layer in layer_ids]
    if not layers:
        raise ValueError("layer_ids is empty; pass the draft config's dflash_config.target_layer_ids")
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"layer_ids {bad} out of range: the target has decoder layers 0..{num_layers - 1}")
    return layers


def load_target(target: Any, *, dtype: str = "float32"):
    """Return an eval-mode causal LM: ``target`` is a model or a local directory (no hub access)."""
    import torch

    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {list(_DTYPES)}")
    if isinstance(target, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        path = os.fspath(target)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"target model directory {path!r} does not exist (hub downloads are not used)")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), local_files_only=True)
    else:
        model = target
    return model.eval()


def target_layer_ids_from_draft_config(path: Union[str, os.PathLike]) -> list[int]:
    """Read ``dflash_config.target_layer_ids`` from a draft ``config.json`` (file or directory)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    layers = (payload.get("dflash_config") or {}).get("target_layer_ids")
    if not layers:
        raise ValueError(f"{path} has no dflash_config.target_layer_ids")
    return [int(layer) for layer in layers]


def capture_offline_features(
    target: Any,
    records: Iterable[Mapping[str, Any]],
    out_dir: Union[str, os.PathLike],
    layer_ids: Sequence[int],
    *,
    max_length: Optional[int] = None,
    dtype: str = "float32",
    prefix: str = "sample",
    progress: bool = True,
) -> list[str]:
    """Write one SpecForge offline feature file per record; returns the file paths in order.

    ``target``: an HF causal LM or a local directory with one.  ``records``: mappings with
    ``input_ids`` and ``loss_mask`` (lists or tensors).  ``layer_ids``: the draft's
    ``dflash_config.target_layer_ids``.  ``max_length`` truncates each record first.
    Files are written atomically (temporary name, then rename) so a reader never sees half a file.
    """
    import torch
    from tqdm.auto import tqdm

    model = load_target(target, dtype=dtype)
    num_layers = int(model.config.num_hidden_layers)
    layers = _check_layers(layer_ids, num_layers)
    if max_length is not None and int(max_length) < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    device = next(model.parameters()).device
    store_dtype = getattr(torch, dtype)
    items = list(records)
    paths: list[str] = []
    for index, record in enumerate(tqdm(items, desc="capture hidden states", disable=not progress)):
        missing = [key for key in ("input_ids", "loss_mask") if key not in record]
        if missing:
            raise KeyError(f"record {index} lacks {missing}; records need input_ids and loss_mask")
        input_ids = _as_long_row(record["input_ids"], "input_ids", index)
        loss_mask = _as_long_row(record["loss_mask"], "loss_mask", index)
        if max_length is not None:
            input_ids, loss_mask = input_ids[: int(max_length)], loss_mask[: int(max_length)]
        _check_record(input_ids, loss_mask, index)
        with torch.no_grad():
            output = model(input_ids=input_ids[None].to(device), output_hidden_states=True, use_cache=False)
        hidden = torch.cat([output.hidden_states[layer + 1][0] for layer in layers], dim=-1)
        payload = {
            "input_ids": input_ids.clone(),
            "loss_mask": loss_mask.clone(),
            "hidden_states": hidden.to(device="cpu", dtype=store_dtype).contiguous(),
        }
        path = os.path.join(out_dir, f"{prefix}_{index:08d}{FEATURE_SUFFIX}")
        temporary = path + ".tmp"
        torch.save(payload, temporary)
        os.replace(temporary, path)
        paths.append(path)
    return paths


def read_feature_file(path: Union[str, os.PathLike]) -> dict:
    """Load one feature file (for checks and tests)."""
    import torch

    return torch.load(os.fspath(path), weights_only=True)


__all__ = [
    "FEATURE_FORMAT",
    "FEATURE_SUFFIX",
    "capture_offline_features",
    "load_target",
    "read_feature_file",
    "target_layer_ids_from_draft_config",
]
