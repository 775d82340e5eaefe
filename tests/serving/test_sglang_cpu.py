"""SGLang 0.5.23's own code on the project's exports, on CPU (opt-in: ``pytest -m sglang_cpu``).

Runs when ``sglang==0.5.23`` is importable (this test installs nothing; ``pip install --no-deps`` the wheel and
the small pure-Python modules its import needs).  In a subprocess (``_sglang_probe.py``: import shims for
torchvision / ``vllm._custom_ops`` / a transformers image-processor registration, which the code under test
never calls) it runs SGLang's ``get_config``, model registry, ``parse_dflash_draft_config`` /
``parse_dspark_draft_config``, model constructors and ``load_weights`` over:

- the drafters ``specforge-dpace demo --method dflash|domino|dspark`` writes: all load, as the classes the
  registry names (DFLASH's ``DFlashDraftModel`` for Domino, ``DSparkDraftModel``), and SGLang's own Domino
  rollout and DSpark Markov block propose, token for token, what the evaluator proposes for them;
- SpecForge's own ``export --to hf`` layout: SGLang cannot load its Domino or DSpark drafter (the reason the
  project converts them);
- every row of the Domino / DSpark variant table: SGLang raises exactly where the table says it does, and
  every DFlash variant the 0.5.23 rules accept loads.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sglang_cpu


def _sglang_version():
    if importlib.util.find_spec("sglang") is None:
        return None
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


if _sglang_version() != "0.5.23":
    pytest.skip(f"needs sglang==0.5.23 importable (found {_sglang_version()})", allow_module_level=True)

pytest.importorskip("specforge")

import torch  # noqa: E402

from specforge_dpace.demo import assets_dir  # noqa: E402
from specforge_dpace.evaluate import load_draft, tiny_draft, tiny_target  # noqa: E402
from specforge_dpace.evaluate._proposals import propose_block  # noqa: E402
from tests._method_variants import METHOD_VARIANTS, build_method_bases, write_method_variant  # noqa: E402
from tests._servable_variants import VARIANTS, build_bases, write_variant  # noqa: E402

PROBE = Path(__file__).with_name("_sglang_probe.py")


def run_probe(target: Path, items: list[dict]) -> dict:
    """``{key (default: path): result}`` of SGLang's code over ``items`` (one subprocess)."""
    env = {**os.environ, "SPECFORGE_DPACE_AUTOLOAD": "0", "OMP_NUM_THREADS": "1"}
    env.pop("SGLANG_USE_CPU_ENGINE", None)
    request = json.dumps({"target": str(target), "items": items})
    done = subprocess.run(
        [sys.executable, str(PROBE), request], capture_output=True, text=True, env=env, timeout=900, cwd=PROBE.parent
    )
    results = [json.loads(line[6:]) for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert len(results) == len(items), done.stderr[-3000:]
    return {r["key"]: r for r in results}


@pytest.fixture(scope="module")
def demo_drafters(tmp_path_factory):
    """One drafter per method, written by the demo pipeline (tiny budget)."""
    from tests.demo.test_demo_servable import tiny_demo

    out = {}
    for method in ("dflash", "domino", "dspark"):
        root = tmp_path_factory.mktemp(f"demo-{method}")
        tiny_demo(root, method)
        out[method] = next(p for p in (root / "drafters").iterdir() if (p / "config.json").is_file())
    return out


def _hidden(seed: int, rows: int, width: int) -> list:
    return (3 * torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))).tolist()


