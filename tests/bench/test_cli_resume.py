"""`specforge-dpace bench` end to end against the loopback stand-in, and resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from specforge_dpace.bench.validate import checkpoint_hash
from specforge_dpace.cli import main
from tests.bench._helpers import LOOPBACK
from tests.bench.test_lifecycle import _expected_per_step, _expected_taus, _gone, _pid_from_log


def _prompts_file(tmp_path, n=6, length=64):
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "prompt": chr(97 + i) * length}) + "\n" for i in range(n)))
    return path


def test_cli_end_to_end(tmp_path, monkeypatch, capsys, draft_dirs):
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "3")
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "--target",
            str(tmp_path),
            "--drafter",
            f"k4={draft_dirs['k4']}",
            "--drafter",
            f"k8={draft_dirs['k8']}",
            "--dataset",
            "smoke",
            "--dataset",
            f"prompts={_prompts_file(tmp_path, n=3, length=30)}",
            "--temperature",
            "0",
            "--temperature",
            "0.7",
            "--max-new-tokens",
            "48",
            "--num-prompts",
            "3",
            "--chat-template",
            "raw",
            "--concurrency",
            "2",
            "--launcher",
            LOOPBACK,
            "--out",
            str(out),
            "--health-timeout",
            "30",
            "--warmup",
            "1",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["results"]
    assert len(rows) == 3 * 2 * 2  # drafters incl. baseline x datasets x temperatures
    for row in rows:
        if row["drafter"] == "baseline":
            assert row["tau_token_weighted"] is None and row["speedup"] == 1.0
            continue
        lengths = [48] * 3 if row["dataset"] == "smoke" else [30] * 3
        mean, weighted = _expected_taus(lengths, [3], 4 if row["drafter"] == "k4" else 8)
        assert row["tau_mean_per_request"] == pytest.approx(mean) and row["tau_token_weighted"] == pytest.approx(
            weighted
        )
        per_step, server = _expected_per_step(lengths, [3], 4 if row["drafter"] == "k4" else 8)
        assert row["tau_server_avg"] == pytest.approx(server) and row["speedup"] > 1.0
        # the prefill-excluded convention beside SGLang's: one token fewer per request over the same steps
        assert row["tau_per_step"] == pytest.approx(per_step) and per_step < weighted
    prov = summary["provenance"]
    assert prov["drafter_sha256"]["k4"] == checkpoint_hash(draft_dirs["k4"])
    assert prov["servers"]["k8"]["version"] == "0.5.14+loopback" and prov["template"] == "raw (no chat template)"
    assert set(summary["tau_definitions"]) == {
        "tau_mean_per_request",
        "tau_token_weighted",
        "tau_per_step",
        "tau_server_avg",
        "tau_metrics",
    }
    assert "prefill token included" in summary["tau_definitions"]["tau_token_weighted"]
    assert "prefill excluded" in summary["tau_definitions"]["tau_per_step"]
    assert "40" in summary["tau_definitions"]["tau_server_avg"]  # the lag is stated
    for name in ("summary.md", "summary.csv", "tau_speedup.png", "requests.jsonl", "logs/k8.log"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "tau_token_weighted[S]" in printed and "tau_per_step[P]" in printed and "tau_server_avg[P,lag]" in printed
    assert "[S] = tau (SGLang convention: completion_tokens / spec_verify_ct, prefill token included)" in printed
    assert "tau_per_step[P]" in (out / "summary.md").read_text()
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert {r["temperature"] for r in records} == {0.0, 0.7} and len(records) == 36


def test_cli_refuses_an_unservable_draft(tmp_path, capsys, draft_dirs):
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((draft_dirs["k4"] / "config.json").read_text())
    del cfg["dflash_config"]["mask_token_id"]
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((draft_dirs["k4"] / "model.safetensors").read_bytes())
    code = main(
        [
            "bench",
            "--target",
            "t",
            "--drafter",
            f"bad={bad}",
            "--chat-template",
            "raw",
            "--launcher",
            LOOPBACK,
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "mask_token_id" in capsys.readouterr().err
    assert not (tmp_path / "out" / "logs").exists()  # nothing was launched


def _bench_cmd(tmp_path, draft, prompts):
    return [
        sys.executable,
        "-m",
        "specforge_dpace.cli",
        "bench",
        "--target",
        "t",
        "--drafter",
        f"k4={draft}",
        "--dataset",
        f"prompts={prompts}",
        "--chat-template",
        "raw",
        "--max-new-tokens",
        "64",
        "--no-baseline",
        "--launcher",
        LOOPBACK,
        "--out",
        str(tmp_path / "out"),
        "--warmup",
        "0",
        "--no-plot",
        "--health-timeout",
        "30",
        "--time-budget",
        "120",
    ]


def _wait_lines(path, n, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_resume_after_killing_the_runner(tmp_path, draft_dirs, sig):
    prompts = _prompts_file(tmp_path, n=6)
    env = {
        **os.environ,
        "SGLANG_SIMULATE_ACC_LEN": "1",
        "SPECFORGE_DPACE_LOOPBACK_STEP_S": "0.01",
        "OMP_NUM_THREADS": "1",
    }
    requests = tmp_path / "out" / "requests.jsonl"
    runner = subprocess.Popen(
        _bench_cmd(tmp_path, draft_dirs["k4"], prompts),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_lines(requests, 2)
        runner.send_signal(sig)
        _, err = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
    server_pid = _pid_from_log(tmp_path / "out" / "logs" / "k4.log")
    assert _gone(server_pid), "the server outlived its runner"
    if sig == signal.SIGTERM:
        assert runner.returncode == 130 and "rerun the same command to resume" in err
    else:
        assert runner.returncode == -signal.SIGKILL
    before = requests.read_text().splitlines()
    assert 2 <= len(before) < 6
    done = subprocess.run(
        _bench_cmd(tmp_path, draft_dirs["k4"], prompts),
        env={**env, "SPECFORGE_DPACE_LOOPBACK_STEP_S": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    after = requests.read_text().splitlines()
    assert after[: len(before)] == before  # kept, not redone
    ids = [json.loads(line)["prompt_id"] for line in after]
    assert sorted(ids) == [f"t{i}" for i in range(6)]  # each prompt exactly once
    second_log = (tmp_path / "out" / "logs" / "k4.log").read_text().split("$ ")[-1]
    assert second_log.count("POST /generate") == 6 - len(before)  # only the missing ones were sent
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # one token per verify step, plus the prefill token: 64 tokens over 63 steps in SGLang's convention
    row = summary["results"][0]
    assert row["requests"] == 6 and row["tau_token_weighted"] == pytest.approx(64 / 63)
    assert row["tau_per_step"] == pytest.approx(1.0)
