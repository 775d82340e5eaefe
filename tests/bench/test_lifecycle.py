"""The runner against the loopback stand-in, launched as a real process by the runner's own
lifecycle code: exact tau, field dialects, crashes, health timeouts, malformed answers."""

import os
import re
import sys
import time

import pytest

from specforge_dpace.bench import fields
from specforge_dpace.bench.datasets import Prompt
from specforge_dpace.bench.results import ResultStore
from specforge_dpace.bench.runner import BenchConfig, BenchError, run_sglang
from specforge_dpace.bench.server import ServerError, launch
from tests.bench._helpers import LOOPBACK

# prompt lengths in characters = completion lengths in the loopback (max_new_tokens 64)
PROMPTS = [Prompt("toy", f"p{n}", "x" * n) for n in (10, 40, 64)]


def _config(tmp_path, drafters, **kw):
    base = dict(
        target="target-not-loaded",
        drafters=drafters,
        prompts={"toy": PROMPTS},
        out_dir=tmp_path,
        max_new_tokens=64,
        launcher=LOOPBACK,
        health_timeout_s=30,
        warmup=1,
        request_timeout_s=30,
        time_budget_s=60,
    )
    base.update(kw)
    return BenchConfig(**base)


def _steps(n, pattern, block):
    """Tokens each verify step accepts (before the max_new_tokens cut) for a request of ``n``
    tokens: the first comes from the prefill, the other n - 1 from verify steps (SGLang's counting)."""
    out, left, i = [], n - 1, 0
    while left > 0:
        out.append(min(pattern[i % len(pattern)], block))
        left -= min(out[-1], left)
        i += 1
    return out


def _expected_taus(lengths, pattern, block):
    """Independent reference, SGLang's convention: (mean over requests of completion / verify
    steps, sum completion / sum verify steps); the prefill token is in the completion, not a step."""
    per_request, tokens, steps = [], 0, 0
    for n in lengths:
        s = len(_steps(n, pattern, block))
        per_request.append(n / s)
        tokens, steps = tokens + n, steps + s
    return sum(per_request) / len(per_request), tokens / steps


def _expected_per_step(lengths, pattern, block):
    """(tau per verify step with the prefill token excluded, the server average: accepted tokens per
    verify step counted before the max_new_tokens cut)."""
    steps = [_steps(n, pattern, block) for n in lengths]
    count = sum(len(s) for s in steps)
    return (sum(lengths) - len(lengths)) / count, sum(map(sum, steps)) / count


def _pid_from_log(path):
    match = re.search(r"pid=(\d+)", path.read_text())
    return int(match.group(1))