def test_demo_drafters_load_in_sglang_and_propose_what_the_evaluator_proposes(demo_drafters):
    target = assets_dir()
    hidden_size = json.loads((target / "config.json").read_text())["hidden_size"]
    items, expected = [], {}
    for method, path in demo_drafters.items():
        block = json.loads((path / "config.json").read_text())["block_size"]
        if method == "dflash":
            items.append({"path": str(path), "method": method})
            continue
        draft = load_draft(path, server="sglang-0.5.23")
        from specforge_dpace.demo.target import load_target_dir

        tgt = load_target_dir(target)
        for seed in range(4):
            hidden, anchor = _hidden(seed, block, hidden_size), seed + 5
            key = f"{path}#{seed}"
            items.append({"path": str(path), "method": method, "hidden": hidden, "anchor": anchor, "key": key})
            ids = torch.full((1, block), draft.mask_token_id, dtype=torch.long)
            ids[0, 0] = anchor
            kind = {"domino": "domino-rollout", "dspark": "anchor-markov"}[method]
            with torch.no_grad():
                tokens, _ = propose_block(
                    draft, kind, torch.tensor([hidden]), ids, tgt.get_output_embeddings(), tgt.get_input_embeddings(),
                    lambda x: (x.argmax(-1), None), candidate_pool=2048,
                )  # fmt: skip
            expected[key] = tokens.tolist()
    results = run_probe(target, items)
    classes = {"dflash": "DFlashDraftModel", "domino": "DFlashDraftModel", "dspark": "DSparkDraftModel"}
    for method, path in demo_drafters.items():
        mine = [r for r in results.values() if r["path"] == str(path)]
        assert mine and all(r.get("error") is None and r["resolved"] == classes[method] for r in mine), mine
    proposals = {key: results[key].get("proposals") for key in expected}
    assert len(expected) == 8 and proposals == expected


def test_specforge_export_layouts_do_not_load_in_sglang(tmp_path):
    """SpecForge's export --to hf: Domino under its class name (the registry falls back to the Transformers
    class; DFLASH's parser refuses it without shift_label), DSpark without top-level markov_rank."""
    from specforge.export.checkpoint_io import apply_legacy_rope_scaling

    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=4, seed=0)
    target.save_pretrained(tmp_path / "target")
    items = []
    for method, head in (("domino", {"pure_draft_prefix_len": 1}), ("dspark", None)):
        draft = tiny_draft(target, num_hidden_layers=1, block_size=4, target_layer_ids=[1, 2], method=method, head=head)
        draft.save_pretrained(str(tmp_path / method))
        apply_legacy_rope_scaling(str(tmp_path / method))
        items.append({"path": str(tmp_path / method), "method": method})
    results = run_probe(tmp_path / "target", items)
    domino, dspark = results[items[0]["path"]], results[items[1]["path"]]
    assert domino["resolved"] == "TransformersForCausalLM"
    assert "shift_label to be a bool" in domino["error"]
    assert "markov_rank > 0" in dspark["error"] and "markov_rank=0" in dspark["error"]


def test_sglang_raises_exactly_where_the_method_variant_table_says(tmp_path):
    bases = build_method_bases(tmp_path / "bases")
    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=4, seed=0)
    target.save_pretrained(tmp_path / "target")
    rows = [v for v in METHOD_VARIANTS if v.sglang_raises is not None]
    items = [
        {
            "path": str(write_method_variant(tmp_path, v, bases)),
            "method": v.method,
            "ragged_verify_mode": v.options.get("ragged_verify_mode", "static"),
        }
        for v in rows
    ]
    results = run_probe(tmp_path / "target", items)
    wrong = {
        v.name: results[item["path"]].get("error")
        for v, item in zip(rows, items)
        if (results[item["path"]].get("error") is not None) != v.sglang_raises
    }
    assert wrong == {}, wrong


def test_every_dflash_variant_sglang_0_5_23_accepts_loads_in_its_loader(tmp_path):
    bases = build_bases(tmp_path / "bases")
    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=4, seed=0)
    target.save_pretrained(tmp_path / "target")
    rows = [v for v in VARIANTS if v.verdict_for("0.5.23") == "ok" and not v.target]
    items = [{"path": str(write_variant(tmp_path, v, bases)), "method": "dflash"} for v in rows]
    results = run_probe(tmp_path / "target", items)
    assert {
        v.name: results[i["path"]].get("error") for v, i in zip(rows, items) if results[i["path"]].get("error")
    } == {}
