"""Reports and JSONL files are written whole or not at all (``specforge_dpace._atomic``).

A full disk is simulated for real with ``RLIMIT_FSIZE`` in a child process (the kernel refuses writes
past the limit with EFBIG, as it refuses them with ENOSPC on a full disk).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from specforge_dpace import _atomic, report


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "per_prompt.jsonl"
    target.write_text("old\n")

    def writer(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        _atomic.write_with(target, writer)
    assert target.read_text() == "old\n" and _leftovers(tmp_path) == []


def test_write_jsonl_writes_every_record_at_once(tmp_path):
    path = report.write_jsonl(tmp_path / "a.jsonl", [{"x": 1}, {"x": float("nan")}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"x": 1}, {"x": None}]
    assert report.write_jsonl(tmp_path / "a.jsonl", []).read_text() == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE behaviour is Linux's")
def test_a_full_disk_keeps_the_previous_jsonl_and_names_the_file(tmp_path):
    """What the evaluator does with per_prompt.jsonl: before, a full disk left it empty (unlinked, then
    appended); now the previous file stays and the error names the file."""
    target = tmp_path / "per_prompt.jsonl"
    target.write_text('{"old": 1}\n')
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal, like ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from specforge_dpace import report
        try:
            report.write_jsonl({str(target)!r}, [{{"prompt": i, "text": "x" * 100}} for i in range(200)])
        except OSError as exc:
            print("ERROR", exc)
            sys.exit(3)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert f"could not write {target}" in result.stdout
    assert target.read_text() == '{"old": 1}\n' and _leftovers(tmp_path) == []
