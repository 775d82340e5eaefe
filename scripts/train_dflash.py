#!/usr/bin/env python
"""Drop-in ``scripts/train_dflash.py``: legacy flags, any registered objective, either SpecForge runtime.

Same entry as ``specforge-dpace train-dflash``; flags it does not define are forwarded to a
legacy checkout's own script.  Works under ``torchrun`` (each rank runs the checkout in-process).
"""

import sys

from specforge_dpace.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
