import pytest

from tests.bench._helpers import make_draft


@pytest.fixture(scope="session")
def draft_dirs(tmp_path_factory):
    """Two real (tiny) SpecForge draft directories: block size 4 and 8."""
    root = tmp_path_factory.mktemp("drafts")
    return {"k4": make_draft(root / "k4", block_size=4), "k8": make_draft(root / "k8", block_size=8)}
