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
1), and a category with m2 < 1e-12 (`guard.losses.MOMENT_VARIANCE_FLOOR`) gives g1 = g2 = 0. A category
outside [0, C) (the heads do not check: that would need a host sync) counts in no category and makes
every stored moment NaN, as `category_moments(..., check=False)` does; gradients ignore such rows.

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
[C, 2, 4] (category, column chosen/rejected, moment). The `_pair` helpers at the end run passes 1 and 2
on both columns at once, one block at a time, the way both heads do, forward and backward.
"""

import triton
import triton.language as tl


@triton.jit
def _category_onehot(cats_ptr, offs, mask, BLOCK_C: tl.constexpr):
    """[BLOCK_B, BLOCK_C] float32: 1 where row offs[i] is live and has category c (read at cats_ptr).
    Out-of-range categories match no column, so such a row counts nowhere."""
    cats = tl.load(cats_ptr + offs, mask=mask, other=-1)
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
def _store_moments(moments_ptr, column, mean, m2, m3, m4, poison, C, BLOCK_C: tl.constexpr, VARIANCE_FLOOR: tl.constexpr):
    """Write moments[c, column, :] = (μ, m2, g1, g2) + poison for c < C into a contiguous [C, 2, 4] tensor
    (poison is 0, or NaN when a row had a stray category)."""
    cols = tl.arange(0, BLOCK_C)
    live = cols < C
    skew, kurt = _standardized(m2, m3, m4, VARIANCE_FLOOR)
    base = moments_ptr + cols * 8 + column * 4
    tl.store(base + 0, mean + poison, mask=live)
    tl.store(base + 1, m2 + poison, mask=live)
    tl.store(base + 2, skew + poison, mask=live)
    tl.store(base + 3, kurt + poison, mask=live)


@triton.jit
def _moment_grad_coefficients(
    g_moments_ptr, column, inv_n, s2, s3, s4, C, BLOCK_C: tl.constexpr, VARIANCE_FLOOR: tl.constexpr
):
    """After pass 2 of a backward, one column: (m2, m3) and the per-category factors (gμ/n, 2·G2/n,
    3·G3/n, 4·G4/n) of the per-element moment gradient, from the power sums s2, s3, s4 and the upstream
    gradient g_moments[c, column, :] of a contiguous [C, 2, 4] tensor (see the module docstring)."""
    m2 = s2 * inv_n
    m3 = s3 * inv_n
    m4 = s4 * inv_n
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
    return m2, m3, g_mean * inv_n, 2.0 * g2 * inv_n, 3.0 * g3 * inv_n, 4.0 * g4 * inv_n


@triton.jit
def _moment_grad(onehot, v, mean, m2, m3, a0, a1, a2, a3):
    """∂L/∂v_i through the moments of v_i's category: a0 + a1·d + a2·(d² − m2) + a3·(d³ − m3), with the
    per-category constant a0 − a2·m2 − a3·m3 folded before it is spread to the rows."""
    d = v - _gather_category(onehot, mean)
    constant = _gather_category(onehot, a0 - a2 * m2 - a3 * m3)
    return constant + d * (_gather_category(onehot, a1) + d * (_gather_category(onehot, a2) + d * _gather_category(onehot, a3)))


# Both columns at once. The heads keep two columns of values per row, chosen (column 0) and rejected
# (column 1), under one category, so one one-hot tile serves both. A pass over the batch is
#
#     count, sum_c, sum_r = _zero_pair_sums(BLOCK_C)                              # pass 1
#     for each block: count, sum_c, sum_r = _add_pair_sums(count, sum_c, sum_r, ...)
#     inv_n, mean_c, mean_r = _pair_means(count, sum_c, sum_r)
#     s2_c, s3_c, s4_c, s2_r, s3_r, s4_r = _zero_pair_power_sums(BLOCK_C)        # pass 2
#     for each block: s2_c, ..., s4_r = _add_pair_power_sums(s2_c, ..., s4_r, ...)
#
# then `_store_pair_moments` (forward) or `_moment_grad_coefficients` per column (backward).


@triton.jit
def _zero_pair_sums(BLOCK_C: tl.constexpr):
    """Pass 1's accumulators (n, Σv_c, Σv_r) per category, zeros [BLOCK_C]."""
    count = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_c = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_r = tl.zeros([BLOCK_C], dtype=tl.float32)
    return count, sum_c, sum_r


