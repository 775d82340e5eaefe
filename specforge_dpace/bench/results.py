"""Result files of one benchmark output directory.

``requests.jsonl`` gets one line per finished request as it arrives (flushed and fsynced), so an
interrupted run resumes by skipping every key already there; the key includes ``setting_id``, the
digest of everything the result was measured with (``provenance``). ``server_stats.jsonl`` keeps
the server-average tau of each measured segment. A last line without its newline (a run killed
mid-write) is completed when it is a whole record and dropped with a warning naming the file and
line when it is torn, so the next record starts on a line of its own; any other line that is not a
JSON record is refused (:class:`DamagedResults`, naming the file and line) rather than skipped and
measured again. Every summary counts each key once (its first record), whatever the history of the
file, and a record is never stored under a key it already has or under a non-finite one. The summary
(JSON with provenance, Markdown, CSV, PNG) is rebuilt from those files at the end of every run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from specforge_dpace import report
from specforge_dpace.bench.metrics import add_speedups, summarize_group

BASELINE = "baseline"
#: Files of an output directory: appended as results arrive, and rewritten whole (atomically) by every run.
APPENDED_FILES = ("requests.jsonl", "server_stats.jsonl")
REPORT_FILES = ("provenance.json", "summary.json", "summary.md", "summary.csv", "tau_speedup.png")
KEY_FIELDS = ("backend", "drafter", "dataset", "temperature", "prompt_id", "setting_id")
TABLE_COLUMNS = (
    "backend",
    "dataset",
    "temperature",
    "drafter",
    "requests",
    "tau_mean_per_request",
    "tau_token_weighted",
    "tau_per_step",
    "tau_server_avg",
    "tau_metrics",
    "output_tokens_per_s",
    "speedup",
    "latency_mean_s",
    "latency_p90_s",
)


# The two tau conventions: [S] = SGLang's (completion_tokens / spec_verify_ct, the prefill token
# included: what SGLang's per-request spec_accept_length is); [P] = per verify step, the prefill
# token excluded (what the offline evaluator calls tau; SGLang's server average counts this way).
TAU_DEFINITIONS = {
    "tau_mean_per_request": "[S] tau (SGLang convention: completion_tokens / spec_verify_ct, prefill token "
    "included), mean over requests: the mean of SGLang's per-request spec_accept_length",
    "tau_token_weighted": "[S] tau (SGLang convention: completion_tokens / spec_verify_ct, prefill token "
    "included), token-weighted: sum completion_tokens / sum spec_verify_ct",
    "tau_per_step": "[P] tau (per verify step, prefill excluded), token-weighted: sum (completion_tokens - 1) / "
    "sum spec_verify_ct, the offline evaluator's tau",
    "tau_server_avg": "[P, lagged] sglang backend only: /server_info internal_states[0].avg_spec_accept_length "
    "read after each measured group (cache and average flushed before it), step-weighted over groups; per "
    "verify step, prefill excluded, counted before max_new_tokens truncation, and SGLang folds steps into "
    "it only every 40th decode iteration (decode_log_interval), so it misses each group's last < 40 "
    "iterations and is absent for a group of fewer; none for --backend hf (no server)",
    "tau_metrics": "[P] vllm backend only: 1 + accepted / drafts from vLLM's /metrics counters "
    "(vllm:spec_decode_num_accepted_tokens_total, vllm:spec_decode_num_drafts_total) read as deltas around each "
    "measured group: per verify step, prefill excluded, counted before max_tokens truncation. With --backend "
    "vllm the [S] / [P] columns come from vLLM's per-request metrics.speculative_decoding (num_spec_steps as the "
    "verify count) when the server sends them",
}
TAU_HEADERS = {
    "tau_mean_per_request": "tau_mean_per_request[S]",
    "tau_token_weighted": "tau_token_weighted[S]",
    "tau_per_step": "tau_per_step[P]",
    "tau_server_avg": "tau_server_avg[P,lag]",
    "tau_metrics": "tau_metrics[P,vLLM]",
}
TAU_LEGEND = (
    "[S] = tau (SGLang convention: completion_tokens / spec_verify_ct, prefill token included); "
    "[P] = tau (per verify step, prefill excluded); "
    "[P,lag] = SGLang's /server_info average (sglang backend only; lags: folded every 40 decode iterations); "
    "[P,vLLM] = 1 + accepted / drafts from vLLM's /metrics counter deltas (vllm backend only)"
)


def vllm_setting_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``drafter dataset T=t: <the vLLM setting>`` for every --backend hf row that has one."""
    return [
        f"{r['drafter']} {r['dataset']} T={r['temperature']:g}: {r['vllm_setting']}"
        for r in rows
        if r.get("vllm_setting")
    ]


