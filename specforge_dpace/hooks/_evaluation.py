"""Hooks for SpecForge's evaluation and best-checkpoint tracking (unified runtime).

* ``specforge.training.controller``: ``TrainerController.evaluate`` runs SpecForge's own pass unchanged
  and, for a DFlash-family model built by a patched builder (:mod:`._providers`), also the teacher-forced
  per-anchor pass (:mod:`specforge_dpace.evaluate._teacher_forced`) on every eval batch; the additive sums
  are reduced across ranks (float64 ``all_reduce``, issued on every rank even with no local batch) and
  reported as ``eval/tau_walk`` and, where the batches carry ``target_last_hidden_states``,
  ``eval/tau_walk_sample@T<t>`` / ``eval/tau_walk_greedy_draft@T<t>``, with ``eval/walk_anchors`` and
  ``eval/walk_seconds`` (the pass's time, the slowest rank's); rank 0 prints the cost next to SpecForge's.
  The pass runs inside the wrapped module's forward (DDP, FSDP), so sharded parameters are gathered as in
  SpecForge's own evaluation; under sharded FSDP every rank drafts the same number of block groups.
* ``specforge.training.trainer`` + ``specforge.training.checkpoint``: the ``CheckpointManager`` the trainer
  builds keeps the best checkpoint by ``training.best_metric`` when the user named one (SpecForge's default
  otherwise), from construction on, so a resumed run re-reads its best record under the same metric.
  The choice is part of the resume contract (:mod:`._method_providers`).
"""

from __future__ import annotations

import contextvars
import functools
import time
from typing import Any, Optional

from ._patching import PatchSet

MODULES = ("specforge.training.controller", "specforge.training.trainer", "specforge.training.checkpoint")
MARKER = "__specforge_dpace_patched__"
TARGET_HIDDEN_KEY = "target_last_hidden_states"

_BEST_METRIC: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "specforge_dpace_best_metric", default=None
)
_noted: set = set()


def _inner(module: Any) -> Any:
    """The model inside SpecForge's DDP / FSDP wrapper (the module itself when unwrapped)."""
    return getattr(module, "module", module)


def _settings(model: Any) -> Any:
    from ._providers import eval_settings_of

    return eval_settings_of(model)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _is_sharded(wrapped: Any) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(wrapped, FullyShardedDataParallel)


def _agree_max(value: int) -> int:
    """The largest ``value`` over the ranks (every rank calls it)."""
    import torch
    import torch.distributed as dist
    from specforge.eval.evaluator import Evaluator

    box = torch.tensor([value], dtype=torch.int64, device=Evaluator._comm_device())
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


class WalkCollector:
    """The per-anchor pass over one evaluation's batches, and its cross-rank reduction."""

    def __init__(self, wrapped: Any, settings: Any) -> None:
        from specforge_dpace.evaluate._teacher_forced import PassSums, settings_names

        self.wrapped, self.model, self.settings = wrapped, _inner(wrapped), settings
        self.sums = PassSums(settings_names(settings.temperatures))
        self.sharded = _world()[0] > 1 and _is_sharded(wrapped)

    def add(self, batch: Any) -> None:
        """Run the pass on one batch, through the wrapper's forward (it gathers sharded parameters)."""
        from specforge_dpace.evaluate._teacher_forced import teacher_forced_pass

        tensors = batch.tensors
        device = next(self.model.parameters()).device
        inputs = {key: tensors[key].to(device) for key in ("input_ids", "hidden_states", "loss_mask")}
        if TARGET_HIDDEN_KEY in tensors:
            inputs[TARGET_HIDDEN_KEY] = tensors[TARGET_HIDDEN_KEY].to(device)

        def run(input_ids, hidden_states, loss_mask, target_last_hidden_states=None):
            return teacher_forced_pass(
                self.model,
                input_ids,
                hidden_states,
                loss_mask,
                target_last_hidden_states,
                temperatures=self.settings.temperatures,
                anchor_stride=self.settings.anchor_stride,
                blocks_per_forward=self.settings.blocks_per_forward,
                sums=self.sums,
                forward_groups=_agree_max if self.sharded else None,
            )

        if self.wrapped is self.model:
            run(**inputs)
            return
        self.model.forward = run  # the wrapper calls the inner module's forward: this pass, once
        try:
            self.wrapped(**inputs)
        finally:
            del self.model.forward

    def reduce(self) -> Any:
        """The sums of every rank (collective: every rank calls it once per evaluation)."""
        import torch
        import torch.distributed as dist

        world, _ = _world()
        if world > 1:
            from specforge.eval.evaluator import Evaluator

            device = Evaluator._comm_device()
            vector = torch.tensor(self.sums.vector(), dtype=torch.float64, device=device)
            dist.all_reduce(vector, op=dist.ReduceOp.SUM)
            seconds = torch.tensor([self.sums.seconds], dtype=torch.float64, device=device)
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            self.sums.load_vector(vector.cpu().tolist())
            self.sums.seconds = float(seconds.item())
        return self.sums


