"""``specforge-dpace evaluate --teacher-forced`` on a tiny saved target, drafts and SpecForge feature files: the
walk it prints is the pass's, equals the decoding's tau at T = 0, ranks several drafters, loads SpecForge
checkpoints with their draft config, and refuses the flags of the other mode."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("specforge")

from specforge_dpace.cli import main  # noqa: E402
from specforge_dpace.evaluate import (  # noqa: E402
    EvalConfig,
    evaluate_drafter,
    greedy_reference,
    save_draft_checkpoint,
    tiny_draft,
    tiny_target,
)
from specforge_dpace.features.capture import capture_offline_features  # noqa: E402

LAYERS, NEW_TOKENS = [0, 1], 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf_cli")
    target = tiny_target(vocab_size=48, hidden_size=32, num_hidden_layers=3, seed=0)
    target.save_pretrained(root / "target")
    drafts = []
    for seed in (1, 2):
        draft = tiny_draft(target, block_size=4, target_layer_ids=LAYERS, seed=seed)
        save_draft_checkpoint(draft, root / f"draft{seed}")
        drafts.append(draft)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 47, (5,), generator=gen).tolist() for _ in range(5)]
    records = []
    for prompt in prompts:
        ids = prompt + greedy_reference(target, prompt, NEW_TOKENS)
        records.append({"input_ids": ids, "loss_mask": [0] * len(prompt) + [1] * NEW_TOKENS})
    capture_offline_features(target, records, root / "features", LAYERS, progress=False, last_hidden=True)
    capture_offline_features(target, records, root / "features-hard", LAYERS, progress=False)
    torch.save({"draft_state_dict": drafts[1].state_dict(), "strategy": "dflash"}, root / "training_state.pt")
    (root / "draft-config.json").write_text(json.dumps(drafts[1].config.to_dict()))
    return root, target, drafts, prompts


def _run(capsys, *argv):
    code = main(["evaluate", "--teacher-forced", "--no-progress", *argv])
    return code, capsys.readouterr()


def test_the_printed_walks_rank_the_drafters_and_equal_decoding_at_t0(setup, capsys, tmp_path):
    root, target, drafts, prompts = setup
    code, out = _run(
        capsys,
        "--target",
        str(root / "target"),
        "--eval-features",
        str(root / "features"),
        "--draft",
        str(root / "draft1"),
        "--draft",
        str(root / "draft2"),
        "--batch-size",
        "2",
        "--output-dir",
        str(tmp_path),
    )
    assert code == 0, out.err
    results = {r["draft"]: r for r in json.loads((tmp_path / "teacher_forced.json").read_text())["results"]}
    for seed, draft in zip((1, 2), drafts):
        record = results[str(root / f"draft{seed}")]
        measured = evaluate_drafter(target, draft, prompts, EvalConfig(max_new_tokens=NEW_TOKENS, show_progress=False))
        assert record["tau_walk"] == pytest.approx(measured.overall["tau"], rel=1e-12)
        assert record["anchors"] == 5 * (NEW_TOKENS - 1) and record["target_last_hidden"]
        assert 1.0 <= record["tau_walk_sample@T1"] <= 4.0 and 1.0 <= record["tau_walk_greedy_draft@T1"] <= 4.0
    lines = [line for line in out.out.splitlines() if line.strip().startswith(("1 ", "2 "))]
    best = max(results.values(), key=lambda r: r["tau_walk"])["draft"]
    assert best in lines[0]  # ranked by tau_walk


def test_a_specforge_checkpoint_loads_with_its_draft_config(setup, capsys, tmp_path):
    root, *_ = setup
    common = ["--target", str(root / "target"), "--eval-features", str(root / "features-hard")]
    code, _ = _run(capsys, *common, "--draft", str(root / "draft2"), "--output-dir", str(tmp_path / "a"))
    assert code == 0
    code, out = _run(
        capsys,
        *common,
        "--draft",
        str(root / "training_state.pt"),
        "--draft-config",
        str(root / "draft-config.json"),
        "--output-dir",
        str(tmp_path / "b"),
    )
    assert code == 0, out.err
    assert "the walks at T > 0 are not computed" in out.out
    exported, checkpoint = (json.loads((tmp_path / d / "teacher_forced.json").read_text())["results"][0] for d in "ab")
    assert checkpoint["tau_walk"] == exported["tau_walk"] and checkpoint.get("tau_walk_sample@T1") is None
    code, out = _run(capsys, *common, "--draft", str(root / "training_state.pt"))
    assert code == 2 and "is a SpecForge checkpoint" in out.err and "--draft-config FILE" in out.err


@pytest.mark.parametrize(
    "argv,error",
    [
        (["--teacher-forced", "--temperature", "0.5"], "--temperature decode(s) prompts; --teacher-forced does not"),
        (["--teacher-forced"], "--teacher-forced needs --eval-features DIR"),
        (["--eval-features", "x", "--prompts", "p"], "--eval-features apply only with --teacher-forced"),
        (["--prompts", "p", "--draft", "d2"], "--draft is given 2 times"),
        ([], "--prompts FILE is required"),
    ],
)
def test_flags_of_the_other_mode_are_refused(setup, capsys, argv, error):
    root, *_ = setup
    code = main(["evaluate", "--target", str(root / "target"), "--draft", str(root / "draft1"), *argv])
    assert code == 2 and error in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,error",
    [
        (["--anchor-stride", "0"], "argument --anchor-stride: 0 is invalid; accepted: an int >= 1"),
        (["--walk-temperature", "inf"], "argument --walk-temperature: inf is invalid (not finite)"),
        (["--walk-temperature", "0"], "argument --walk-temperature: 0 is invalid"),
        (["--walk-temperature", "1", "--walk-temperature", "1"], "1.0 given twice"),
        (["--blocks-per-forward", "100000"], "argument --blocks-per-forward: 100000 is invalid"),
    ],
)
def test_teacher_forced_numbers_are_checked_when_parsed(setup, capsys, argv, error):
    root, *_ = setup
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--target", str(root / "target"), "--draft", str(root / "draft1"), "--teacher-forced",
              "--eval-features", "x", *argv])  # fmt: skip
    assert exit_.value.code == 2 and error in capsys.readouterr().err


def test_a_walk_under_a_servers_rules_is_of_a_drafter_it_serves(setup, capsys, tmp_path):
    """Walks are labelled with the --convention rule set: a drafter its server would not serve is refused, as
    decoding under it is (SGLang 0.5.23 serves Domino only with pure_draft_prefix_len 1); SpecForge's rules
    walk it."""
    root, target, _, _ = setup
    domino = tiny_draft(target, block_size=4, target_layer_ids=LAYERS, method="domino", seed=3)
    save_draft_checkpoint(domino, root / "domino-prefix0", server="specforge-0.2.0")
    argv = ("--target", str(root / "target"), "--eval-features", str(root / "features"))
    argv += ("--draft", str(root / "domino-prefix0"))
    code, out = _run(capsys, *argv, "--output-dir", str(tmp_path / "served"))
    assert code == 2 and "sglang-0.5.23 would not serve this Domino drafter" in out.err
    assert "pure_draft_prefix_len" in out.err
    code, out = _run(capsys, *argv, "--convention", "specforge-0.2.0", "--output-dir", str(tmp_path / "class"))
    assert code == 0, out.err
    record = json.loads((tmp_path / "class" / "teacher_forced.json").read_text())["results"][0]
    assert record["rules"] == "specforge-0.2.0" and record["tau_walk"] >= 1.0
