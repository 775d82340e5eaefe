"""Target feature capture for the demo: a thin call into :func:`specforge_dpace.features.capture_features`,
the package's one capture implementation (HF entry ``i + 1`` for layer id ``i``, the offset SpecForge's
``extract_context_feature`` uses; only ids SGLang can capture, ``0 .. n - 2``), concatenated to
``[N, S, len(layer_ids) * H]`` -- the ``hidden_states`` SpecForge's ``OnlineDFlashModel`` takes."""

from __future__ import annotations

from typing import Sequence

from ._util import progress


def capture_features(
    target,
    input_ids,
    layer_ids: Sequence[int],
    *,
    batch_size: int = 32,
    show_progress: bool = True,
    last_hidden: bool = False,
):
    """Run the target over ``input_ids [N, S]`` and return the features as fp32 ``[N, S, L*H]``
    (with ``last_hidden``: ``(features, target_last_hidden_states [N, S, H])``, both fp32).

    Raises ``ValueError`` for a layer id SGLang cannot capture, naming the accepted ids."""
    from specforge_dpace.features.capture import capture_features as capture

    bar = progress(total=input_ids.shape[0], desc="capture features", enabled=show_progress, unit="seq")
    try:
        out = capture(target, input_ids, layer_ids, batch_size=batch_size, on_batch=bar.update, last_hidden=last_hidden)
    finally:
        bar.close()
    return (out[0].float(), out[1].float()) if last_hidden else out.float()
