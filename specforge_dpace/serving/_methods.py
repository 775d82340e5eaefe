"""The DFlash family's three draft methods and how a draft config names its method.

Two layouts name a method differently:

- SpecForge 0.2.0's ``export --to hf`` (``specforge/export/to_hf.py``: ``save_pretrained`` of the class) writes
  ``architectures: [<class name>]``: ``DFlashDraftModel``, ``DominoDraftModel`` or ``DSparkDraftModel``
  (``specforge/modeling/draft/{dflash,domino,dspark}.py``).
- SGLang 0.5.23 serves Domino as a DFLASH sub-mode: ``architectures: ["DFlashDraftModel"]`` with
  ``projector_type: "domino"`` read from ``dflash_config``, then the top level
  (``srt/speculative/dflash_utils.py:727-734``); DSpark as ``DSparkDraftModel`` (``srt/models/dspark.py:995``;
  ``Qwen3DSparkModel`` is the same class for Qwen3-style checkpoints).

:func:`draft_method` reads both.  Pure Python.
"""

from __future__ import annotations

from typing import Any

from ._common import get, section

DFLASH, DOMINO, DSPARK = "dflash", "domino", "dspark"
METHODS = (DFLASH, DOMINO, DSPARK)
METHOD_NAMES = {DFLASH: "DFlash", DOMINO: "Domino", DSPARK: "DSpark"}
# SpecForge 0.2.0's class names (what its HF export writes in ``architectures``)
ARCHITECTURES = {DFLASH: "DFlashDraftModel", DOMINO: "DominoDraftModel", DSPARK: "DSparkDraftModel"}
METHOD_OF_ARCHITECTURE = {
    "DFlashDraftModel": DFLASH,
    "DominoDraftModel": DOMINO,
    "DSparkDraftModel": DSPARK,
    "Qwen3DSparkModel": DSPARK,  # sglang/srt/models/dspark.py:977 (a DSparkDraftModel subclass)
}


def accepted_architectures_text() -> str:
    return (
        ", ".join(f"{arch!r} ({METHOD_NAMES[m]})" for m, arch in ARCHITECTURES.items())
        + ", or 'DFlashDraftModel' with projector_type 'domino' (SGLang 0.5.23's Domino)"
    )


def projector_type(config: Any) -> Any:
    """``projector_type`` as SGLang 0.5.23 reads it: ``dflash_config`` first, then the top level."""
    nested = section(config, "dflash_config")
    if "projector_type" in nested:
        return nested["projector_type"]
    return get(config, "projector_type")


def draft_method(config: Any, *, where: str = "draft config") -> str:
    """``"dflash"``, ``"domino"`` or ``"dspark"`` from the config's ``architectures`` (and, for
    ``DFlashDraftModel``, its ``projector_type``); a ``ValueError`` naming the value and the accepted
    names otherwise."""
    if get(config, "speculators_model_type") == "dflash":  # vLLM's speculators layout (algos.py:91-126)
        return DFLASH
    archs = get(config, "architectures")
    if not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
        raise ValueError(
            f"{where} has architectures={archs!r}; accepted: a list holding one of {accepted_architectures_text()}"
        )
    found = sorted({METHOD_OF_ARCHITECTURE[a] for a in archs if a in METHOD_OF_ARCHITECTURE})
    if not found:
        raise ValueError(
            f"{where} has architectures={list(archs)!r}; accepted: a list holding one of "
            f"{accepted_architectures_text()}"
        )
    if len(found) > 1:
        raise ValueError(
            f"{where} has architectures={list(archs)!r}, naming several draft methods "
            f"({', '.join(METHOD_NAMES[m] for m in found)}); accepted: exactly one of {accepted_architectures_text()}"
        )
    method = found[0]
    if method == DFLASH and projector_type(config) == DOMINO:
        return DOMINO
    return method