def _gone(pid, timeout=5.0):
    """True once ``pid`` no longer runs: vanished, or a zombie nobody has reaped yet (a container's
    PID 1 may never reap orphans), which no longer holds a port or memory."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child: reap it
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("version", sorted(fields.PROFILES))
def test_report_reproduces_configured_tau_exactly(tmp_path, monkeypatch, draft_dirs, version):
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "3,5")
    monkeypatch.setenv("SPECFORGE_DPACE_LOOPBACK_VERSION", version)
    cfg = _config(
        tmp_path,
        {"k4": str(draft_dirs["k4"]), "k8": str(draft_dirs["k8"])},
        block_sizes={"k4": 4, "k8": 8},
        concurrency=2,
    )
    store = ResultStore(tmp_path)
    assert run_sglang(cfg, store, render=lambda m: m) == 9
    rows = {r["drafter"]: r for r in store.summary_rows()}
    for name, block in (("k4", 4), ("k8", 8)):
        mean, weighted = _expected_taus([10, 40, 64], [3, 5], block)
        per_step, server = _expected_per_step([10, 40, 64], [3, 5], block)
        assert rows[name]["tau_mean_per_request"] == pytest.approx(mean, rel=1e-12)
        assert rows[name]["tau_token_weighted"] == pytest.approx(weighted, rel=1e-12)
        assert rows[name]["tau_per_step"] == pytest.approx(per_step, rel=1e-12)
        # the warm-up used a different prompt length; /flush_cache must have reset the server average
        assert rows[name]["tau_server_avg"] == pytest.approx(server, rel=1e-12)
        assert len({weighted, per_step, server}) == 3  # three different numbers, each what it claims
        assert rows[name]["requests"] == 3 and rows[name]["speedup"] > 1.5
    assert rows["k4"]["tau_mean_per_request"] != rows["k4"]["tau_token_weighted"]
    assert rows["baseline"]["tau_token_weighted"] is None and rows["baseline"]["speedup"] == 1.0
    # per-position acceptance from the histogram: slot k accepted in steps that emitted > k tokens
    accepted = [a for n in (10, 40, 64) for a in _steps(n, [3, 5], 8)]
    expected = [sum(a > k for a in accepted) / len(accepted) for k in range(1, 8)]
    assert rows["k8"]["per_position_acceptance"] == pytest.approx(expected, rel=1e-12)
    for name in ("baseline", "k4", "k8"):
        assert _gone(_pid_from_log(tmp_path / "logs" / f"{name}.log"))


def test_block_size_reaches_the_server(tmp_path, monkeypatch, draft_dirs):
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "16")
    cfg = _config(tmp_path, {"k4": str(draft_dirs["k4"])}, block_sizes={"k4": 4}, baseline=False)
    store = ResultStore(tmp_path)
    seen = {}
    run_sglang(cfg, store, lambda m: m, on_server=lambda n, info: seen.update({n: info}))
    assert seen["k4"]["speculative_num_draft_tokens"] == 4
    assert "--speculative-num-draft-tokens 4" in (tmp_path / "logs" / "k4.log").read_text()
    # the pattern asks for 16 tokens a step; the block of 4 caps it
    assert store.summary_rows()[0]["tau_token_weighted"] == pytest.approx(_expected_taus([10, 40, 64], [4], 4)[1])


def test_conflicting_block_size_in_server_args_is_refused(tmp_path, draft_dirs):
    cfg = _config(
        tmp_path,
        {"k4": str(draft_dirs["k4"])},
        block_sizes={"k4": 4},
        baseline=False,
        server_args=["--speculative-dflash-block-size", "8"],
    )
    with pytest.raises(ValueError, match="block_size 4"):
        run_sglang(cfg, ResultStore(tmp_path), lambda m: m)


def test_server_crash_mid_run_shows_log_tail_and_keeps_results(tmp_path, monkeypatch, draft_dirs):
    monkeypatch.setenv("SPECFORGE_DPACE_LOOPBACK_CRASH_AFTER", "3")  # warm-up + 2 measured, then dies
    cfg = _config(tmp_path, {"k4": str(draft_dirs["k4"])}, block_sizes={"k4": 4}, baseline=False)
    store = ResultStore(tmp_path)
    with pytest.raises(BenchError) as err:
        run_sglang(cfg, store, lambda m: m)
    msg = str(err.value)
    assert "died during the run" in msg and "simulated crash" in msg and "exit code 3" in msg
    assert len(store.records()) == 2
    assert _gone(_pid_from_log(tmp_path / "logs" / "k4.log"))


def test_never_healthy_server_times_out_with_log_tail_and_is_killed(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECFORGE_DPACE_LOOPBACK_NEVER_HEALTHY", "1")
    start = time.monotonic()
    with pytest.raises(ServerError) as err:
        launch("stuck", "target", tmp_path / "stuck.log", launcher=LOOPBACK, health_timeout=3)
    assert time.monotonic() - start < 15
    msg = str(err.value)
    assert "not healthy after 3s" in msg and "loopback: pid=" in msg
    assert _gone(_pid_from_log(tmp_path / "stuck.log"))


def test_server_that_exits_at_start_reports_its_log(tmp_path):
    launcher = f"{sys.executable} -c 'import sys; print(\"fatal: CUDA driver not found\"); sys.exit(7)'"
    with pytest.raises(ServerError) as err:
        launch("bad", "target", tmp_path / "bad.log", launcher=launcher, health_timeout=30)
    msg = str(err.value)
    assert "exited before becoming healthy" in msg and "exit code 7" in msg and "CUDA driver not found" in msg


@pytest.mark.parametrize("mode,needle", [("json", "not JSON"), ("fields", "spec_verify_ct")])
def test_malformed_response_aborts_with_a_clear_error(tmp_path, monkeypatch, draft_dirs, mode, needle):
    monkeypatch.setenv("SPECFORGE_DPACE_LOOPBACK_MALFORMED", mode)
    cfg = _config(tmp_path, {"k4": str(draft_dirs["k4"])}, block_sizes={"k4": 4}, baseline=False, warmup=0)
    store = ResultStore(tmp_path)
    with pytest.raises(BenchError) as err:
        run_sglang(cfg, store, lambda m: m)
    assert "bad /generate answer" in str(err.value) and needle in str(err.value)
    assert store.records() == []
    assert _gone(_pid_from_log(tmp_path / "logs" / "k4.log"))


def test_attach_to_a_running_server(tmp_path, monkeypatch, draft_dirs):
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "2")
    with launch(
        "ext",
        "target",
        tmp_path / "ext.log",
        draft_path=str(draft_dirs["k4"]),
        block_size=4,
        launcher=LOOPBACK,
        health_timeout=30,
    ) as external:
        cfg = _config(tmp_path / "out", {"k4": str(draft_dirs["k4"])}, baseline=False, server_urls={"k4": external.url})
        store = ResultStore(tmp_path / "out")
        run_sglang(cfg, store, lambda m: m)
        assert external.alive()  # attached servers are not ours to stop
        assert store.summary_rows()[0]["tau_token_weighted"] == pytest.approx(_expected_taus([10, 40, 64], [2], 4)[1])
    assert not (tmp_path / "out" / "logs" / "k4.log").exists()


def test_server_average_lags_like_sglangs_decode_log_interval(tmp_path, monkeypatch, draft_dirs):
    """SGLang folds verify steps into avg_spec_accept_length only every decode_log_interval (40)
    decode iterations since /flush_cache: the loopback does the same when asked, and the report
    then shows what the server reported -- the first 40 steps' average, or none below 40 steps --
    while the per-request columns cover every step."""
    monkeypatch.setenv("SGLANG_SIMULATE_ACC_LEN", "1,1,4")
    monkeypatch.setenv("SPECFORGE_DPACE_LOOPBACK_LOG_INTERVAL", "40")
    cfg = _config(tmp_path, {"k4": str(draft_dirs["k4"])}, block_sizes={"k4": 4}, baseline=False, warmup=0)
    store = ResultStore(tmp_path)
    run_sglang(cfg, store, lambda m: m)
    steps = [a for n in (10, 40, 64) for a in _steps(n, [1, 1, 4], 4)]
    assert 40 <= len(steps) < 80
    (row,) = store.summary_rows()
    assert row["tau_server_avg"] == pytest.approx(sum(steps[:40]) / 40, rel=1e-12)
    assert row["tau_server_avg"] != pytest.approx(_expected_per_step([10, 40, 64], [1, 1, 4], 4)[1])
    short = _config(
        tmp_path / "short", {"k4": str(draft_dirs["k4"])}, prompts={"toy": PROMPTS[:1]}, baseline=False, warmup=0
    )
    store = ResultStore(tmp_path / "short")
    run_sglang(short, store, lambda m: m)
    (row,) = store.summary_rows()
    assert row["tau_server_avg"] is None and row["tau_token_weighted"] is not None  # 6 steps: none folded yet


def test_requests_with_only_the_prefill_token(tmp_path, monkeypatch, draft_dirs):
    """max_new_tokens 1: the prefill makes the one token, SGLang sends no spec_* fields; recorded with
    zero verify steps, no tau, and the run goes on."""
    cfg = _config(tmp_path, {"k4": str(draft_dirs["k4"])}, block_sizes={"k4": 4}, max_new_tokens=1, warmup=0)
    store = ResultStore(tmp_path)
    assert run_sglang(cfg, store, lambda m: m) == 6
    spec = [r for r in store.records() if r["drafter"] == "k4"]
    assert [(r["completion_tokens"], r["verify_ct"]) for r in spec] == [(1, 0)] * 3
    row = next(r for r in store.summary_rows() if r["drafter"] == "k4")
    assert row["tau_token_weighted"] is None and row["requests"] == 3
