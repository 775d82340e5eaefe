"""Result files of one benchmark output directory.

``requests.jsonl`` gets one line per finished request as it arrives (flushed and fsynced), so an
interrupted run resumes by skipping every key already there. ``server_stats.jsonl`` keeps the
server-average tau of each measured segment. The summary (JSON with provenance, Markdown, CSV,
PNG) is rebuilt from those files at the end of every run.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from specforge_dpace import report
from specforge_dpace.bench.metrics import add_speedups, summarize_group

BASELINE = "baseline"
KEY_FIELDS = ("backend", "drafter", "dataset", "temperature", "max_new_tokens", "template", "prompt_id")
TABLE_COLUMNS = (
    "backend",
    "dataset",
    "temperature",
    "drafter",
    "requests",
    "tau_mean_per_request",
    "tau_token_weighted",
    "tau_server_avg",
    "output_tokens_per_s",
    "speedup",
    "latency_mean_s",
    "latency_p90_s",
)


def record_key(record: dict) -> tuple:
    return tuple(record.get(k) for k in KEY_FIELDS)


class ResultStore:
    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.requests_path = self.out_dir / "requests.jsonl"
        self.stats_path = self.out_dir / "server_stats.jsonl"
        self.logs_dir = self.out_dir / "logs"
        self._done = {record_key(r) for r in report.read_jsonl(self.requests_path)}

    def is_done(self, key: tuple) -> bool:
        return key in self._done

    def add(self, record: dict) -> None:
        report.append_jsonl(self.requests_path, record)
        self._done.add(record_key(record))

    def add_server_stat(self, stat: dict) -> None:
        report.append_jsonl(self.stats_path, stat)

    def records(self) -> list[dict]:
        return report.read_jsonl(self.requests_path)

    def summary_rows(self) -> list[dict]:
        groups: dict[tuple, list[dict]] = {}
        for r in self.records():
            groups.setdefault((r["backend"], r["drafter"], r["dataset"], r["temperature"]), []).append(r)
        stats: dict[tuple, list[dict]] = {}
        for s in report.read_jsonl(self.stats_path):
            stats.setdefault((s["backend"], s["drafter"], s["dataset"], s["temperature"]), []).append(s)
        rows = []
        for key in sorted(groups, key=lambda k: (k[0], k[2], k[3], k[1] != BASELINE, k[1])):
            backend, drafter, dataset, temperature = key
            row = {"backend": backend, "dataset": dataset, "temperature": temperature, "drafter": drafter}
            row.update(summarize_group(groups[key], stats.get(key, ())))
            rows.append(row)
        add_speedups(rows, BASELINE)
        return rows

    def write_reports(self, provenance: dict[str, Any], plot: bool = True) -> dict[str, Path]:
        rows = self.summary_rows()
        paths = {
            "json": report.write_json(
                self.out_dir / "summary.json",
                {
                    "tau_definitions": {
                        "tau_mean_per_request": "mean over requests of completion_tokens / verify steps",
                        "tau_token_weighted": "sum completion_tokens / sum verify steps",
                        "tau_server_avg": "server's avg_spec_accept_length after each measured group "
                        "(cache flushed before it), step-weighted over groups; hf backend: the "
                        "evaluator's own tau (prefill token excluded)",
                    },
                    "speedup": "output tokens/s over the no-speculation baseline on the same dataset and temperature",
                    "provenance": provenance,
                    "results": rows,
                },
            ),
            "csv": report.write_csv(self.out_dir / "summary.csv", rows, [*TABLE_COLUMNS, "per_position_acceptance"]),
        }
        md = [
            "# Benchmark results",
            "",
            f"Chat template: {provenance.get('template', '?')}. tau_mean_per_request = mean of per-request "
            "completion/verify; tau_token_weighted = sum completion / sum verify; tau_server_avg = server "
            "average. Speed-up = output tokens/s over the baseline.",
            "",
            report.markdown_table(rows, TABLE_COLUMNS, floatfmt=".3f"),
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
    out.update(package_versions(("specforge-dpace", "specforge", "sglang", "torch", "transformers")))
    out.update(extra or {})
    return out
