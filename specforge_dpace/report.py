"""Tables, JSON, CSV and PNG plots: the one reporting module shared by evaluate, demo and bench.

Pure standard library except for plots (matplotlib, imported lazily with the Agg backend).
Files are written atomically (temporary file + rename) so an interrupted run never leaves a
half-written report behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return format(value, floatfmt)
    return str(value)


def _columns(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]]) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: list[str] = []
    for row in rows:
        for key in row:
            if key not in seen:
                seen.append(key)
    return seen


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Optional[Sequence[str]] = None,
    *,
    floatfmt: str = ".4g",
    title: Optional[str] = None,
) -> str:
    """Plain-text table with aligned columns (numbers right-aligned)."""
    cols = _columns(rows, columns)
    cells = [[_cell(row.get(c), floatfmt) for c in cols] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in cols]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = []
    if title:
        out.append(title)
    out.append(line(cols))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None, *, floatfmt: str = ".4g"
) -> str:
    """GitHub-flavoured Markdown table."""
    cols = _columns(rows, columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        out.append("| " + " | ".join(_cell(row.get(c), floatfmt) for c in cols) + " |")
    return "\n".join(out)


def _atomic_write(path: Path | str, text: str) -> Path:
    from ._atomic import write_text as atomic_write_text

    return atomic_write_text(path, text)


def _jsonable(value: Any) -> Any:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.detach().cpu().tolist()
    except ImportError:  # pragma: no cover - torch is a base dependency
        pass
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path | str, data: Any) -> Path:
    """Atomic, pretty-printed JSON (tensors become lists, NaN becomes null)."""
    return _atomic_write(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def write_text(path: Path | str, text: str) -> Path:
    return _atomic_write(path, text if text.endswith("\n") else text + "\n")


def write_csv(path: Path | str, rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None) -> Path:
    cols = _columns(rows, columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _jsonable(row.get(c)) for c in cols})
    return _atomic_write(path, buffer.getvalue())


def append_jsonl(path: Path | str, record: Mapping[str, Any]) -> None:
    """Append one JSON line and flush it to disk (results survive a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(_jsonable(record)) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_jsonl(path: Path | str, records: Iterable[Mapping[str, Any]]) -> Path:
    """The whole JSONL file at once, atomically (a failed write leaves the previous file, never a torn one)."""
    from ._atomic import write_jsonl as atomic_write_jsonl

    return atomic_write_jsonl(path, records, lambda record: json.dumps(_jsonable(record)))


def read_jsonl(path: Path | str) -> list[dict]:
    """Records of a JSONL file; a torn last line (crash mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _wrap_label(label: str, width: int = 22) -> str:
    """Long objective specs ('dflash(gamma=10) + 0.3*first-error-focal + 40*chain') on several lines."""
    import textwrap

    return "\n".join(textwrap.wrap(str(label), width=width, break_on_hyphens=False)) or str(label)


def _save_figure(fig, path: Path | str) -> Path:
    """Write a matplotlib figure atomically (a temporary name, then rename) and close it."""
    import matplotlib.pyplot as plt

    from ._atomic import write_with

    fig.tight_layout()
    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def grouped_bar_plot(
    path: Path | str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[Optional[float]]],
    *,
    title: str = "",
    ylabel: str = "",
    errors: Optional[Mapping[str, Sequence[Optional[float]]]] = None,
    baseline: Optional[float] = None,
) -> Path:
    """Grouped bars: one group per entry of ``groups``, one bar per series, values annotated."""
    panels = [(title, ylabel, series, errors, baseline)]
    return multi_panel_bar_plot(path, groups, panels)


def multi_panel_bar_plot(
    path: Path | str,
    groups: Sequence[str],
    panels: Iterable[tuple[str, str, Mapping[str, Sequence[Optional[float]]], Any, Optional[float]]],
    *,
    stacked: bool = False,
    ymin: Optional[float] = None,
) -> Path:
    """Grouped bar charts sharing ``groups``, side by side (or ``stacked`` in rows); each panel is
    ``(title, ylabel, series, errors_or_None, baseline_or_None)``; ``ymin`` sets the bars' floor
    (tau, say, is never below 1)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = list(panels)
    width_in = max(5.0, 1.6 + 1.2 * len(groups))
    if stacked:
        fig, axes = plt.subplots(len(panels), 1, figsize=(width_in, 3.6 * len(panels)))
    else:
        fig, axes = plt.subplots(1, len(panels), figsize=(width_in * len(panels), 4.2))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, ylabel, series, errors, baseline) in zip(axes, panels):
        names = list(series)
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            values = [float("nan") if v is None else float(v) for v in series[name]]
            xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
            err = None
            if errors and name in errors:
                err = [0.0 if e is None else float(e) for e in errors[name]]
            bottom = 0.0 if ymin is None else ymin
            heights = [v - bottom for v in values]
            bars = ax.bar(xs, heights, width, bottom=bottom, label=name, yerr=err, capsize=3)
            for j, (bar, value) in enumerate(zip(bars, values)):
                if not math.isnan(value):
                    top = value + (err[j] if err else 0.0)  # above the error bar, not on it
                    ax.annotate(
                        f"{value:.3g}",
                        (bar.get_x() + bar.get_width() / 2, top),
                        xytext=(0, 2),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        if baseline is not None:
            ax.axhline(baseline, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([_wrap_label(g) for g in groups], rotation=15 if len(groups) > 4 else 0, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if ymin is not None:
            ax.set_ylim(bottom=ymin)
        if len(names) > 1:
            ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _save_figure(fig, path)


def calibration_plot(
    path: Path | str,
    panels: Iterable[tuple[str, Mapping[str, Sequence[tuple[float, float, str]]]]],
) -> Path:
    """Predicted vs measured scatter, one panel per ``(title, {series: [(predicted, measured, label)]})``,
    with the line predicted = measured; points are labelled (e.g. by objective)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = list(panels)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 4.6))
    axes = [axes] if len(panels) <= 1 else list(axes)
    markers = "osD^vP*X"
    for ax, (title, series) in zip(axes, panels):
        values = [v for points in series.values() for p, m, _ in points for v in (p, m) if v is not None]
        for i, (name, points) in enumerate(series.items()):
            points = [(p, m, label) for p, m, label in points if p is not None and m is not None]
            ax.scatter([p for p, _, _ in points], [m for _, m, _ in points], label=name, marker=markers[i % 8], s=28)
            for p, m, label in points:
                ax.annotate(_wrap_label(label, 14), (p, m), xytext=(3, 2), textcoords="offset points", fontsize=5)
        if values:
            low, high = min(values), max(values)
            pad = 0.05 * (high - low or 1.0)
            ax.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("predicted tau (teacher-forced, held-out)")
        ax.set_ylabel("measured tau (evaluator)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save_figure(fig, path)
