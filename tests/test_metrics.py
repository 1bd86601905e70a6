"""Tests for guard.metrics (scipy and scikit-learn serve as reference oracles)."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, mutual_info_score, roc_auc_score

from guard import metrics


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# ---------------------------------------------------------------------------
# Kolmogorov-Smirnov
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("m,n", [(7, 11), (30, 30), (40, 25), (1, 6), (3, 3), (12, 200), (250, 400)])
@pytest.mark.parametrize("ties", [False, True])
def test_ks_exact_matches_scipy(m, n, ties):
    rng = np.random.default_rng(1000 * m + n + (1 if ties else 0))
    for rep in range(4):
        a = rng.normal(0.0, 1.0, size=m)
        b = rng.normal(0.4 * rep / 3, 1.0, size=n)
        if ties:
            a = np.round(a * 2) / 2
            b = np.round(b * 2) / 2
        d, p = metrics.ks_distance(a, b)
        ref = stats.ks_2samp(a, b, method="exact")
        assert isinstance(d, float) and isinstance(p, float)
        assert abs(d - ref.statistic) < 1e-12
        assert abs(p - ref.pvalue) < 1e-6
        assert 0.0 <= p <= 1.0


def _brute_force_ks_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """P(D >= d_obs) over all equally likely ways to split the pooled sample
    (ties included, exactly as observed) into groups of sizes m and n;
    for tie-free data this is the lattice-path null distribution."""
    pooled = np.concatenate([a, b])
    m = a.shape[0]
    d_obs = stats.ks_2samp(a, b).statistic
    hits = total = 0
    for idx in itertools.combinations(range(pooled.shape[0]), m):
        mask = np.zeros(pooled.shape[0], dtype=bool)
        mask[list(idx)] = True
        d = stats.ks_2samp(pooled[mask], pooled[~mask]).statistic
        hits += d >= d_obs - 1e-12
        total += 1
    return hits / total


@pytest.mark.parametrize("m,n", [(3, 5), (4, 4), (6, 5), (2, 9)])
def test_ks_exact_matches_brute_force(m, n):
    rng = np.random.default_rng(m * 10 + n)
    for shift in (0.0, 1.0, 3.0):
        a = rng.normal(0.0, 1.0, size=m)
        b = rng.normal(shift, 1.0, size=n)
        _, p = metrics.ks_distance(a, b)
        assert abs(p - _brute_force_ks_pvalue(a, b)) < 1e-12
    # D = 1/30 with 30 vs 30: every path leaves the band, p = 1 exactly
    b = np.zeros(30)
    b[-1] = 1.0
    assert metrics.ks_distance(np.zeros(30), b) == (pytest.approx(1 / 30), 1.0)


def test_ks_identical_samples_and_extremes():
    a = np.arange(10.0)
    d, p = metrics.ks_distance(a, a)
    assert d == 0.0 and p == 1.0
    d, p = metrics.ks_distance(np.zeros(8), np.ones(9))
    ref = stats.ks_2samp(np.zeros(8), np.ones(9), method="exact")
    assert d == 1.0
    assert abs(p - ref.pvalue) < 1e-9
    assert p < 1e-3


@pytest.mark.parametrize("m,n,shift", [(500, 400, 0.0), (700, 1500, 0.1), (3000, 2000, 0.3)])
def test_ks_asymptotic_matches_kstwobign(m, n, shift):
    assert m * n > metrics.KS_EXACT_MAX_PRODUCT
    rng = np.random.default_rng(m + n)
    a = rng.normal(0.0, 1.0, size=m)
    b = rng.normal(shift, 1.0, size=n)
    d, p = metrics.ks_distance(a, b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert abs(d - ref.statistic) < 1e-12
    en = m * n / (m + n)
    assert abs(p - stats.kstwobign.sf(math.sqrt(en) * d)) < 1e-10


@pytest.mark.parametrize("lam", [1e-3, 0.05, 0.2, 0.5, 0.9, 1.0, 1.3, 2.0, 4.0])
def test_kolmogorov_sf_matches_scipy(lam):
    assert abs(metrics._kolmogorov_sf(lam) - stats.kstwobign.sf(lam)) < 1e-12


def test_ks_and_w1_known_shift():
    rng = np.random.default_rng(7)
    a = rng.normal(0.0, 1.0, size=20000)
    b = rng.normal(0.5, 1.0, size=20000)
    d, p = metrics.ks_distance(a, b)
    assert abs(d - (2 * _phi(0.25) - 1)) < 0.02
    assert p < 1e-10
    assert abs(metrics.wasserstein1(a, b) - 0.5) < 0.03


def test_ks_accepts_torch_and_lists():
    rng = np.random.default_rng(3)
    a = rng.normal(size=15)
    b = rng.normal(size=9)
    ref = metrics.ks_distance(a, b)
    assert metrics.ks_distance(torch.tensor(a, dtype=torch.float64), torch.tensor(b)) == ref
    assert metrics.ks_distance(a.tolist(), list(b)) == ref


# ---------------------------------------------------------------------------
# Wasserstein-1
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("m,n", [(1, 1), (1, 9), (5, 5), (17, 40), (300, 1000)])
def test_wasserstein_matches_scipy(m, n):
    rng = np.random.default_rng(m * 31 + n)
    for ties in (False, True):
        a = rng.normal(0.0, 1.0, size=m)
        b = rng.exponential(1.0, size=n)
        if ties:
            a, b = np.round(a), np.round(b)
        w = metrics.wasserstein1(a, b)
        assert isinstance(w, float)
        assert abs(w - stats.wasserstein_distance(a, b)) < 1e-10


def test_wasserstein_simple_values():
    assert metrics.wasserstein1([0.0], [3.0]) == pytest.approx(3.0)
    assert metrics.wasserstein1([0.0, 1.0], [0.0, 1.0]) == 0.0
    assert metrics.wasserstein1(torch.tensor([0.0, 2.0]), [1.0]) == pytest.approx(1.0)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30),
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30),
)
def test_distances_property_vs_scipy(a, b):
    w = metrics.wasserstein1(a, b)
    assert w == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-9, abs=1e-9)
    d, p = metrics.ks_distance(a, b)
    assert 0.0 <= p <= 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = stats.ks_2samp(a, b, method="exact")
    assert abs(d - ref.statistic) < 1e-12
    # scipy's exact routine gives up (and falls back to 'asymp') for some p near 1,
    # e.g. 30 zeros vs 29 zeros and a one; compare only when it succeeded.
    if not any("Exact calculation unsuccessful" in str(w.message) for w in caught):
        assert abs(p - ref.pvalue) < 1e-6


# ---------------------------------------------------------------------------
# binning and mutual information
# ---------------------------------------------------------------------------


def _reference_bins(x: np.ndarray, bins: int) -> np.ndarray:
    edges = np.linspace(x.min(), x.max(), bins + 1)
    return np.digitize(x, edges[1:-1])


def test_bin_labels_edges_and_last_bin():
    lab = metrics.bin_labels([0.0, 0.25, 0.5, 0.99, 1.0], bins=4)
    assert lab.dtype == np.int64
    assert lab.tolist() == [0, 1, 2, 3, 3]  # max lands in the last (closed) bin
    rng = np.random.default_rng(11)
    x = rng.normal(size=1000)
    for bins in (1, 2, 7, 50):
        lab = metrics.bin_labels(x, bins=bins)
        assert lab[np.argmax(x)] == bins - 1
        assert lab[np.argmin(x)] == 0
        np.testing.assert_array_equal(lab, _reference_bins(x, bins))


def test_bin_labels_constant():
    lab = metrics.bin_labels(np.full(20, 3.5), bins=10)
    assert lab.tolist() == [0] * 20


@pytest.mark.parametrize("n_cat", [2, 3, 19])
@pytest.mark.parametrize("bins", [5, 50])
def test_mi_matches_sklearn(n_cat, bins):
    rng = np.random.default_rng(100 * n_cat + bins)
    n = 3000
    cats = rng.integers(0, n_cat, size=n)
    rewards = rng.normal(size=n) + 0.6 * cats
    mi = metrics.binned_mutual_information(rewards, cats, bins=bins)
    ref = mutual_info_score(_reference_bins(rewards, bins), cats)
    assert isinstance(mi, float)
    assert abs(mi - ref) < 1e-10
    assert mi > 0.01  # the shift makes rewards informative


def test_mi_string_labels_and_torch():
    rng = np.random.default_rng(5)
    names = np.array(["neutral", "group_a", "group_b"])
    cats = names[rng.integers(0, 3, size=500)]
    rewards = rng.normal(size=500) + (cats == "group_a")
    ref = mutual_info_score(_reference_bins(rewards, 20), cats)
    assert abs(metrics.binned_mutual_information(rewards, cats, bins=20) - ref) < 1e-10
    got = metrics.binned_mutual_information(torch.tensor(rewards), cats.tolist(), bins=20)
    assert abs(got - ref) < 1e-10


def test_mi_near_zero_for_identical_distributions():
    rng = np.random.default_rng(21)
    n = 100_000
    cats = rng.integers(0, 3, size=n)
    rewards = rng.normal(size=n)
    assert metrics.binned_mutual_information(rewards, cats, bins=20) < 0.01


def test_mi_constant_rewards_is_zero():
    assert metrics.binned_mutual_information(np.ones(50), np.arange(50) % 2) == 0.0


def test_mi_perfect_dependence():
    # Two well separated categories, 2 bins: MI = log 2.
    rewards = np.r_[np.zeros(40), np.ones(60)]
    cats = ["a"] * 40 + ["b"] * 60
    expected = -(0.4 * math.log(0.4) + 0.6 * math.log(0.6))
    assert metrics.binned_mutual_information(rewards, cats, bins=2) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------
# gaps
# ---------------------------------------------------------------------------


def test_parity_gap_and_relative_drop():
    rng = np.random.default_rng(9)
    a = rng.normal(0.2, 1.0, size=100)
    b = rng.normal(-0.1, 1.0, size=70)
    gap = metrics.parity_gap(a, b)
    assert isinstance(gap, float)
    assert gap == pytest.approx(abs(a.mean() - b.mean()), abs=1e-14)
    assert metrics.parity_gap(b, a) == gap
    assert metrics.parity_gap(torch.tensor(a), b.tolist()) == pytest.approx(gap, abs=1e-14)
    assert abs(metrics.relative_drop(0.4001, 0.4814) - (-16.9)) < 0.05
    assert metrics.relative_drop(0.6, 0.4) == pytest.approx(50.0)
    assert metrics.relative_drop(0.4, 0.4) == 0.0


# ---------------------------------------------------------------------------
# classification scores
# ---------------------------------------------------------------------------


def test_roc_auc_matches_sklearn():
    rng = np.random.default_rng(13)
    for n, ties in [(10, False), (200, False), (200, True), (1000, True)]:
        y = rng.integers(0, 2, size=n)
        y[:2] = [0, 1]
        s = rng.normal(size=n) + 0.7 * y
        if ties:
            s = np.round(s)
        got = metrics.roc_auc(s, y)
        assert isinstance(got, float)
        assert abs(got - roc_auc_score(y, s)) < 1e-12
        # boolean labels and torch scores give the same answer
        assert abs(metrics.roc_auc(torch.tensor(s), y.astype(bool)) - got) < 1e-12


def test_roc_auc_extremes():
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert metrics.roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert metrics.roc_auc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5


def test_macro_ovr_auc_definition_matches_sklearn():
    rng = np.random.default_rng(17)
    y = np.repeat([0, 1, 2], 60)
    logits = rng.normal(size=(180, 3))
    logits[np.arange(180), y] += 0.8
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ours = np.mean([metrics.roc_auc(prob[:, c], y == c) for c in range(3)])
    ref = roc_auc_score(y, prob, multi_class="ovr", average="macro")
    assert abs(ours - ref) < 1e-12
    assert abs(metrics._macro_ovr_auc(prob, y, 3) - ref) < 1e-12


def test_balanced_accuracy_matches_sklearn():
    rng = np.random.default_rng(19)
    for n_cls in (2, 3, 5):
        y = rng.integers(0, n_cls, size=300)
        pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, n_cls, size=300))
        got = metrics.balanced_accuracy(y, pred)
        assert isinstance(got, float)
        assert abs(got - balanced_accuracy_score(y, pred)) < 1e-12
    names = np.array(["x", "y", "z"])
    y = names[rng.integers(0, 3, size=100)]
    pred = names[rng.integers(0, 3, size=100)]
    assert abs(metrics.balanced_accuracy(list(y), pred) - balanced_accuracy_score(y, pred)) < 1e-12


def test_balanced_accuracy_extra_predicted_class():
    y = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 2, 1, 1, 0])  # class 2 never occurs in y_true
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = balanced_accuracy_score(y, pred)
    assert metrics.balanced_accuracy(y, pred) == pytest.approx(ref, abs=1e-12)
    assert metrics.balanced_accuracy(y, pred) == pytest.approx((0.5 + 2 / 3) / 2)


# ---------------------------------------------------------------------------
# predictability audit
# ---------------------------------------------------------------------------


def _two_class(shift: float, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = np.r_[rng.normal(0.0, 1.0, size=n), rng.normal(shift, 1.0, size=n)]
    y = np.r_[np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)]
    return x, y


def test_audit_identical_distributions_is_chance():
    x, y = _two_class(0.0, 2000, seed=31)
    res = metrics.predictability_audit(x, y)
    assert set(res) == {"auc_mean", "auc_std", "ba_mean", "ba_std"}
    assert all(isinstance(v, float) for v in res.values())
    assert abs(res["auc_mean"] - 0.5) < 0.05
    assert abs(res["ba_mean"] - 0.5) < 0.05
    assert 0.0 <= res["auc_std"] < 0.1


def test_audit_shifted_gaussians_reaches_bayes_auc():
    x, y = _two_class(1.0, 2000, seed=32)
    res = metrics.predictability_audit(x, y)
    bayes_auc = _phi(1 / math.sqrt(2))
    assert abs(bayes_auc - 0.760) < 1e-3
    assert abs(res["auc_mean"] - bayes_auc) < 0.03
    # Bayes balanced accuracy is Phi(0.5) = 0.691
    assert abs(res["ba_mean"] - _phi(0.5)) < 0.04


def test_audit_deterministic_and_leaves_global_rng_alone():
    x, y = _two_class(0.5, 300, seed=33)
    state = torch.get_rng_state()
    r1 = metrics.predictability_audit(x, y, seed=4, max_epochs=60)
    r2 = metrics.predictability_audit(torch.tensor(x), y.tolist(), seed=4, max_epochs=60)
    assert r1 == r2
    assert torch.equal(state, torch.get_rng_state())
    r3 = metrics.predictability_audit(x, y, seed=5, max_epochs=60)
    assert r3 != r1


def test_audit_three_classes_beats_chance():
    rng = np.random.default_rng(34)
    n = 300
    x = np.r_[rng.normal(0, 1, n), rng.normal(1.5, 1, n), rng.normal(3, 1, n)]
    noise = rng.normal(size=3 * n)
    cats = np.repeat(["low", "mid", "high"], n)
    res = metrics.predictability_audit(np.c_[x, noise], cats, folds=3, max_epochs=100)
    assert res["auc_mean"] > 0.75
    assert res["ba_mean"] > 0.5  # chance is 1/3


def test_audit_unpredictable_three_classes():
    rng = np.random.default_rng(35)
    cats = np.repeat([10, 20, 30], 200)
    res = metrics.predictability_audit(rng.normal(size=600), cats, max_epochs=80)
    assert abs(res["auc_mean"] - 0.5) < 0.07
    assert abs(res["ba_mean"] - 1 / 3) < 0.07


def test_stratified_folds_balanced():
    y = np.repeat([0, 1, 2], [7, 10, 13])
    fold_of = metrics._stratified_folds(y, 3, 5, np.random.default_rng(0))
    sizes = np.bincount(fold_of, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c, count in enumerate([7, 10, 13]):
        per_fold = np.bincount(fold_of[y == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
        assert per_fold.sum() == count


# ---------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------


def test_bad_inputs_distances():
    with pytest.raises(ValueError, match="a is empty"):
        metrics.ks_distance([], [1.0])
    with pytest.raises(ValueError, match="b is empty"):
        metrics.wasserstein1([1.0], np.array([]))
    with pytest.raises(ValueError, match=r"a contains NaN or inf \(first at index 2\)"):
        metrics.ks_distance([0.0, 1.0, np.nan, np.inf], [1.0])
    with pytest.raises(ValueError, match=r"b contains NaN or inf \(first at index 1\)"):
        metrics.wasserstein1([0.0], torch.tensor([0.0, float("inf")]))
    with pytest.raises(ValueError, match="must be 1-D"):
        metrics.ks_distance(np.zeros((3, 2)), [1.0])
    with pytest.raises(ValueError, match="rewards_b is empty"):
        metrics.parity_gap([1.0], [])


def test_bad_inputs_mi_and_bins():
    with pytest.raises(ValueError, match="bins must be >= 1"):
        metrics.bin_labels([1.0, 2.0], bins=0)
    with pytest.raises(ValueError, match="bins must be >= 1"):
        metrics.binned_mutual_information([1.0, 2.0], [0, 1], bins=0)
    with pytest.raises(ValueError, match="bins must be an integer"):
        metrics.bin_labels([1.0, 2.0], bins=2.5)
    with pytest.raises(ValueError, match="values is empty"):
        metrics.bin_labels([])
    with pytest.raises(ValueError, match=r"rewards and categories must have the same length \(got 3 and 2\)"):
        metrics.binned_mutual_information([1.0, 2.0, 3.0], [0, 1])
    with pytest.raises(ValueError, match=r"rewards contains NaN or inf \(first at index 1\)"):
        metrics.binned_mutual_information([1.0, np.nan], [0, 1])
    with pytest.raises(ValueError, match="categories is empty"):
        metrics.binned_mutual_information([1.0], [])


def test_bad_inputs_relative_drop():
    with pytest.raises(ValueError, match="baseline_gap must be non-zero"):
        metrics.relative_drop(0.3, 0.0)
    with pytest.raises(ValueError, match="gap must be finite"):
        metrics.relative_drop(float("nan"), 0.3)


def test_bad_inputs_classification():
    with pytest.raises(ValueError, match="exactly 2 classes"):
        metrics.roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="exactly 2 classes"):
        metrics.roc_auc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match=r"scores and y_true_binary must have the same length"):
        metrics.roc_auc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match=r"scores contains NaN or inf \(first at index 0\)"):
        metrics.roc_auc([np.nan, 0.2], [0, 1])
    with pytest.raises(ValueError, match="y_true and y_pred must have the same length"):
        metrics.balanced_accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="y_true is empty"):
        metrics.balanced_accuracy([], [])


def test_bad_inputs_audit():
    x, y = _two_class(0.0, 20, seed=36)
    with pytest.raises(ValueError, match="fewer than folds=5"):
        metrics.predictability_audit(np.r_[x, 0.0], np.r_[y, 2])
    with pytest.raises(ValueError, match="at least 2 classes"):
        metrics.predictability_audit(x, np.zeros_like(y))
    with pytest.raises(ValueError, match=r"features and categories must have the same length \(got 40 and 39\)"):
        metrics.predictability_audit(x, y[:-1])
    bad = np.c_[x, x]
    bad[7, 1] = np.inf
    with pytest.raises(ValueError, match=r"features contains NaN or inf \(first at row 7\)"):
        metrics.predictability_audit(bad, y)
    with pytest.raises(ValueError, match=r"features must be \[N\] or \[N, K\]"):
        metrics.predictability_audit(np.zeros((40, 2, 2)), y)
    with pytest.raises(ValueError, match="folds must be >= 2"):
        metrics.predictability_audit(x, y, folds=1)
    with pytest.raises(ValueError, match="categories contains NaN"):
        metrics.predictability_audit(x, np.r_[y[:-1].astype(float), np.nan])
