"""Compile the Triton kernels for an H100 (sm_90) without a GPU: Triton's compiler front end, its LLVM
back end and the bundled ptxas run on any machine, so code that only the compiled path rejects (the
interpreter runs plain Python) fails here.  Prints one line per kernel variant with its registers and
spills; exit status 1 on a spill (stack or local memory; fp64's widest variant spills, bf16 and fp32 do
not).  Run in its own process (``TRITON_INTERPRET`` unset)::

    python tests/fused/_compile_kernels.py [bf16|fp32|fp64 ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from specforge_dpace.fused.kernels import _launch, _triton  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BASIS_NAMES = ("Q0", "W0", "P0", "Q1", "W1", "P1", "Q_ONE", "E_Y")


def _usage(cubin: bytes) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        out = subprocess.run([tool, "--dump-resource-usage", handle.name], capture_output=True, text=True).stdout
    return next((line.strip() for line in out.splitlines() if "REG:" in line), "?")


def _compile(name, fn, signature, constants) -> bool:
    full = dict(signature, **{key: "constexpr" for key in constants})
    settings = _launch._settings(151936)
    constants = dict(constants, BLOCK_R=settings["BLOCK_R"], BLOCK_V=settings["BLOCK_V"])
    full.update(BLOCK_R="constexpr", BLOCK_V="constexpr")
    kernel = triton.compile(
        ASTSource(fn, full, constexprs=constants), target=TARGET, options={"num_warps": settings["num_warps"]}
    )
    usage = _usage(kernel.asm["cubin"])
    print(f"{name}: {usage}", flush=True)
    return "STACK:0 " in usage and "LOCAL:0 " in usage


def main(dtypes) -> int:
    ok = True
    for dtype in dtypes:
        acc = "fp64" if dtype == "fp64" else "fp32"
        fp64 = dtype == "fp64"
        signature = {"Z": f"*{dtype}", "stride_z": "i32", "labels": "*i64", "nlq": f"*{acc}", "argmax": "*i64",
                     "n_rows": "i32", "n_cols": "i32"}  # fmt: skip
        ok &= _compile(f"hard_rows {dtype}", _triton.hard_rows_kernel, signature, {"WRITE_GRAD": True, "FP64": fp64})
        signature = {"A": f"*{dtype}", "B": f"*{dtype}", "stride_a": "i32", "stride_b": "i32", "labels": "*i64",
                     "inv_t_ptr": f"*{acc}", "stats": f"*{acc}", "stride_s": "i32", "ids": "*i64", "stride_i": "i32",
                     "n_rows": "i32", "n_cols": "i32"}  # fmt: skip
        constants = {"SCALED": True, "WANT_KL": True, "EXTRAS": True, "LABELS": True, "FP64": fp64}
        ok &= _compile(f"soft_stats {dtype}", _triton.soft_stats_kernel, signature, constants)
        signature = {"A": f"*{dtype}", "B": f"*{dtype}", "stride_a": "i32", "stride_b": "i32", "O0": f"*{dtype}",
                     "O1": f"*{dtype}", "O2": f"*{dtype}", "stride_o0": "i32", "stride_o1": "i32", "stride_o2": "i32",
                     "labels": "*i64", "inv_t_ptr": f"*{acc}", "row_stats": f"*{acc}", "stride_r": "i32",
                     "coef": f"*{acc}", "stride_k": "i32", "stride_j": "i32",
                     "n_rows": "i32", "n_cols": "i32"}  # fmt: skip
        for outputs, two in ((1, False), (3, True)):
            basis = {f"HAS_{n}": two or n in ("Q0", "W0", "P0") for n in BASIS_NAMES}
            constants = {"OUTPUTS": outputs, "TWO": two, "SCALED0": True, "SCALED1": two, "NEED_P0": True,
                         "NEED_P1": two, "FP64": fp64, **basis}  # fmt: skip
            name = f"soft_directions {dtype} outputs={outputs} two_temperatures={two}"
            ok &= _compile(name, _triton.soft_directions_kernel, signature, constants)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["bf16"]))
