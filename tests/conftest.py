import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/_tiny_specforge.py and friends
# content hashes the tests compute are remembered in a throw-away directory, not the user's cache
os.environ.setdefault("SPECFORGE_DPACE_CACHE_DIR", tempfile.mkdtemp(prefix="specforge-dpace-test-cache-"))

try:
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def specforge_installed():
    """SpecForge's unified layout with the plugin hook installed (reverted afterwards if we installed it)."""
    pytest.importorskip("specforge")
    import specforge_dpace

    was = specforge_dpace.is_installed("unified-model")
    specforge_dpace.install()
    yield
    if not was:
        specforge_dpace.uninstall()
