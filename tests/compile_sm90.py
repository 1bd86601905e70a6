"""Compile every guard Triton kernel for sm_90 (Hopper) ahead of time, without a GPU: Triton's own
compiler down to PTX and cubin for the tile sizes the CUDA launchers use. Catches what the CPU
interpreter lets through (dot shapes, constexpr misuse, unsupported ops). Run with TRITON_INTERPRET unset:

    python tests/compile_sm90.py        # prints one line per kernel and configuration
"""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") != "1", "compile with TRITON_INTERPRET unset"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from guard.kernels import bt_head, linear_logprobs, logits_logprobs, preference_head  # noqa: E402
from guard.losses import MOMENT_VARIANCE_FLOOR  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
INTS = {"N", "V", "H", "B", "R", "C", "stride_h", "stride_w", "stride_n", "v_per_split", "ignore_index"}


def compile_kernel(fn, pointers, constexprs, num_warps=4, num_stages=3):
    """pointers: arg name -> Triton pointer type for the non-fp32 ones; other *_ptr args are *fp32."""
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*fp32")
        else:
            signature[name] = "i32" if name in INTS else "fp32"
    src = triton.compiler.ASTSource(
        fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    )
    compiled = triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})
    assert compiled.asm["ptx"] and compiled.asm["cubin"]
    print(f"ok {fn.__name__} {sorted(constexprs.items())}")


def main():
    for dtype, (bn, bv, bh, warps, stages, precision) in {
        "bf16": (128, 128, 64, 8, 3, "tf32"),
        "fp16": (128, 128, 64, 8, 3, "tf32"),
        "fp32": (64, 64, 32, 4, 2, "ieee"),
    }.items():
        for flags in ({"HAS_BIAS": True, "WITH_ENTROPY": True}, {"HAS_BIAS": False, "WITH_ENTROPY": False}):
            common = dict(flags, BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh, DOT_PRECISION=precision, UPCAST_DOT=False)
            typed = {"hidden_ptr": f"*{dtype}", "weight_ptr": f"*{dtype}", "bias_ptr": f"*{dtype}", "labels_ptr": "*i64"}
            compile_kernel(linear_logprobs._linear_logprobs_fwd_kernel, typed, common, warps, stages)
            compile_kernel(linear_logprobs._linear_logprobs_bwd_kernel, typed, common, warps, stages)
        for entropy in (True, False):
            typed = {"logits_ptr": f"*{dtype}", "grad_logits_ptr": f"*{dtype}", "labels_ptr": "*i64"}
            cfg = dict(WITH_ENTROPY=entropy, BLOCK_N=1, BLOCK_V=4096)
            compile_kernel(logits_logprobs._logits_logprobs_fwd_kernel, typed, cfg, 8)
            compile_kernel(logits_logprobs._logits_logprobs_bwd_kernel, typed, cfg, 8)

    heads = dict(BLOCK_B=128, BLOCK_C=32, VARIANCE_FLOOR=MOMENT_VARIANCE_FLOOR)
    for loss in range(6):
        typed = {"logps_ptr": "*fp32", "cats_ptr": "*i64", "counts_ptr": "*i64"}
        compile_kernel(preference_head._preference_head_fwd_kernel, typed, dict(heads, LOSS=loss, HAS_REF=True, HAS_CATS=True))
        compile_kernel(preference_head._preference_head_bwd_kernel, typed, dict(
            heads, LOSS=loss, HAS_REF=True, MOMENT_GRADS=True, HAS_G_LOSS=True, HAS_G_PAIR=True, HAS_G_REWARDS=True))
    typed = {"chosen_ptr": "*bf16", "rejected_ptr": "*bf16", "grad_chosen_ptr": "*bf16", "grad_rejected_ptr": "*bf16",
             "cats_ptr": "*i64", "counts_ptr": "*i64"}
    compile_kernel(bt_head._bt_head_fwd_kernel, typed, dict(heads, HAS_MARGIN=True, HAS_CENTER=True, HAS_CATS=True))
    compile_kernel(bt_head._bt_head_bwd_kernel, typed, dict(
        heads, HAS_MARGIN=True, HAS_CENTER=True, MOMENT_GRADS=True, HAS_G_LOSS=True, HAS_G_PAIR=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
