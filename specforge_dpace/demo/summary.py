"""The demo's report: a table (tau, change against the dflash run, accepted-length histogram,
training time per objective), JSON, Markdown and a PNG plot, through ``specforge_dpace.report``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from specforge_dpace import report as rpt

COLUMNS = ("objective", "tau", "tau_sglang", "vs_baseline", "mean_accepted", "accept_hist", "train_acc", "train_s")


def baseline_index(objectives: Sequence[str]) -> int:
    """The run every other is compared with: the first plain ``dflash`` spec, else the first."""
    for i, spec in enumerate(objectives):
        if "+" not in spec and spec.replace(" ", "").split("(")[0] == "dflash":
            return i
    return 0


def relative_change(value: Optional[float], base: Optional[float]) -> Optional[float]:
    if value is None or not base:
        return None
    return value / base - 1.0


def build_report(runs: list, config, *, target_dir: str, wall_s: float, events=()) -> dict:
    """Rows per objective plus the settings that produced them."""
    base = runs[baseline_index([r["objective"] for r in runs])]
    rows = []
    for r in runs:
        ev, tr = r["eval"], r["train"]
        change = relative_change(ev.get("tau"), base["eval"].get("tau"))
        rows.append(
            {
                "objective": r["objective"],
                "tau": ev.get("tau"),
                "tau_sglang": ev.get("tau_sglang"),
                "vs_baseline": None if change is None else f"{100 * change:+.1f}%",
                "relative_change": change,
                "mean_accepted": ev.get("mean_accepted"),
                "accept_hist": " ".join(str(n) for n in ev.get("accept_hist", [])),
                "accept_hist_counts": ev.get("accept_hist"),
                "accept_pos": ev.get("accept_pos"),
                "train_acc": tr.get("final_train_acc"),
                "train_loss": tr.get("final_loss"),
                "train_s": tr.get("train_s"),
                "tokens_per_s": ev.get("tokens_per_s"),
            }
        )
    return {
        "baseline": base["objective"],
        "rows": rows,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "target_dir": target_dir,
        "wall_s": wall_s,
        "phases": [list(e) for e in events],
    }


def table_text(report: dict) -> str:
    c = report["config"]
    method = {"dflash": "DFlash", "domino": "Domino", "dspark": "DSpark"}.get(
        c.get("method", "dflash"), c.get("method")
    )
    at = (
        "greedy"
        if not c.get("eval_temperature")
        else f"T={c['eval_temperature']:g}, {c.get('eval_draft_sampling') or 'the server default'} draft"
    )
    title = (
        f"{method} drafters on the tiny stdlib target (block {c['block_size']}, {c['steps']} steps, {at}, decoded as "
        f"{c.get('eval_convention', 'sglang-0.5.23')}; baseline "
        f"{report['baseline']}; tau = tokens per verify step, prefill excluded; tau_sglang = completion tokens / "
        "verify steps, SGLang's spec_accept_length; accept_hist = verify steps accepting 0,1,..,K-1 drafted tokens)"
    )
    return rpt.format_table(report["rows"], COLUMNS, floatfmt=".3f", title=title)


def write_report(out_dir: Path | str, report: dict) -> dict:
    """``report.json``, ``report.md`` and ``report.png`` (tau and per-position acceptance)."""
    out = Path(out_dir)
    rpt.write_json(out / "report.json", report)
    rpt.write_text(out / "report.md", rpt.markdown_table(report["rows"], COLUMNS, floatfmt=".3f") + "\n")
    names = [r["objective"] for r in report["rows"]]
    short = [n if len(n) <= 22 else n[:20] + ".." for n in names]
    k = report["config"]["block_size"]
    panels = [
        ("tau (tokens per verify step)", "tau", {"tau": [r["tau"] for r in report["rows"]]}, None, None),
        (
            "acceptance rate by block slot",
            "P(slot accepted)",
            {
                f"slot {j}": [(r["accept_pos"] or [None] * (k - 1))[j - 1] for r in report["rows"]]
                for j in (1, 2, 4, k - 1)
                if j < k
            },
            None,
            None,
        ),
    ]
    rpt.multi_panel_bar_plot(out / "report.png", short, panels)
    return report
