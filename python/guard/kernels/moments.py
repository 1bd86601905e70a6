"""Per-category reward moments inside a Triton program: `@triton.jit` helpers shared by the heads.

The preference head (`preference_head.py`) and the Bradley–Terry head (`bt_head.py`) both report, for
each category c, the mean, population variance, skewness and excess kurtosis of a column of rewards
(the spec of record is `guard.losses.category_moments`). Both run as a single Triton program that walks
the batch in blocks of BLOCK_B rows; a row's category becomes a one-hot row of width BLOCK_C (a power of
two ≥ C), and per-category sums are `tl.sum(onehot * x[:, None], axis=0)`. Two passes give the moments:

    pass 1:  n_c = Σ_i 1[c_i = c],   μ_c = Σ_i 1[c_i = c]·v_i / max(n_c, 1)
    pass 2:  d_i = v_i − μ_{c_i},    m_k = Σ_i 1[c_i = c]·d_i^k / max(n_c, 1)   (k = 2, 3, 4)
    output:  μ, m2, g1 = m3·m2^−1.5, g2 = m4·m2^−2 − 3

with the zero rules of the reference: an empty category gives zeros (every sum is 0 and n is clamped to
1), and a category with m2 < 1e-12 (`guard.losses.MOMENT_VARIANCE_FLOOR`) gives g1 = g2 = 0.

Derivatives. For an element v_i of category c (n = n_c, d_i = v_i − μ), differentiating through μ too
(Σ_j d_j = 0 makes the μ-terms of m2 vanish and turns those of m3, m4 into −m2, −m3):

    ∂μ/∂v_i  = 1/n
    ∂m2/∂v_i = 2·d_i / n
    ∂m3/∂v_i = 3·(d_i² − m2) / n
    ∂m4/∂v_i = 4·(d_i³ − m3) / n
    ∂g1/∂m2 = −1.5·g1/m2,   ∂g1/∂m3 = m2^−1.5
    ∂g2/∂m2 = −2·(g2 + 3)/m2, ∂g2/∂m4 = m2^−2

so with upstream gradients (gμ, gv, gs, gk) on (μ, m2, g1, g2), per category

    G2 = gv − 1.5·gs·g1/m2 − 2·gk·(g2 + 3)/m2,  G3 = gs·m2^−1.5,  G4 = gk·m2^−2

(the gs, gk terms dropped where m2 < 1e-12, where g1 = g2 = 0 are constants), and per element

    ∂L/∂v_i = gμ/n + 2·G2·d_i/n + 3·G3·(d_i² − m2)/n + 4·G4·(d_i³ − m3)/n.

`_moment_grad_coefficients` computes the four per-category factors (gμ/n, 2·G2/n, 3·G3/n, 4·G4/n) once
and `_moment_grad` spreads them to the elements. Everything is float32; moments tensors are laid out
[C, 2, 4] (category, column chosen/rejected, moment).
"""

import triton
import triton.language as tl


@triton.jit
def _category_onehot(cats, mask, BLOCK_C: tl.constexpr):
    """[BLOCK_B, BLOCK_C] float32: 1 where row i is live and has category c. Out-of-range categories
    match no column, so such a row counts nowhere."""
    cols = tl.arange(0, BLOCK_C)
    hit = (cats[:, None] == cols[None, :]) & mask[:, None]
    return hit.to(tl.float32)


@triton.jit
def _category_sum(onehot, x):
    """Σ over the block's rows of x, per category: [BLOCK_C]."""
    return tl.sum(onehot * x[:, None], axis=0)


@triton.jit
def _gather_category(onehot, per_category):
    """The value of each row's category: [BLOCK_B] (0 for dead rows)."""
    return tl.sum(onehot * per_category[None, :], axis=1)


