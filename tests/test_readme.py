"""README.md against what it promises: the two quick-start commands (the second is exactly what CI runs),
a short page, and links that resolve. The documentation site itself is checked by `mkdocs build --strict`
(part of the test command); README lives outside docs/, so its links are checked here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
MAX_README_BYTES = 10 * 1024
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _quick_start_commands(page: Path = README) -> list[str]:
    text = page.read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _outside_code(text: str) -> str:
    return re.sub(r"(?ms)^```.*?^```", "", text)


def _anchors(page: Path) -> set[str]:
    """Heading ids as MkDocs' default toc extension makes them (inline code loses its backticks)."""
    headings = re.findall(r"(?m)^#{1,6} (.+?)\s*$", _outside_code(page.read_text(encoding="utf-8")))
    return {slugify(heading.replace("`", ""), "-") for heading in headings}


def test_quick_start_has_exactly_two_commands_demo_then_tests():
    demo, tests = _quick_start_commands()
    assert demo.endswith("specforge-dpace demo") and "-c constraints-cpu.txt" in demo
    assert "mkdocs build --strict" in tests and tests.endswith("python -m pytest -q")
    assert tests.index("mkdocs build --strict") < tests.index("python -m pytest")


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line for line in CI_RUN.read_text(encoding="utf-8").splitlines() if line and line[0] not in "#"]
    assert ci_lines[-1] == _quick_start_commands()[1]


def test_site_home_gives_the_same_two_commands():
    assert _quick_start_commands(ROOT / "docs" / "index.md") == _quick_start_commands()


def test_readme_is_short():
    assert README.stat().st_size <= MAX_README_BYTES, f"README.md is {README.stat().st_size} bytes"


def _local_links() -> list[str]:
    links = set(LINK.findall(_outside_code(README.read_text(encoding="utf-8"))))
    return sorted(link for link in links if not re.match(r"[a-z]+://", link))  # external ones: not offline


@pytest.mark.parametrize("target", _local_links())
def test_readme_link_resolves(target):
    path, _, anchor = target.partition("#")
    page = ROOT / path
    assert page.is_file(), f"README links to {target}, but {path} does not exist"
    if anchor:
        assert anchor in _anchors(page), f"README links to {target}, but {path} has no heading with that id"


def test_anchor_ids_follow_mkdocs():
    """The slug rule above is the one the site uses: a heading with code and punctuation."""
    assert slugify("`lk-lambda(lagged=true)`".replace("`", ""), "-") == "lk-lambdalaggedtrue"
    assert "legacy-checkouts-and-the-train-dflash-wrapper" in _anchors(ROOT / "docs" / "specforge.md")
