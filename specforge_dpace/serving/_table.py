"""The shape of a serving rule set: one :class:`ServerRules` per server and version, one
:class:`MethodRules` per draft method inside it, and the :class:`Decoding` the offline evaluator reproduces.

A new server or version is a new table entry (see ``_sglang.py``, ``_specforge.py``) plus, when it loads
drafters differently, its own loader-rules module whose ``check`` the entry names; nothing here branches on
a server's name.  Pure Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ._methods import METHOD_NAMES

# Proposal conventions the evaluator knows (evaluate/_proposals.py implements each).
BLOCK = "block"  # DFlash: K - 1 proposals from draft positions 1..K-1, each slot independent
DOMINO_ROLLOUT = "domino-rollout"  # SGLang 0.5.23: first slot from base logits, GRU seeded [anchor, d1]
DOMINO_CLASS = "domino-class"  # SpecForge DominoDraftModel._sample_draft_tokens
ANCHOR_MARKOV = "anchor-markov"  # SGLang 0.5.23 / vLLM 0.33 DSpark: gamma proposals from the anchor row on
DSPARK_CLASS = "dspark-class"  # SpecForge DSparkDraftModel._sample_draft_tokens (slot k from position k)
DRAFT_SAMPLINGS = ("greedy", "sample")


@dataclass(frozen=True)
class Decoding:
    """How a server drafts and verifies one method's blocks.

    ``draft_samplings``: the proposal modes it performs at temperature > 0, the default first (``greedy`` =
    argmax proposals verified target-only; ``sample`` = proposals drawn from q, standard speculative
    sampling).  ``verify_extra``: the verify window is the config's ``block_size`` plus this (DSpark's
    ``block_size`` is gamma, the drafted tokens; the window is gamma + 1).  ``candidate_pool``: Domino's
    block-shared candidate pool size (0 = the full vocabulary)."""

    proposals: str
    draft_samplings: tuple[str, ...]
    source: str
    verify_extra: int = 0
    candidate_pool: Optional[int] = None

    def verify_window(self, block_size: int) -> int:
        return int(block_size) + self.verify_extra

    def drafted_tokens(self, block_size: int) -> int:
        return self.verify_window(block_size) - 1


@dataclass(frozen=True)
class MethodRules:
    """What one server version does with one method's drafter.

    ``served`` False: ``reason`` says why (with the wheel file:line).  ``architectures``: the config
    ``architectures`` it loads for the method; ``export_architecture`` the one ``convert`` writes.
    ``launch``: the server flags for a draft directory and its config ``block_size``; ``block_flags`` the
    flags that carry a block size (a user's value must agree).  ``devices``: devices that serve it;
    ``dtypes``: ``--dtype`` values it refuses or crashes on, with the reason."""

    method: str
    served: bool
    reason: str = ""
    algorithm: Optional[str] = None
    architectures: tuple[str, ...] = ()
    export_architecture: Optional[str] = None
    decoding: Optional[Decoding] = None
    launch: Optional[Callable[[str, Optional[int]], list]] = None
    block_flags: Mapping[str, Callable[[int], int]] = field(default_factory=dict)
    devices: tuple[str, ...] = ()
    dtypes: Mapping[str, str] = field(default_factory=dict)
    sampling_verify: bool = False  # T > 0 needs the target-only sampling kernel (DFLASH's verify)
    write_config: Optional[Callable[[dict], dict]] = None  # canonical (SpecForge) config -> this layout
    # named layouts a user may pick (vLLM's DFlash: "zlab", "speculators"); write_config is the default one
    layouts: Mapping[str, Callable[[dict], dict]] = field(default_factory=dict)
    source: str = ""

    @property
    def name(self) -> str:
        return METHOD_NAMES[self.method]

    def writer(self, layout: Optional[str] = None) -> Callable[[dict], dict]:
        """The config writer of ``layout`` (None: the default); a ``ValueError`` naming the accepted ones."""
        if layout is None:
            return self.write_config
        if layout not in self.layouts:
            accepted = sorted(self.layouts) or ["none: this server has one layout; drop --layout"]
            raise ValueError(f"layout {layout!r} is not one {self.name} drafters are written in; accepted: {accepted}")
        return self.layouts[layout]


@dataclass(frozen=True)
class ServerRules:
    """One server and version: its methods, its loader check, its request counters and its endpoints.

    ``check(config, shapes, *, method, target, block_size, options)`` returns a ``Verdict`` for a draft
    (``shapes`` None checks the config alone).  ``meta_fields``: canonical counter name -> the key its
    ``/generate`` ``meta_info`` carries.  ``sampling_verify_devices``: devices whose build has the
    target-only sampling kernel DFLASH verifies with at temperature > 0."""

    name: str
    server: str
    version: str
    methods: Mapping[str, MethodRules]
    check: Callable[..., Any]
    meta_fields: Mapping[str, str] = field(default_factory=dict)
    sampling_verify_devices: tuple[str, ...] = ()
    weight_aliases: Mapping[str, str] = field(default_factory=dict)  # stored name -> the loader's parameter name

    def method(self, method: str) -> MethodRules:
        try:
            return self.methods[method]
        except KeyError:
            raise ValueError(f"{self.name} has no rules for method {method!r}; known: {sorted(self.methods)}") from None

    def serving_problem(self, method: str) -> Optional[str]:
        """Why this server cannot serve a ``method`` drafter (None: it can)."""
        rules = self.methods.get(method)
        if rules is None:
            return f"{self.name} has no rules for method {method!r}"
        if rules.served:
            return None
        served = ", ".join(m.name for m in self.methods.values() if m.served) or "nothing"
        return f"{self.name} does not serve {rules.name} drafters ({rules.reason}); it serves: {served}"

    def served_methods(self) -> list[str]:
        return [m for m, r in self.methods.items() if r.served]