@triton.jit
def _add_pair_sums(count, sum_c, sum_r, cats_ptr, offs, mask, v_c, v_r, BLOCK_C: tl.constexpr):
    """Pass 1 over one block: (count, sum_c, sum_r) plus the block's rows, Σv_c and Σv_r per category."""
    onehot = _category_onehot(cats_ptr, offs, mask, BLOCK_C)
    count += tl.sum(onehot, axis=0)
    sum_c += _category_sum(onehot, v_c)
    sum_r += _category_sum(onehot, v_r)
    return count, sum_c, sum_r


@triton.jit
def _stray_rows(cats_ptr, offs, mask, C):
    """[BLOCK_B] float32: 1 where live row offs[i] has a category outside [0, C) (summed into `stray`)."""
    cats = tl.load(cats_ptr + offs, mask=mask, other=0)
    return tl.where(mask & ((cats < 0) | (cats >= C)), 1.0, 0.0)


@triton.jit
def _pair_means(count, sum_c, sum_r):
    """After pass 1: (1 / max(n, 1), μ_c, μ_r) per category."""
    inv_n = 1.0 / tl.maximum(count, 1.0)
    return inv_n, sum_c * inv_n, sum_r * inv_n


@triton.jit
def _zero_pair_power_sums(BLOCK_C: tl.constexpr):
    """Pass 2's accumulators (Σd², Σd³, Σd⁴ of column 0, then of column 1) per category, zeros [BLOCK_C]."""
    s2_c = tl.zeros([BLOCK_C], dtype=tl.float32)
    s3_c = tl.zeros([BLOCK_C], dtype=tl.float32)
    s4_c = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2_r = tl.zeros([BLOCK_C], dtype=tl.float32)
    s3_r = tl.zeros([BLOCK_C], dtype=tl.float32)
    s4_r = tl.zeros([BLOCK_C], dtype=tl.float32)
    return s2_c, s3_c, s4_c, s2_r, s3_r, s4_r


@triton.jit
def _add_pair_power_sums(
    s2_c, s3_c, s4_c, s2_r, s3_r, s4_r, cats_ptr, offs, mask, v_c, v_r, mean_c, mean_r, BLOCK_C: tl.constexpr
):
    """Pass 2 over one block: the six power sums plus the block's Σd², Σd³, Σd⁴ of both columns."""
    onehot = _category_onehot(cats_ptr, offs, mask, BLOCK_C)
    p2_c, p3_c, p4_c = _central_power_sums(onehot, v_c, mean_c)
    p2_r, p3_r, p4_r = _central_power_sums(onehot, v_r, mean_r)
    return s2_c + p2_c, s3_c + p3_c, s4_c + p4_c, s2_r + p2_r, s3_r + p3_r, s4_r + p4_r


@triton.jit
def _store_pair_moments(
    moments_ptr, counts_ptr, count, inv_n, mean_c, mean_r, s2_c, s3_c, s4_c, s2_r, s3_r, s4_r, stray,
    C, BLOCK_C: tl.constexpr, VARIANCE_FLOOR: tl.constexpr,
):  # fmt: skip
    """After pass 2 of a forward: moments[c, 0 | 1, :] of both columns and counts[c] (int64), for c < C;
    every moment NaN if any of `stray` ([BLOCK_B] sums of _stray_rows) is not 0."""
    poison = tl.where(tl.sum(stray, axis=0) > 0, float("nan"), 0.0)
    _store_moments(moments_ptr, 0, mean_c, s2_c * inv_n, s3_c * inv_n, s4_c * inv_n, poison, C, BLOCK_C, VARIANCE_FLOOR)
    _store_moments(moments_ptr, 1, mean_r, s2_r * inv_n, s3_r * inv_n, s4_r * inv_n, poison, C, BLOCK_C, VARIANCE_FLOOR)
    cols = tl.arange(0, BLOCK_C)
    tl.store(counts_ptr + cols, count.to(tl.int64), mask=cols < C)
