"""Worker processes that end with the process that started them.

A worker pool's children outlive a parent killed with SIGKILL (nothing runs in the parent to stop them):
they finish their task beside the rerun that resumes it, then wait forever for work, holding their
memory.  :func:`die_with_parent` (a pool ``initializer``) prevents that twice over: on Linux the kernel
kills the worker when its parent dies (``PR_SET_PDEATHSIG``), and on every platform a daemon thread ends
the worker within ``poll_s`` seconds of its parent's pid no longer being its parent's.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def _kernel_kills_on_parent_death() -> bool:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int, poll_s: float) -> None:
    while True:
        time.sleep(poll_s)
        if os.getppid() != parent_pid:  # re-parented: the parent is gone
            os._exit(1)


def die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """End this process when ``parent_pid`` (the pid of the process that started it) dies.

    Call it first thing in a worker, e.g. ``ProcessPoolExecutor(initializer=die_with_parent,
    initargs=(os.getpid(),))``."""
    _kernel_kills_on_parent_death()
    if os.getppid() != parent_pid:  # the parent died before the kernel was told
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid, poll_s), name="parent-watchdog", daemon=True).start()