@triton.jit
def _central_power_sums(onehot, v, mean):
    """Pass 2 of one column: Σ d², Σ d³, Σ d⁴ per category over the block, d = v − μ of the row's category."""
    d = v - _gather_category(onehot, mean)
    d2 = d * d
    return _category_sum(onehot, d2), _category_sum(onehot, d2 * d), _category_sum(onehot, d2 * d2)


@triton.jit
def _standardized(m2, m3, m4, VARIANCE_FLOOR: tl.constexpr):
    """(skewness, excess kurtosis) with the zero rule below the variance floor."""
    varied = m2 > VARIANCE_FLOOR
    safe_m2 = tl.where(varied, m2, 1.0)
    skew = tl.where(varied, m3 / (safe_m2 * tl.sqrt(safe_m2)), 0.0)
    kurt = tl.where(varied, m4 / (safe_m2 * safe_m2) - 3.0, 0.0)
    return skew, kurt


@triton.jit
def _store_moments(moments_ptr, column, mean, m2, m3, m4, C, BLOCK_C: tl.constexpr, VARIANCE_FLOOR: tl.constexpr):
    """Write moments[c, column, :] = (μ, m2, g1, g2) for c < C into a contiguous [C, 2, 4] tensor."""
    cols = tl.arange(0, BLOCK_C)
    live = cols < C
    skew, kurt = _standardized(m2, m3, m4, VARIANCE_FLOOR)
    base = moments_ptr + cols * 8 + column * 4
    tl.store(base + 0, mean, mask=live)
    tl.store(base + 1, m2, mask=live)
    tl.store(base + 2, skew, mask=live)
    tl.store(base + 3, kurt, mask=live)


@triton.jit
def _moment_grad_coefficients(
    g_moments_ptr, column, inv_n, m2, m3, m4, C, BLOCK_C: tl.constexpr, VARIANCE_FLOOR: tl.constexpr
):
    """Per-category factors (gμ/n, 2·G2/n, 3·G3/n, 4·G4/n) of the per-element moment gradient, from the
    upstream gradient g_moments[c, column, :] of a contiguous [C, 2, 4] tensor (see the module docstring)."""
    cols = tl.arange(0, BLOCK_C)
    live = cols < C
    base = g_moments_ptr + cols * 8 + column * 4
    g_mean = tl.load(base + 0, mask=live, other=0.0).to(tl.float32)
    g_var = tl.load(base + 1, mask=live, other=0.0).to(tl.float32)
    g_skew = tl.load(base + 2, mask=live, other=0.0).to(tl.float32)
    g_kurt = tl.load(base + 3, mask=live, other=0.0).to(tl.float32)
    varied = m2 > VARIANCE_FLOOR
    safe_m2 = tl.where(varied, m2, 1.0)
    inv_m2 = 1.0 / safe_m2
    inv_m2_15 = inv_m2 / tl.sqrt(safe_m2)
    skew = m3 * inv_m2_15
    kurt_plus_3 = m4 * inv_m2 * inv_m2
    g2 = g_var + tl.where(varied, -1.5 * g_skew * skew * inv_m2 - 2.0 * g_kurt * kurt_plus_3 * inv_m2, 0.0)
    g3 = tl.where(varied, g_skew * inv_m2_15, 0.0)
    g4 = tl.where(varied, g_kurt * inv_m2 * inv_m2, 0.0)
    return g_mean * inv_n, 2.0 * g2 * inv_n, 3.0 * g3 * inv_n, 4.0 * g4 * inv_n


@triton.jit
def _moment_grad(onehot, v, mean, m2, m3, a0, a1, a2, a3):
    """∂L/∂v_i through the moments of v_i's category: a0 + a1·d + a2·(d² − m2) + a3·(d³ − m3), with the
    per-category constant a0 − a2·m2 − a3·m3 folded before it is spread to the rows."""
    d = v - _gather_category(onehot, mean)
    constant = _gather_category(onehot, a0 - a2 * m2 - a3 * m3)
    return constant + d * (_gather_category(onehot, a1) + d * (_gather_category(onehot, a2) + d * _gather_category(onehot, a3)))
