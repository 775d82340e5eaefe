"""Domino and DSpark drafts in the evaluator under the ``specforge-0.2.0`` convention: block proposals as
their SpecForge classes sample them, the proposal distribution q of every drafted token, greedy
losslessness, SpecForge's checkpoint layout and the validation of the fields and head weights each class
needs.  (SGLang 0.5.23's decoding and layout: ``test_eval_serving.py``.)  Real SpecForge draft classes and
real tiny Qwen3 targets throughout."""

from __future__ import annotations

import json

import pytest
import torch
from _eval_helpers import random_blocks

pytest.importorskip("specforge")

from specforge_dpace.evaluate import (  # noqa: E402
    DFlashDecoder,
    EvalConfig,
    evaluate_drafter,
    evaluate_paths,
    greedy_reference,
    load_draft,
    save_draft_checkpoint,
    tiny_draft,
    tiny_target,
    validate_pair,
)
from specforge_dpace.evaluate._proposals import model_method, propose_block  # noqa: E402
from specforge_dpace.evaluate._sampling import sampling_probs  # noqa: E402

# (method, head fields): every block-sampling branch of the two classes
HEADS = [
    ("dflash", None),
    ("domino", None),
    ("domino", {"shift_label": True}),
    ("domino", {"pure_draft_prefix_len": 1}),
    ("dspark", {"markov_head_type": "vanilla"}),
    ("dspark", {"markov_head_type": "gated"}),
    ("dspark", {"markov_head_type": "rnn", "confidence_head_with_markov": True}),
    ("dspark", {"markov_rank": 0, "enable_confidence_head": False}),
]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in (h or {}).items()) or 'default'}" for m, h in HEADS]
SPECFORGE = "specforge-0.2.0"
CLASS = {"dflash": "block", "domino": "domino-class", "dspark": "dspark-class"}  # the classes' proposals


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab_size=48, hidden_size=32, num_hidden_layers=3, seed=0, dtype=torch.float64)


def _draft(target, method, head, block_size=5, seed=1):
    draft = tiny_draft(target, block_size=block_size, target_layer_ids=[0, 1], method=method, head=head, seed=seed)
    with torch.no_grad():  # make the heads' corrections large enough to change the argmax often
        for name, param in draft.named_parameters():
            if name.startswith(("embed_proj.", "markov_head.")):
                param.mul_(8.0)
            elif name == "prefix_gru.weight_ih_l0":  # the target's embeddings are ~0.02: make the GRU see them
                param.mul_(40.0)
    return draft


def _argmax(logits):
    return logits.argmax(dim=-1), None


@pytest.mark.parametrize("method, head", HEADS, ids=IDS)
def test_proposals_are_the_classes_own_block_sampling(target, method, head):
    """With argmax proposals, the evaluator's block is token for token what the class's own
    ``_sample_draft_tokens`` (the one ``spec_generate`` uses) proposes; the head takes part (it changes
    the argmax of the plain ``lm_head`` logits in some blocks)."""
    draft = _draft(target, method, head)
    assert model_method(draft) == method
    k, seed = draft.block_size, 0
    embed, lm_head = target.get_input_embeddings(), target.get_output_embeddings()
    head_changes = 0
    with torch.no_grad():
        for hidden, block in random_blocks(20, k, seed):
            ours, q = propose_block(draft, CLASS[method], hidden, block, lm_head, embed, _argmax)
            theirs = draft._sample_draft_tokens(target, hidden, block.clone())[0]
            assert q is None and ours.tolist() == theirs.tolist()
            head_changes += int(not torch.equal(ours, lm_head(hidden[0, 1:]).argmax(-1)))
    if method == "dflash" or (head or {}).get("markov_rank") == 0:
        assert head_changes == 0
    else:
        assert head_changes > 0


