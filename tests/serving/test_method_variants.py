"""Every Domino and DSpark variant of ``tests/_method_variants.py`` gets SGLang 0.5.23's verdict from the bench
validator (headers only) and from the evaluator's loader (which then holds exactly the trained tensors).  The
same table runs through SGLang's own parser, constructor and loader in ``test_sglang_cpu.py`` (opt-in)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("specforge")

from specforge_dpace.bench.validate import DraftValidationError, validate_draft_dir  # noqa: E402
from specforge_dpace.evaluate import load_draft  # noqa: E402
from tests._method_variants import METHOD_VARIANTS, TARGET, build_method_bases, write_method_variant  # noqa: E402


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return build_method_bases(tmp_path_factory.mktemp("method-bases"))


@pytest.mark.parametrize("variant", METHOD_VARIANTS, ids=[v.name for v in METHOD_VARIANTS])
def test_validator_and_loader_agree_with_sglang_0_5_23(tmp_path, bases, variant):
    path = write_method_variant(tmp_path, variant, bases)
    kwargs = {"server": "sglang-0.5.23", "options": variant.options}
    if variant.verdict == "error":
        with pytest.raises(DraftValidationError) as err:
            validate_draft_dir(path, target=TARGET, **kwargs)
        assert variant.needle in str(err.value)
        if not variant.options:  # the loader checks SGLang's default mode (static)
            with pytest.raises(ValueError) as err:
                load_draft(path, TARGET, server="sglang-0.5.23")
            assert variant.needle in str(err.value)
        return
    info = validate_draft_dir(path, target=TARGET, **kwargs)
    assert info.method == variant.method and variant.needle in " ".join(info.notes)
    draft = load_draft(path, TARGET, server="sglang-0.5.23")
    state, _ = bases[variant.method]
    loaded = draft.state_dict()
    kept = {n: t for n, t in state.items() if n in loaded}
    assert set(loaded) - set(kept) <= {n for n in loaded if n.startswith("confidence_head.")}
    for name, tensor in kept.items():
        assert torch.equal(loaded[name], tensor), name
