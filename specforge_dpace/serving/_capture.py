"""Which target layers SGLang can capture for a DFlash-family drafter (the same in 0.5.14 and 0.5.23).

``srt/models/qwen3.py`` ``set_dflash_layers_to_capture`` (0.5.14: 707-719; 0.5.23: 793-805) captures layer
id ``i`` "before layer i + 1", and ``srt/models/qwen2.py`` ``Qwen2Model.forward`` (0.5.14: 366-372; 0.5.23:
455-464) captures only while iterating layers that exist, each once and in layer order.  So an ``n``-layer
target can serve ids ``0 .. n - 2`` without repeats, and the features reach the drafter concatenated in
increasing layer order.  HF's ``hidden_states[i + 1]`` is the same feature for those ids;
``hidden_states[n]`` is after the final norm.  Upstream recipes (``dflash_utils.build_target_layer_ids``,
0.5.23: 348-386) pick ids in ``[1, n - 3]``.
"""

from __future__ import annotations

from typing import Any, Optional

from ._common import ServableError, is_int


def capturable_layer_ids(num_target_layers: int) -> list[int]:
    """The ids SGLang can capture on an ``n``-layer target: ``0 .. n - 2`` (the last layer never is)."""
    return list(range(max(int(num_target_layers) - 1, 0)))


def recommended_layer_range(num_target_layers: int) -> Optional[tuple[int, int]]:
    """``(1, n - 3)``, the range upstream recipes pick ids from, or None when the target is too small."""
    n = int(num_target_layers)
    return (1, n - 3) if n >= 4 else None


def accepted_layer_ids_text(num_target_layers: int) -> str:
    """Which ids an ``n``-layer target accepts, as one phrase for error messages."""
    n = int(num_target_layers)
    if n < 2:
        return (
            f"none: a {n}-layer target has no layer SGLang can capture (id i is captured as the input of decoder "
            "layer i + 1, so the last layer never is)"
        )
    text = f"distinct ids in increasing order within 0..{n - 2} for a {n}-layer target (never its last layer, {n - 1})"
    recommended = recommended_layer_range(n)
    if recommended:
        text += f"; upstream recipes pick ids in {recommended[0]}..{recommended[1]}"
    return text


def layer_id_problems(layer_ids: Any, num_target_layers: int) -> list[str]:
    """Why SGLang cannot serve features at ``layer_ids`` from an ``n``-layer target (empty: it can)."""
    n = int(num_target_layers)
    if not isinstance(layer_ids, (list, tuple)) or not all(is_int(i) for i in layer_ids):
        return [f"must be a list of ints, got {layer_ids!r}"]
    ids = list(layer_ids)
    if not ids:
        return ["is empty (the draft needs at least one target layer's features)"]
    problems = []
    last = [i for i in ids if i == n - 1]
    outside = [i for i in ids if not 0 <= i < n]
    if last:
        problems.append(
            f"id {n - 1} is the last decoder layer: SGLang captures id i as the input of decoder layer i + 1, "
            "so it never captures the last one and the drafter fails at its first draft forward with a feature-size "
            "mismatch (HF's hidden_states[n] is also after the final norm, another feature)"
        )
    if outside:
        problems.append(f"{outside} out of range: the target has decoder layers 0..{n - 1}")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        problems.append(f"{repeated} repeated: SGLang captures each layer once, so fewer features reach the drafter")
    elif ids != sorted(ids):
        problems.append(
            "not in increasing order: SGLang concatenates the captured features in layer order, so the "
            "drafter would read them in another order than it was trained on"
        )
    return problems


def check_layer_ids(layer_ids: Any, num_target_layers: int, *, name: str = "target_layer_ids") -> list[int]:
    """Return ``layer_ids`` as ints, or raise :class:`ServableError` saying why and which ids are accepted."""
    problems = layer_id_problems(layer_ids, num_target_layers)
    if problems:
        shown = list(layer_ids) if isinstance(layer_ids, (list, tuple)) else layer_ids
        raise ServableError(
            f"{name}={shown} invalid: {'; '.join(problems)}. Accepted: {accepted_layer_ids_text(num_target_layers)}"
        )
    return [int(i) for i in layer_ids]


def default_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """SGLang's fallback when a draft config gives no ids (``dflash_utils.build_target_layer_ids``)."""
    n, d = int(num_target_layers), int(num_draft_layers)
    if d == 1:
        return [n // 2]
    if n - 3 < 1:
        raise ServableError(
            f"no target_layer_ids given and SGLang's default (build_target_layer_ids) needs a target with at "
            f"least 4 layers for {d} draft layers, got num_target_layers={n}; set dflash_config.target_layer_ids"
        )
    span = n - 3 - 1
    return [int(round(1 + i * span / (d - 1))) for i in range(d)]
