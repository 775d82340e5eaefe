"""The acceptance experiment: does objective X raise tau over objective Y, and can training metrics tell?

Arms (objective specs) are compared *paired by seed*: every arm of a seed shares that seed's
regenerated data, its captured features, the drafter's initialization and the batch order (the
demo pipeline seeds each phase), so the per-seed relative change of an arm against the baseline
cancels what the seed changes for everyone. Every drafter is evaluated on the same held-out
prompts in three settings: T = 0 (greedy verification), T = 1 with sampled proposals (standard
speculative sampling, where alpha = sum min(p, q) is the acceptance rate) and T = 1 with greedy
proposals verified target-only (SGLang 0.5.14's DFlash). Next to each measured tau stand the
predictors the plugin logs during training (``sim_tau``, the surrogate, ``soft_tau`` at T = 1),
computed teacher-forced on held-out data, plus ``greedy_draft_tau`` (see ``teacher_forced``).

Every cell (data, features, drafter, evaluation, prediction) is a cached demo artefact, so a killed
run resumes where it stopped and reproduces the same numbers; the analysis is recomputed from the
cells every time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional, Sequence

from specforge_dpace import report as rpt
from specforge_dpace import stats

from ._util import default_threads, progress

BASELINE = "dflash(gamma=7)"
THREE_INTERVENTIONS = "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"
DEFAULT_ARMS = (
    BASELINE,
    "kl(gamma=7)",
    "lk-alpha",
    "lk-lambda",
    "dpace",
    "soft-dpace",
    "dpace + 0.5*lk-lambda",
    THREE_INTERVENTIONS,
    "tv",  # negative control: trains poorly from scratch in the LK paper
)
QUICK_ARMS = (BASELINE, "lk-lambda", "dpace")


@dataclass(frozen=True)
class EvalSetting:
    name: str
    temperature: float
    draft_sampling: str  # "sample" or "greedy"; ignored at temperature 0

    @property
    def label(self) -> str:
        if self.temperature == 0:
            return "T=0"
        return f"T={self.temperature:g} ({self.draft_sampling} draft)"


SETTINGS = (
    EvalSetting("T0", 0.0, "sample"),
    EvalSetting("T1", 1.0, "sample"),
    EvalSetting("T1-greedy-draft", 1.0, "greedy"),
)


def settings_for(method: str, convention: str) -> tuple:
    """The settings the ``convention``'s server performs for ``method`` (SGLang 0.5.23's Domino rollout is
    argmax only: no sampled-proposal setting for Domino)."""
    from specforge_dpace.evaluate._speculative import decoding_for

    allowed = decoding_for(convention, method).draft_samplings
    return tuple(s for s in SETTINGS if s.temperature == 0 or s.draft_sampling in allowed)


#: Predictors of tau (teacher-forced, held-out), by name in ``teacher_forced_metrics``' output.
PREDICTORS = (
    "sim_tau",
    "surrogate_tau",
    "soft_tau@T1",
    "greedy_draft_tau@T1",
    "sim_tau_walk",
    "soft_tau_walk@T1",
    "greedy_draft_tau_walk@T1",
)


@dataclass
class ExperimentConfig:
    """Everything that determines the experiment's numbers (per seed, a demo configuration)."""

    arms: Sequence[str] = DEFAULT_ARMS
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    baseline: str = BASELINE
    data_temperature: float = 0.0
    method: str = "dflash"  # "domino" / "dspark": their predictors follow each method's serving convention
    steps: int = 600
    num_train_seqs: int = 512
    gen_len: int = 96
    block_size: int = 8
    batch_size: int = 8
    lr: float = 2e-3
    num_anchors: int = 32
    draft_layers: int = 1
    eval_prompts: int = 48
    eval_max_new_tokens: int = 64
    confidence: float = 0.95
    threads: int = field(default_factory=default_threads)
    allow_non_finite: bool = False  # train on through non-finite steps (recorded) instead of stopping
    convention: str = "sglang-0.5.23"  # the serving rule set whose decoding the evaluator reproduces

    @property
    def settings(self) -> tuple:
        return settings_for(self.method, self.convention)

    @classmethod
    def quick(cls, **overrides) -> "ExperimentConfig":
        """2 seeds x 3 arms on a tiny budget (minutes): the suite's run, not a measurement."""
        base = dict(
            arms=QUICK_ARMS,
            seeds=(0, 1),
            steps=30,
            num_train_seqs=32,
            gen_len=24,
            eval_prompts=3,
            eval_max_new_tokens=16,
        )
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        from .. import _numbers as num

        arms = list(self.arms)
        if len(arms) < 2:
            raise ValueError(f"arms={arms!r}: an experiment needs the baseline and at least one more arm")
        num.check_unique(arms, "arm", num.objective_key)
        if self.baseline not in arms:
            raise ValueError(f"baseline={self.baseline!r} is not one of the arms {arms}")
        seeds = list(self.seeds)
        if not seeds:
            raise ValueError("seeds=[]: accepted: one or more distinct integers")
        for seed in seeds:
            num.SEED.check(seed, "seed")
        num.check_unique(seeds, "seed")
        num.CONFIDENCE.check(self.confidence, "confidence")
        for seed in seeds:
            self.demo_config(seed).validate()  # every demo setting checked (names the bad one)

    def demo_config(self, seed: int):
        from .pipeline import DemoConfig

        return DemoConfig(
            objectives=tuple(self.arms),
            seed=seed,
            method=self.method,
            threads=self.threads,
            num_train_seqs=self.num_train_seqs,
            gen_len=self.gen_len,
            data_temperature=self.data_temperature,
            block_size=self.block_size,
            draft_layers=self.draft_layers,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            num_anchors=self.num_anchors,
            eval_prompts=self.eval_prompts,
            eval_max_new_tokens=self.eval_max_new_tokens,
            allow_non_finite=self.allow_non_finite,
            eval_convention=self.convention,
        )


