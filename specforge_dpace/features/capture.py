"""Capture a Hugging Face target's hidden states as DFlash context features: the one implementation.

Both the offline feature files (``capture_offline_features``) and the demo's in-memory features
(``capture_features``, which ``specforge_dpace.demo.capture`` calls) come from here, with one
convention: target layer id ``i`` is HF's ``output_hidden_states[i + 1]`` (the same offset SpecForge's
``extract_context_feature`` uses), and only ids SGLang can capture at serving time are accepted:
``0 .. n - 2`` on an ``n``-layer target (SGLang captures id ``i`` as the input of decoder layer
``i + 1``, so never the last layer, whose HF entry ``hidden_states[n]`` is also after the final norm),
distinct and increasing (see :mod:`specforge_dpace.serving`).

SpecForge's own preparation script captures through a local SGLang engine, which needs a GPU.
This module does the same job with a plain ``transformers`` forward pass, so the real
``specforge train`` offline path (``data.hidden_states_path``) can run on a CPU.

The on-disk contract (``specforge_hidden_states_v1``, read by
``specforge.runtime.data_plane.offline_reader`` and normalized by
``specforge.algorithms.common.dflash_family_data.normalize_offline_sample``):
one ``torch.save`` file per sample, named ``*.ckpt``, anywhere below the directory, holding

- ``input_ids``      int64 ``[seq]``
- ``loss_mask``      int64 ``[seq]`` (1 = supervised token; at least two adjacent ones)
- ``hidden_states``  ``[seq, len(layer_ids) * hidden_size]``: the features of target layers
  ``layer_ids`` (HF ``output_hidden_states[layer_id + 1]``), concatenated in that order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional, Union

from .._atomic import write_with

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


def check_layer_ids(layer_ids: Sequence[int], num_layers: int) -> list[int]:
    """The ids as ints if SGLang can capture them on a ``num_layers``-layer target, else ``ValueError``
    saying why and which ids are accepted (``0 .. num_layers - 2``, distinct, increasing)."""
    from specforge_dpace.serving import check_layer_ids as check

    return check(layer_ids, num_layers, name="target_layer_ids")


def _num_layers(model: Any) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.num_hidden_layers)


def _forward_features(model: Any, input_ids, layers: Sequence[int], last_hidden: bool = False):
    """``[B, S, len(layers) * H]``: HF ``hidden_states[i + 1]`` of each layer id, concatenated in order;
    with ``last_hidden`` also the target's last hidden state ``[B, S, H]`` (HF ``hidden_states[-1]``,
    after the final norm: what the target's ``lm_head`` reads, so softmax(lm_head(.)) is its p)."""
    import torch

    output = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    features = torch.cat([output.hidden_states[layer + 1] for layer in layers], dim=-1)
    return (features, output.hidden_states[-1]) if last_hidden else features


def capture_features(
    target: Any,
    input_ids,
    layer_ids: Sequence[int],
    *,
    batch_size: int = 32,
    on_batch: Optional[Callable[[int], None]] = None,
    last_hidden: bool = False,
):
    """Features of equal-length sequences ``input_ids [N, S]``, ``batch_size`` at a time: ``[N, S, L*H]``
    in the target's dtype.  ``on_batch(n)`` is called after each batch (progress bars).  With
    ``last_hidden=True`` returns ``(features, last_hidden_states [N, S, H])`` from the same forward
    pass (soft-label objectives read the target's distribution from it)."""
    import torch

    layers = check_layer_ids(layer_ids, _num_layers(target))
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks, lasts = [], []
    with torch.inference_mode():
        for start in range(0, input_ids.shape[0], int(batch_size)):
            out = _forward_features(target, input_ids[start : start + int(batch_size)], layers, last_hidden)
            features = out[0] if last_hidden else out
            chunks.append(features)
            if last_hidden:
                lasts.append(out[1])
            if on_batch is not None:
                on_batch(features.shape[0])
    if last_hidden:
        return torch.cat(chunks, dim=0), torch.cat(lasts, dim=0)
    return torch.cat(chunks, dim=0)


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
    """The target layer ids of a draft ``config.json`` (file or directory), read as SGLang reads them:
    ``dflash_config.target_layer_ids`` first, then a top-level ``target_layer_ids``."""
    from specforge_dpace.serving._sglang import BACKBONE_0_5_23

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    layers, _ = BACKBONE_0_5_23.read(payload, "target_layer_ids")
    if not layers:
        raise ValueError(f"{path} has no target_layer_ids (looked for dflash_config.target_layer_ids, then top level)")
    return [int(layer) for layer in layers]


