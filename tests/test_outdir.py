"""One run per output directory, and its path problems reported before any work (``specforge_dpace._outdir``).

Real processes hold the lock (a child Python that takes it and waits), real ``SIGKILL`` leaves it stale.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from specforge_dpace._outdir import LOCK_NAME, OutputDirInUse, check_output_dir, locked_output, output_dir

HOLDER = """
import sys, time
from specforge_dpace._outdir import locked_output
with locked_output(sys.argv[1], "holder-process", "--out"):
    print("locked", flush=True)
    time.sleep(600)
"""


def _start_holder(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_path_problems_name_the_flag_and_the_path(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=rf"--out '{a_file}': is a file; accepted: a directory"):
        check_output_dir(a_file, "--out")
    with pytest.raises(ValueError, match=rf"--out '{a_file}/sub': sits under '{a_file}', which is a file"):
        check_output_dir(a_file / "sub", "--out")
    out = tmp_path / "out"
    (out / "summary.json").mkdir(parents=True)
    with pytest.raises(ValueError, match="summary.json' is a directory where this run writes its file summary.json"):
        check_output_dir(out, "--out", files=("summary.json",))
    (out / "logs").write_text("x")
    with pytest.raises(ValueError, match="logs' is a file where this run keeps its directory logs/"):
        check_output_dir(out, "--out", directories=("logs",))
    with pytest.raises(ValueError, match="--out '' is invalid; accepted: a directory path"):
        check_output_dir("", "--out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_refused(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(ValueError, match=rf"--out '{out}': is not a writable directory"):
            check_output_dir(out, "--out")
    finally:
        out.chmod(0o755)


def test_an_appended_file_that_cannot_be_written_is_refused(tmp_path):
    out = tmp_path / "out"
    (out / "requests.jsonl").mkdir(parents=True)
    with pytest.raises(ValueError, match="requests.jsonl' is a directory where this run writes its file"):
        check_output_dir(out, "--out", appended=("requests.jsonl",))


def test_a_second_run_is_refused_naming_the_holders_pid(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(OutputDirInUse) as refused:
            with locked_output(tmp_path, "me", "--out"):
                pass
        message = str(refused.value)
        assert f"--out {str(tmp_path)!r} is in use by another run: pid {holder.pid} (holder-process" in message
        assert str(tmp_path / LOCK_NAME) in message
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(tmp_path):
    holder = _start_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)  # no chance to release it
    holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # the stale record is there
    notes = []
    with locked_output(tmp_path, "me", "--out", note=notes.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and f"took over the lock that pid {holder.pid}" in notes[0]
    assert "ended without releasing it" in notes[0]
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: the next run takes it without a note
    with locked_output(tmp_path, "me", "--out", note=notes.append):
        pass
    assert len(notes) == 1


def test_the_lock_is_held_only_while_the_run_lasts(tmp_path):
    with locked_output(tmp_path, "first", "--out"):
        with pytest.raises(OutputDirInUse, match=f"pid {os.getpid()} \\(first"):
            with locked_output(tmp_path, "second", "--out"):
                pass
    with locked_output(tmp_path, "third", "--out"):
        pass


def test_a_refused_run_leaves_no_directory_it_created(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(ValueError, match="refused later"):
        with output_dir(out, "--out", "test"):
            assert out.is_dir()
            raise ValueError("refused later")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError):
        with output_dir(tmp_path / "kept", "--out", "test"):
            (tmp_path / "kept" / "result.json").write_text("{}")
            raise ValueError("after writing something")
    assert (tmp_path / "kept" / "result.json").exists()


def test_a_waiting_holder_does_not_block_after_it_is_killed(tmp_path):
    """The kernel drops a flock when its process dies, however it dies: no stale lock can block forever."""
    holder = _start_holder(tmp_path)
    holder.kill()
    holder.wait()
    start = time.monotonic()
    with locked_output(tmp_path, "me", "--out", note=lambda _m: None):
        pass
    assert time.monotonic() - start < 5


def test_the_errors_are_public():
    import specforge_dpace

    assert specforge_dpace.OutputDirInUse is OutputDirInUse and issubclass(OutputDirInUse, ValueError)
    assert issubclass(specforge_dpace.NonFiniteTraining, ValueError)
