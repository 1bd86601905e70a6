"""Distances between the rewards of two groups, and between rewards and categories (GUARD B.1, section 3 of
the design): the two-sample Kolmogorov-Smirnov statistic with its exact or asymptotic p-value, Wasserstein-1,
equal-width binned mutual information, the mean-reward parity gap and its relative drop.

    from guard import metrics
    d, p = metrics.ks_distance(rewards_a, rewards_b)
    mi = metrics.binned_mutual_information(rewards, categories, bins=50)

Tests: tests/test_metrics.py (scipy and scikit-learn as oracles).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from guard.metrics.checks import _as_float, _as_labels, _check_int, _check_same_length, _encode

#: Largest ``len(a) * len(b)`` for which :func:`ks_distance` computes the exact
#: p-value; above it the asymptotic Kolmogorov distribution is used.
KS_EXACT_MAX_PRODUCT = 100_000


def _kolmogorov_sf(lam: float) -> float:
    """Survival function Q(lam) of the Kolmogorov distribution.

    Q(lam) = 2 * sum_{k>=1} (-1)^(k-1) exp(-2 k^2 lam^2).  That alternating
    series converges slowly for small lam, so for lam < 1 the equivalent
    (Jacobi theta) form
    Q(lam) = 1 - sqrt(2 pi)/lam * sum_{k>=1} exp(-(2k-1)^2 pi^2 / (8 lam^2))
    is used; it evaluates to exactly 1.0 for tiny lam.  Clipped to [0, 1].
    """
    if lam <= 0.0:
        return 1.0
    if lam < 1.0:
        k = np.arange(1, 21, dtype=np.float64)
        s = np.exp(-((2.0 * k - 1.0) ** 2) * math.pi**2 / (8.0 * lam * lam)).sum()
        q = 1.0 - math.sqrt(2.0 * math.pi) / lam * s
    else:
        k = np.arange(1, 101, dtype=np.float64)
        signs = np.where(k % 2 == 1, 1.0, -1.0)
        q = 2.0 * float(np.sum(signs * np.exp(-2.0 * k * k * lam * lam)))
    return float(min(1.0, max(0.0, q)))


def _ks_exact_pvalue(m: int, n: int, h: int) -> float:
    """Exact two-sided p-value P(D >= h / (m n)) under H0 (no ties).

    Lattice paths from (0, 0) to (m, n) with unit steps are equally likely.
    A path stays "inside" iff every visited point satisfies
    |i n - j m| < h.  With P(i, j) = (#inside paths to (i, j)) / C(i + j, i),
    P(i, j) = P(i-1, j) * i / (i + j) + P(i, j-1) * j / (i + j)
    on inside points (0 elsewhere) and P(0, 0) = 1; the p-value is
    1 - P(m, n).  Evaluated one anti-diagonal (i + j = s) at a time.
    """
    if h <= 0:
        return 1.0
    if m > n:  # symmetric; keep the vector short
        m, n = n, m
    i = np.arange(m + 1, dtype=np.int64)
    cur = np.zeros(m + 1, dtype=np.float64)
    cur[0] = 1.0  # (0, 0) is always inside since h > 0
    fi = i.astype(np.float64)
    for s in range(1, m + n + 1):
        j = s - i
        valid = (j >= 0) & (j <= n)
        inside = valid & (np.abs(i * n - j * m) < h)
        nxt = cur * (j.astype(np.float64) / s)  # from (i, j-1): cur[i]
        nxt[1:] += cur[:-1] * (fi[1:] / s)  # from (i-1, j): cur[i-1]
        nxt[~inside] = 0.0
        cur = nxt
    return float(min(1.0, max(0.0, 1.0 - cur[m])))


def ks_distance(a: Any, b: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and two-sided p-value.

    D = sup_x |F_a(x) - F_b(x)|, with F the right-continuous empirical CDFs,
    evaluated at every pooled sample point (so ties are handled exactly as in
    ``scipy.stats.ks_2samp``).

    p-value (m = len(a), n = len(b)):

    * ``m * n <= 100_000`` (``KS_EXACT_MAX_PRODUCT``): exact, by lattice-path
      dynamic programming in probabilities: with h = round(D m n) a path
      (i, j) from (0, 0) to (m, n) stays inside iff |i n - j m| < h;
      p = 1 - P(inside), clipped to [0, 1].  Matches
      ``ks_2samp(a, b, method='exact')``.
    * otherwise: asymptotic Kolmogorov, p = Q(sqrt(m n / (m + n)) * D) with
      Q(lam) = 2 sum_{k>=1} (-1)^(k-1) exp(-2 k^2 lam^2) (see
      ``_kolmogorov_sf``), i.e. ``scipy.stats.kstwobign.sf``.

    Returns ``(D, p)`` as Python floats.
    """
    xa = np.sort(_as_float(a, "a"))
    xb = np.sort(_as_float(b, "b"))
    m, n = xa.shape[0], xb.shape[0]
    pooled = np.concatenate([xa, xb])
    fa = np.searchsorted(xa, pooled, side="right") / m
    fb = np.searchsorted(xb, pooled, side="right") / n
    d = float(np.max(np.abs(fa - fb)))
    if m * n <= KS_EXACT_MAX_PRODUCT:
        h = int(round(d * m * n))
        p = _ks_exact_pvalue(m, n, h)
    else:
        p = _kolmogorov_sf(math.sqrt(m * n / (m + n)) * d)
    return d, p


def wasserstein1(a: Any, b: Any) -> float:
    """1-D Wasserstein-1 (earth mover's) distance between empirical distributions.

    W1 = integral |F_a(x) - F_b(x)| dx, computed exactly: sort the pooled
    sample x_(0) <= ... <= x_(m+n-1); between consecutive pooled points both
    CDFs are constant, so W1 = sum_k |F_a(x_(k)) - F_b(x_(k))| (x_(k+1) - x_(k)).
    """
    xa = np.sort(_as_float(a, "a"))
    xb = np.sort(_as_float(b, "b"))
    pooled = np.sort(np.concatenate([xa, xb]))
    widths = np.diff(pooled)
    left = pooled[:-1]
    fa = np.searchsorted(xa, left, side="right") / xa.shape[0]
    fb = np.searchsorted(xb, left, side="right") / xb.shape[0]
    return float(np.sum(np.abs(fa - fb) * widths))


def bin_labels(values: Any, bins: int = 50) -> np.ndarray:
    """Equal-width bin index of each value (int64 array, same length).

    Edges are ``np.linspace(min, max, bins + 1)``; the label of v is
    ``searchsorted(edges, v, side='right') - 1`` clipped to [0, bins - 1], so
    bins are [e_k, e_{k+1}) except the last one, which is closed and holds
    the maximum.  If all values are equal every label is 0.
    """
    bins = _check_int(bins, "bins", 1)
    x = _as_float(values, "values")
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        return np.zeros(x.shape[0], dtype=np.int64)
    edges = np.linspace(lo, hi, bins + 1)
    lab = np.searchsorted(edges, x, side="right") - 1
    return np.clip(lab, 0, bins - 1).astype(np.int64)


def binned_mutual_information(rewards: Any, categories: Any, bins: int = 50) -> float:
    """Mutual information (nats) between binned rewards and categories.

    B = bin_labels(rewards, bins), C = categories (any hashable labels).
    From the contingency table with joint frequencies p(b, c):
    MI = sum_{b,c: p(b,c) > 0} p(b, c) log(p(b, c) / (p(b) p(c))).
    0 means the binned reward carries no information about the category
    (note the plug-in estimate is biased upwards by roughly
    (B_used - 1)(C - 1) / (2 N) for independent data).
    """
    bins = _check_int(bins, "bins", 1)
    r = _as_float(rewards, "rewards")
    cats = _as_labels(categories, "categories")
    _check_same_length(r, cats, "rewards", "categories")
    b = bin_labels(r, bins)
    c, classes = _encode(cats)
    n = r.shape[0]
    table = np.zeros((bins, len(classes)), dtype=np.float64)
    np.add.at(table, (b, c), 1.0)
    pbc = table / n
    pb = pbc.sum(axis=1, keepdims=True)
    pc = pbc.sum(axis=0, keepdims=True)
    nz = pbc > 0
    mi = float(np.sum(pbc[nz] * (np.log(pbc[nz]) - np.log((pb @ pc)[nz]))))
    return max(mi, 0.0)


def parity_gap(rewards_a: Any, rewards_b: Any) -> float:
    """Mean-reward parity gap (GUARD B.1): |mean(rewards_a) - mean(rewards_b)|."""
    a = _as_float(rewards_a, "rewards_a")
    b = _as_float(rewards_b, "rewards_b")
    return float(abs(a.mean() - b.mean()))


def relative_drop(gap: float, baseline_gap: float) -> float:
    """Relative change of a gap against a baseline, in percent.

    (gap - baseline_gap) / baseline_gap * 100.  Negative means the gap shrank
    (e.g. 0.4001 vs baseline 0.4814 gives -16.9).  ValueError if
    baseline_gap == 0 or either value is not finite.
    """
    g = float(gap)
    base = float(baseline_gap)
    if not math.isfinite(g):
        raise ValueError(f"gap must be finite, got {gap!r}")
    if not math.isfinite(base):
        raise ValueError(f"baseline_gap must be finite, got {baseline_gap!r}")
    if base == 0.0:
        raise ValueError("baseline_gap must be non-zero (relative drop is undefined)")
    return (g - base) / base * 100.0
