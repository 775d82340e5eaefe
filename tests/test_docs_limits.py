"""docs/limits.md states every range as the code does (a range changed in one place shows here)."""

from pathlib import Path

from specforge_dpace import _numbers as num

PAGE = Path(__file__).resolve().parents[1] / "docs" / "limits.md"


def test_the_page_lists_every_range_as_the_code_states_it():
    text = " ".join(PAGE.read_text(encoding="utf-8").split())
    machine = num.THREADS.high
    for name, rng in vars(num).items():
        if not isinstance(rng, num.Range):
            continue
        accepted = rng.accepted()
        if "CPU count" in accepted:  # the page writes N for this machine's count
            accepted = accepted.replace(f", {machine}]", ", N]").replace("(this", "(N = this")
        assert accepted in text, (name, accepted)
