"""Numerically stable σ and logσ inside a Triton program: `@triton.jit` helpers shared by the heads.

Both are exact to float32 rounding for every finite x and never overflow: they only exponentiate −|x|.
"""

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))  # never overflows
    inv = 1.0 / (1.0 + e)
    return tl.where(x >= 0, inv, e * inv)


@triton.jit
def _log_sigmoid(x):
    # logσ(x) = min(x, 0) − log1p(e^−|x|). log1p without a libdevice call: with u = 1 + e rounded,
    # log(u)·e/(u − 1) is accurate to an ulp, and where u rounds to 1, log1p(e) = e.
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    exact = u == 1.0
    log1p = tl.where(exact, e, tl.log(u) * (e / tl.where(exact, 1.0, u - 1.0)))
    return tl.minimum(x, 0.0) - log1p
