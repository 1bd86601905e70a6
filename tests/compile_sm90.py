"""Compile every guard Triton kernel for sm_90 (Hopper) ahead of time, without a GPU: Triton's own compiler
down to PTX and cubin, in the configurations the CUDA launchers use (tile sizes of guard.kernels.tuning),
specialised the way a launch at the benchmark's shape (N = 16384 rows, H = 4096, V = 128256) would be
(pointers and multiples of 16 marked divisible by 16, unit strides as constants). Catches what the CPU
interpreter lets through (dot shapes, constexpr misuse, unsupported ops), and reports what ptxas allocates
per kernel: registers per thread, spill stores / loads, stack frame. Run with TRITON_INTERPRET unset, with
any Triton; the GPU machine has triton 3.6.0, so also run it from a side venv that has that version:

    python tests/compile_sm90.py                  # one "ok" line per kernel and configuration, then a table
    python tests/compile_sm90.py --markdown       # the table as markdown (for a report)
    python3 -m venv /tmp/venv-t36 && /tmp/venv-t36/bin/pip install triton==3.6.0
    echo "$(python -c 'import site; print(site.getsitepackages()[0])')" \\
        > /tmp/venv-t36/lib/python3.11/site-packages/zz_guard_venv.pth   # torch from the main venv, after 3.6.0
    PYTHONPATH=python /tmp/venv-t36/bin/python tests/compile_sm90.py
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

assert os.environ.get("TRITON_INTERPRET") != "1", "compile with TRITON_INTERPRET unset"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402

from guard.kernels import (  # noqa: E402
    bt_head,
    linear_logprobs,
    linear_logprobs_chunked,
    linear_logprobs_tiled,
    logits_logprobs,
    preference_head,
    tuning,
)
from guard.losses import MOMENT_VARIANCE_FLOOR  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
CUDA = torch.device("cuda")  # only named: the tile choices below never touch a device
SM_COUNT = 132  # H100 SXM and H200
N, H, V = 16384, 4096, 128256  # the benchmark's main shape: 16k tokens through a Llama-3-8B head
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PTXAS = Path(get_ptxas(TARGET.arch).path)  # the ptxas this Triton itself runs for sm_90


def compile_kernel(fn, pointers, constexprs, num_warps=4, num_stages=3, label="", ints=None):
    """pointers: arg name -> Triton pointer type for the non-fp32 ones; other *_ptr args are *fp32. ints: the
    integer arguments a launch passes (a value of 1 becomes a constant, multiples of 16 are marked so, as
    Triton's launcher specialises them); anything else is fp32. Returns one row of the report: (kernel,
    label, registers, spill stores, spill loads, stack bytes)."""
    ints = ints or {}
    signature, constants, attrs = {}, dict(constexprs), {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*fp32")
            attrs[(index,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif name in ints:
            value = ints[name]
            if value == 1:  # Triton turns an int argument equal to 1 into a constant at launch
                signature[name], constants[name] = "constexpr", 1
            else:
                signature[name] = "i32"
                if value % 16 == 0:
                    attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"
    src = triton.compiler.ASTSource(
        fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()}, attrs=attrs
    )
    compiled = triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})
    assert compiled.asm["ptx"] and compiled.asm["cubin"]
    print(f"ok {fn.__name__} {label} {sorted(constexprs.items())}", flush=True)
    return (fn.__name__, label, *ptxas_resources(compiled.asm["ptx"]))


def ptxas_resources(ptx: str) -> tuple[int, int, int, int]:
    """(registers, spill store bytes, spill load bytes, stack frame bytes) that ptxas -v reports for the PTX
    (Triton's own ptxas, for the architecture the PTX targets: sm_90a on Hopper)."""
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        out = subprocess.run([str(PTXAS), "-v", f"--gpu-name={arch}", str(path), "-o", str(Path(tmp) / "kernel.cubin")],
                             capture_output=True, text=True, check=True).stderr
    number = lambda pattern: int(re.search(pattern, out).group(1)) if re.search(pattern, out) else 0  # noqa: E731
    return (number(r"Used (\d+) registers"), number(r"(\d+) bytes spill stores"), number(r"(\d+) bytes spill loads"),
            number(r"(\d+) bytes stack frame"))


def launch_ints(dtype: torch.dtype) -> dict:
    """The integer arguments of every kernel at (N, H, V) with contiguous inputs, as the launchers pass them."""
    blocks = tuning.linear_logprobs_blocks(N, V, H, dtype, CUDA)
    chunk = tuning.chunked_backward_blocks(N, V, H, dtype, CUDA).chunk_v
    return {"N": N, "V": V, "H": H, "B": 8, "C": 5, "stride_hn": H, "stride_hh": 1, "stride_wv": H, "stride_wh": 1,
            "stride_n": V, "stride_dz": chunk, "stride_part": chunk, "v_per_split": blocks.v_per_split,
            "v_start": chunk, "v_len": chunk, "splits": blocks.splits, "ignore_index": -100}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the resource table as markdown")
    args = parser.parse_args(argv)
    tuning._sm_count = lambda device: SM_COUNT  # the launchers ask the device; here there is none
    rows = []
    # (label, hidden dtype, head dtype): the forward, the tiled backward and the chunked dz kernel
    for label, x, w in (("bf16", "bf16", "bf16"), ("fp16", "fp16", "fp16"), ("bf16 hidden, fp32 head", "bf16", "fp32"),
                        ("fp32", "fp32", "fp32")):
        ints = launch_ints(DTYPES[x])
        fwd = tuning.linear_logprobs_blocks(N, V, H, DTYPES[x], CUDA)
        dz = tuning.chunked_backward_blocks(N, V, H, DTYPES[x], CUDA)
        dots = tuning.dot_flags(DTYPES[x])
        typed = {"hidden_ptr": f"*{x}", "weight_ptr": f"*{w}", "bias_ptr": f"*{w}", "labels_ptr": "*i64",
                 "order_ptr": "*i64", "count_ptr": "*i32", "dz_ptr": f"*{x}"}
        for bias, entropy in ((True, True), (False, False)):
            tag = f"{label}{', bias, entropy' if bias else ''}"
            flags = dict(dots, BLOCK_N=fwd.block_n, BLOCK_V=fwd.block_v, BLOCK_H=fwd.block_h, HAS_BIAS=bias, WITH_ENTROPY=entropy)
            rows.append(compile_kernel(linear_logprobs._linear_logprobs_fwd_kernel, typed, flags, fwd.num_warps,
                                       fwd.num_stages, tag, ints))
            for needs, what in (((True, True, bias), "all grads"), ((True, False, False), "frozen head")):
                need = dict(NEED_HIDDEN=needs[0], NEED_WEIGHT=needs[1], NEED_BIAS=needs[2])
                rows.append(compile_kernel(linear_logprobs_tiled._linear_logprobs_tiled_bwd_kernel, typed, dict(flags, **need),
                                           fwd.num_warps, fwd.num_stages, f"{tag}, {what}", ints))
            flags = dict(dots, BLOCK_N=dz.block_n, BLOCK_V=dz.block_v, BLOCK_H=dz.block_h, GROUP_N=dz.group_n,
                         HAS_BIAS=bias, WITH_ENTROPY=entropy, NEED_BIAS=bias)
            rows.append(compile_kernel(linear_logprobs_chunked._linear_logprobs_dz_kernel, typed, flags, dz.num_warps,
                                       dz.num_stages, tag, ints))
    for entropy in (True, False):
        typed = {"labels_ptr": "*i64", "order_ptr": "*i64", "count_ptr": "*i32"}
        rows.append(compile_kernel(linear_logprobs._linear_logprobs_merge_kernel, typed,
                                   dict(WITH_ENTROPY=entropy, BLOCK=tuning.merge_block(CUDA)), 4, 1,
                                   "entropy" if entropy else "", launch_ints(torch.bfloat16)))
    row_blocks = tuning.logits_logprobs_blocks(N, V, CUDA)
    for dtype in DTYPES:
        for entropy in (True, False):
            typed = {"logits_ptr": f"*{dtype}", "grad_logits_ptr": f"*{dtype}", "labels_ptr": "*i64"}
            cfg = dict(WITH_ENTROPY=entropy, BLOCK_N=row_blocks.block_n, BLOCK_V=row_blocks.block_v)
            tag = f"{dtype}{', entropy' if entropy else ''}"
            for kernel in (logits_logprobs._logits_logprobs_fwd_kernel, logits_logprobs._logits_logprobs_bwd_kernel):
                rows.append(compile_kernel(kernel, typed, cfg, row_blocks.num_warps, 3, tag, launch_ints(DTYPES[dtype])))

    block_b, block_c = tuning.head_blocks(1024, 5)
    heads = dict(BLOCK_B=block_b, BLOCK_C=block_c, VARIANCE_FLOOR=MOMENT_VARIANCE_FLOOR)
    ints = {"B": 1024, "C": 5}
    for loss, name in enumerate(("sigmoid", "ipo", "apo_zero", "apo_down", "kto_pair", "spo")):
        typed = {"logps_ptr": "*fp32", "cats_ptr": "*i64", "counts_ptr": "*i64"}
        spo = name == "spo"
        rows.append(compile_kernel(preference_head._preference_head_fwd_kernel, typed,
                                   dict(heads, LOSS=loss, HAS_REF=True, HAS_SHIFT=spo, HAS_CATS=True), label=name, ints=ints))
        rows.append(compile_kernel(preference_head._preference_head_bwd_kernel, typed, dict(
            heads, LOSS=loss, HAS_REF=True, HAS_SHIFT=spo, MOMENT_GRADS=True, HAS_G_LOSS=True, HAS_G_PAIR=True,
            HAS_G_REWARDS=True), label=name, ints=ints))
    typed = {"chosen_ptr": "*bf16", "rejected_ptr": "*bf16", "grad_chosen_ptr": "*bf16", "grad_rejected_ptr": "*bf16",
             "cats_ptr": "*i64", "counts_ptr": "*i64"}
    rows.append(compile_kernel(bt_head._bt_head_fwd_kernel, typed, dict(heads, HAS_MARGIN=True, HAS_CENTER=True, HAS_CATS=True),
                               ints=ints))
    rows.append(compile_kernel(bt_head._bt_head_bwd_kernel, typed, dict(
        heads, HAS_MARGIN=True, HAS_CENTER=True, MOMENT_GRADS=True, HAS_G_LOSS=True, HAS_G_PAIR=True), ints=ints))

    print(f"\ntriton {triton.__version__}, sm_90, N={N} H={H} V={V} ({PTXAS.name} -v): registers per thread; "
          "spill stores, spill loads and stack in bytes")
    if args.markdown:
        print("| kernel | configuration | registers | spill stores | spill loads | stack |\n|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(str(x) for x in row) + " |")
    else:
        for name, label, regs, stores, loads, stack in rows:
            print(f"{name:36s} {label:52s} regs {regs:3d}  spills {stores:5d}/{loads:<5d} stack {stack}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