#: The key of the target's last hidden state (after the final norm) in a feature file, as DSpark and the
#: soft-label objectives under ``strategy: dflash`` name it.
LAST_HIDDEN_KEY = "target_last_hidden_states"


def _check_last_hidden(model: Any, input_ids, last) -> None:
    """Soft-label objectives compute p = softmax(lm_head(h_last)): refuse a target whose HF last hidden state
    does not give its own logits through its output embedding (no final norm there, logit scaling/capping)."""
    import torch

    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("last_hidden=True needs a target with an output embedding (lm_head); this one has none")
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits.float()
        projected = head(last).float()
    tolerance = 1e-3 * max(1.0, float(logits.abs().max()))
    if projected.shape != logits.shape or not torch.allclose(projected, logits, rtol=1e-3, atol=tolerance):
        raise ValueError(
            f"last_hidden=True: the last hidden state of {type(model).__name__} (HF output_hidden_states[-1]) does "
            f"not reproduce its logits through lm_head; {LAST_HIDDEN_KEY} must be the state after the final norm "
            "that lm_head alone maps to the logits, which soft-label objectives assume"
        )


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
    last_hidden: bool = False,
) -> list[str]:
    """Write one SpecForge offline feature file per record; returns the file paths in order.

    ``target``: an HF causal LM or a local directory with one.  ``records``: mappings with
    ``input_ids`` and ``loss_mask`` (lists or tensors).  ``layer_ids``: the draft's
    ``dflash_config.target_layer_ids``, which SGLang must be able to capture (ids ``0 .. n - 2``).
    ``max_length`` truncates each record first.  Files are written atomically (temporary name, then
    rename) so a reader never sees half a file.  ``last_hidden=True`` also writes
    ``target_last_hidden_states [seq, hidden]``, the target's last hidden state after the final norm (HF
    ``output_hidden_states[-1]``; checked on the first record: ``lm_head`` of it reproduces the logits), which
    soft-label objectives (``lk-lambda``, ``soft-<name>``, ...) under ``strategy: dflash`` read.  SpecForge's
    DFlash reader ignores the key, so one directory serves hard and soft objectives.
    """
    import torch
    from tqdm.auto import tqdm

    if not isinstance(last_hidden, bool):
        raise ValueError(f"last_hidden must be True or False, got {last_hidden!r}")
    model = load_target(target, dtype=dtype)
    layers = check_layer_ids(layer_ids, _num_layers(model))
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
            out = _forward_features(model, input_ids[None].to(device), layers, last_hidden)
        hidden = out[0][0] if last_hidden else out[0]
        payload = {
            "input_ids": input_ids.clone(),
            "loss_mask": loss_mask.clone(),
            "hidden_states": hidden.to(device="cpu", dtype=store_dtype).contiguous(),
        }
        if last_hidden:
            if index == 0:
                _check_last_hidden(model, input_ids[None].to(device), out[1])
            payload[LAST_HIDDEN_KEY] = out[1][0].to(device="cpu", dtype=store_dtype).contiguous()
        path = os.path.join(out_dir, f"{prefix}_{index:08d}{FEATURE_SUFFIX}")
        write_with(path, lambda tmp: torch.save(payload, tmp))  # noqa: B023 (called at once)
        paths.append(path)
    return paths


def read_feature_file(path: Union[str, os.PathLike]) -> dict:
    """Load one feature file (for checks and tests)."""
    import torch

    return torch.load(os.fspath(path), weights_only=True)


__all__ = [
    "FEATURE_FORMAT",
    "FEATURE_SUFFIX",
    "LAST_HIDDEN_KEY",
    "capture_features",
    "capture_offline_features",
    "check_layer_ids",
    "load_target",
    "read_feature_file",
    "target_layer_ids_from_draft_config",
]
