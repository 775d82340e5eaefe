"""The walk predictors in SpecForge's own evaluation: real ``specforge train`` runs on CPU (offline features,
gloo, ``NO_SHARD``, sdpa) of the demo's target and data, the plugin arriving through the ``.pth`` autoload.

* For DFlash, Domino and DSpark drafters trained by SpecForge, ``eval/tau_walk`` at every evaluation equals
  the measured tau of the checkpoint SpecForge saved at that step, decoded at T = 0 on the same held-out
  prompts (the eval features are those prompts with the target's greedy continuation) by the evaluator as
  SGLang 0.5.23 decodes each method (DSpark from the anchor row, Domino's GRU rollout).  The T = 1 walks
  are within the acceptance experiment's mean errors of the measured tau (README: 34 % sampled, 20 % greedy
  proposals).
* ``training.best_metric: eval/tau_walk`` keeps the checkpoint tau_walk prefers where SpecForge's default
  (token accuracy) keeps another; resume keeps the choice and refuses a changed one.
* Two gloo ranks report the single-rank values (the sums are reduced, not averaged per rank).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("specforge")
pytest.importorskip(
    "accelerate", reason="specforge.cli imports accelerate: pip install -c constraints-cpu.txt accelerate"
)

from test_specforge_train_cpu import UPSTREAM_TEARDOWN_ABORT, _env  # noqa: E402

pytestmark = pytest.mark.slow

EVAL_LINE = re.compile(r"^step (\d+): (\{'eval/.*\})\s*$", re.MULTILINE)
PROMPTS, NEW_TOKENS = 8, 48
LAYERS = [1, 2]
HEADS = {"dflash": None, "domino": {"pure_draft_prefix_len": 1}, "dspark": None}
ERRORS = {"sample": 0.34, "greedy": 0.20}  # the experiment's mean |walk / measured - 1| at T = 1

CONFIG = """\
run_id: walk-{method}
output_dir: {out}
model:
  target_model_path: {target}
  draft_model_config: {root}/draft-{method}/config.json
  torch_dtype: float32
data:
  hidden_states_path: {root}/train
  eval_hidden_states_path: {root}/eval
  max_length: 128
  dataloader_num_workers: 0
training:
  strategy: {method}
  attention_backend: sdpa
  fsdp_sharding: NO_SHARD
  batch_size: 8
  max_steps: 48
  total_steps: 60
  num_epochs: 5
  learning_rate: 0.002
  lr_scheduler: constant
  warmup_ratio: 0.0
  num_anchors: 32
  log_interval: 100
  eval_interval: {eval_interval}
  save_interval: {save_interval}
  seed: 0
"""


def _demo():
    from specforge_dpace.demo.pipeline import DemoConfig, DemoPipeline

    return DemoConfig.quick(eval_prompts=PROMPTS, eval_max_new_tokens=NEW_TOKENS, threads=1), DemoPipeline


def _draft(pipeline, method):
    from specforge_dpace.evaluate import tiny_draft

    return tiny_draft(
        pipeline.target,
        block_size=pipeline.config.block_size,
        target_layer_ids=LAYERS,
        mask_token_id=pipeline.special["mask"],
        method=method,
        head=HEADS[method],
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's target, training sequences and held-out sequences (prompts continued greedily by the target)
    as SpecForge offline features with the target's last hidden state, and one draft config per method."""
    from specforge_dpace.features.capture import capture_offline_features

    root = tmp_path_factory.mktemp("eval_walk")
    config, pipeline_class = _demo()
    pipeline = pipeline_class(root / "demo", config, show_progress=False, log=lambda _m: None)
    pipeline.load_target()
    for name, tensors in (("train", pipeline.data()), ("eval", pipeline.heldout())):
        records = [{"input_ids": i, "loss_mask": m.long()} for i, m in zip(tensors["input_ids"], tensors["loss_mask"])]
        capture_offline_features(pipeline.target, records, root / name, LAYERS, progress=False, last_hidden=True)
    for method in HEADS:
        (root / f"draft-{method}").mkdir()
        (root / f"draft-{method}" / "config.json").write_text(json.dumps(_draft(pipeline, method).config.to_dict()))
    return root, pipeline


