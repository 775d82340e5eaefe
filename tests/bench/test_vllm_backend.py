"""``bench --backend vllm`` end to end against the loopback vLLM stand-in (``bench/vllm_loopback.py``), launched as
real processes by the runner's own lifecycle code.  vLLM needs CUDA, so the stand-in speaks vLLM 0.33's
completions API and ``/metrics`` format with ``synthetic_acceptance_length`` semantics, and every number is checked
against the acceptance those semantics fix: an integral length L accepts exactly L - 1 drafts a step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("specforge")

from specforge_dpace.bench.server import free_port  # noqa: E402
from specforge_dpace.bench.vllm_client import parse_counters  # noqa: E402
from specforge_dpace.cli import main  # noqa: E402
from tests._vllm_variants import TARGET, build_vllm_bases  # noqa: E402
from tests.bench.test_lifecycle import _gone, _pid_from_log  # noqa: E402

LOOPBACK = f"{sys.executable} -m specforge_dpace.bench.vllm_loopback"
LENGTHS = {"smoke": 40, "toy": 24}  # max_new_tokens 40; the toy prompts are 24 characters long


@pytest.fixture(scope="module")
def drafts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-drafts")
    bases = build_vllm_bases(root)
    del bases
    target = root / "target"
    target.mkdir()
    (target / "config.json").write_text(json.dumps(TARGET))
    toy = root / "toy.jsonl"
    toy.write_text("".join(json.dumps({"id": f"t{i}", "prompt": chr(97 + i) * 24}) + "\n" for i in range(3)))
    return {"dflash": root / "vllm-zlab", "dspark": root / "vllm-dspark", "target": target, "toy": toy}


def _argv(drafts, out, *extra):
    return [
        "bench", "--backend", "vllm", "--target", str(drafts["target"]),
        "--drafter", f"dflash={drafts['dflash']}", "--drafter", f"dspark={drafts['dspark']}",
        "--dataset", "smoke", "--dataset", f"prompts={drafts['toy']}", "--num-prompts", "3",
        "--max-new-tokens", "40", "--chat-template", "raw", "--temperature", "0", "--temperature", "1",
        "--launcher", LOOPBACK, "--warmup", "1", "--health-timeout", "30", "--concurrency", "2", "--no-plot",
        "--out", str(out), *extra,
    ]  # fmt: skip


def _expected(n_tokens, accepted, drafted):
    """Reference for one request of ``n_tokens``: the prefill emits one, every step ``accepted + 1`` (cut to what
    is left); returns (steps, accepted drafts counted before the cut)."""
    steps, left = 0, n_tokens - 1
    while left > 0:
        steps += 1
        left -= min(accepted + 1, left)
    return steps, steps * min(accepted, drafted)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["greedy", "probabilistic"])
def test_vllm_end_to_end_with_known_synthetic_acceptance(tmp_path, drafts, method, capsys):
    out = tmp_path / "out"
    argv = _argv(drafts, out, "--draft-sample-method", method, "--rejection-sample-method", "synthetic",
                 "--synthetic-acceptance-length", "3")  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["results"]
    assert len(rows) == 3 * 2 * 2  # baseline + two drafters, two datasets, two temperatures
    for row in rows:
        label = "toy" if row["dataset"] != "smoke" else "smoke"
        n = min(40, LENGTHS[label])
        if row["drafter"] == "baseline":
            assert row["tau_metrics"] is None and row["speedup"] == 1.0
            continue
        drafted = 3 if row["drafter"] == "dflash" else 4  # DFlash block 4 -> 3 mask slots; DSpark gamma 4
        steps, accepted = _expected(n, 2, drafted)
        assert row["tau_metrics"] == pytest.approx(1 + accepted / steps, rel=1e-12) == 3.0
        assert row["draft_acceptance_rate"] == pytest.approx(2 / drafted)
        assert row["per_position_acceptance"] == [1.0, 1.0] + [0.0] * (drafted - 2)
        assert row["tau_token_weighted"] == pytest.approx(n / steps)  # [S] from per-request num_spec_steps
        assert row["tau_per_step"] == pytest.approx((n - 1) / steps)
        assert row["drafts"] == 3 * steps and row["speedup"] > 1.5
    settings = next(iter(summary["settings"].values()))
    assert settings["run"]["speculative"] == {
        "draft_sample_method": method, "rejection_sample_method": "synthetic", "synthetic_acceptance_length": 3.0
    }  # fmt: skip
    assert settings["run"]["serving_rules"] == "vllm-0.33.0"
    logs = sorted((out / "logs").glob("*.log"))
    assert len(logs) == 3
    spec = json.loads(logs[1].read_text().split("--speculative-config ", 1)[1].split("'")[1])  # dflash.log
    assert spec == {
        "method": "dflash", "model": str(drafts["dflash"]), "num_speculative_tokens": 3,
        "draft_sample_method": method, "rejection_sample_method": "synthetic", "synthetic_acceptance_length": 3.0,
    }  # fmt: skip
    for log in logs:  # every server stopped
        assert _gone(_pid_from_log(log))
    # the same command resumes: nothing left to measure
    capsys.readouterr()
    assert main(argv) == 0
    assert "already complete" in capsys.readouterr().out
    assert len((out / "requests.jsonl").read_text().splitlines()) == 3 * 2 * 2 * 3
    # the other draft sample method in the same --out is refused, naming what changed
    other = "greedy" if method == "probabilistic" else "probabilistic"
    assert main(_swap(argv, method, other)) == 2
    assert f'speculative.draft_sample_method: "{method}" (recorded) -> "{other}" (now)' in capsys.readouterr().err


def _swap(argv, old, new):
    i = argv.index("--draft-sample-method")
    assert argv[i + 1] == old
    return argv[: i + 1] + [new] + argv[i + 2 :]


@pytest.mark.slow
def test_fractional_length_matches_the_counters_and_the_per_request_metrics(tmp_path, drafts, monkeypatch):
    """L = 2.5: each step accepts one draft surely and a second with probability 1/2 (minimum-variance rates
    [1, 0.5, 0]); the counters and the per-request histograms must tell the same story."""
    monkeypatch.setenv("SPECFORGE_DPACE_VLLM_LOOPBACK_ENGINES", "2")  # counters split over two engines
    out = tmp_path / "out"
    argv = _argv(drafts, out, "--rejection-sample-method", "synthetic", "--synthetic-acceptance-length", "2.5")
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    for row in json.loads((out / "summary.json").read_text())["results"]:
        if row["drafter"] == "baseline":
            continue
        group = [r for r in records if (r["drafter"], r["dataset"], r["temperature"]) == (
            row["drafter"], row["dataset"], row["temperature"])]  # fmt: skip
        steps = sum(r["verify_ct"] for r in group)
        accepted = sum(r["num_correct_drafts"] for r in group)
        assert row["tau_metrics"] == pytest.approx(1 + accepted / steps, rel=1e-12)
        assert 2.0 <= row["tau_metrics"] <= 3.0
        assert row["per_position_acceptance"][0] == 1.0 and row["per_position_acceptance"][2] == 0.0


def test_domino_is_refused_before_anything_launches(tmp_path, drafts, capsys):
    from specforge_dpace.evaluate import save_draft_checkpoint, tiny_draft, tiny_target

    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=4, seed=0)
    domino = tiny_draft(
        target, num_hidden_layers=2, block_size=4, target_layer_ids=[1, 2], method="domino",
        head={"pure_draft_prefix_len": 1},
    )  # fmt: skip
    path = save_draft_checkpoint(domino, tmp_path / "domino")
    argv = _argv(drafts, tmp_path / "out")
    argv[argv.index(f"dspark={drafts['dspark']}")] = f"domino={path}"
    assert main(argv) == 2
    assert "vllm-0.33.0 does not serve Domino" in capsys.readouterr().err
    assert not (tmp_path / "out" / "logs").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--rejection-sample-method", "synthetic"], "accepted: both, or neither"),
        (["--synthetic-acceptance-length", "2"], "accepted: both, or neither"),
        (["--rejection-sample-method", "synthetic", "--synthetic-acceptance-length", "5"], "in [1, 4]"),
        (["--draft-sampling", "sample"], "--draft-sampling applies to --backend hf only"),
        (["--sglang-version", "0.5.23"], "--sglang-version applies to --backend sglang only"),
        (["--server-args=--disable-log-stats"], "switches off the /metrics counters"),
        (["--server-args", "--port 9"], "must not set --port"),
    ],
)
def test_vllm_flags_are_refused_naming_the_value(tmp_path, drafts, capsys, extra, needle):
    assert main(_argv(drafts, tmp_path / "out", *extra)) == 2
    assert needle in capsys.readouterr().err


def test_a_synthetic_length_below_one_is_refused_when_parsed(tmp_path, drafts, capsys):
    argv = _argv(
        drafts, tmp_path / "out", "--rejection-sample-method", "synthetic", "--synthetic-acceptance-length", "0.5"
    )
    with pytest.raises(SystemExit):
        main(argv)
    assert "0.5 is invalid; accepted: a finite number >= 1" in capsys.readouterr().err


def test_vllm_flags_are_refused_for_other_backends(tmp_path, drafts, capsys):
    argv = _argv(drafts, tmp_path / "out", "--draft-sample-method", "probabilistic")
    argv[argv.index("vllm")] = "sglang"
    assert main(argv) == 2
    assert "--draft-sample-method applies to --backend vllm only" in capsys.readouterr().err


@pytest.mark.slow
def test_attach_to_a_server_the_user_started(tmp_path, drafts):
    port = free_port()
    spec = json.dumps({"method": "dflash", "model": str(drafts["dflash"]), "num_speculative_tokens": 3,
                       "rejection_sample_method": "synthetic", "synthetic_acceptance_length": 2})  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "specforge_dpace.bench.vllm_loopback", "serve", str(drafts["target"]), "--port",
         str(port), "--served-model-name", "mine", "--speculative-config", spec],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out = tmp_path / "out"
        argv = _argv(drafts, out, "--server-url", f"dflash=http://127.0.0.1:{port}", "--no-baseline",
                     "--rejection-sample-method", "synthetic", "--synthetic-acceptance-length", "2")  # fmt: skip
        argv[argv.index(f"dspark={drafts['dspark']}") - 1 : argv.index(f"dspark={drafts['dspark']}") + 1] = []
        assert main(argv) == 0
        rows = json.loads((out / "summary.json").read_text())["results"]
        assert {r["drafter"] for r in rows} == {"dflash"} and all(r["tau_metrics"] == 2.0 for r in rows)
        assert proc.poll() is None  # an attached server is never stopped
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_counter_parser_sums_engines_and_positions():
    text = "\n".join(
        [
            "# TYPE vllm:spec_decode_num_drafts_total counter",
            'vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 3.0',
            'vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 4.0',
            'vllm:spec_decode_num_drafts_created{engine="0",model_name="m"} 1.7e+09',
            'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 21.0',
            'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 9.0',
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 2.0',
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="0"} 7.0',
            'vllm:num_requests_running{engine="0",model_name="m"} 0.0',
        ]
    )
    counters = parse_counters(text)
    assert (counters.drafts, counters.draft_tokens, counters.accepted) == (7, 21, 9)
    assert counters.accepted_per_pos == [7, 2]
    with pytest.raises(ValueError, match="position"):
        parse_counters('vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0"} 1.0')
