"""Registry (entry points, duplicates, errors) and the spec grammar."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest
import torch

from specforge_dpace.losses import (
    BUILTIN_NAMES,
    GRAMMAR,
    BlockObjective,
    LossRegistry,
    Option,
    SpecError,
    Term,
    available_losses,
    block_loss,
    build_loss,
    format_spec,
    loss_info,
    parse_spec,
)

# ------------------------------------------------------------------------------ grammar


def test_parse_three_interventions_with_whitespace():
    terms = parse_spec("  dflash( gamma = 10 ) +0.3 * first-error-focal+ 40*chain ")
    assert terms == [
        Term("dflash", 1.0, {"gamma": 10}),
        Term("first-error-focal", 0.3, {}),
        Term("chain", 40.0, {}),
    ]


def test_parse_values_numbers_bools_none_and_exponents():
    (term,) = parse_spec("x(a=1e-3, b=true, c=none, d=-2, e=.5, f=False)")
    assert term.options == {"a": 1e-3, "b": True, "c": None, "d": -2, "e": 0.5, "f": False}
    assert parse_spec("1e+2*chain")[0].weight == 100.0


def test_format_spec_round_trips():
    spec = "dflash(gamma=10) + 0.3*first-error-focal + 40*chain"
    assert format_spec(parse_spec(spec)) == spec


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("", "empty"),
        ("dflash +", "expected an objective name"),
        ("0.3 chain", "followed by '*'"),
        ("dflash(gamma 10)", "expected '='"),
        ("dflash(gamma=10", "expected ',' or ')'"),
        ("dflash(gamma=1, gamma=2)", "given twice"),
        ("dflash chain", "expected '+'"),
        ("dflash & chain", "unexpected character"),
    ],
)
def test_malformed_specs_show_the_grammar(spec, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert fragment in str(info.value)
    assert GRAMMAR in str(info.value)


# ------------------------------------------------------------------------------ errors


def test_unknown_objective_lists_registered_names():
    with pytest.raises(ValueError) as info:
        build_loss("dpaec")
    message = str(info.value)
    assert "'dpaec'" in message
    for name in BUILTIN_NAMES:
        assert name in message


def test_unknown_option_lists_accepted_options():
    with pytest.raises(ValueError, match=r"dpace: unknown option\(s\) \['beta'\]; accepted options: alpha"):
        build_loss("dpace", beta=1)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match=rf"alpha={alpha!r} is out of range; expected float in \[0, 1\]"):
        build_loss(f"dpace(alpha={alpha})")


def test_ill_typed_option():
    with pytest.raises(TypeError, match="option alpha=True has type bool"):
        build_loss("dpace", alpha=True)
    with pytest.raises(TypeError, match="option gamma='x' has type str"):
        build_loss("dflash", gamma="x")


def test_separate_options_only_for_single_term_specs():
    with pytest.raises(ValueError, match="apply only to a single-term spec"):
        build_loss("dpace + chain", alpha=0.3)
    with pytest.raises(ValueError, match="given both in the spec"):
        build_loss("dpace(alpha=0.2)", alpha=0.3)
    assert build_loss("dpace", alpha=0.3).alpha == 0.3


def test_mismatched_shapes_show_shapes():
    nlq = torch.rand(2, 3, 4)
    with pytest.raises(ValueError, match=r"weight_mask shape \(2, 3, 5\) does not match neg_log_q shape \(2, 3, 4\)"):
        block_loss("dflash", nlq, torch.ones(2, 3, 5), batch_size=2)
    with pytest.raises(ValueError, match=r"correct shape \(2, 3\) does not match"):
        block_loss("auf", nlq, torch.ones(2, 3, 4), batch_size=2, correct=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"needs `correct`"):
        block_loss("first-error-focal", nlq, torch.ones(2, 3, 4), batch_size=2)
    with pytest.raises(ValueError, match=r"must be \[B, N, K\], got shape \(6, 4\)"):
        block_loss("dflash", torch.rand(6, 4), torch.ones(6, 4), batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        block_loss("dflash", nlq, torch.ones(2, 3, 4), batch_size=0)


# ------------------------------------------------------------------------------ registry


class Doubled(BlockObjective):
    """Test objective: twice the token-mean cross-entropy."""

    name = "doubled"
    options = {"scale": Option(2.0, (float,), minimum=0.0)}
    description = "test"

    def _terms(self, nlq, mask, correct):
        return self.scale * (nlq * mask).sum(), mask.sum()

    def _slot_grad(self, nlq, mask, correct):
        return self.scale * mask


def test_private_registry_registers_and_refuses_duplicates():
    registry = LossRegistry(discover=False)
    registry.register("doubled", Doubled)
    with pytest.raises(ValueError, match="'doubled' is already registered .*replace=True"):
        registry.register("doubled", Doubled)
    registry.register("doubled", Doubled, replace=True)
    assert registry.names() == ["doubled"]
    objective = registry.build("doubled(scale=3)")
    nlq = torch.ones(1, 2, 3)
    value = objective.reduce(*objective.chunk_terms(nlq, torch.ones(1, 2, 3)), 1)
    assert value.loss.item() == 3.0


@pytest.mark.parametrize("bad", ["a+b", "with space", "", "x(1)"])
def test_invalid_names_are_refused(bad):
    with pytest.raises(ValueError, match="invalid objective name"):
        LossRegistry(discover=False).register(bad, Doubled)


def test_factory_must_return_an_objective():
    registry = LossRegistry(discover=False)
    registry.register("broken", lambda: object())
    with pytest.raises(TypeError, match="has no chunk_terms"):
        registry.build("broken")


def test_builtins_come_from_the_package_entry_points():
    assert set(BUILTIN_NAMES) <= set(available_losses())
    for name in BUILTIN_NAMES:
        assert loss_info(name).source == "built-in"
    assert loss_info("dpace").options["alpha"].default == 0.5


def _write_distribution(root, dist, version, entry_points, module_name=None, module_source=None):
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[specforge_dpace.losses]\n{lines}\n")
    if module_name:
        (root / f"{module_name}.py").write_text(textwrap.dedent(module_source))


def test_entry_point_discovery_with_a_real_distribution_and_a_broken_one(tmp_path, monkeypatch):
    _write_distribution(
        tmp_path,
        "acme-losses",
        "1.2.3",
        {"acme-token-mean": "acme_losses:TokenMean"},
        "acme_losses",
        """
        from specforge_dpace.losses import BlockObjective

        class TokenMean(BlockObjective):
            name = "acme-token-mean"
            description = "plain token-mean CE"

            def _terms(self, nlq, mask, correct):
                return (nlq * mask).sum(), mask.sum()

            def _slot_grad(self, nlq, mask, correct):
                return mask
        """,
    )
    _write_distribution(tmp_path, "broken-losses", "0.1", {"broken-one": "does_not_exist_mod:Thing"})
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("acme_losses", None)
    registry = LossRegistry()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = registry.names()
    messages = [str(w.message) for w in caught]
    assert any("broken-one" in m and "broken-losses" in m and "ModuleNotFoundError" in m for m in messages)
    assert "acme-token-mean" in names and "broken-one" not in names
    assert set(BUILTIN_NAMES) <= set(names)  # every other objective still works
    assert registry.info("acme-token-mean").source == "acme-losses 1.2.3 (entry point)"
    objective = registry.build("dpace + 2*acme-token-mean")
    nlq = torch.rand(2, 3, 4, requires_grad=True)
    mask = torch.ones(2, 3, 4)
    value = objective.reduce(*objective.chunk_terms(nlq, mask), 2)
    expected = block_loss("dpace", nlq, mask, batch_size=2) + 2 * (nlq * mask).sum() / mask.sum()
    torch.testing.assert_close(value.loss, expected)


def test_signature_factories_expose_their_keyword_options():
    registry = LossRegistry(discover=False)

    def make(scale=1.0, flag=False):
        return Doubled(scale=scale)

    info = registry.register("sig", make)
    assert set(info.options) == {"scale", "flag", "labels"}  # labels: the registry's, for every hard objective
    assert registry.build("sig(labels=target,scale=2)").spec() == "doubled(labels=target)"  # the objective names itself
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['nope'\]"):
        registry.build("sig(nope=1)")
