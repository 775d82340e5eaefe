"""SpecForge 0.2.0's own layout and decoding, as a table entry beside the servers.

SpecForge's ``export --to hf`` (``specforge/export/to_hf.py``) writes ``save_pretrained``'s directory: its
class name in ``architectures`` (``DFlashDraftModel``, ``DominoDraftModel``, ``DSparkDraftModel``) and every
head field in ``dflash_config``, which is where its classes read them (``_heads.specforge_settings``).  Its
classes decode with ``_sample_draft_tokens`` (``specforge/modeling/draft/{dflash,domino,dspark}.py``): the
"specforge" convention of the evaluator (DSpark's slot k from hidden position k, one position later than
``OnlineDSparkModel`` trains it and SGLang / vLLM serve it).

The backbone is checked with SGLang 0.5.14's DFlash loader rules (what the project validated SpecForge
exports with before 0.5.23 existed); the heads with the classes' rules.  Pure Python.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from ._backbone import check_backbone_config, check_backbone_weights
from ._common import Verdict, get, is_int, listed
from ._heads import expected_head_shapes, head_weight_errors, is_head_weight, specforge_head_name, specforge_settings
from ._methods import ARCHITECTURES, DFLASH, DOMINO, DSPARK, METHOD_NAMES
from ._sglang import BACKBONE_0_5_14
from ._table import BLOCK, DOMINO_CLASS, DSPARK_CLASS, Decoding, MethodRules, ServerRules


def _layout(method: str):
    def write(config: dict) -> dict:
        out = copy.deepcopy(config)
        out["architectures"] = [ARCHITECTURES[method]]
        return out

    return write


def check_specforge_draft(
    config: Any,
    shapes: Optional[Mapping[str, Sequence[int]]],
    *,
    server: ServerRules,
    method: str,
    target: Any = None,
    block_size: Optional[int] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Verdict:
    """The backbone by SGLang 0.5.14's DFlash rules, the head fields and tensors by SpecForge's class."""
    del options
    verdict = Verdict()
    check_backbone_config(config, BACKBONE_0_5_14, target=target, block_size=block_size, verdict=verdict, method=method)
    resolved = verdict.spec.block_size if verdict.spec is not None else None
    settings, errors = specforge_settings(config, method, block_size=resolved)
    verdict.errors.extend(errors)
    if verdict.spec is not None:
        verdict.spec.head = settings
    if shapes is None or verdict.spec is None:
        return verdict
    backbone = {n: s for n, s in shapes.items() if not is_head_weight(n)}
    errors, notes = check_backbone_weights(backbone, verdict.spec, BACKBONE_0_5_14)
    verdict.errors.extend(errors)
    verdict.notes.extend(notes)
    found: dict[str, tuple[int, ...]] = {}
    legacy = []
    for stored, shape in shapes.items():
        if not is_head_weight(stored):
            continue
        bare = specforge_head_name(stored)
        if bare in found:
            verdict.errors.append(f"head weight {bare} is stored twice (also as {stored}); keep one name")
        found[bare] = tuple(int(d) for d in shape)
        if stored.removeprefix("model.").startswith("logit_head."):
            legacy.append(stored)
    if legacy:
        verdict.notes.append(
            f"{len(legacy)} head weights use the early 'logit_head.' names; SpecForge maps them to the direct ones "
            "when loading (normalize_draft_head_checkpoint_keys)"
        )
    owner = ARCHITECTURES[method]
    if method == DFLASH:
        if found:
            verdict.errors.append(
                f"Domino / DSpark head weights in a DFlash checkpoint ({listed(sorted(found))}): DFlashDraftModel has "
                "no logits head and would drop them; accepted: architectures naming the method they belong to"
            )
        return verdict
    needed = ("emb_dim", "gru_hidden_dim") if method == DOMINO else ("markov_rank",)
    if any(settings.get(k) is None for k in needed):
        return verdict  # the config errors already say why the head cannot be sized
    vocab = verdict.spec.vocab_size
    if not is_int(vocab):
        verdict.errors.append(f"config.json vocab_size={vocab!r}: the {METHOD_NAMES[method]} head is sized by it")
        return verdict
    expected = expected_head_shapes(method, settings, hidden=verdict.spec.hidden_size, vocab=vocab)
    verdict.errors.extend(head_weight_errors(found, expected, owner, settings))
    return verdict


def _architecture_check(check):
    def wrapped(config, shapes, *, server, method, target=None, block_size=None, options=None):
        verdict = check(config, shapes, server=server, method=method, target=target, block_size=block_size)
        archs = get(config, "architectures")
        if isinstance(archs, (list, tuple)) and archs and ARCHITECTURES[method] not in archs:
            verdict.errors.insert(
                0, f"architectures must contain {ARCHITECTURES[method]!r} (SpecForge's class), got {list(archs)!r}"
            )
        return verdict

    return wrapped


def _class_rules(method: str, proposals: str, source: str) -> MethodRules:
    """A SpecForge class: its name, its block sampling (either proposal mode), its own layout."""
    return MethodRules(
        method,
        served=True,
        architectures=(ARCHITECTURES[method],),
        export_architecture=ARCHITECTURES[method],
        decoding=Decoding(proposals, ("sample", "greedy"), source),
        write_config=_layout(method),
        source=source,
    )


SPECFORGE_0_2_0 = ServerRules(
    name="specforge-0.2.0",
    server="specforge",
    version="0.2.0",
    methods={
        DFLASH: _class_rules(DFLASH, BLOCK, "specforge/modeling/draft/dflash.py:423-430"),
        DOMINO: _class_rules(DOMINO, DOMINO_CLASS, "specforge/modeling/draft/domino.py:85-106"),
        DSPARK: _class_rules(DSPARK, DSPARK_CLASS, "specforge/modeling/draft/dspark.py:326-343"),
    },
    check=_architecture_check(check_specforge_draft),
)
