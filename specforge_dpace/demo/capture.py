"""Target feature capture: the hidden states after ``target_layer_ids``, concatenated to
``[N, S, len(layer_ids) * H]`` -- the ``hidden_states`` SpecForge's ``OnlineDFlashModel`` takes
(same layer offset as SpecForge's ``extract_context_feature``: HF entry ``i + 1``)."""

from __future__ import annotations

from typing import Sequence

from ._util import progress


def capture_features(target, input_ids, layer_ids: Sequence[int], *, batch_size: int = 32, show_progress: bool = True):
    """Run the target over ``input_ids [N, S]`` and return the features as fp32 ``[N, S, L*H]``."""
    import torch

    n_layers = target.config.num_hidden_layers
    bad = [i for i in layer_ids if not 0 <= int(i) < n_layers]
    if bad or not layer_ids:
        raise ValueError(f"target_layer_ids={list(layer_ids)} invalid; accepted: non-empty ids in 0..{n_layers - 1}")
    chunks = []
    bar = progress(total=input_ids.shape[0], desc="capture features", enabled=show_progress, unit="seq")
    with torch.inference_mode():
        for i in range(0, input_ids.shape[0], batch_size):
            out = target(input_ids=input_ids[i : i + batch_size], output_hidden_states=True, use_cache=False)
            chunks.append(torch.cat([out.hidden_states[int(j) + 1] for j in layer_ids], dim=-1).float())
            bar.update(chunks[-1].shape[0])
    bar.close()
    return torch.cat(chunks, dim=0)