def _teacher_forced_logits(draft, method, hidden, block, drafted, lm_head, embed):
    """The logits the class's training-time head gives each slot for this drafted block (no sampling):
    Domino's ``apply_logits_head`` over the completed block, DSpark's ``apply_logits_head`` with the
    previous tokens [anchor, x_1, ..., x_{K-2}] (for rnn a different code path than block sampling)."""
    k = block.shape[1]
    completed = block.clone()
    completed[0, 1:] = drafted
    if method == "domino":
        final = draft.apply_logits_head(
            lm_head(hidden).unsqueeze(1),
            prev_token_embeddings=embed(completed).unsqueeze(1),
            hidden_states=hidden.unsqueeze(1),
        )[0, 0]
        return final[:-1] if draft.shift_label else final[1:]
    proposal = hidden[:, -k + 1 :]
    out = draft.apply_logits_head(
        lm_head(proposal).unsqueeze(1),
        prev_token_ids=completed[:, :-1].unsqueeze(1),
        hidden_states=proposal.unsqueeze(1),
    )
    return out[0, 0]


@pytest.mark.parametrize("method, head", [h for h in HEADS if h[0] != "dflash"], ids=IDS[1:])
def test_sampled_proposals_carry_their_conditional_q(target, method, head):
    """Sampling the block: q of slot t is the temperature / top-k distribution of the class's logits for
    slot t given the tokens drafted at slots < t (the Markov head conditioned on the previous drafted
    token, Domino's GRU on the whole drafted prefix), so speculative sampling verifies against the
    distribution each token was really drawn from."""
    draft = _draft(target, method, head)
    decoder = DFlashDecoder(
        target,
        draft,
        block_size=draft.block_size,
        temperature=0.9,
        top_k=12,
        draft_sampling="sample",
        convention=SPECFORGE,
    )
    k, seed, gen = draft.block_size, 1, torch.Generator().manual_seed(11)
    with torch.no_grad():
        for hidden, block in random_blocks(8, k, seed):
            drafted, q = propose_block(
                draft, CLASS[method], hidden, block, decoder.lm_head, decoder.embed, lambda x: decoder._choose(x, gen)
            )
            assert q.shape == (k - 1, 48) and bool((q[torch.arange(k - 1), drafted] > 0).all())
            logits = _teacher_forced_logits(draft, method, hidden, block, drafted, decoder.lm_head, decoder.embed)
            torch.testing.assert_close(q, sampling_probs(logits, 0.9, 12), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method, head", HEADS[1:], ids=IDS[1:])
def test_greedy_decoding_is_lossless(target, method, head):
    draft = _draft(target, method, head)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 47, (int(n),), generator=gen).tolist() for n in (1, 3, 6, 9)]
    result = evaluate_drafter(
        target, draft, prompts, EvalConfig(max_new_tokens=18, show_progress=False, convention=SPECFORGE)
    )
    for prompt, record in zip(prompts, result.per_prompt):
        assert record["output_ids"] == greedy_reference(target, prompt, 18)
    assert result.overall["method"] == method
    assert result.overall["draft_architecture"] == {"domino": "DominoDraftModel", "dspark": "DSparkDraftModel"}[method]


