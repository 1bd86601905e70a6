"""Semantic diversity of a set of responses (GUARD B.2: mean pairwise cosine distance, in O(n d)), and the paired
bootstrap of the diversity difference between two models on the same prompts (percentile CI and p-value).

    from guard import metrics
    d = metrics.semantic_diversity(embeddings)
    test = metrics.paired_bootstrap_diversity(embeddings, baseline_embeddings, n_resamples=1000, seed=0)

Tests: tests/test_eval_stats.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from guard.metrics.checks import _as_float, _check_int
from guard.metrics.significance import _chunk_sizes


def _unit_rows(embeddings: Any, name: str) -> np.ndarray:
    """float64 [n, d] copy of ``embeddings`` with l2-normalized rows (n >= 2)."""
    e = _as_float(embeddings, name, ndim=2)
    if e.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows (responses), got {e.shape[0]}")
    norms = np.sqrt(np.einsum("ij,ij->i", e, e))
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        raise ValueError(f"{name} row {int(zero[0])} is all zeros (its cosine similarity is undefined)")
    return e / norms[:, None]


def _semdiv_weighted(unit: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """S(w) = w^T D w / (n^2 - sum_k w_k^2) for every row w of ``counts`` [B, n].

    D = 1 - cosine matrix with zero diagonal.  With unit rows u_k, n = sum_k w_k and
    g_k = |u_k|^2 (1 up to rounding): w^T D w = n^2 - |sum_k w_k u_k|^2 - sum_k w_k^2 (1 - g_k).
    S = 0 where the denominator is 0.
    """
    n = counts.sum(axis=1)
    g = np.einsum("ij,ij->i", unit, unit)
    proj = counts @ unit
    sq = counts * counts
    quad = n * n - np.einsum("ij,ij->i", proj, proj) - sq @ (1.0 - g)
    denom = n * n - sq.sum(axis=1)
    out = np.zeros(counts.shape[0], dtype=np.float64)
    ok = denom > 0
    out[ok] = quad[ok] / denom[ok]
    return out


def semantic_diversity(embeddings: Any) -> float:
    """Semantic diversity of a set of responses (GUARD B.2).

    Rows of ``embeddings`` [n, d] (n >= 2) are l2-normalized to e_i and
    SemDiv = 2 / (n (n - 1)) sum_{i<j} (1 - cos(e_i, e_j)),
    computed in O(n d) as (n^2 - |sum_i e_i|^2 - sum_i (1 - |e_i|^2)) / (n (n - 1)).
    0 for identical responses, 1 for mutually orthogonal ones.  ValueError for
    fewer than 2 rows, an all-zero row or NaN/inf.
    """
    unit = _unit_rows(embeddings, "embeddings")
    ones = np.ones((1, unit.shape[0]), dtype=np.float64)
    return float(_semdiv_weighted(unit, ones)[0])


def paired_bootstrap_diversity(
    embeddings: Any,
    baseline_embeddings: Any,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap of the semantic-diversity difference between two models.

    Row i of ``embeddings`` [n, d1] and ``baseline_embeddings`` [n, d2] are the two
    models' responses to prompt i (same n >= 2; dimensions may differ).  The draws
    are exactly::

        rng = np.random.default_rng(seed)
        for _ in range(n_resamples):
            idx = rng.integers(0, n, size=n)   # the same prompts for both models

    On a resample with counts w_k = #(idx == k) the statistic is the diversity over
    pairs of draws with different original prompts,
    S(w) = w^T D w / (n^2 - sum_k w_k^2) (D = 1 - cosine matrix, zero diagonal;
    S = 0 if every draw hit the same prompt); S(1, ..., 1) is
    :func:`semantic_diversity`.  delta = SemDiv(embeddings) - SemDiv(baseline),
    delta*_b = S_model(w_b) - S_baseline(w_b).

    Returns ``{"diversity", "baseline_diversity", "difference" (delta), "ci_low",
    "ci_high", "pvalue", "n", "n_resamples"}``: the CI is the percentile interval
    ``np.quantile(delta*, [(1 - confidence) / 2, (1 + confidence) / 2])``; the
    two-sided p-value shifts the bootstrap distribution to the null,
    p = (1 + #{|delta*_b - delta| >= |delta|}) / (1 + n_resamples).
    """
    u = _unit_rows(embeddings, "embeddings")
    v = _unit_rows(baseline_embeddings, "baseline_embeddings")
    if u.shape[0] != v.shape[0]:
        raise ValueError(
            "embeddings and baseline_embeddings must have the same number of rows (prompts) "
            f"(got {u.shape[0]} and {v.shape[0]})"
        )
    n_resamples = _check_int(n_resamples, "n_resamples", 1)
    seed = _check_int(seed, "seed", 0)
    conf = float(confidence)
    if not (0.0 < conf < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    n = u.shape[0]
    ones = np.ones((1, n), dtype=np.float64)
    div = float(_semdiv_weighted(u, ones)[0])
    base = float(_semdiv_weighted(v, ones)[0])
    delta = div - base

    rng = np.random.default_rng(seed)
    parts = []
    for rows in _chunk_sizes(n_resamples, n, 1 << 20):
        counts = np.empty((rows, n), dtype=np.float64)
        for r in range(rows):
            counts[r] = np.bincount(rng.integers(0, n, size=n), minlength=n)
        parts.append(_semdiv_weighted(u, counts) - _semdiv_weighted(v, counts))
    stars = np.concatenate(parts)
    lo, hi = np.quantile(stars, [(1.0 - conf) / 2.0, (1.0 + conf) / 2.0])
    extreme = int(np.count_nonzero(np.abs(stars - delta) >= abs(delta)))
    return {
        "diversity": div,
        "baseline_diversity": base,
        "difference": float(delta),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "pvalue": (1 + extreme) / (1 + n_resamples),
        "n": int(n),
        "n_resamples": int(n_resamples),
    }