def _write_config(root: Path, method: str, name: str, *, eval_interval: int, save_interval: int, extra: str = ""):
    text = CONFIG.format(
        method=method,
        out=root / f"out-{name}",
        target=root_target(),
        root=root,
        eval_interval=eval_interval,
        save_interval=save_interval,
    )
    path = root / f"{name}.yaml"
    path.write_text(text + extra)
    return path


def root_target() -> str:
    from specforge_dpace.demo import assets_dir

    return str(assets_dir())


def _train(root: Path, config: Path, *overrides: str, attempts: int = 3) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "specforge.cli", "train", "--config", str(config), *overrides]
    for _ in range(attempts):
        result = subprocess.run(
            command, cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400
        )
        if result.returncode == 0 or not (EVAL_LINE.search(result.stdout) and UPSTREAM_TEARDOWN_ABORT in result.stdout):
            break
    return result


def _evals(result: subprocess.CompletedProcess) -> dict[int, dict]:
    assert result.returncode == 0, result.stdout[-4000:]
    rows = {}
    for step, body in EVAL_LINE.findall(result.stdout):
        row = ast.literal_eval(body)
        assert rows.setdefault(int(step), row) == row, f"ranks logged different eval metrics at step {step}"
    return rows


def _checkpoint_draft(pipeline, method: str, out: Path, step: int):
    import torch

    state = torch.load(next(out.glob(f"*-step{step}")) / "training_state.pt", weights_only=False)
    draft = _draft(pipeline, method)
    draft.load_state_dict(state["draft_state_dict"], strict=True)
    return draft.eval()


def _measured(pipeline, method: str, draft, temperature: float, draft_sampling: str) -> float:
    """The evaluator's tau decoding as SGLang 0.5.23 serves the method (the walk's serving slot alignment)."""
    from specforge_dpace.evaluate import EvalConfig, evaluate_drafter

    config = EvalConfig(
        temperature=temperature,
        max_new_tokens=NEW_TOKENS,
        draft_sampling=draft_sampling,
        convention="sglang-0.5.23",
        show_progress=False,
    )
    return evaluate_drafter(pipeline.target, draft, pipeline.eval_prompts(), config).overall["tau"]


@pytest.mark.parametrize("method", list(HEADS))
def test_the_walks_of_specforges_evaluation_are_the_measured_tau(demo, method):
    root, pipeline = demo
    config = _write_config(
        root, method, method, eval_interval=24, save_interval=24, extra="  eval_walk: {temperatures: [1.0]}\n"
    )
    result = _train(root, config)
    rows = _evals(result)
    assert sorted(rows) == [24, 48]
    assert "specforge-dpace: eval walk: 376 anchors of 8 sequences in" in result.stdout  # the cost, printed
    for step, row in rows.items():
        assert row["eval/walk_anchors"] == PROMPTS * (NEW_TOKENS - 1)
        draft = _checkpoint_draft(pipeline, method, root / f"out-{method}", step)
        measured = _measured(pipeline, method, draft, 0.0, "sample")
        assert row["eval/tau_walk"] == pytest.approx(measured, rel=1e-12), (step, row)
        assert measured > 1.1  # the drafters accept something: not an equality of ones
        for sampling, name in (("sample", "eval/tau_walk_sample@T1"), ("greedy", "eval/tau_walk_greedy_draft@T1")):
            tau = _measured(pipeline, method, draft, 1.0, sampling)
            assert abs(row[name] / tau - 1.0) <= ERRORS[sampling], (step, name, row[name], tau)


def _best_step(root: Path, name: str) -> int:
    meta = json.loads((root / f"out-{name}" / "walk-dflash.best_meta.json").read_text())
    link = (root / f"out-{name}" / "walk-dflash-best").resolve().name
    assert link == f"walk-dflash-step{meta['step']}"
    return meta["step"], meta["metric"]