@pytest.mark.parametrize("method, head", [HEADS[2], HEADS[6]], ids=[IDS[2], IDS[6]])
def test_checkpoint_round_trip(tmp_path, method, head):
    """save_draft_checkpoint(server=specforge-0.2.0) writes SpecForge's HF-export layout (architectures = the
    class, head tensors under the class's names); load_draft builds the same class with the same tensors and
    decoding."""
    target = tiny_target(vocab_size=48, hidden_size=32, num_hidden_layers=3, seed=0)  # fp32, as load_target
    draft = _draft(target, method, head)
    save_draft_checkpoint(draft, tmp_path / "d", server=SPECFORGE)
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["architectures"] == [type(draft).__name__]
    assert config["dflash_config"]["projector_type"] == method
    from safetensors import safe_open

    with safe_open(str(tmp_path / "d" / "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert names == set(draft.state_dict())
    heads = {"domino": {"prefix_gru", "embed_proj"}, "dspark": {"markov_head", "confidence_head"}}[method]
    assert {n.split(".")[0] for n in names} == {"layers", "fc", "hidden_norm", "norm"} | heads
    loaded = load_draft(tmp_path / "d", target.config)
    assert type(loaded) is type(draft)
    for name, tensor in draft.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    target.save_pretrained(tmp_path / "t")
    config = EvalConfig(max_new_tokens=10, temperature=0.8, seed=4, show_progress=False, convention=SPECFORGE)
    direct = evaluate_drafter(target, draft, [[1, 2, 3]], config)
    via_paths = evaluate_paths(tmp_path / "t", tmp_path / "d", [[1, 2, 3]], config)
    assert direct.per_prompt[0]["output_ids"] == via_paths.per_prompt[0]["output_ids"]


def _saved(tmp_path, target, method, head=None):
    draft = _draft(target, method, head)
    return save_draft_checkpoint(draft, tmp_path / method, server=SPECFORGE), draft


def _edit(path, config_change=None, state_change=None):
    from safetensors.torch import load_file, save_file

    if config_change:
        config = json.loads((path / "config.json").read_text())
        config_change(config)
        (path / "config.json").write_text(json.dumps(config))
    if state_change:
        state = load_file(str(path / "model.safetensors"))
        state_change(state)
        save_file(state, str(path / "model.safetensors"))
    return path


def _dflash_config(config):
    return config["dflash_config"]


@pytest.mark.parametrize(
    "method, config_change, state_change, pattern",
    [
        ("domino", lambda c: _dflash_config(c).pop("emb_dim"), None, r"dflash_config.emb_dim is missing; accepted"),
        (
            "domino",
            lambda c: (c.update(emb_dim=32), _dflash_config(c).pop("emb_dim")),
            None,
            r"dflash_config.emb_dim is missing \(a top-level emb_dim is ignored",
        ),
        ("domino", lambda c: _dflash_config(c).update(gru_hidden_dim=0), None, r"gru_hidden_dim=0 is invalid"),
        ("domino", lambda c: _dflash_config(c).update(shift_label="yes"), None, r"shift_label='yes' is invalid"),
        (
            "domino",
            lambda c: _dflash_config(c).update(pure_draft_prefix_len=5),
            None,
            r"pure_draft_prefix_len=5 is invalid; accepted: an int >= 0 below the block size 5",
        ),
        (
            "domino",
            lambda c: _dflash_config(c).update(projector_type="dspark"),
            None,
            r"projector_type='dspark' does not match the Domino class; accepted: 'domino' or absent",
        ),
        (
            "domino",
            None,
            lambda s: s.pop("embed_proj.2.weight"),
            r"DominoDraftModel head weights missing .*: embed_proj.2.weight",
        ),
        (
            "domino",
            lambda c: _dflash_config(c).update(gru_hidden_dim=16),
            None,
            r"prefix_gru.weight_hh_l0 has shape \[96, 32\], expected \[48, 16\]",
        ),
        (
            "dspark",
            lambda c: _dflash_config(c).update(markov_head_type="lstm"),
            None,
            r"markov_head_type='lstm' is invalid; accepted: \['vanilla', 'gated', 'rnn'\]",
        ),
        (
            "dspark",
            lambda c: _dflash_config(c).update(markov_head_type="gated"),
            None,
            r"head weights missing .*markov_head.gate_proj.weight",
        ),
        (
            "dspark",
            lambda c: _dflash_config(c).update(markov_rank=0),
            None,
            r"head weights DSparkDraftModel has no parameter for with this config \(.*markov_head.markov_w1",
        ),
        (
            "dspark",
            lambda c: _dflash_config(c).update(enable_confidence_head=False),
            None,
            r"no parameter for with this config \(confidence_head.proj.bias, confidence_head.proj.weight\)",
        ),
        (
            "dspark",
            lambda c: _dflash_config(c).update(markov_rank=0, confidence_head_with_markov=True),
            None,
            r"confidence_head_with_markov=true needs a Markov head; accepted: markov_rank > 0",
        ),
        (
            "dspark",
            lambda c: _dflash_config(c).update(attention_mode="mha"),
            None,
            r"attention_mode 'mha' needs num_key_value_heads == num_attention_heads, got 1 and 2",
        ),
        ("dspark", lambda c: _dflash_config(c).update(attention_mode="mqa"), None, r"attention_mode='mqa' is invalid"),
        (
            "dspark",
            lambda c: _dflash_config(c).update(shift_label=True),
            None,
            r"shift_label=True is not used by DSpark .*; accepted: false or absent",
        ),
        (
            "dspark",
            lambda c: c.update(architectures=["DSparkDraftModel", "DFlashDraftModel"]),
            None,
            r"naming several draft methods \(DFlash, DSpark\); accepted: exactly one of 'DFlashDraftModel'",
        ),
        (
            "dspark",
            lambda c: c.update(architectures=["DSparkModel"]),
            None,
            r"architectures=\['DSparkModel'\]; accepted: a list holding one of 'DFlashDraftModel' \(DFlash\), "
            r"'DominoDraftModel' \(Domino\), 'DSparkDraftModel' \(DSpark\)",
        ),
        # the DFlash backbone rules apply to both methods unchanged
        ("dspark", None, lambda s: s.pop("fc.weight"), r"missing weights .*: fc.weight"),
        (
            "domino",
            lambda c: _dflash_config(c).update(target_layer_ids=[0, 2]),
            None,
            r"id 2 is the last decoder layer",
        ),
    ],
)
def test_load_validates_the_fields_and_head_weights_each_method_needs(
    tmp_path, target, method, config_change, state_change, pattern
):
    path, _ = _saved(tmp_path, target, method)
    _edit(path, config_change, state_change)
    with pytest.raises(ValueError, match=pattern):
        load_draft(path, target.config)


def test_early_logit_head_names_load_like_specforge(tmp_path, target):
    """SpecForge's normalize_draft_head_checkpoint_keys maps 'logit_head.<head>.' to the direct names; the
    loader does the same (and a bench note says so), so such a checkpoint decodes as the direct one."""
    path, draft = _saved(tmp_path, target, "dspark")
    renamed = _edit(
        tmp_path / "dspark",
        state_change=lambda s: s.update(
            {f"logit_head.{n}": s.pop(n) for n in [n for n in s if n.startswith(("markov_head.", "confidence_head."))]}
        ),
    )
    loaded = load_draft(renamed, target.config, dtype=torch.float64)
    for name, tensor in draft.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    from specforge_dpace import serving

    config = json.loads((renamed / "config.json").read_text())
    from safetensors import safe_open

    with safe_open(str(renamed / "model.safetensors"), "pt") as handle:
        shapes = {n: handle.get_slice(n).get_shape() for n in handle.keys()}
    verdict = serving.check_draft(config, shapes, server=SPECFORGE, target=target.config)
    assert verdict.ok and any("'logit_head.' names" in n for n in verdict.notes)


def test_validate_pair_checks_method_fields_for_in_memory_configs(target):
    draft = _draft(target, "domino", None)
    assert validate_pair(target.config, draft.config, method="domino")["block_size"] == 5
    bad = draft.config.to_dict()
    bad["dflash_config"]["emb_dim"] = -1
    with pytest.raises(
        ValueError,
        match=r"Domino draft does not fit the target \(specforge-0.2.0 rules\):\n  - dflash_config.emb_dim=-1",
    ):
        validate_pair(target.config, bad, method="domino")
    bad["architectures"] = ["DominoDraftModel"]  # the method is read from the architectures when not given
    with pytest.raises(ValueError, match=r"emb_dim=-1 is invalid"):
        validate_pair(target.config, bad)


def test_a_draft_class_that_samples_blocks_its_own_way_is_refused(target):
    from specforge.modeling.draft.dspark import DSparkDraftModel

    class Custom(DSparkDraftModel):
        def _sample_draft_tokens(self, target, draft_hidden, block_output_ids):
            return super()._sample_draft_tokens(target, draft_hidden, block_output_ids)

    draft = _draft(target, "dspark", None)
    draft.__class__ = Custom
    with pytest.raises(ValueError, match="draft class Custom overrides DSparkDraftModel's block sampling"):
        evaluate_drafter(target, draft, [[1, 2]], EvalConfig(show_progress=False))
