"""Read SGLang ``/generate`` ``meta_info`` counters into canonical names.

The names each SGLang version emits are serving rules (``specforge_dpace.serving``
``META_FIELD_PROFILES``, read from each wheel's ``tokenizer_manager.py``); every other module asks
:func:`extract` for canonical values and never reads a raw SGLang key itself.  :func:`extract` does not
need the version: it accepts any known alias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from specforge_dpace.serving import META_FIELD_PROFILES

# canonical name -> accepted SGLang meta_info keys: every name a rule set's profile emits
# (specforge_dpace.serving META_FIELD_PROFILES), plus the spec_accepted_drafts / spec_proposed_drafts pair
# that 0.5.14 also emits as backward-compatibility aliases (tokenizer_manager.py:2337-2339; 0.5.23 dropped them)
PROFILES: dict[str, dict[str, str]] = META_FIELD_PROFILES
ALIASES: dict[str, tuple[str, ...]] = {
    canonical: tuple(
        dict.fromkeys(
            [p[canonical] for p in reversed(list(PROFILES.values())) if canonical in p]
            + {"num_correct_drafts": ["spec_accepted_drafts"], "num_proposed_drafts": ["spec_proposed_drafts"]}.get(
                canonical, []
            )
        )
    )
    for canonical in (
        "completion_tokens",
        "verify_ct",
        "accept_length",
        "num_correct_drafts",
        "num_proposed_drafts",
        "histogram",
    )
}


def profile_for(version: str) -> dict[str, str]:
    """Field names SGLang ``version`` emits (the newest profile not newer than it)."""

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())

    try:
        wanted = key(version)
    except ValueError:
        wanted = ()
    if not wanted:
        raise ValueError(f"cannot parse SGLang version {version!r}; expected e.g. 0.5.14")
    eligible = [v for v in PROFILES if key(v) <= wanted]
    if not eligible:
        raise ValueError(
            f"SGLang {version} predates DFlash serving (needs >= 0.5.11); known profiles: {sorted(PROFILES)}"
        )
    return PROFILES[max(eligible, key=key)]


class MetaFieldError(ValueError):
    """A ``/generate`` response lacks the fields acceptance is computed from."""


@dataclass(frozen=True)
class SpecMeta:
    completion_tokens: int
    verify_ct: Optional[int]
    accept_length: Optional[float]
    num_correct_drafts: Optional[int]
    num_proposed_drafts: Optional[int]
    histogram: Optional[list[int]]


def _first(meta: Mapping[str, Any], canonical: str) -> Any:
    for key in ALIASES[canonical]:
        if key in meta and meta[key] is not None:
            return meta[key]
    return None


def extract(meta: Any, *, speculative: bool) -> SpecMeta:
    """Canonical acceptance fields of one final ``meta_info``.

    With ``speculative=True`` the verify count must be present and positive; otherwise the
    server is not running speculative decoding (or speaks an unknown dialect) and tau would
    be meaningless, so this raises :class:`MetaFieldError` naming the keys it looked for. The one
    exception is a request that produced at most one token: SGLang's prefill makes the first
    token, so such a request had no verify step, and SGLang then sends no ``spec_*`` fields at
    all (``_calculate_spec_decoding_metrics`` in ``tokenizer_manager.py`` needs
    ``spec_verify_ct > 0``); its verify count is 0 and it adds nothing to tau.
    """
    if not isinstance(meta, Mapping):
        raise MetaFieldError(f"meta_info must be a JSON object, got {type(meta).__name__}: {meta!r:.200}")
    tokens = _first(meta, "completion_tokens")
    if tokens is None:
        raise MetaFieldError(
            f"meta_info has no completion token count (looked for {ALIASES['completion_tokens']}); "
            f"keys present: {sorted(meta)}"
        )
    verify = _first(meta, "verify_ct")
    accept = _first(meta, "accept_length")
    hist = _first(meta, "histogram")
    try:
        few_tokens = int(tokens) <= 1
    except (TypeError, ValueError) as exc:
        raise MetaFieldError(
            f"meta_info acceptance fields have non-numeric values: completion tokens {tokens!r}"
        ) from exc
    if speculative and (verify is None or int(verify) <= 0) and few_tokens:
        verify = 0  # the prefill token alone: no verify step
    elif speculative and (verify is None or int(verify) <= 0):
        raise MetaFieldError(
            "meta_info has no positive speculative verify count (looked for "
            f"{ALIASES['verify_ct']}; got {verify!r}); keys present: {sorted(meta)}. Is the server running "
            "with --speculative-algorithm DFLASH, and is its SGLang version in 0.5.11..0.5.23?"
        )
    correct = _first(meta, "num_correct_drafts")
    proposed = _first(meta, "num_proposed_drafts")
    try:
        return SpecMeta(
            completion_tokens=int(tokens),
            verify_ct=None if verify is None else int(verify),
            accept_length=None if accept is None else float(accept),
            num_correct_drafts=None if correct is None else int(correct),
            num_proposed_drafts=None if proposed is None else int(proposed),
            histogram=None if not hist else [int(x) for x in hist],
        )
    except (TypeError, ValueError) as exc:
        raise MetaFieldError(f"meta_info acceptance fields have non-numeric values: {exc}") from exc


def server_average_accept_length(info: Any) -> Optional[float]:
    """``internal_states[0].avg_spec_accept_length`` of ``/server_info`` (None when absent)."""
    if not isinstance(info, Mapping):
        return None
    states = info.get("internal_states")
    if isinstance(states, list) and states and isinstance(states[0], Mapping):
        value = states[0].get("avg_spec_accept_length")
        if value is not None:
            return float(value)
    value = info.get("avg_spec_accept_length")
    return None if value is None else float(value)
