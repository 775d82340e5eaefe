"""The kernel tests run the Triton kernels through Triton's interpreter where there is no CUDA GPU: the
environment variable has to be set before the kernels are first imported (they are imported lazily, at the
first kernel call, so setting it at collection is early enough)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def kernel_device():
    """Where the kernels run in this session: ``cpu`` through the interpreter, ``cuda`` compiled (a GPU
    machine); skipped without Triton, or with compiled kernels and no GPU."""
    pytest.importorskip("triton")
    from specforge_dpace.fused.kernels import launcher, triton_error

    if triton_error() is not None:
        pytest.skip(f"Triton kernels not importable: {triton_error()}")
    if launcher().INTERPRETED:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("the kernels were built for a GPU (TRITON_INTERPRET unset) and there is none")
