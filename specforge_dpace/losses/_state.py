"""Running state an objective carries from one training micro-batch to the next.

Two objectives keep such state: ``lk-lambda(lagged=true)`` (the previous micro-batch's mean
acceptance rate per position) and composites with ``normalize=true`` (each term's running
magnitude). Both follow the same rules:

* **per rank**: the state lives on the objective object in each process and is never reduced
  across ranks (each rank's estimate comes from its own micro-batches);
* **committed on the first read outside backward**: a training micro-batch's ``reduce`` *records*
  the new state as pending, and the next read that happens outside autograd's backward pass
  *commits* it.  Activation checkpointing (SpecForge's ``checkpointed_chunk_reduce``) runs a
  chunk's function again during backward, after ``reduce``: a read there still sees the state
  the forward pass saw, so the recomputation reproduces the forward's values exactly;
* **not saved in checkpoints**: a resumed run starts the estimate afresh.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch


def in_backward() -> bool:
    """Whether autograd's engine is running a backward pass in this thread (a checkpointed chunk
    being recomputed).  Without the private probe, assume not."""
    probe = getattr(torch._C, "_current_graph_task_id", None)
    return probe is not None and probe() != -1


class CommittedOnRead:
    """A value replaced by ``merge(value, pending)`` on the first :meth:`read` outside backward after
    :meth:`record` (see the module docstring)."""

    __slots__ = ("_value", "_pending", "_merge")

    def __init__(self, merge: Callable[[Any, Any], Any]) -> None:
        self._value: Any = None
        self._pending: Any = None
        self._merge = merge

    def read(self) -> Any:
        """The committed value (None before the first commit), committing a pending one outside backward."""
        if self._pending is not None and not in_backward():
            self._value = self._merge(self._value, self._pending)
            self._pending = None
        return self._value

    def record(self, pending: Any) -> None:
        self._pending = pending

    @property
    def pending(self) -> Optional[Any]:
        return self._pending
