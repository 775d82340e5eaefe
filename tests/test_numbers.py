"""Every number a command takes is checked at the door: finite, in its documented range, the flag named.

Real parsers of every ``specforge-dpace`` sub-command and of ``scripts/bench_acceptance.py``; each bad
value below reached deep code before (a traceback, a segfault, tens of GB allocated, a NaN drafter, a
result stored under a ``null`` key).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specforge_dpace import _numbers as num
from specforge_dpace.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _acceptance_script():
    spec = importlib.util.spec_from_file_location("bench_acceptance", REPO / "scripts" / "bench_acceptance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the ranges themselves ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e309", "-1e309"])
def test_non_finite_text_is_refused_for_every_float_range(text):
    for rng in (num.TEMPERATURE, num.TOP_P, num.SECONDS, num.LEARNING_RATE, num.FINITE, num.CONFIDENCE):
        with pytest.raises(argparse.ArgumentTypeError, match=r"is invalid \(not finite\); accepted: "):
            rng(text)
        with pytest.raises(ValueError, match=r"x=.* is invalid \(not finite\)"):
            rng.check(float(text), "x")


def test_special_values_bounds_and_kinds():
    assert num.TEMPERATURE("0") == 0.0 and num.TEMPERATURE("-0") == 0.0  # -0.0 and 0.0 are one key
    assert str(num.TEMPERATURE("-0")) == "0.0"
    assert num.TEMPERATURE("1e-6") == 1e-6 and num.TEMPERATURE("100") == 100.0
    for bad in ("1e-300", "1e-7", "100.5", "-1"):  # 1e-300 overflowed logits / T; SGLang is greedy below 1e-6
        with pytest.raises(argparse.ArgumentTypeError, match="accepted: 0 \\(greedy\\) or a finite number in"):
            num.TEMPERATURE(bad)
    assert num.TOP_K("-1") == -1 and num.TOP_K("1") == 1
    with pytest.raises(argparse.ArgumentTypeError, match=r"1.5 is invalid \(not an int\)"):
        num.TOP_K("1.5")
    with pytest.raises(ValueError, match=r"k=True is invalid \(not a number\)"):
        num.TOP_K.check(True, "k")  # a bool is not a count
    with pytest.raises(ValueError, match=r"k=2.0 is invalid \(not an int\)"):
        num.BLOCK_SIZE.check(2.0, "k")
    assert num.CONFIDENCE.accepted() == "a finite number in (0, 1)"
    assert num.BLOCK_SIZE.accepted() == "an int in [2, 256] (it sizes memory)"
    assert num.SEED.accepted() == "an int in [0, 4294967295]"
    assert num.THREADS.high == (os.cpu_count() or 1)


def test_repeated_values_are_found_by_value_and_key():
    assert num.first_repeat([0.0, 0.5, -0.0]) == (0.0, -0.0)
    assert num.first_repeat(["dpace", "dpace(alpha=0.5)"], num.objective_key) == ("dpace", "dpace(alpha=0.5)")
    assert num.first_repeat(["dpace", "dpace(alpha=0.3)"], num.objective_key) is None
    with pytest.raises(ValueError, match="seed 3 given twice; give each value once"):
        num.check_unique([1, 3, 3], "seed")


# -- every command: no bare int / float flag, every range in --help ---------------------------------------


def _numeric_actions(parser):
    for action in parser._actions:
        if action.option_strings and (isinstance(action.type, num.Range) or action.type in (int, float)):
            yield action


def test_every_numeric_flag_of_every_command_has_a_range_stated_in_its_help():
    parsers = {**_subparsers(), "scripts/bench_acceptance.py": _acceptance_script().build_parser()}
    seen = 0
    for name, parser in parsers.items():
        for action in _numeric_actions(parser):
            seen += 1
            flag = action.option_strings[-1]
            assert isinstance(action.type, num.Range), f"{name} {flag}: a bare {action.type.__name__}"
            assert f"accepted: {action.type.accepted()}" in action.help, f"{name} {flag}: range not in --help"
    assert seen > 60  # train-dflash, evaluate, demo, bench, losses, doctor and the acceptance script


def test_help_text_shows_the_ranges():
    out = subprocess.run(
        [sys.executable, "-m", "specforge_dpace", "bench", "--help"], capture_output=True, text=True, check=True
    ).stdout
    text = " ".join(out.split())
    assert "accepted: 0 (greedy) or a finite number in [1e-06, 100]; each value once" in text
    assert "accepted: a finite number in (0, 1000000] (about 11.5 days; longer is a hung run)" in text


# -- the bad values the issue reports, refused at parse time naming the flag and the range -----------------

BENCH = ["bench", "--target", "t", "--drafter", "d=x"]
EVALUATE = ["evaluate", "--target", "t", "--draft", "d", "--prompts", "p"]
REFUSED = [
    (BENCH + ["--temperature", "inf"], "--temperature: inf is invalid (not finite)"),
    (BENCH + ["--temperature", "1e309"], "--temperature: 1e309 is invalid (not finite)"),
    (BENCH + ["--time-budget", "inf"], "--time-budget: inf is invalid (not finite)"),
    (BENCH + ["--concurrency", "100000"], "--concurrency: 100000 is invalid; accepted: an int in [1, 1024]"),
    (BENCH + ["--seed", "99999999999999999999"], "--seed: 99999999999999999999 is invalid; accepted: an int in"),
    (EVALUATE + ["--temperature", "nan"], "--temperature: nan is invalid (not finite)"),
    (EVALUATE + ["--temperature", "1e-300"], "--temperature: 1e-300 is invalid; accepted: 0 (greedy) or"),
    (EVALUATE + ["--temperature", "inf"], "--temperature: inf is invalid (not finite)"),
    (EVALUATE + ["--threads", "100000"], "--threads: 100000 is invalid; accepted: an int in [1, "),
    (EVALUATE + ["--seed", str(2**70)], f"--seed: {2**70} is invalid; accepted: an int in [0, 4294967295]"),
    (EVALUATE + ["--block-size", "1000000"], "--block-size: 1000000 is invalid; accepted: an int in [2, 256]"),
    (EVALUATE + ["--max-new-tokens", "10000000"], "--max-new-tokens: 10000000 is invalid"),
    (["demo", "--lr", "inf"], "--lr: inf is invalid (not finite)"),
    (["demo", "--lr", "5"], "--lr: 5 is invalid; accepted: a finite number in (0, 1]"),
    (["demo", "--block-size", "1000000"], "--block-size: 1000000 is invalid"),
    (["demo", "--threads", "100000"], "--threads: 100000 is invalid"),
    (["demo", "--num-train-seqs", "10000000"], "--num-train-seqs: 10000000 is invalid"),
    (["demo", "--eval-temperature", "nan"], "--eval-temperature: nan is invalid (not finite)"),
    (["doctor", "--timeout", "nan"], "--timeout: nan is invalid (not finite)"),
    (["losses", "--vocab", "100000000"], "--vocab: 100000000 is invalid; accepted: an int in [2, 262144]"),
    (["train-dflash", "--learning-rate", "inf"], "--learning-rate: inf is invalid (not finite)"),
    (["train-dflash", "--num-anchors", "10000000"], "--num-anchors: 10000000 is invalid"),
]


@pytest.mark.parametrize("argv, message", REFUSED, ids=[" ".join(a[-3:]) for a, _ in REFUSED])
def test_bad_numbers_are_refused_at_parse_time_naming_the_flag_and_range(tmp_path, capsys, argv, message):
    if argv[0] == "bench":
        argv = argv + ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {message}" in err and "accepted: " in err
    assert not (tmp_path / "o").exists()


def test_the_threads_environment_variable_is_checked_too(monkeypatch):
    from specforge_dpace.demo._util import default_threads

    monkeypatch.setenv("SPECFORGE_DPACE_THREADS", "100000")
    with pytest.raises(ValueError, match="SPECFORGE_DPACE_THREADS='100000' is invalid; accepted: an int in"):
        default_threads()
    monkeypatch.setenv("SPECFORGE_DPACE_THREADS", "1")
    assert default_threads() == 1


def test_losses_try_refuses_a_batch_too_large_to_allocate(capsys):
    code = main(["losses", "--try", "dpace", "--batch-size", "4096", "--blocks", "4096", "--vocab", "1024"])
    err = capsys.readouterr().err
    assert code == 2 and "--batch-size 4096 x --blocks 4096 x --block-size 16 x --vocab 1024" in err
    assert "accepted: at most 67108864" in err


# -- repeatable flags: a repeated value is refused, naming it ------------------------------------------------

REPEATED = [
    (BENCH + ["--temperature", "0", "--temperature", "0"], "--temperature: 0.0 given twice"),
    (BENCH + ["--temperature", "0", "--temperature", "-0.0"], "--temperature: 0.0 given twice"),
    (EVALUATE + ["--stop-token-id", "5", "--stop-token-id", "5"], "--stop-token-id: 5 given twice"),
    (["demo", "--objectives", "dpace", "dflash", "dpace"], "--objectives: 'dpace' given twice"),
    (["demo", "--objectives", "dpace", "dpace(alpha=0.5)"], "--objectives: 'dpace(alpha=0.5)' repeats 'dpace'"),
    (["losses", "--try", "dpace", "--spec", "dpace"], "objective spec 'dpace' given twice"),
    (["train-dflash", "--server-url", "http://a:1", "--server-url", "http://a:1"], "'http://a:1' given twice"),
]


@pytest.mark.parametrize("argv, message", REPEATED, ids=[" ".join(a[-4:]) for a, _ in REPEATED])
def test_a_repeated_value_of_a_repeatable_flag_is_refused(tmp_path, capsys, argv, message):
    if argv[0] == "bench":
        argv = argv + ["--out", str(tmp_path / "o")]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "give each value once" in err


def test_the_acceptance_script_refuses_repeated_seeds_and_arms(capsys):
    script = _acceptance_script()
    for argv, message in (
        (["--seeds", "0", "1", "0"], "--seeds: 0 given twice"),
        (["--arms", "dflash(gamma=7)", "lk-lambda", "lk-lambda(eta=3)"], "'lk-lambda(eta=3)' repeats 'lk-lambda'"),
        (["--seeds", "-1"], "--seeds: -1 is invalid; accepted: an int in [0, 4294967295]"),
        (["--jobs", "100000"], "--jobs: 100000 is invalid"),
    ):
        with pytest.raises(SystemExit):
            script.parse_args(argv)
        assert message in capsys.readouterr().err


def test_the_target_build_script_checks_its_numbers_too():
    script = [sys.executable, str(REPO / "scripts" / "build_demo_target.py")]
    text = " ".join(subprocess.run([*script, "--help"], capture_output=True, text=True, check=True).stdout.split())
    assert "--hidden-size HIDDEN_SIZE target hidden size; accepted: an int in [8, 16384] (it sizes memory)" in text
    refused = subprocess.run([*script, "--lr", "inf", "--out-dir", "/nonexistent"], capture_output=True, text=True)
    assert refused.returncode == 2 and "argument --lr: inf is invalid (not finite)" in refused.stderr