def display_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = TABLE_COLUMNS):
    """(rows, columns) with each tau column labelled with its convention, for printed tables."""
    headers = [TAU_HEADERS.get(c, c) for c in columns]
    return [{TAU_HEADERS.get(c, c): r.get(c) for c in columns} for r in rows], headers


def record_key(record: dict) -> tuple:
    return tuple(record.get(k) for k in KEY_FIELDS)


def repair_torn_tail(path: Path) -> None:
    """Make ``path`` end with a newline before anything is appended to it.

    A last line without its newline is a record cut by a crash mid-write: appending would glue
    the next record onto it and lose both. A last line that still parses as a JSON object only
    lost its newline and is completed; a torn one is dropped (truncated), with a warning naming
    the file and the line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        line = data.count(b"\n", 0, cut) + 1
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:
            whole = False
        if whole:
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n")
        else:
            fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())
    if not whole:
        warnings.warn(
            f"{path}:{line}: dropped a torn last record (no final newline, not valid JSON: the run was "
            f"killed while writing it; that request will be measured again): {tail[:80]!r}",
            stacklevel=3,
        )


class DamagedResults(ValueError):
    """A result file has a line that is not a record (not the torn last line of a crash): edited or damaged."""


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` of every non-empty line; a line that is not a JSON object is refused
    (:class:`DamagedResults`, naming the file and line): skipping it would re-measure that request without a
    word.  (A torn *last* line is a crash mid-write, handled by :func:`repair_torn_tail` before this.)"""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                record, why = None, f"not valid JSON ({exc.msg})"
            else:
                why = "not a JSON object"
            if not isinstance(record, dict):
                raise DamagedResults(
                    f"{path}:{number} is {why}: {line.strip()[:80]!r}. The file was edited or damaged; a skipped "
                    "line would be measured again and counted without a word, so nothing was run. Repair or "
                    f"delete line {number} (deleting a request's line re-measures that request), then rerun"
                )
            yield number, record


def read_result_file(path: Path) -> tuple[list[dict], list[int]]:
    """``(records, repeated_lines)``: every record of a JSONL result file in file order, each key (``KEY_FIELDS``)
    once, the first one; and the line numbers of the records whose key an earlier line already has."""
    records, repeated, seen = [], [], set()
    for number, record in _json_lines(path):
        key = record_key(record)
        if key in seen:
            repeated.append(number)
            continue
        seen.add(key)
        records.append(record)
    return records, repeated


def _check_key(record: Mapping[str, Any]) -> None:
    """A record's key must survive JSON unchanged (a NaN or infinite temperature would be stored as null)."""
    bad = [
        (k, v) for k, v in zip(KEY_FIELDS, record_key(dict(record))) if isinstance(v, float) and not math.isfinite(v)
    ]
    if bad:
        raise ValueError(f"result key fields {bad} are not finite; a result is only ever stored under a finite key")


