"""vLLM 0.33's rule set: the drafters the demo writes pass it in every layout vLLM loads (z-lab and speculators
DFlash, DSpark), each variant of ``tests/_vllm_variants.py`` gets the verdict derived from vLLM's source from the
bench validator and the evaluator's loader, Domino is refused with the reason, and the facts the rules cite are
checked against the wheel's source when it is unpacked here (``VLLM_SRC``, default /tmp/wheels/src/vllm-0.33.0)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("specforge")

from specforge_dpace import serving  # noqa: E402
from specforge_dpace.bench.validate import DraftValidationError, validate_draft_dir  # noqa: E402
from specforge_dpace.cli import main  # noqa: E402
from specforge_dpace.evaluate import load_draft, save_draft_checkpoint, tiny_draft, tiny_target  # noqa: E402
from specforge_dpace.serving._convert import read_state  # noqa: E402
from tests._vllm_variants import LAYOUTS, TARGET, VLLM_VARIANTS, build_vllm_bases, write_vllm_variant  # noqa: E402

VLLM = "vllm-0.33.0"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return build_vllm_bases(tmp_path_factory.mktemp("vllm-bases"))


@pytest.mark.parametrize("variant", VLLM_VARIANTS, ids=[v.name for v in VLLM_VARIANTS])
def test_validator_and_loader_agree_with_vllm_0_33(tmp_path, bases, variant):
    path = write_vllm_variant(tmp_path, variant, bases)
    if variant.verdict == "error":
        with pytest.raises(DraftValidationError) as err:
            validate_draft_dir(path, target=TARGET, server=VLLM)
        assert variant.needle in str(err.value)
        with pytest.raises(ValueError) as err:
            load_draft(path, TARGET, server=VLLM)
        assert variant.needle in str(err.value)
        return
    info = validate_draft_dir(path, target=TARGET, server=VLLM)
    assert info.method == LAYOUTS[variant.base] and variant.needle in " ".join(info.notes)
    draft = load_draft(path, TARGET, server=VLLM)
    source = read_state(bases[("source", info.method)])
    loaded = draft.state_dict()
    kept = {n: t for n, t in source.items() if n in loaded}
    assert set(loaded) - set(kept) <= {n for n in loaded if n.startswith("confidence_head.")}
    for name, tensor in kept.items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_demo_drafters_convert_to_each_vllm_layout_and_back_exactly(tmp_path, bases, layout):
    method = LAYOUTS[layout]
    source = bases[("source", method)]
    out, back = tmp_path / "vllm", tmp_path / "back"
    done = serving.convert_draft(source, out, server=VLLM, target=TARGET, layout=layout)
    assert done.rules == VLLM and not done.notes
    drafted = 3 if method == serving.DFLASH else 4  # DFlash: block 4 - 1 mask slots; DSpark: gamma = block 4
    spec = json.loads(done.launch[1])
    assert done.launch[0] == "--speculative-config" and spec == {
        "method": method, "model": str(out), "num_speculative_tokens": drafted
    }  # fmt: skip
    validate_draft_dir(out, target=TARGET, server=VLLM)
    serving.convert_draft(out, back, server="specforge-0.2.0", target=TARGET)
    a, b = read_state(source), read_state(back)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((out / "config.json").read_text())
    original = json.loads((source / "config.json").read_text())
    if layout == "speculators":  # algos.py:122: vLLM's target_layer_ids = aux ids - 1
        assert config["aux_hidden_state_layer_ids"] == [i + 1 for i in original["dflash_config"]["target_layer_ids"]]
        assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 3
    if layout == "dspark":  # qwen3_dspark.py:212-233 reads these at the top level
        assert config["model_type"] == "qwen3" and config["markov_rank"] == original["dflash_config"]["markov_rank"]


def test_domino_is_refused_with_the_reason(tmp_path):
    target = tiny_target(vocab_size=64, hidden_size=32, num_hidden_layers=4, seed=0)
    draft = tiny_draft(
        target, num_hidden_layers=2, block_size=4, target_layer_ids=[1, 2], method="domino",
        head={"pure_draft_prefix_len": 1},
    )  # fmt: skip
    source = save_draft_checkpoint(draft, tmp_path / "domino")
    with pytest.raises(ValueError) as err:
        serving.convert_draft(source, tmp_path / "out", server=VLLM, target=TARGET)
    assert "vllm-0.33.0 does not serve Domino" in str(err.value) and "registry.py:664-697" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_convert_cli_refuses_a_layout_the_method_is_not_written_in(tmp_path, bases, capsys):
    code = main(
        ["convert", str(bases[("source", "dspark")]), "--server", VLLM, "--layout", "speculators",
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "layout 'speculators'" in err and "['dspark']" in err


def test_convert_cli_writes_the_speculators_layout(tmp_path, bases, capsys):
    target_dir = tmp_path / "target"
    target_dir.mkdir()
    (target_dir / "config.json").write_text(json.dumps(TARGET))
    code = main(
        ["convert", str(bases[("source", "dflash")]), "--server", VLLM, "--layout", "speculators",
         "--target", str(target_dir), "--out", str(tmp_path / "out")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "--speculative-config" in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["speculators_model_type"] == "dflash"


def test_layout_of_reads_the_speculators_layout_as_vllm(bases):
    assert serving.layout_of(bases["speculators"][1]).name == VLLM
    assert serving.draft_method(bases["speculators"][1]) == serving.DFLASH


def test_each_evaluator_setting_names_the_vllm_setting_it_stands_for():
    from specforge_dpace.serving._vllm import vllm_setting

    greedy = 'vLLM draft_sample_method "greedy", rejection_sample_method "standard"'
    sample = 'vLLM draft_sample_method "probabilistic", rejection_sample_method "standard"'
    assert vllm_setting("vllm-0.33.0", "dflash", None, 1.0) == greedy  # vLLM's default
    assert vllm_setting("sglang-0.5.23", "dflash", "sample", 1.0) == sample
    assert vllm_setting("sglang-0.5.23", "dspark", None, 0.7) == sample  # SGLang's DSpark default samples
    assert vllm_setting("vllm-0.33.0", "dspark", None, 0.7) == greedy
    assert "either draft_sample_method" in vllm_setting("vllm-0.33.0", "dflash", "sample", 0.0)
    assert vllm_setting("specforge-0.2.0", "dspark", None, 1.0).startswith("none: decoded as specforge-0.2.0")
    assert vllm_setting("sglang-0.5.23", "domino", None, 1.0) == "none: vLLM 0.33 serves no Domino"


# -- the facts the rules cite, against the wheel's source ------------------------------------------------------

SRC = Path(os.environ.get("VLLM_SRC", "/tmp/wheels/src/vllm-0.33.0")) / "vllm"
FACTS = [  # (file, line range, text that must be there)
    ("config/speculative.py", (83, 84), 'RejectionSampleMethod = Literal["standard", "synthetic", "block", "fly"]'),
    ("config/speculative.py", (84, 84), 'DraftSampleMethod = Literal["greedy", "probabilistic"]'),
    ("config/speculative.py", (634, 634), 'draft_sample_method: DraftSampleMethod = "greedy"'),
    ("config/speculative.py", (1534, 1542), '"Qwen3DSparkModel"'),
    ("config/speculative.py", (1596, 1602), 'getattr(hf_config, "block_size", None)'),
    ("model_executor/models/registry.py", (664, 664), '"DFlashDraftModel": ("qwen3_dflash", "DFlashQwen3ForCausalLM")'),
    ("model_executor/models/registry.py", (681, 681), '"Qwen3DSparkModel": ("qwen3_dspark", "Qwen3DSparkForCausalLM")'),
    (
        "transformers_utils/configs/speculators/algos.py",
        (120, 124),
        '"target_layer_ids": [i - 1 for i in aux_layer_ids]',
    ),
    ("transformers_utils/configs/speculators/algos.py", (114, 114), 'config_dict["aux_hidden_state_layer_ids"]'),
    ("v1/worker/gpu/spec_decode/eagle/eagle3_utils.py", (123, 124), "[i + 1 for i in"),
    ("v1/worker/gpu/spec_decode/dflash/speculator.py", (83, 88), "sample_from_anchor=True is not supported"),
    ("v1/worker/gpu/spec_decode/dspark/speculator.py", (49, 51), '"sample_from_anchor", True'),
    ("model_executor/models/qwen2.py", (431, 434), "aux_hidden_states, idx + 1, hidden_states, residual"),
    ("model_executor/models/qwen3_dflash.py", (866, 867), 'name = "model." + name'),
    ("model_executor/models/qwen3_dspark.py", (212, 212), "config.markov_rank"),
    ("model_executor/models/utils.py", (458, 458), 'self.ignore_unexpected_suffixes.append(".bias")'),
    ("v1/spec_decode/metrics.py", (229, 231), '"vllm:spec_decode_num_accepted_tokens"'),
    ("v1/spec_decode/metrics.py", (255, 255), 'name="vllm:spec_decode_num_accepted_tokens_per_pos"'),
]


@pytest.mark.skipif(not SRC.is_dir(), reason=f"vLLM 0.33.0 wheel source not unpacked at {SRC} (set VLLM_SRC)")
@pytest.mark.parametrize("fact", FACTS, ids=[f"{f}:{a}" for f, (a, _), _ in FACTS])
def test_the_cited_lines_say_what_the_rules_rely_on(fact):
    name, (first, last), text = fact
    lines = (SRC / name).read_text(encoding="utf-8").splitlines()
    assert text in "\n".join(lines[first - 1 : last]), f"{name}:{first}-{last} does not hold {text!r}"


@pytest.mark.skipif(not SRC.is_dir(), reason=f"vLLM 0.33.0 wheel source not unpacked at {SRC} (set VLLM_SRC)")
def test_no_file_of_the_wheel_serves_domino():
    hits = [p for p in SRC.rglob("*.py") if "domino" in p.read_text(encoding="utf-8", errors="replace").lower()]
    assert hits == []


@pytest.mark.skipif(not SRC.is_dir(), reason=f"vLLM 0.33.0 wheel source not unpacked at {SRC} (set VLLM_SRC)")
def test_vllms_own_speculators_parser_reads_the_trained_ids_and_mask_from_our_export(bases):
    """vLLM 0.33's real ``update_dflash`` (transformers_utils/configs/speculators/algos.py, pure Python, loaded
    from the wheel's source) turns the speculators config ``convert`` writes into the DFlash config its model is
    built from: the trained target layer ids and mask token come back, and no anchor sampling."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "vllm_speculators_algos", SRC / "transformers_utils" / "configs" / "speculators" / "algos.py"
    )
    algos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(algos)
    trained = json.loads((bases[("source", "dflash")] / "config.json").read_text())["dflash_config"]
    written = bases["speculators"][1]
    built: dict = {}
    algos.SUPPORTED_SPECULATORS_TYPES[written["speculators_model_type"]](written, built)
    assert built["architectures"] == ["DFlashDraftModel"]
    assert built["dflash_config"]["target_layer_ids"] == trained["target_layer_ids"]
    assert built["dflash_config"]["mask_token_id"] == trained["mask_token_id"]
    assert built["dflash_config"]["sample_from_anchor"] is False
