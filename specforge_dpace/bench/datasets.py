"""Benchmark prompt sets from local files (JSONL, JSON list or parquet); nothing is downloaded.

Each loader turns one record into a user message with the prompt format DFlash benchmarks use
for that set. :func:`render` then applies (or deliberately does not apply) the target's chat
template with thinking explicitly on or off; both choices are recorded in the results because
Qwen3's thinking mode changes tau drastically (DESIGN.md section 5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

DATA_DIR = Path(__file__).with_name("data")
MATH_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Prompt:
    dataset: str
    prompt_id: str
    message: str


def _field(record: dict, names: tuple[str, ...], dataset: str, where: str) -> Any:
    for name in names:
        if record.get(name) not in (None, ""):
            return record[name]
    raise ValueError(f"{dataset} record {where} has none of the fields {names}; fields present: {sorted(record)}")


def _gsm8k(r: dict, w: str) -> str:
    return str(_field(r, ("question",), "gsm8k", w)) + MATH_SUFFIX


def _math500(r: dict, w: str) -> str:
    return str(_field(r, ("problem", "question"), "math500", w)) + MATH_SUFFIX


def _humaneval(r: dict, w: str) -> str:
    code = _field(r, ("prompt",), "humaneval", w)
    return f"Write a solution to the following problem and make sure that it passes the tests:\n```python\n{code}\n```"


def _mbpp(r: dict, w: str) -> str:
    text = _field(r, ("text", "prompt", "description"), "mbpp", w)
    tests = r.get("test_list") or []
    return f"{text}\nYour code should pass these tests:\n" + "\n".join(map(str, tests)) if tests else str(text)


def _mtbench(r: dict, w: str) -> str:
    turns = _field(r, ("turns", "prompt"), "mt-bench", w)
    return str(turns[0] if isinstance(turns, list) else turns)  # first turn: single-request benchmark


def _alpaca(r: dict, w: str) -> str:
    inst = str(_field(r, ("instruction",), "alpaca", w))
    extra = r.get("input") or ""
    return f"{inst}\n\n{extra}" if extra else inst


def _plain(r: dict, w: str) -> str:
    return str(_field(r, ("prompt", "text", "question", "instruction"), "prompts", w))


FORMATS: dict[str, Callable[[dict, str], str]] = {
    "gsm8k": _gsm8k,
    "math500": _math500,
    "humaneval": _humaneval,
    "mbpp": _mbpp,
    "mt-bench": _mtbench,
    "alpaca": _alpaca,
    "prompts": _plain,
}
ID_FIELDS = ("id", "task_id", "question_id", "idx", "unique_id")


def read_records(path: Path) -> list[dict]:
    """Rows of a .jsonl, .json (list) or .parquet file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ValueError(
                f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert to JSONL"
            ) from exc
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json dataset must hold a list of records")
        return data
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not JSON ({exc})") from exc
        return rows
    raise ValueError(f"{path}: unsupported dataset format {suffix!r}; accepted: .jsonl, .json, .parquet")


def load_dataset(
    kind: str, path: Optional[str | Path] = None, limit: Optional[int] = None, label: Optional[str] = None
) -> list[Prompt]:
    """Prompts of ``kind`` (one of :data:`FORMATS`, or ``smoke`` for the bundled set)."""
    if kind == "smoke":
        kind, path = "prompts", path or DATA_DIR / "smoke.jsonl"
        label = label or "smoke"
    if kind not in FORMATS:
        raise ValueError(f"unknown dataset kind {kind!r}; accepted: {sorted(FORMATS) + ['smoke']}")
    if path is None:
        raise ValueError(f"dataset {kind!r} needs a local file: --dataset {kind}=PATH (nothing is downloaded)")
    label = label or kind
    records = read_records(Path(path))
    ids: list[str] = []
    first_seen: dict[str, int] = {}
    for i, record in enumerate(records):  # every record, not only the first `limit`: ids key the results
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i} is not an object")
        pid = next((str(record[k]) for k in ID_FIELDS if record.get(k) is not None), str(i))
        if pid in first_seen:
            raise ValueError(
                f"dataset file {path}: prompt id {pid!r} appears twice (records #{first_seen[pid]} and #{i}); "
                f"results are keyed by prompt id, so ids ({', '.join(ID_FIELDS)}, else the record's position) "
                "must be unique"
            )
        first_seen[pid] = i
        ids.append(pid)
    prompts = []
    for i, (record, pid) in enumerate(zip(records, ids)):
        if limit is not None and len(prompts) >= limit:
            break
        prompts.append(Prompt(label, pid, FORMATS[kind](record, f"#{i} of {path}")))
    if not prompts:
        raise ValueError(f"dataset {label} ({path}) has no records")
    return prompts


def dataset_path(kind: str, path: Optional[str | Path] = None) -> Path:
    """The local file ``load_dataset(kind, path)`` reads (the bundled file for ``smoke``)."""
    if kind == "smoke":
        return Path(path or DATA_DIR / "smoke.jsonl")
    if path is None:
        raise ValueError(f"dataset {kind!r} needs a local file: --dataset {kind}=PATH (nothing is downloaded)")
    return Path(path)


def dataset_identity(kind: str, path: Optional[str | Path] = None) -> dict[str, Any]:
    """What identifies a data set file in the results: kind, absolute path and content sha256."""
    from .._hashing import sha256_file

    file = dataset_path(kind, path).resolve()
    return {"kind": kind, "path": str(file), "sha256": sha256_file(file)}


def parse_dataset_arg(text: str) -> tuple[str, Optional[str]]:
    """``KIND=PATH`` or ``smoke`` -> (kind, path)."""
    kind, _, path = text.partition("=")
    return kind.strip(), (path.strip() or None)


@dataclass(frozen=True)
class TemplateChoice:
    """How prompts are turned into model input; recorded in every result."""

    mode: str  # "tokenizer" (target's chat template) or "raw" (message sent as-is)
    thinking: Optional[bool]

    def describe(self) -> str:
        if self.mode == "raw":
            return "raw (no chat template)"
        return f"tokenizer chat template, thinking {'on' if self.thinking else 'off'}"


def make_renderer(choice: TemplateChoice, tokenizer_path: Optional[str]) -> Callable[[str], str]:
    if choice.mode == "raw":
        return lambda message: message
    if choice.mode != "tokenizer":
        raise ValueError(f"unknown chat template mode {choice.mode!r}; accepted: tokenizer, raw")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"--chat-template tokenizer: no tokenizer loads from {tokenizer_path!r} ({exc}); "
            "pass --tokenizer DIR, or --chat-template raw to send prompts as they are"
        ) from None
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"tokenizer at {tokenizer_path} has no chat template; use --chat-template raw")

    def render(message: str) -> str:
        return tok.apply_chat_template(
            [{"role": "user", "content": message}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=bool(choice.thinking),
        )

    return render