def run_experiment(
    output_dir: Path | str,
    config: ExperimentConfig,
    *,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> dict:
    """Train and evaluate every (seed, arm) cell (cached), then analyse and write the report.

    ``jobs`` > 1 runs seeds in that many worker processes (each with ``config.threads`` threads);
    the numbers do not depend on it, since every phase of a seed is seeded on its own."""
    from .._numbers import JOBS
    from .._outdir import output_dir as checked_and_locked

    config.validate()
    JOBS.check(jobs, "jobs")
    out = Path(output_dir)
    seed_dirs = tuple(f"seed-{seed}" for seed in config.seeds)
    # checked and locked before any work; the workers write under it while this process holds the lock
    with checked_and_locked(out, "--output-dir", "acceptance experiment", files=REPORT_FILES, directories=seed_dirs):
        return _run_experiment(out, config, show_progress, log, jobs)


REPORT_FILES = ("experiment.json", "experiment.md", "experiment.png", "calibration.png")


def worker_pool(jobs: int):
    """``jobs`` spawned worker processes that die with this one (a SIGKILLed run leaves no worker behind)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from .._lifetime import die_with_parent

    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    return ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
    )


def _run_experiment(out: Path, config: ExperimentConfig, show_progress: bool, log, jobs: int) -> dict:
    from ._deps import check_dependencies

    check_dependencies(show_progress=show_progress)
    t0 = time.perf_counter()
    bar = progress(total=len(config.seeds) * len(config.arms), desc="experiment cells", enabled=show_progress)

    def report_arm(seed: int, arm: str, arm_cells: list[dict]) -> None:
        if not show_progress:
            taus = ", ".join(f"{c['setting']} {c['tau']:.3f}" for c in arm_cells)
            log(f"[experiment] seed {seed} {arm}: tau {taus}")
        bar.update(1)

    cells: list[dict] = []
    if jobs == 1:
        for seed in config.seeds:
            cells.extend(run_seed(out, config, seed, on_arm=report_arm))
    else:
        with worker_pool(min(jobs, len(config.seeds))) as pool:
            futures = [pool.submit(run_seed, out, config, seed) for seed in config.seeds]
            for seed, future in zip(config.seeds, futures):
                seed_cells = future.result()
                for arm in config.arms:
                    report_arm(seed, arm, [c for c in seed_cells if c["arm"] == arm])
                cells.extend(seed_cells)
    bar.close()
    result = analyse(cells, config)
    result["wall_s"] = time.perf_counter() - t0
    write_report(out, result)
    return result


def run_seed(out: Path, config: ExperimentConfig, seed: int, on_arm=None) -> list[dict]:
    """Every cell of one seed: data, features, then per arm a drafter, its predictions and evaluations."""
    from .pipeline import DemoPipeline

    pipeline = DemoPipeline(out / f"seed-{seed}", config.demo_config(seed), show_progress=False, log=lambda _m: None)
    pipeline.load_target()
    data = pipeline.data()
    features = pipeline.features(data)
    cells = []
    for arm in config.arms:
        draft, train_log = pipeline.train(arm, data, features)
        predicted = pipeline.predicted(arm, draft, [s.temperature for s in config.settings])
        arm_cells = []
        for setting in config.settings:
            record = pipeline.evaluate(
                arm, draft, temperature=setting.temperature, draft_sampling=setting.draft_sampling
            )
            overall = record["overall"]
            arm_cells.append(
                {
                    "seed": seed,
                    "arm": arm,
                    "setting": setting.name,
                    "tau": overall["tau"],
                    "tau_sglang": overall.get("tau_sglang"),
                    "predicted": {name: predicted.get(name) for name in PREDICTORS},
                    "teacher_agreement": predicted.get("teacher_agreement"),
                    "train_s": train_log.get("train_s"),
                }
            )
        if on_arm is not None:
            on_arm(seed, arm, arm_cells)
        cells.extend(arm_cells)
    return cells


# --- analysis ------------------------------------------------------------------------------


def _by(cells, **match) -> list[dict]:
    return [c for c in cells if all(c[k] == v for k, v in match.items())]


def analyse(cells: Sequence[dict], config: ExperimentConfig) -> dict:
    """Paired statistics per arm and setting, and how well each predictor tracks the measured tau."""
    seeds = list(config.seeds)
    rows, calibration, verdicts = [], [], {}
    for setting in config.settings:
        base = {c["seed"]: c["tau"] for c in _by(cells, setting=setting.name, arm=config.baseline)}
        for arm in config.arms:
            taus = {c["seed"]: c["tau"] for c in _by(cells, setting=setting.name, arm=arm)}
            paired = [s for s in seeds if s in taus and s in base]
            tau_interval = stats.mean_interval([taus[s] for s in paired], config.confidence)
            row = {
                "setting": setting.name,
                "label": setting.label,
                "arm": arm,
                "seeds": paired,
                "taus": [taus[s] for s in paired],
                "tau_mean": tau_interval.mean,
                "tau_ci": [tau_interval.low, tau_interval.high],  # [None, None] from one seed (see interval_note)
            }
            if tau_interval.note:
                row["interval_note"] = tau_interval.note
            if arm != config.baseline:
                changes = stats.paired_relative_changes([taus[s] for s in paired], [base[s] for s in paired])
                interval = stats.mean_interval(changes, config.confidence)
                boot = stats.bootstrap_mean_interval(changes, config.confidence, resamples=4000, seed=0)
                row.update(
                    change=interval.mean,
                    change_ci=[interval.low, interval.high],
                    change_bootstrap_ci=[boot.low, boot.high],
                    excludes_zero=interval.excludes_zero,
                    per_seed_change=changes,
                )
            rows.append(row)
        verdicts[setting.name] = _calibrate(cells, config, setting, calibration)
    return {
        "config": asdict(config),
        "settings": [asdict(s) | {"label": s.label} for s in config.settings],
        "predictors": list(PREDICTORS),
        "cells": list(cells),
        "rows": rows,
        "calibration": calibration,
        "verdicts": verdicts,
    }


def _calibrate(cells, config, setting: EvalSetting, out: list) -> dict:
    """Per predictor: predicted vs measured per arm, rank correlations, and the error; returns the verdict."""
    scores = []
    for predictor in PREDICTORS:
        pairs = [
            (c["predicted"][predictor], c["tau"], c["arm"])
            for c in _by(cells, setting=setting.name)
            if c["predicted"].get(predictor) is not None and c["tau"] is not None
        ]
        if len(pairs) < 2:
            continue
        per_arm = []
        for arm in config.arms:
            mine = [(p, m) for p, m, a in pairs if a == arm]
            if not mine:
                continue
            predicted = sum(p for p, _ in mine) / len(mine)
            measured = sum(m for _, m in mine) / len(mine)
            per_arm.append((arm, predicted, measured))
            out.append(
                {
                    "setting": setting.name,
                    "predictor": predictor,
                    "arm": arm,
                    "predicted": predicted,
                    "measured": measured,
                    "ratio": predicted / measured if measured else None,
                }
            )
        rho_arms = stats.spearman([p for _, p, _ in per_arm], [m for _, _, m in per_arm]) if len(per_arm) > 1 else None
        rho_drafters = stats.spearman([p for p, _, _ in pairs], [m for _, m, _ in pairs])
        error = sum(abs(p / m - 1.0) for p, m, _ in pairs) / len(pairs)
        scores.append(
            {
                "predictor": predictor,
                "spearman_arms": rho_arms,
                "spearman_drafters": rho_drafters,
                "kendall_drafters": stats.kendall_tau([p for p, _, _ in pairs], [m for _, m, _ in pairs]),
                "mean_abs_relative_error": error,
            }
        )
    if not scores:
        return {"best": None, "scores": []}

    def rank_key(score):  # how well it ranks the arms first, then the drafters, then the error
        arms, drafters = score["spearman_arms"], score["spearman_drafters"]
        return (
            -(arms if arms is not None else -2.0),
            -(drafters if drafters is not None else -2.0),
            score["mean_abs_relative_error"],
        )

    best = sorted(scores, key=rank_key)[0]
    return {"best": best["predictor"], "scores": scores}


# --- report --------------------------------------------------------------------------------


def _pct(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:+.1f}"


def main_table(result: dict) -> list[dict]:
    """One row per arm, per setting: mean tau and the paired change with its interval (* = excludes 0)."""
    arms = result["config"]["arms"]
    table = []
    for arm in arms:
        row = {"objective": arm}
        for setting in result["settings"]:
            found = [r for r in result["rows"] if r["arm"] == arm and r["setting"] == setting["name"]]
            if not found:
                continue
            r = found[0]
            row[f"{setting['label']} tau"] = f"{r['tau_mean']:.3f}"
            if "change" in r:
                low, high = r["change_ci"]
                mark = " *" if r["excludes_zero"] else ""
                interval = (
                    f"[{_pct(low)}, {_pct(high)}]" if low is not None else f"[no interval: {len(r['seeds'])} seed]"
                )
                row[f"{setting['label']} vs baseline, % [CI]"] = f"{_pct(r['change'])} {interval}{mark}"
            else:
                row[f"{setting['label']} vs baseline, % [CI]"] = "baseline"
        table.append(row)
    return table


def calibration_table(result: dict) -> list[dict]:
    rows = []
    for setting in result["settings"]:
        verdict = result["verdicts"].get(setting["name"], {})
        for score in verdict.get("scores", []):
            rows.append(
                {
                    "setting": setting["label"],
                    "predictor": score["predictor"],
                    "spearman (arms)": score["spearman_arms"],
                    "spearman (drafters)": score["spearman_drafters"],
                    "mean abs(pred/meas - 1)": score["mean_abs_relative_error"],
                    "best": "yes" if score["predictor"] == verdict.get("best") else "",
                }
            )
    return rows


def verdict_lines(result: dict) -> list[str]:
    lines = []
    for setting in result["settings"]:
        verdict = result["verdicts"].get(setting["name"], {})
        best = next((s for s in verdict.get("scores", []) if s["predictor"] == verdict.get("best")), None)
        if best is None:
            continue
        rho = best["spearman_drafters"]
        rho_text = "n/a" if rho is None else f"{rho:.2f}"
        arms = best["spearman_arms"]
        arms_text = "n/a" if arms is None else f"{arms:.2f}"
        lines.append(
            f"{setting['label']}: trust {best['predictor']} (rank correlation with measured tau over arms "
            f"{arms_text}, over drafters {rho_text}; off by {100 * best['mean_abs_relative_error']:.1f}% on average)"
        )
    return lines


def title(result: dict) -> str:
    c = result["config"]
    return (
        f"{c.get('method', 'dflash')} drafters: tau per objective, {len(c['seeds'])} paired seeds, "
        f"{c['steps']} steps, block {c['block_size']}, "
        f"{c['eval_prompts']} held-out prompts x {c['eval_max_new_tokens']} tokens, data T={c['data_temperature']:g}; "
        + (
            f"change vs {c['baseline']} with {100 * c['confidence']:.0f}% t-interval over seeds (* excludes 0)"
            if len(c["seeds"]) > 1
            else f"change vs {c['baseline']}; no interval: {stats.ONE_VALUE.removeprefix('not available: ')}"
        )
    )


def write_report(out_dir: Path | str, result: dict) -> None:
    out = Path(out_dir)
    table = main_table(result)
    cal = calibration_table(result)
    verdicts = verdict_lines(result)
    rpt.write_json(out / "experiment.json", result)
    text = [
        "# Acceptance experiment",
        "",
        title(result),
        "",
        rpt.markdown_table(table),
        "",
        "## Predicted (teacher-forced, held-out) vs measured tau",
        "",
        rpt.markdown_table(cal, floatfmt=".3f") if cal else "(the teacher-forced predictors are DFlash's: none here)",
        "",
        *[f"- {line}" for line in verdicts],
        "",
    ]
    rpt.write_text(out / "experiment.md", "\n".join(text))
    arms = result["config"]["arms"]
    panels = []
    for setting in result["settings"]:
        mine = {r["arm"]: r for r in result["rows"] if r["setting"] == setting["name"]}
        means = [mine[a]["tau_mean"] if a in mine else None for a in arms]
        halves = [
            (mine[a]["tau_ci"][1] - mine[a]["tau_ci"][0]) / 2
            if a in mine and mine[a]["tau_ci"][0] is not None
            else None
            for a in arms
        ]
        base = mine.get(result["config"]["baseline"])
        panels.append(
            (setting["label"], "tau (mean over seeds)", {"tau": means}, {"tau": halves}, base and base["tau_mean"])
        )
    rpt.multi_panel_bar_plot(out / "experiment.png", arms, panels, stacked=True, ymin=1.0)
    scatter = []
    for setting in result["settings"]:  # the trusted predictor and its per-position twin (or the other way round)
        best = result["verdicts"].get(setting["name"], {}).get("best")
        if best is None:
            continue
        shown = [best, best.replace("_walk", "") if "_walk" in best else best.replace("@", "_walk@", 1)]
        if shown[1] == best and not best.endswith("_walk"):
            shown[1] = f"{best}_walk"
        series = {}
        for row in result["calibration"]:
            if row["setting"] == setting["name"] and row["predictor"] in shown:
                series.setdefault(row["predictor"], []).append((row["predicted"], row["measured"], row["arm"]))
        scatter.append((setting["label"], series))
    rpt.calibration_plot(out / "calibration.png", scatter)


def config_fields() -> list[str]:
    return [f.name for f in fields(ExperimentConfig)]
