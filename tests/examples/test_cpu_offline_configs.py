"""Every ``examples/cpu_offline`` config validates with SpecForge's schema (plugin installed), resolves to the
right registration (soft-label objectives with DFlash or Domino: the one carrying ``target_last_hidden_states``) and is
listed in that directory's README.  The runs themselves are the slow tests in tests/e2e."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("specforge")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cpu_offline"
CONFIGS = sorted(EXAMPLE.glob("*.yaml"))
SOFT = {"lk_lambda.yaml", "dpace_lk_lambda.yaml", "domino_lk_lambda.yaml"}  # DSpark's registration has the key


def test_the_soft_examples_exist_and_every_config_is_in_the_readme():
    names = {path.name for path in CONFIGS}
    assert SOFT <= names and {"dpace.yaml", "composite.yaml"} <= names
    readme = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    for name in names:
        assert f"| `{name}` |" in readme and f"examples/cpu_offline/{name}" in readme, name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves_to_the_registration_its_objective_needs(specforge_installed, path, tmp_path, monkeypatch):
    from specforge.application import resolve_run
    from specforge.config.schema import Config

    from specforge_dpace.hooks._target_hidden import carries_target_hidden

    config = Config.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    method = path.name.split("_")[0].removesuffix(".yaml")  # domino*.yaml / dspark*.yaml; the rest are DFlash
    assert config.training.strategy == (method if method in ("domino", "dspark") else "dflash")
    assert config.mode == "offline"
    monkeypatch.chdir(tmp_path)  # the relative feature directory does not exist here: nothing to open
    resolved = resolve_run(config)
    assert carries_target_hidden(resolved.algorithm) is (path.name in SOFT)