def walk_metrics(sums: Any) -> dict:
    """``eval/*`` metrics of reduced sums; a setting nothing was counted for is left out."""
    from ._eval_settings import TAU_WALK

    metrics = {}
    for setting in sums.settings:
        value = sums.walk(setting)
        if value is not None:
            metrics[TAU_WALK if setting == "T0" else f"{TAU_WALK}_{setting}"] = value
    metrics["eval/walk_anchors"] = sums.anchors
    metrics["eval/walk_seconds"] = sums.seconds
    return metrics


def _report(sums: Any, total_s: float, metrics: dict) -> None:
    if _world()[1] != 0:
        return
    upstream = max(total_s - sums.seconds, 0.0)
    print(
        f"specforge-dpace: eval walk: {int(sums.anchors)} anchors of {int(sums.sequences)} sequences in "
        f"{sums.seconds:.2f} s (SpecForge's own eval pass {upstream:.2f} s); "
        + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("eval/tau_walk")),
        flush=True,
    )
    missing = [s for s in sums.settings if s != "T0" and sums.walk(s) is None]
    if missing and "missing" not in _noted:
        _noted.add("missing")
        print(
            f"specforge-dpace: eval walks {missing} not computed: the eval batches carry no "
            f"{TARGET_HIDDEN_KEY!r} (set training.eval_walk.temperatures to require it, or [] to skip them)",
            flush=True,
        )


def _make_evaluate(original: Any) -> Any:
    @functools.wraps(original)
    def evaluate(self, data):
        """SpecForge's evaluation, plus the walk predictors of a DFlash-family model (module docstring)."""
        strategy = self.core.strategy
        wrapped = strategy.trainable_module()
        settings = _settings(_inner(wrapped))
        if settings is None or not settings.enabled:
            return original(self, data)
        collector = WalkCollector(wrapped, settings)
        upstream = strategy.forward_loss

        def forward_loss(batch, ctx=None):
            out = upstream(batch, ctx)
            collector.add(batch)
            return out

        started = time.perf_counter()
        strategy.forward_loss = forward_loss  # SpecForge's evaluate looks the method up per batch
        try:
            metrics = original(self, data)
        finally:
            del strategy.forward_loss
        sums = collector.reduce()
        if not metrics:  # no batch anywhere: SpecForge reports nothing, and so does the walk
            return metrics
        extra = walk_metrics(sums)
        _report(sums, time.perf_counter() - started, extra)
        return {**metrics, **extra}

    setattr(evaluate, MARKER, True)
    return evaluate


def _make_trainer_init(original: Any) -> Any:
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        settings = _settings(kwargs.get("model"))
        token = _BEST_METRIC.set(None if settings is None else settings.best_metric)
        try:
            original(self, *args, **kwargs)
        finally:
            _BEST_METRIC.reset(token)

    setattr(__init__, MARKER, True)
    return __init__


def _make_manager_init(original: Any) -> Any:
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        metric = _BEST_METRIC.get()
        if metric is not None and "best_metric" not in kwargs:
            kwargs["best_metric"] = metric
        original(self, *args, **kwargs)

    setattr(__init__, MARKER, True)
    return __init__


def apply(module: Any) -> PatchSet:
    """Patch one of :data:`MODULES` (idempotent)."""
    patches = PatchSet(module.__name__)
    name = module.__name__
    if name == "specforge.training.controller":
        owner, attr, make = module.TrainerController, "evaluate", _make_evaluate
    elif name == "specforge.training.trainer":
        owner, attr, make = module.Trainer, "__init__", _make_trainer_init
    elif name == "specforge.training.checkpoint":
        owner, attr, make = module.CheckpointManager, "__init__", _make_manager_init
    else:
        raise ValueError(f"{__name__} patches {list(MODULES)}, got {name}")
    current = vars(owner)[attr]
    if getattr(current, MARKER, False):
        return patches
    patches.set(owner, attr, make(current))
    return patches


__all__ = ["MODULES", "WalkCollector", "apply", "walk_metrics"]
