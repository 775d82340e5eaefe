"""Prompts for the evaluator: token-id lists from a JSONL file or from Python objects.

A JSONL line is an object with ``"input_ids"`` (a list of ints) or ``"prompt"`` (text, encoded
with the tokenizer).  Text is encoded as is (no chat template), so what is measured is exactly
what the file says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

Encoder = Callable[[str], list]


def _as_ids(item: Any, where: str, encode: Optional[Encoder]) -> list[int]:
    if hasattr(item, "tolist") and not isinstance(item, (str, bytes)):
        item = item.tolist()
    if isinstance(item, dict):
        if "input_ids" in item:
            item = item["input_ids"]
        elif "prompt" in item:
            item = item["prompt"]
        else:
            raise ValueError(f"{where}: object has neither 'input_ids' nor 'prompt' (keys: {sorted(item)})")
    if isinstance(item, str):
        if encode is None:
            raise ValueError(f"{where}: a text prompt needs a tokenizer (none found); give input_ids instead")
        item = encode(item)
    if not isinstance(item, (list, tuple)) or not item:
        raise ValueError(f"{where}: expected a non-empty list of token ids, got {item!r:.80}")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in item):
        raise ValueError(f"{where}: token ids must be ints, got {item!r:.80}")
    return [int(t) for t in item]


def read_prompt_records(path) -> list[dict]:
    """Objects of a prompts JSONL file (blank lines skipped; errors name the line)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file {str(path)!r} does not exist")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: expected an object with 'prompt' or 'input_ids', got {type(obj).__name__}")
        records.append(obj)
    return records


def needs_tokenizer(items: Sequence[Any]) -> bool:
    return any(isinstance(i, str) or (isinstance(i, dict) and "input_ids" not in i) for i in items)


def load_prompts(source, encode: Optional[Encoder] = None, limit: Optional[int] = None) -> list[list[int]]:
    """Token-id lists from a JSONL path or a list (of id lists, 1-D tensors, strings or dicts)."""
    if isinstance(source, (str, Path)):
        items: Sequence[Any] = read_prompt_records(source)
        label = str(source)
    else:
        items = list(source)
        label = "prompts"
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"{label}: no prompts")
    return [_as_ids(item, f"{label}[{i}]", encode) for i, item in enumerate(items)]
