"""Every Triton kernel compiles for sm_90 (Hopper) with the tile sizes the CUDA launchers use, on this
GPU-less machine, through Triton's real compiler (tests/compile_sm90.py) rather than the interpreter: with
the Triton installed here, and with triton 3.6.0 -- the GPU machine's version -- from a side venv when
one exists (GUARD_TRITON36_PYTHON, default /tmp/venv-t36/bin/python; compile_sm90.py says how to make it).
The forward, merge and dz kernels of the chunked design must not spill registers.

    python -m pytest tests/test_sm90_compile.py -q
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIDE_VENV_PYTHON = os.environ.get("GUARD_TRITON36_PYTHON", "/tmp/venv-t36/bin/python")
KERNELS = {
    "_linear_logprobs_fwd_kernel", "_linear_logprobs_merge_kernel", "_linear_logprobs_tiled_bwd_kernel",
    "_linear_logprobs_dz_kernel", "_logits_logprobs_fwd_kernel", "_logits_logprobs_bwd_kernel",
    "_preference_head_fwd_kernel", "_preference_head_bwd_kernel", "_bt_head_fwd_kernel", "_bt_head_bwd_kernel",
}
NO_SPILLS = {"_linear_logprobs_fwd_kernel", "_linear_logprobs_merge_kernel", "_linear_logprobs_dz_kernel"}


def compile_with(python: str, expect_version: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "python")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when it is unset
    result = subprocess.run([python, str(ROOT / "tests" / "compile_sm90.py")], env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    compiled = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert {line.split()[1] for line in compiled} == KERNELS
    assert len(compiled) == 60
    if expect_version:
        assert f"triton {expect_version}, sm_90" in result.stdout
    for line in result.stdout.splitlines():  # "<kernel> <configuration> regs R  spills S/L stack B"
        if line.split(" ", 1)[0] in NO_SPILLS:
            assert " spills     0/0 " in line, line
    return result.stdout


@pytest.mark.slow
def test_all_kernels_compile_for_sm90_with_the_installed_triton():
    compile_with(sys.executable)


@pytest.mark.slow
def test_all_kernels_compile_for_sm90_with_triton_3_6_0():
    if not Path(SIDE_VENV_PYTHON).exists():
        pytest.skip(f"no side venv with triton 3.6.0 at {SIDE_VENV_PYTHON} (set GUARD_TRITON36_PYTHON; "
                    "tests/compile_sm90.py's docstring shows how to make one)")
    compile_with(SIDE_VENV_PYTHON, expect_version="3.6.0")
