"""Tests for the evaluation statistics of issue 8: guard.metrics.permutation_pvalue, mcnemar, bias_rate,
semantic_diversity, paired_bootstrap_diversity and guard.audit.category_distances.

References are direct float64 recomputations with the documented random draws; statsmodels (McNemar) is a
test-only oracle.  The "known answers" tests check the issue's must-show cases against theory."""

import itertools
import math

import numpy as np
import pytest
import torch
from guard import audit, metrics


def _direct_permutation_pvalue(a, b, statistic, n_permutations, seed):
    """The documented draws, one statistic call per draw, all in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m = a.shape[0]
    pooled = np.concatenate([a, b])
    observed = float(statistic(a, b))
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(n_permutations):
        perm = rng.permutation(pooled.shape[0])
        if float(statistic(pooled[perm[:m]], pooled[perm[m:]])) >= observed - 1e-12 * max(1.0, abs(observed)):
            count += 1
    return (1 + count) / (1 + n_permutations)


def _abs_mean_diff(a, b):
    return abs(float(np.mean(a)) - float(np.mean(b)))


# ---------------------------------------------------------------------------
# permutation_pvalue
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("m,n,ties", [(1, 1, False), (1, 9, False), (8, 1, False), (7, 12, False), (30, 30, False),
                                      (12, 25, True), (1, 15, True)])
def test_permutation_pvalue_matches_direct_draws(m, n, ties):
    rng = np.random.default_rng(1000 * m + n + ties)
    a = rng.normal(size=m)
    b = rng.normal(0.3, 1.5, size=n)
    if ties:
        a, b = np.round(a), np.round(b)
    seed = int(rng.integers(0, 2**31))
    expected = _direct_permutation_pvalue(a, b, metrics.wasserstein1, 300, seed)
    assert metrics.permutation_pvalue(a, b, n_permutations=300, seed=seed) == expected
    # the same draws through the plain per-draw loop (a custom callable)
    loop = metrics.permutation_pvalue(a, b, statistic=lambda x, y: metrics.wasserstein1(x, y),
                                      n_permutations=300, seed=seed)
    assert loop == expected
    # lists and tensors are accepted
    assert metrics.permutation_pvalue(a.tolist(), torch.tensor(b), n_permutations=300, seed=seed) == expected


@pytest.mark.parametrize("ties", [False, True])
def test_permutation_pvalue_custom_statistic(ties):
    rng = np.random.default_rng(7 + ties)
    a = rng.normal(size=9)
    b = rng.normal(0.5, size=14)
    if ties:
        a, b = np.round(a * 2), np.round(b * 2)
    expected = _direct_permutation_pvalue(a, b, _abs_mean_diff, 400, 3)
    got = metrics.permutation_pvalue(a, b, statistic=_abs_mean_diff, n_permutations=400, seed=3)
    assert got == expected
    # a different statistic on the same draws gives a different test
    assert got != metrics.permutation_pvalue(a, b, n_permutations=400, seed=3) or ties


@pytest.mark.parametrize("m,n,ties", [(1, 1, False), (1, 40, False), (37, 1, True), (50, 80, False), (60, 60, True)])
def test_vectorized_w1_equals_per_draw(m, n, ties):
    rng = np.random.default_rng(m * 31 + n)
    pooled = rng.standard_t(3, size=m + n) * 10
    if ties:
        pooled = np.round(pooled)
    perms = np.stack([rng.permutation(m + n) for _ in range(64)])
    fast = metrics._w1_permuted(pooled, m, perms)
    direct = np.array([metrics.wasserstein1(pooled[p[:m]], pooled[p[m:]]) for p in perms])
    np.testing.assert_allclose(fast, direct, rtol=1e-12, atol=1e-12)


def test_permutation_pvalue_uniform_under_null():
    rng = np.random.default_rng(2024)
    reps, n_perm = 200, 199
    p = np.array([
        metrics.permutation_pvalue(rng.normal(size=15), rng.normal(size=15), n_permutations=n_perm, seed=r)
        for r in range(reps)
    ])
    assert p.min() >= 1 / (1 + n_perm) and p.max() <= 1.0
    # P(p <= 0.05) = 0.05 exactly under H0 (continuous data, 199 permutations); 4 binomial sds
    sd = math.sqrt(0.05 * 0.95 / reps)
    assert abs(np.mean(p <= 0.05) - 0.05) < 4 * sd
    # uniform on [0, 1]: mean 1/2, sd 1/sqrt(12)
    assert abs(p.mean() - 0.5) < 4 / math.sqrt(12 * reps)


def test_permutation_pvalue_big_shift_is_minimal():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=40), rng.normal(8.0, size=35)
    assert metrics.permutation_pvalue(a, b, n_permutations=500, seed=1) == 1 / 501
    assert metrics.permutation_pvalue(a, b, statistic=_abs_mean_diff, n_permutations=100) == 1 / 101
    # identical samples: every draw ties the observed statistic (0) -> p = 1
    c = rng.normal(size=10)
    assert metrics.permutation_pvalue(c, c, n_permutations=50) == 1.0


def test_permutation_pvalue_validation():
    a = [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="n_permutations"):
        metrics.permutation_pvalue(a, a, n_permutations=0)
    with pytest.raises(ValueError, match="seed"):
        metrics.permutation_pvalue(a, a, seed=-1)
    with pytest.raises(ValueError, match="a is empty"):
        metrics.permutation_pvalue([], a)
    with pytest.raises(ValueError, match="b contains NaN"):
        metrics.permutation_pvalue(a, [1.0, float("nan")])
    with pytest.raises(ValueError, match="statistic"):
        metrics.permutation_pvalue(a, a, statistic="w1")
    with pytest.raises(ValueError, match="statistic"):
        metrics.permutation_pvalue(a, a, statistic=lambda x, y: float("inf"))


# ---------------------------------------------------------------------------
# mcnemar
# ---------------------------------------------------------------------------


def _paired_from_table(n11, n10, n01, n00, rng):
    a = np.array([1] * n11 + [1] * n10 + [0] * n01 + [0] * n00, dtype=bool)
    b = np.array([1] * n11 + [0] * n10 + [1] * n01 + [0] * n00, dtype=bool)
    order = rng.permutation(a.shape[0])
    return a[order], b[order]


def _tables():
    rng = np.random.default_rng(11)
    tables = [tuple(int(v) for v in rng.integers(0, 40, size=4)) for _ in range(25)]
    tables += [(5, 7, 7, 3), (0, 12, 12, 0), (3, 1, 0, 2), (0, 0, 1, 0), (4, 0, 9, 1)]  # n01 == n10, zero sides
    tables += [(100, 2400, 2600, 50), (10, 2000, 3000, 20), (0, 4990, 5010, 0), (1, 0, 5000, 1)]  # large counts
    return tables


@pytest.mark.parametrize("exact,correction", [(True, True), (False, True), (False, False)])
def test_mcnemar_matches_statsmodels(exact, correction):
    from statsmodels.stats import contingency_tables as sm

    rng = np.random.default_rng(3)
    for n11, n10, n01, n00 in _tables():
        a, b = _paired_from_table(n11, n10, n01, n00, rng)
        got = metrics.mcnemar(a, b, exact=exact, correction=correction)
        ref = sm.mcnemar(np.array([[n11, n10], [n01, n00]]), exact=exact, correction=correction)
        assert (got["n01"], got["n10"], got["exact"]) == (n01, n10, exact)
        assert got["statistic"] == pytest.approx(float(ref.statistic), rel=1e-10, abs=0)
        assert got["pvalue"] == pytest.approx(float(ref.pvalue), rel=1e-10, abs=1e-300)


def test_mcnemar_exact_binomial_direct():
    # independent reference: the exact binomial sum with fractions
    from fractions import Fraction

    rng = np.random.default_rng(8)
    for _ in range(30):
        n01, n10 = (int(v) for v in rng.integers(0, 300, size=2))
        a, b = _paired_from_table(3, n10, n01, 2, rng)
        k, nd = min(n01, n10), n01 + n10
        ref = min(Fraction(1), 2 * Fraction(sum(math.comb(nd, j) for j in range(k + 1)), 2**nd))
        got = metrics.mcnemar(a, b)
        assert got["statistic"] == k
        assert got["pvalue"] == float(ref)
    # a big table stays fast and finite: 2 P(X <= 49000), X ~ Bin(99500, 1/2) (z ~ -4.75)
    a, b = _paired_from_table(0, 49000, 50500, 0, rng)
    p = metrics.mcnemar(a, b)["pvalue"]
    assert 1e-6 < p < 1e-5


def test_mcnemar_no_discordant_pairs():
    a = [True, False, True, True]
    for exact in (True, False):
        for correction in (True, False):
            got = metrics.mcnemar(a, a, exact=exact, correction=correction)
            assert got == {"n01": 0, "n10": 0, "statistic": 0.0, "pvalue": 1.0, "exact": exact}


def test_mcnemar_chi2_formula():
    a, b = _paired_from_table(4, 30, 12, 6, np.random.default_rng(0))
    got = metrics.mcnemar(a, b, exact=False, correction=True)
    stat = (abs(12 - 30) - 1) ** 2 / 42
    assert got["statistic"] == pytest.approx(stat, rel=1e-15)
    assert got["pvalue"] == pytest.approx(math.erfc(math.sqrt(stat / 2)), rel=1e-15)


def test_mcnemar_input_forms_and_validation():
    ref = metrics.mcnemar([True, False, True, False, True], [False, True, True, True, False])
    assert (ref["n01"], ref["n10"]) == (2, 2)
    assert metrics.mcnemar([1, 0, 1, 0, 1], [0.0, 1.0, 1.0, 1.0, 0.0]) == ref
    assert metrics.mcnemar(torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool), np.array([0, 1, 1, 1, 0])) == ref
    with pytest.raises(ValueError, match=r"a must hold booleans or 0/1 \(row 3"):
        metrics.mcnemar([1, 0, 1, 2], [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"b must hold booleans or 0/1 \(row 1"):
        metrics.mcnemar([1, 0], [1, 0.5])
    with pytest.raises(ValueError, match=r"b .*row 0"):
        metrics.mcnemar([1, 0], [float("nan"), 1])
    with pytest.raises(ValueError, match=r"a .*row 1"):
        metrics.mcnemar([1, "yes"], [1, 1])
    with pytest.raises(ValueError, match="same length"):
        metrics.mcnemar([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="a is empty"):
        metrics.mcnemar([], [])
    with pytest.raises(ValueError, match="1-D"):
        metrics.mcnemar([[1, 0]], [[1, 0]])


# ---------------------------------------------------------------------------
# bias_rate
# ---------------------------------------------------------------------------


def test_bias_rate_formula():
    rng = np.random.default_rng(21)
    for n in (1, 2, 17, 1000):
        x = rng.random(n) < rng.random()
        p, se = metrics.bias_rate(x)
        k = int(x.sum())
        assert p == k / n
        assert se == pytest.approx(math.sqrt((k / n) * (1 - k / n) / n), rel=1e-15, abs=0)
    assert metrics.bias_rate([True, True, True]) == (1.0, 0.0)
    assert metrics.bias_rate([1, 0, 0, 1]) == (0.5, 0.25)


def test_bias_rate_validation():
    with pytest.raises(ValueError, match="prefers is empty"):
        metrics.bias_rate([])
    with pytest.raises(ValueError, match=r"prefers must hold booleans or 0/1 \(row 2"):
        metrics.bias_rate([1, 0, -1])


# ---------------------------------------------------------------------------
# semantic_diversity
# ---------------------------------------------------------------------------


def _direct_semdiv(e):
    e = np.asarray(e, dtype=np.float64)
    n = e.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            total += 1.0 - float(e[i] @ e[j]) / (math.sqrt(float(e[i] @ e[i])) * math.sqrt(float(e[j] @ e[j])))
    return 2.0 * total / (n * (n - 1))


def test_semantic_diversity_matches_double_loop():
    rng = np.random.default_rng(4)
    for n, d in ((2, 3), (5, 1), (40, 16), (25, 300)):
        e = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0, size=(n, 1)) + rng.normal(size=d)
        assert metrics.semantic_diversity(e) == pytest.approx(_direct_semdiv(e), rel=1e-12, abs=1e-13)
    e = rng.normal(size=(6, 5)).astype(np.float32)
    assert metrics.semantic_diversity(torch.from_numpy(e)) == pytest.approx(_direct_semdiv(e), rel=1e-12)


def test_semantic_diversity_known_values():
    rng = np.random.default_rng(6)
    v = rng.normal(size=12)
    same = v[None, :] * rng.uniform(0.5, 3.0, size=(9, 1))  # identical directions, different norms
    assert metrics.semantic_diversity(same) == pytest.approx(0.0, abs=1e-14)
    ortho = np.diag(rng.uniform(0.5, 3.0, size=7))
    assert metrics.semantic_diversity(ortho) == pytest.approx(1.0, abs=1e-14)
    assert metrics.semantic_diversity(np.stack([v, -2 * v])) == pytest.approx(2.0, abs=1e-14)


def test_semantic_diversity_validation():
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.semantic_diversity([[1.0, 2.0]])
    with pytest.raises(ValueError, match="embeddings row 2 is all zeros"):
        metrics.semantic_diversity([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="embeddings contains NaN"):
        metrics.semantic_diversity([[1.0, 0.0], [float("nan"), 1.0]])
    with pytest.raises(ValueError, match="embeddings"):
        metrics.semantic_diversity(np.ones((2, 2, 2)))


# ---------------------------------------------------------------------------
# paired_bootstrap_diversity
# ---------------------------------------------------------------------------


def _direct_bootstrap(e, f, n_resamples, seed, confidence):
    """Documented draws; statistic = mean of 1 - cos over pairs i < j of draws from different prompts."""

    def cos_matrix(x):
        x = np.asarray(x, dtype=np.float64)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return x @ x.T

    ce, cf = cos_matrix(e), cos_matrix(f)
    n = ce.shape[0]

    def div(c, idx):
        total, count = 0.0, 0
        for i in range(n):
            for j in range(i + 1, n):
                if idx[i] != idx[j]:
                    total += 1.0 - c[idx[i], idx[j]]
                    count += 1
        return total / count if count else 0.0

    ident = np.arange(n)
    delta = div(ce, ident) - div(cf, ident)
    rng = np.random.default_rng(seed)
    stars = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        stars.append(div(ce, idx) - div(cf, idx))
    stars = np.array(stars)
    lo, hi = np.quantile(stars, [(1 - confidence) / 2, (1 + confidence) / 2])
    p = (1 + np.sum(np.abs(stars - delta) >= abs(delta))) / (1 + n_resamples)
    return div(ce, ident), div(cf, ident), delta, lo, hi, p


@pytest.mark.parametrize("n,d1,d2,confidence", [(3, 4, 4, 0.95), (12, 8, 5, 0.9), (20, 6, 30, 0.99)])
def test_paired_bootstrap_matches_direct_draws(n, d1, d2, confidence):
    rng = np.random.default_rng(n * 100 + d1)
    e = rng.normal(size=(n, d1)) + 0.5
    f = rng.normal(size=(n, d2)) * rng.uniform(0.2, 5.0, size=(n, 1))
    seed = int(rng.integers(0, 1000))
    got = metrics.paired_bootstrap_diversity(e, f, n_resamples=60, seed=seed, confidence=confidence)
    div, base, delta, lo, hi, p = _direct_bootstrap(e, f, 60, seed, confidence)
    assert got["n"] == n and got["n_resamples"] == 60
    for key, ref in (("diversity", div), ("baseline_diversity", base), ("difference", delta),
                     ("ci_low", lo), ("ci_high", hi)):
        assert got[key] == pytest.approx(ref, rel=1e-11, abs=1e-12), key
    assert got["pvalue"] == p
    assert got["diversity"] == pytest.approx(metrics.semantic_diversity(e), abs=1e-15)


def test_paired_bootstrap_identical_models():
    rng = np.random.default_rng(9)
    e = rng.normal(size=(30, 10))
    got = metrics.paired_bootstrap_diversity(e, e.copy(), n_resamples=100, seed=2)
    assert got["difference"] == 0.0
    assert (got["ci_low"], got["ci_high"]) == (0.0, 0.0)
    assert got["pvalue"] == 1.0


def test_paired_bootstrap_less_diverse_model():
    rng = np.random.default_rng(10)
    n, b = 200, 300
    center = rng.normal(size=32)
    clustered = center + 0.1 * rng.normal(size=(n, 32))  # all responses nearly the same direction
    diverse = rng.normal(size=(n, 48))
    got = metrics.paired_bootstrap_diversity(clustered, diverse, n_resamples=b, seed=0)
    assert got["difference"] < -0.5
    assert got["ci_low"] <= got["difference"] <= got["ci_high"] < 0
    assert got["pvalue"] == 1 / (1 + b)
    flipped = metrics.paired_bootstrap_diversity(diverse, clustered, n_resamples=b, seed=0)
    assert flipped["difference"] == pytest.approx(-got["difference"], abs=1e-15)
    assert 0 < flipped["ci_low"] and flipped["pvalue"] == 1 / (1 + b)


def test_paired_bootstrap_validation():
    e = np.eye(3)
    with pytest.raises(ValueError, match="same number of rows"):
        metrics.paired_bootstrap_diversity(e, np.eye(4))
    with pytest.raises(ValueError, match="baseline_embeddings row 1 is all zeros"):
        metrics.paired_bootstrap_diversity(e, [[1.0], [0.0], [2.0]])
    with pytest.raises(ValueError, match="n_resamples"):
        metrics.paired_bootstrap_diversity(e, e, n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        metrics.paired_bootstrap_diversity(e, e, confidence=1.0)
    with pytest.raises(ValueError, match="seed"):
        metrics.paired_bootstrap_diversity(e, e, seed=-3)


# ---------------------------------------------------------------------------
# known answers (the "must show") and category_distances
# ---------------------------------------------------------------------------


def _phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_identical_distributions_give_near_zero_distances():
    rng = np.random.default_rng(12345)
    n = 20_000
    a, b = rng.normal(size=n), rng.normal(size=n)
    ks, _ = metrics.ks_distance(a, b)
    # sqrt(n m / (n + m)) KS ~ Kolmogorov: P(> 1.95) ~ 1e-3
    assert ks < 1.95 * math.sqrt(2 / n)
    # W1 ~ sqrt(1/m + 1/n) * int E|bridge(Phi(x))| dx ~ 0.01 here; 5x margin
    assert metrics.wasserstein1(a, b) < 5 * math.sqrt(2 / n)
    bins = 50
    mi = metrics.binned_mutual_information(np.concatenate([a, b]), np.repeat([0, 1], n), bins=bins)
    bias = (bins - 1) * (2 - 1) / (2 * 2 * n)  # (bins - 1)(C - 1) / (2 N), N = 2n
    # 2 N MI ~ chi2 with (bins - 1)(C - 1) = 49 dof (mean 49, sd ~ 10): 3x the mean is > 9 sds
    assert 0 <= mi < 3 * bias


@pytest.mark.parametrize("delta", [0.5, 1.0])
def test_shifted_normals_known_answers(delta):
    rng = np.random.default_rng(int(delta * 10))
    n = 20_000
    a, b = rng.normal(size=n), rng.normal(delta, 1.0, size=n)
    ks, p = metrics.ks_distance(a, b)
    # |KS_hat - KS| <= sup|F_a_hat - F_a| + sup|F_b_hat - F_b|, each < 1.95 / sqrt(n) w.p. ~0.999
    assert ks == pytest.approx(2 * _phi(delta / 2) - 1, abs=2 * 1.95 / math.sqrt(n))
    assert p < 1e-12
    # W1(N(0,1), N(delta,1)) = delta; sampling error ~ sqrt(2/n) ~ 0.01
    assert metrics.wasserstein1(a, b) == pytest.approx(delta, abs=5 * math.sqrt(2 / n))


def _row_seed(seed, r):
    return int(np.random.SeedSequence([seed, r]).generate_state(1)[0])


def test_category_distances_rows_and_numbers():
    rng = np.random.default_rng(77)
    groups = {
        "violence": rng.normal(0.5, 1.0, size=30),
        "fraud": torch.tensor(rng.normal(size=25)),
        "privacy": rng.normal(size=12).tolist(),
        "lonely": [1.5],  # fewer than 2 rewards: left out
    }
    rows = audit.category_distances(groups, permutations=99, seed=4)
    names = ["fraud", "privacy", "violence"]
    arrays = {k: np.asarray(groups[k], dtype=np.float64) for k in names}
    expected_pairs = [(a, b) for a, b in itertools.combinations(names, 2)] + [(a, "rest") for a in names]
    assert [(r["a"], r["b"]) for r in rows] == expected_pairs
    for i, row in enumerate(rows):
        assert set(row) == {"kind", "a", "b", "n_a", "n_b", "ks", "ks_pvalue", "w1", "w1_pvalue"}
        assert row["kind"] == ("rest" if i >= 3 else "pair")
        xa = arrays[row["a"]]
        if row["b"] == "rest":
            xb = np.concatenate([arrays[k] for k in names if k != row["a"]])
        else:
            xb = arrays[row["b"]]
        assert (row["n_a"], row["n_b"]) == (xa.shape[0], xb.shape[0])
        assert (row["ks"], row["ks_pvalue"]) == metrics.ks_distance(xa, xb)
        assert row["w1"] == metrics.wasserstein1(xa, xb)
        assert row["w1_pvalue"] == _direct_permutation_pvalue(xa, xb, metrics.wasserstein1, 99, _row_seed(4, i))
    # the pair rows carry exactly pairwise_distances' numbers
    old = audit.pairwise_distances(groups)
    assert [{k: r[k] for k in ("a", "b", "ks", "ks_pvalue", "w1")} for r in rows[:3]] == old
    # deterministic, and the seed matters
    assert audit.category_distances(groups, permutations=99, seed=4) == rows
    other = audit.category_distances(groups, permutations=99, seed=5)
    assert [r["w1_pvalue"] for r in other] != [r["w1_pvalue"] for r in rows]


def test_category_distances_two_categories_and_no_permutations():
    rng = np.random.default_rng(78)
    groups = {"harmless": rng.normal(size=20), "helpful": rng.normal(1.0, size=15)}
    rows = audit.category_distances(groups, permutations=50, seed=0)
    assert [(r["a"], r["b"]) for r in rows] == [("harmless", "helpful")]
    assert rows[0]["w1_pvalue"] == _direct_permutation_pvalue(
        groups["harmless"], groups["helpful"], metrics.wasserstein1, 50, _row_seed(0, 0))
    none = audit.category_distances({**groups, "x": rng.normal(size=4)}, permutations=0)
    assert len(none) == 3 + 3 and all(r["w1_pvalue"] is None for r in none)
    assert audit.category_distances({"only": [1.0, 2.0], "tiny": [3.0]}) == []
    with pytest.raises(ValueError, match="permutations"):
        audit.category_distances(groups, permutations=-1)
    with pytest.raises(ValueError, match="seed"):
        audit.category_distances(groups, seed=1.5)
    with pytest.raises(ValueError, match="rewards of 'helpful'"):
        audit.category_distances({"harmless": [1.0, 2.0], "helpful": [1.0, float("inf")]})
