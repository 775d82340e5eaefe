"""The demo per DFlash-family method: Domino and DSpark drafters train with plugin objectives through
their own SpecForge training models, are saved in the layout SGLang 0.5.23 loads and are measured by the
evaluator as SGLang 0.5.23 decodes them."""

from __future__ import annotations

import pytest

from specforge_dpace.demo.pipeline import DemoConfig, DemoPipeline

TINY = dict(steps=12, num_train_seqs=24, gen_len=24, eval_prompts=2, eval_max_new_tokens=12)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["domino", "dspark"])
def test_each_method_trains_plugin_objectives_and_is_evaluated(tmp_path, method):
    config = DemoConfig.quick(method=method, objectives=("dflash(gamma=7)", "dpace", "lk-lambda"), **TINY)
    pipeline = DemoPipeline(tmp_path, config, show_progress=False, log=lambda _m: None)
    report = pipeline.run()
    rows = {r["objective"]: r for r in report["rows"]}
    assert set(rows) == {"dflash(gamma=7)", "dpace", "lk-lambda"}
    assert all(r["tau"] >= 1.0 for r in rows.values())
    assert report["config"]["method"] == method
    assert pipeline.needs_target_hidden  # lk-lambda reads p (and DSpark always does)
    from specforge_dpace.evaluate._checkpoint import read_draft_config

    for objective in rows:
        config = read_draft_config(pipeline.drafter_dir(objective))
        assert config["architectures"] == [{"domino": "DFlashDraftModel", "dspark": "DSparkDraftModel"}[method]]
        assert method != "domino" or config["dflash_config"]["pure_draft_prefix_len"] == 1
    draft = pipeline.train("dpace", pipeline.data(), pipeline.features(pipeline.data()))[0]
    evaluation = pipeline.evaluate("dpace", draft)
    assert evaluation["overall"]["convention"] == "sglang-0.5.23"
    # the acceptance experiment's T=0 setting names a proposal mode; at T=0 it is irrelevant, even for Domino
    assert pipeline.evaluate("dpace", draft, temperature=0.0, draft_sampling="sample") == evaluation
    assert evaluation["overall"]["proposals"] == {"domino": "domino-rollout", "dspark": "anchor-markov"}[method]


def test_method_is_part_of_the_drafter_key_and_refused_when_unknown(tmp_path):
    keys = {}
    for method in ("dflash", "domino", "dspark"):
        pipeline = DemoPipeline(tmp_path, DemoConfig(method=method), show_progress=False, log=lambda _m: None)
        pipeline.target_key = "t"
        keys[method] = pipeline.drafter_dir("dpace").name
    assert len(set(keys.values())) == 3
    # Domino's pure_draft_prefix_len is part of its key (drafters trained before it was 1 are not reused)
    from specforge_dpace.demo.train_drafter import DrafterConfig

    assert DrafterConfig(method="domino").key_fields()["pure_draft_prefix_len"] == 1
    assert "pure_draft_prefix_len" not in DrafterConfig(method="dspark").key_fields()
    with pytest.raises(ValueError, match="method='eagle3' is invalid; accepted: dflash, domino, dspark"):
        DemoConfig(method="eagle3").validate()