class ResultStore:
    def __init__(self, out_dir: str | Path):
        from specforge_dpace._outdir import check_writable_dir

        self.out_dir = Path(out_dir)
        check_writable_dir(self.out_dir, "--out")
        self.requests_path = self.out_dir / "requests.jsonl"
        self.stats_path = self.out_dir / "server_stats.jsonl"
        self.logs_dir = self.out_dir / "logs"
        for path in (self.requests_path, self.stats_path):
            repair_torn_tail(path)
        records, repeated = read_result_file(self.requests_path)  # a damaged line: DamagedResults, before any work
        self._stats()  # the same for server_stats.jsonl
        if repeated:
            lines = ", ".join(map(str, repeated[:10])) + (" ..." if len(repeated) > 10 else "")
            warnings.warn(
                f"{self.requests_path}: {len(repeated)} record(s) repeat the key of an earlier one (lines {lines}); "
                "every key is counted once, its first record",
                stacklevel=2,
            )
        self._done = {record_key(r) for r in records}

    def is_done(self, key: tuple) -> bool:
        return key in self._done

    def add(self, record: dict) -> None:
        _check_key(record)
        key = record_key(record)
        if key in self._done:  # never two records of one key (the runner only measures what is not done)
            raise ValueError(f"a result for {dict(zip(KEY_FIELDS, key))} is already in {self.requests_path}")
        report.append_jsonl(self.requests_path, record)
        self._done.add(key)

    def add_server_stat(self, stat: dict) -> None:
        report.append_jsonl(self.stats_path, stat)

    def records(self) -> list[dict]:
        """Every finished record, each key once (the first), whatever the history of the file."""
        return read_result_file(self.requests_path)[0]

    def _stats(self) -> list[dict]:
        """Server-average segments (not keyed by request: every segment is its own measurement)."""
        return [stat for _, stat in _json_lines(self.stats_path)]

    def recorded_settings(self) -> dict[str, Any]:
        """setting_id -> the settings record, for every result set in ``requests.jsonl``."""
        out: dict[str, Any] = {}
        for r in self.records():
            if r.get("setting_id") and r["setting_id"] not in out:
                out[r["setting_id"]] = r.get("settings")
        return out

    def summary_rows(self) -> list[dict]:
        groups: dict[tuple, list[dict]] = {}
        for r in self.records():
            groups.setdefault((r["backend"], r["drafter"], r["dataset"], r["temperature"]), []).append(r)
        stats: dict[tuple, list[dict]] = {}
        for s in self._stats():
            stats.setdefault((s["backend"], s["drafter"], s["dataset"], s["temperature"]), []).append(s)
        rows = []
        for key in sorted(groups, key=lambda k: (k[0], k[2], k[3], k[1] != BASELINE, k[1])):
            backend, drafter, dataset, temperature = key
            row = {"backend": backend, "dataset": dataset, "temperature": temperature, "drafter": drafter}
            row.update(summarize_group(groups[key], stats.get(key, ())))
            if backend == "hf" and drafter != BASELINE:  # which vLLM setting this offline column stands for
                row["vllm_setting"] = groups[key][0].get("vllm_setting")
            rows.append(row)
        add_speedups(rows, BASELINE)
        return rows

    def write_reports(self, provenance: dict[str, Any], plot: bool = True) -> dict[str, Path]:
        rows = self.summary_rows()
        paths = {
            "json": report.write_json(
                self.out_dir / "summary.json",
                {
                    "tau_definitions": dict(TAU_DEFINITIONS),
                    "speedup": "output tokens/s over the no-speculation baseline on the same dataset and temperature",
                    "provenance": provenance,
                    "settings": self.recorded_settings(),
                    "results": rows,
                },
            ),
            "csv": report.write_csv(
                self.out_dir / "summary.csv",
                rows,
                [*TABLE_COLUMNS, "draft_acceptance_rate", "per_position_acceptance", "vllm_setting"],
            ),
        }
        shown, headers = display_table(rows)
        md = [
            "# Benchmark results",
            "",
            f"Chat template: {provenance.get('template', '?')}. Speed-up = output tokens/s over the baseline.",
            "",
            report.markdown_table(shown, headers, floatfmt=".3f"),
            "",
            "tau columns:",
            "",
            *[f"- `{TAU_HEADERS[k]}`: {v}" for k, v in TAU_DEFINITIONS.items()],
        ]
        settings = vllm_setting_lines(rows)
        if settings:
            md += [
                "",
                "The vLLM 0.33 setting each --backend hf row stands for:",
                "",
                *[f"- {line}" for line in settings],
            ]
        paths["md"] = report.write_text(self.out_dir / "summary.md", "\n".join(md))
        if plot and rows:
            paths["png"] = self.plot(rows)
        return paths

    def plot(self, rows: Sequence[dict]) -> Path:
        groups = sorted({(r["dataset"], r["temperature"]) for r in rows})
        labels = [f"{d} T={t:g}" for d, t in groups]
        drafters = sorted({r["drafter"] for r in rows if r["drafter"] != BASELINE})
        index = {(r["drafter"], r["dataset"], r["temperature"]): r for r in rows}
        tau = {d: [(index.get((d, *g)) or {}).get("tau_token_weighted") for g in groups] for d in drafters}
        speed = {d: [(index.get((d, *g)) or {}).get("speedup") for g in groups] for d in drafters}
        return report.multi_panel_bar_plot(
            self.out_dir / "tau_speedup.png",
            labels,
            [
                ("acceptance length tau (token-weighted)", "tau", tau, None, None),
                ("speed-up over no-speculation baseline", "x", speed, None, 1.0),
            ],
        )


def versions(extra: Optional[dict] = None) -> dict[str, Any]:
    from .._versions import package_versions

    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    out.update(package_versions(("specforge-dpace", "specforge", "sglang", "vllm", "torch", "transformers")))
    out.update(extra or {})
    return out
