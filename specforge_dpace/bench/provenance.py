"""What a benchmark result was measured with, and the resume key derived from it.

A *result set* is one (backend, drafter, dataset). Its settings record holds everything that
changes a result of it:

* ``run``: backend, target (path + sha256 of ``config.json`` / ``generation_config.json`` and of
  every weight file: a target changed in place, same names and sizes, is another target; the hashes
  are cached per path, size, mtime, ctime and inode, so a 16 GB target is read once), tokenizer
  (when one is used: path + sha256 of its tokenizer and chat-template files), chat template choice,
  sampling (``top_k``, ``top_p``, ``seed``, ``max_new_tokens``), the runner's version fields
  (specforge-dpace version, results schema, and the backend's libraries), and for ``--backend sglang``
  the request concurrency;
* ``drafter``: its name, the sha256 of its checkpoint (``validate.checkpoint_hash``: config and
  every weight byte) and block size, or ``speculative: false`` for the baseline; how its server
  is started (launcher command and ``--server-args``) or the URL it is attached to;
* ``dataset``: kind, absolute path and content sha256 of the file (or a digest of the prompts
  themselves when they were given in memory).

Temperature and prompt id are per-record dimensions. ``setting_id`` is a digest of the settings
record; every request record carries both, and the resume key (``results.KEY_FIELDS``) includes
``setting_id``, so a record is only ever reused by a run with identical settings.

A rerun whose settings differ from what the output directory already holds is refused
(:class:`ResumeMismatch`, a ``ValueError``) before anything is launched, with the list of what
changed: one output directory holds one run configuration, to which drafters, datasets,
temperatures and prompts can be added; it never mixes, and never relabels, results measured with
other settings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

RESULTS_SCHEMA = 3  # 3: the target identified by the content of its weights
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class ResumeMismatch(ValueError):
    """The output directory holds results measured with other settings than this run's."""


def file_sha256(path: str | Path) -> str:
    from .._hashing import sha256_file

    return sha256_file(path)


def digest(data: Any) -> str:
    """sha256 of the canonical JSON of ``data`` (sorted keys)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def target_identity(path: str | Path) -> dict[str, Any]:
    """Path, config hashes and the sha256 of every weight file (``_hashing.sha256_file_cached``: a 16 GB
    target is read once, then recognised by path, size and times). A path that is not local is kept as given."""
    from .._hashing import sha256_file_cached

    p = Path(path)
    if not p.exists():
        return {"path": str(path), "local": False}
    p = p.resolve()
    ident: dict[str, Any] = {"path": str(p)}
    if not p.is_dir():
        ident["sha256"] = sha256_file_cached(p)
        return ident
    for name in ("config.json", "generation_config.json"):
        if (p / name).is_file():
            ident[name.replace(".json", "_sha256")] = file_sha256(p / name)
    weights = sorted(
        f for f in p.iterdir() if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or f.name.endswith(".index.json"))
    )
    ident["weights_sha256"] = {f.name: sha256_file_cached(f) for f in weights}
    return ident


def tokenizer_identity(path: str | Path) -> dict[str, Any]:
    """Path and sha256 of each tokenizer / chat-template file there (the chat template lives in them)."""
    p = Path(path)
    if not p.is_dir():
        return {"path": str(path), "local": False}
    p = p.resolve()
    return {
        "path": str(p),
        "files": {name: file_sha256(p / name) for name in TOKENIZER_FILES if (p / name).is_file()},
    }


def prompts_identity(prompts: Iterable[Any]) -> dict[str, Any]:
    """For prompts given in memory (library use): a digest of their ids and messages."""
    return {"in_memory": True, "prompts_sha256": digest([(p.prompt_id, p.message) for p in prompts])}


def runner_versions(backend: str) -> dict[str, Any]:
    from .._versions import package_versions

    libs = {"hf": ("torch", "transformers", "specforge"), "vllm": ("vllm",)}.get(backend, ("sglang",))
    return {"results_schema": RESULTS_SCHEMA, **package_versions(("specforge-dpace", *libs))}


def settings_id(settings: Mapping[str, Any]) -> str:
    return digest(settings)[:16]


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: data}


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 70 else text[:67] + "..."


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``field: recorded -> now`` for every leaf that differs (dotted paths)."""
    a, b = _flatten(recorded), _flatten(current)

    def shadowed(key: str, side: dict) -> bool:  # a null on one side where the other has a mapping
        return key not in side and any(k.startswith(key + ".") for k in side)

    out = []
    for key in sorted(set(a) | set(b)):
        if shadowed(key, a) or shadowed(key, b):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: {_short(a.get(key, '<absent>'))} (recorded) -> {_short(b.get(key, '<absent>'))} (now)")
    return out


def check_resume(records: list[dict], current: Mapping[tuple[str, str], Mapping[str, Any]], where: str) -> None:
    """Refuse (``ResumeMismatch``) when ``records`` were measured with other settings than ``current``.

    ``current`` maps (drafter, dataset) of this run to its settings record. Every recorded
    record must share this run's ``run`` part; a recorded drafter (dataset) that this run also
    measures must have the same ``drafter`` (``dataset``) part. Records of drafters or datasets
    that this run does not measure are kept and reported with the settings they carry."""
    if not records or not current:
        return
    untagged = [r for r in records if not isinstance(r.get("settings"), Mapping)]
    if untagged:
        raise ResumeMismatch(
            f"{where} holds {len(untagged)} result(s) recorded without their settings (an older "
            "specforge-dpace), so this run cannot tell whether they were measured the same way and will not "
            f"reuse or report them. Use a new --out directory, or move {where} away to measure anew here."
        )
    run = next(iter(current.values()))["run"]
    drafters = {d: s["drafter"] for (d, _), s in current.items()}
    datasets = {ds: s["dataset"] for (_, ds), s in current.items()}
    problems: dict[str, list[str]] = {}
    for r in records:
        recorded = r["settings"]
        checks = [("the run", recorded.get("run"), run)]
        if r.get("drafter") in drafters:
            checks.append((f"drafter {r['drafter']!r}", recorded.get("drafter"), drafters[r["drafter"]]))
        if r.get("dataset") in datasets:
            checks.append((f"dataset {r['dataset']!r}", recorded.get("dataset"), datasets[r["dataset"]]))
        for scope, old, new in checks:
            if old != new and scope not in problems:
                problems[scope] = differences(old or {}, new)
    if problems:
        lines = [f"  {scope}: {change}" for scope, changes in problems.items() for change in changes]
        raise ResumeMismatch(
            f"{where} already holds results measured with other settings than this run's; they would be "
            "reused or reported under this run's settings, so nothing was run. What changed:\n"
            + "\n".join(lines)
            + "\nUse a new --out directory for the new settings (or rerun with the recorded ones to resume), "
            f"or move {where} away to measure anew here."
        )
