"""Run from ``specforge_dpace_autoload.pth`` at interpreter start-up: arm the lazy SpecForge hook.

Must stay cheap and must never raise: it imports only the standard library and the tiny
``specforge_dpace.hooks._autoload`` finder (no torch, no SpecForge).
"""

import os

if os.environ.get("SPECFORGE_DPACE_AUTOLOAD", "1").strip().lower() not in ("0", "false", "no", "off"):
    try:
        from specforge_dpace.hooks._autoload import arm

        arm()
    except Exception as _exc:  # never break an unrelated Python process
        import sys

        sys.stderr.write(f"specforge-dpace: autoload disabled ({type(_exc).__name__}: {_exc})\n")
