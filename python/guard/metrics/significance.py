"""Significance tests for evaluations: the two-sample permutation p-value (W1 by default, all permutations of a
chunk at once), McNemar's test of two models on the same items (exact binomial or chi-squared), and the bias rate
of stereotype preferences with its standard error.

    from guard import metrics
    p = metrics.permutation_pvalue(rewards_a, rewards_b, n_permutations=1000, seed=0)
    test = metrics.mcnemar(model_a_correct, model_b_correct)

Tests: tests/test_eval_stats.py (scipy and statsmodels as oracles).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from guard.metrics.checks import _as_binary, _as_float, _check_int, _check_same_length
from guard.metrics.distances import wasserstein1


def _chunk_sizes(draws: int, row_size: int, budget: int):
    """Row counts of the chunks that take `draws` rows of `row_size` values each, at most about `budget` values
    (and at least one row) per chunk: the random draws stay in order while memory stays bounded."""
    chunk = max(1, min(draws, budget // row_size))
    for start in range(0, draws, chunk):
        yield min(chunk, draws - start)


def _w1_permuted(pooled: np.ndarray, m: int, perms: np.ndarray) -> np.ndarray:
    """W1(pooled[perm[:m]], pooled[perm[m:]]) for every row ``perm`` of ``perms`` at once.

    The pooled sample is sorted once (s_0 <= ... <= s_{N-1}, widths w_k = s_{k+1} - s_k).
    For one permutation let A_k be the number of its first-group members among
    the sorted positions 0..k; then F_a(s_k) = A_k / m and F_b(s_k) = (k + 1 - A_k) / n
    wherever s_k < s_{k+1} (inside a run of ties the width is 0, so the partial counts
    there do not matter), and W1 = sum_k |F_a(s_k) - F_b(s_k)| w_k
    = sum_k |A_k (1/m + 1/n) - (k + 1) / n| w_k: a cumulative sum along each row
    and one matrix-vector product.
    """
    total = pooled.shape[0]
    n = total - m
    order = np.argsort(pooled, kind="stable")
    rank = np.empty(total, dtype=np.int64)
    rank[order] = np.arange(total)
    widths = np.diff(pooled[order])
    cum = np.zeros((perms.shape[0], total), dtype=np.float64)
    cum[np.arange(perms.shape[0])[:, None], rank[perms[:, :m]]] = 1.0
    np.cumsum(cum, axis=1, out=cum)  # A_k, exact in float64
    cum *= 1.0 / m + 1.0 / n
    cum -= np.arange(1, total + 1, dtype=np.float64) / n
    np.abs(cum, out=cum)
    return cum[:, :-1] @ widths


def permutation_pvalue(
    a: Any,
    b: Any,
    statistic: Any = None,
    n_permutations: int = 1000,
    seed: int = 0,
) -> float:
    """Two-sample permutation test p-value of "a and b come from the same distribution".

    ``statistic(a, b) -> float`` (default :func:`wasserstein1`) is large when the
    samples differ.  With m = len(a), n = len(b), T = statistic(a, b) and
    pooled = concatenate([a, b]) (float64), the draws are exactly::

        rng = np.random.default_rng(seed)
        for _ in range(n_permutations):
            perm = rng.permutation(m + n)
            T_star = statistic(pooled[perm[:m]], pooled[perm[m:]])

    and p = (1 + #{T* >= T - tol}) / (1 + n_permutations) with
    tol = 1e-12 * max(1, |T|) (floating-point ties with T count as extreme), so
    p lies in [1 / (1 + n_permutations), 1].

    For the default statistic the permutations are drawn in chunks into a matrix
    and W1 is computed for all rows at once from one sort of the pooled sample
    (the cumulative counts of each row's first group along the sorted pool), which
    gives the same T* as calling :func:`wasserstein1` per draw (to rounding).  A
    custom ``statistic`` is called once per draw with float64 numpy arrays.
    """
    x = _as_float(a, "a")
    y = _as_float(b, "b")
    n_permutations = _check_int(n_permutations, "n_permutations", 1)
    seed = _check_int(seed, "seed", 0)
    if statistic is not None and not callable(statistic):
        raise ValueError(f"statistic must be callable or None, got {statistic!r}")
    fast = statistic is None or statistic is wasserstein1
    stat = wasserstein1 if statistic is None else statistic
    observed = float(stat(x, y))
    if not math.isfinite(observed):
        raise ValueError(f"statistic(a, b) must be finite, got {observed!r}")
    m, total = x.shape[0], x.shape[0] + y.shape[0]
    pooled = np.concatenate([x, y])
    threshold = observed - 1e-12 * max(1.0, abs(observed))
    rng = np.random.default_rng(seed)
    extreme = 0
    if fast:
        for rows in _chunk_sizes(n_permutations, total, 1 << 21):
            perms = np.empty((rows, total), dtype=np.int64)
            for r in range(rows):
                perms[r] = rng.permutation(total)
            extreme += int(np.count_nonzero(_w1_permuted(pooled, m, perms) >= threshold))
    else:
        for _ in range(n_permutations):
            perm = rng.permutation(total)
            value = float(stat(pooled[perm[:m]], pooled[perm[m:]]))
            if value >= threshold:
                extreme += 1
    return (1 + extreme) / (1 + n_permutations)


def _binom_half_cdf_times2(k: int, n: int) -> float:
    """min(1, 2 * P(X <= k)) for X ~ Binomial(n, 1/2), correctly rounded up to ~1e-18.

    Exact integer arithmetic: S = sum_{j <= k} C(n, j), summed downwards from
    C(n, k) (math.comb) with C(n, j - 1) = C(n, j) j / (n - j + 1); for k <= n / 2
    the terms decrease, and the sum stops once the remaining (at most n) terms are
    below 2^-64 of S.  Then 2 S / 2^n is one correctly rounded int division.
    """
    if 2 * k >= n:
        return 1.0  # 2 P(X <= k) >= 1 by symmetry
    term = math.comb(n, k)
    total = term
    j = k
    while j > 0:
        term = term * j // (n - j + 1)
        j -= 1
        total += term
        if (term * (j + 1)) << 64 < total:  # remaining j terms, each <= term
            break
    return min(1.0, total / (1 << (n - 1)))


def mcnemar(a: Any, b: Any, exact: bool = True, correction: bool = True) -> dict[str, Any]:
    """McNemar's test of equal accuracy for two models on the same items.

    ``a[i]``, ``b[i]``: whether model A / model B got item i right (booleans or
    0/1, same length).  n01 = #(a false, b true), n10 = #(a true, b false), and the
    discordant count n_d = n01 + n10.

    * exact: statistic = min(n01, n10) and
      p = min(1, 2 * P(X <= statistic)), X ~ Binomial(n_d, 1/2), computed with exact
      integer arithmetic (see ``_binom_half_cdf_times2``).
    * otherwise: statistic = (|n01 - n10| - c)^2 / n_d with c = 1 if ``correction``
      else 0 (not clipped at 0, as in statsmodels: n01 == n10 gives 1 / n_d with the
      correction) and p = P(chi2_1 >= statistic) = erfc(sqrt(statistic / 2)).
    * n_d == 0: statistic 0, p 1.

    Agrees with ``statsmodels.stats.contingency_tables.mcnemar`` on the table
    [[n11, n10], [n01, n00]].  Returns ``{"n01", "n10", "statistic", "pvalue",
    "exact"}`` (counts as int, statistic and p-value as float).
    """
    x = _as_binary(a, "a")
    y = _as_binary(b, "b")
    _check_same_length(x, y, "a", "b")
    exact = bool(exact)
    n01 = int(np.count_nonzero(~x & y))
    n10 = int(np.count_nonzero(x & ~y))
    nd = n01 + n10
    if nd == 0:
        stat, p = 0.0, 1.0
    elif exact:
        k = min(n01, n10)
        stat, p = float(k), _binom_half_cdf_times2(k, nd)
    else:
        corr = 1 if correction else 0
        stat = (abs(n01 - n10) - corr) ** 2 / nd
        p = math.erfc(math.sqrt(stat / 2.0))
    return {"n01": n01, "n10": n10, "statistic": float(stat), "pvalue": float(p), "exact": exact}


def bias_rate(prefers: Any) -> tuple[float, float]:
    """Share of True in ``prefers`` and its standard error.

    ``prefers[i]``: whether the reward model prefers the stereotypical sentence of
    pair i (booleans or 0/1).  Returns (p, sqrt(p (1 - p) / n)); p = 0.5 is neutral.
    """
    x = _as_binary(prefers, "prefers")
    n = x.shape[0]
    p = float(np.count_nonzero(x)) / n
    return p, math.sqrt(p * (1.0 - p) / n)