def test_the_best_checkpoint_follows_the_named_metric_and_resume_keeps_it(demo):
    """Eight evaluations of one training trajectory: where token accuracy and tau_walk prefer different
    steps, ``best_metric: eval/tau_walk`` keeps tau_walk's step and the default keeps accuracy's."""
    root, _ = demo
    named = _write_config(
        root, "dflash", "named", eval_interval=6, save_interval=0, extra="  best_metric: eval/tau_walk\n"
    )
    default = _write_config(root, "dflash", "default", eval_interval=6, save_interval=0)
    named_rows, default_rows = _evals(_train(root, named)), _evals(_train(root, default))
    assert sorted(named_rows) == list(range(6, 49, 6))

    def timeless(row):
        return {k: v for k, v in row.items() if k != "eval/walk_seconds"}

    for step in named_rows:  # the metric choice changes neither training nor evaluation
        assert timeless(named_rows[step]) == timeless(default_rows[step])

    def first_best(metric):  # SpecForge keeps a new best only when it is strictly higher
        best = None
        for step in sorted(named_rows):
            if best is None or named_rows[step][metric] > named_rows[best][metric]:
                best = step
        return best

    by_walk, by_accuracy = first_best("eval/tau_walk"), first_best("eval/simulated_acc_len")
    assert by_walk != by_accuracy, "precondition: this trajectory's accuracy and tau_walk must disagree"
    assert _best_step(root, "named") == (by_walk, "eval/tau_walk")
    assert _best_step(root, "default") == (by_accuracy, "eval/simulated_acc_len")

    checkpoint = f"training.resume_from={root / 'out-named'}"
    changed = _train(root, default, checkpoint, "run_id=walk-dflash", f"output_dir={root / 'out-named-changed'}")
    assert changed.returncode != 0
    assert "specforge_dpace_best_metric=eval/tau_walk (anchor_stride 1)" in changed.stdout
    assert "resume with the original configuration" in changed.stdout
    kept = _evals(_train(root, named, checkpoint, "training.max_steps=54"))
    assert sorted(kept) == [54]
    step, metric = _best_step(root, "named")  # the resumed run read its best record under the same metric
    assert metric == "eval/tau_walk"
    assert step == (54 if kept[54]["eval/tau_walk"] > named_rows[by_walk]["eval/tau_walk"] else by_walk)


def test_two_ranks_report_the_single_rank_walks(demo):
    """A trained drafter (warm start, learning rate 1e-30: the weights do not move) evaluated once on one and on
    two gloo ranks: every walk metric and the anchor count are the single-rank values."""
    root, _ = demo
    source = root / "out-dflash"
    if not source.is_dir():
        _evals(_train(root, _write_config(root, "dflash", "dflash", eval_interval=24, save_interval=24)))
    extra = "  eval_walk: {temperatures: [1.0, 0.5]}\n"
    config = _write_config(root, "dflash", "ranks", eval_interval=1, save_interval=0, extra=extra)
    text = (
        config.read_text()
        .replace("max_steps: 48", "max_steps: 1")
        .replace("learning_rate: 0.002", "learning_rate: 1.0e-30")
    )
    text = text.replace("  draft_model_config:", f"  draft_checkpoint_path: {source}\n  draft_model_config:")
    config.write_text(text)
    one = _evals(_train(root, config))[1]
    two = _evals(_train(root, config, "deployment.trainer.nproc_per_node=2", f"output_dir={root / 'out-ranks2'}"))[1]
    walks = [k for k in one if k.startswith("eval/tau_walk")]
    assert len(walks) == 5 and one["eval/tau_walk"] > 1.1
    for name in walks:
        assert two[name] == pytest.approx(one[name], rel=1e-12), name
    assert two["eval/walk_anchors"] == one["eval/walk_anchors"] == PROMPTS * (NEW_TOKENS - 1)
