"""``specforge-dpace evaluate --teacher-forced``: the walk predictors of drafters on eval features, no server.

Drafters come as an export / servable directory (``config.json`` + safetensors, what :func:`load_draft`
reads) or as SpecForge's own checkpoints (a ``*-stepN`` directory, its ``training_state.pt`` or a run's output
directory: the checkpoint ``*-latest`` points to), whose ``draft_state_dict`` is loaded into the draft config
given separately (the ``model.draft_model_config`` of the training YAML).  Eval features are SpecForge's
offline feature files (``input_ids``, ``loss_mask``, ``hidden_states`` and, for the walks at T > 0,
``target_last_hidden_states``), e.g. the ``data.eval_hidden_states_path`` of the run; sequences are
right-padded into batches (padding is never an anchor nor a context position of one).  Every drafter sees
the same sequences; the result ranks them by ``tau_walk``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

from ._teacher_forced import SERVING, check_temperatures, pass_model, slot_convention, teacher_forced_pass

TARGET_HIDDEN_KEY = "target_last_hidden_states"


def _checkpoint_state(path: Path) -> Optional[Path]:
    """The ``training_state.pt`` a SpecForge checkpoint path names, or ``None`` for an export directory."""
    if path.is_file() and path.name == "training_state.pt":
        return path
    if path.is_dir() and (path / "training_state.pt").is_file():
        return path / "training_state.pt"
    if (
        path.is_dir()
        and not (path / "config.json").is_file()
        and (any(path.glob("*-latest")) or any(path.glob("*-step*")))
    ):
        from specforge.training.checkpoint import CheckpointManager

        return Path(CheckpointManager.resolve_resume_dir(str(path))) / "training_state.pt"
    return None


def load_any_draft(path, target, *, draft_config: Optional[str] = None, block_size: Optional[int] = None):
    """A draft from an export directory, or from a SpecForge checkpoint with ``draft_config`` (a config.json)."""
    import torch

    from ._checkpoint import draft_from_state, load_draft, read_draft_config, validate_pair

    dtype, device = next(target.parameters()).dtype, next(target.parameters()).device
    path = Path(path)
    state_file = _checkpoint_state(path)
    if state_file is None:
        if draft_config is not None:
            raise ValueError(
                f"--draft-config applies to SpecForge checkpoints (training_state.pt), but {str(path)!r} is an "
                "export directory with its own config.json; accepted: leave --draft-config out for it"
            )
        validate_pair(target.config, read_draft_config(path), block_size)
        return load_draft(path, target.config, dtype=dtype, device=device, block_size=block_size)
    if draft_config is None:
        raise ValueError(
            f"{str(path)!r} is a SpecForge checkpoint: its weights need the draft config they were trained with; "
            "accepted: --draft-config FILE (the training YAML's model.draft_model_config)"
        )
    raw = json.loads(Path(draft_config).read_text(encoding="utf-8"))
    validate_pair(target.config, raw, block_size)
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or not isinstance(state.get("draft_state_dict"), dict):
        raise ValueError(f"{str(state_file)!r} has no draft_state_dict: not a SpecForge checkpoint")
    return draft_from_state(
        raw,
        state["draft_state_dict"],
        str(state_file),
        target.config,
        dtype=dtype,
        device=device,
        block_size=block_size,
    )


def read_features(directory, max_length: Optional[int] = None) -> list[dict]:
    """The feature files of ``directory`` (SpecForge's own lister and reader), as ``[seq]`` / ``[seq, *]`` tensors."""
    from specforge.runtime.data_plane.feature_store import load_feature_file
    from specforge.runtime.data_plane.offline_reader import list_feature_files

    if not os.path.isdir(directory):
        raise ValueError(f"--eval-features {str(directory)!r} is not a directory of SpecForge offline feature files")
    files = list_feature_files(str(directory))
    if not files:
        raise ValueError(f"--eval-features {str(directory)!r} holds no feature files")
    records = []
    for file in files:
        raw = load_feature_file(file)
        missing = [key for key in ("input_ids", "loss_mask", "hidden_states") if key not in raw]
        if missing:
            raise ValueError(f"feature file {file} lacks {missing} (it has {sorted(raw)})")
        record = {}
        for key in ("input_ids", "loss_mask", "hidden_states", TARGET_HIDDEN_KEY):
            if key in raw:
                value = raw[key]
                value = value[0] if value.dim() > (1 if key in ("input_ids", "loss_mask") else 2) else value
                record[key] = value[:max_length] if max_length else value
        records.append(record)
    return records


def _batches(records: list[dict], batch_size: int):
    """Right-padded batches (loss mask 0 on padding)."""
    import torch

    for start in range(0, len(records), batch_size):
        part = records[start : start + batch_size]
        length = max(r["input_ids"].shape[0] for r in part)
        batch = {}
        for key in ("input_ids", "loss_mask", "hidden_states", TARGET_HIDDEN_KEY):
            if not all(key in r for r in part):
                continue
            rows = []
            for r in part:
                value = r[key]
                pad = length - value.shape[0]
                rows.append(torch.cat([value, value.new_zeros((pad, *value.shape[1:]))]) if pad else value)
            batch[key] = torch.stack(rows)
        yield batch


def teacher_forced_paths(
    target_path,
    draft_paths: Sequence[str],
    features_dir,
    *,
    draft_config: Optional[str] = None,
    temperatures: Sequence[float] = (1.0,),
    anchor_stride: int = 1,
    blocks_per_forward: Optional[int] = None,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    block_size: Optional[int] = None,
    convention: str = SERVING,
    rules: Optional[str] = None,
    device=None,
    show_progress: bool = True,
) -> list[dict]:
    """One record per drafter (in the order given): its walks, per-position averages, anchors and cost.

    ``rules`` (a serving rule set, ``--convention``) sets the slot alignment in place of ``convention`` and
    refuses a drafter that rule set's server does not serve, as decoding under it does."""
    import torch
    from tqdm.auto import tqdm

    from ._checkpoint import check_served, load_target

    temperatures = check_temperatures(list(temperatures), "--walk-temperature")
    if rules is not None:
        convention = slot_convention(rules)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size {batch_size!r} is invalid; accepted: an int >= 1")
    target = load_target(target_path, device=device)
    records = read_features(features_dir, max_length)
    with_target = all(TARGET_HIDDEN_KEY in r for r in records)
    results = []
    for path in draft_paths:
        draft = load_any_draft(path, target, draft_config=draft_config, block_size=block_size)
        if rules is not None:
            check_served(draft, rules, target.config)
        model = pass_model(
            draft,
            target.get_output_embeddings(),
            target.get_input_embeddings(),
            mask_token_id=int(draft.mask_token_id),
            block_size=int(draft.block_size),
        )
        started, sums = time.perf_counter(), None
        bar = tqdm(total=len(records), desc=f"teacher-forced {Path(path).name}", disable=not show_progress, unit="seq")
        with torch.inference_mode():
            for batch in _batches(records, batch_size):
                moved = {k: v.to(next(target.parameters()).device) for k, v in batch.items()}
                sums = teacher_forced_pass(
                    model,
                    moved["input_ids"],
                    moved["hidden_states"].to(next(target.parameters()).dtype),
                    moved["loss_mask"],
                    moved.get(TARGET_HIDDEN_KEY),
                    temperatures=temperatures,
                    anchor_stride=anchor_stride,
                    blocks_per_forward=blocks_per_forward,
                    convention=convention,
                    sums=sums,
                )
                bar.update(batch["input_ids"].shape[0])
        bar.close()
        record = {"draft": str(path), "method": type(draft).__name__, "block_size": int(draft.block_size)}
        for setting in sums.settings:
            name = "tau_walk" if setting == "T0" else f"tau_walk_{setting}"
            record[name] = sums.walk(setting)
            record[("sim_tau" if setting == "T0" else f"tau_block_{setting}")] = sums.block(setting)
        record.update(
            anchors=int(sums.anchors),
            sequences=int(sums.sequences),
            seconds=time.perf_counter() - started,
            target_last_hidden=with_target,
            anchor_stride=anchor_stride,
            convention=convention,
            rules=rules,
        )
        results.append(record)
    return results


__all__ = ["load_any_draft", "read_features", "teacher_forced_paths"]
