"""Evaluation statistics for reward models (GUARD).

The GUARD evaluation asks whether a reward model's output distribution is
independent of a category (helpful vs harmless in HH-RLHF, or PKU-SafeRLHF's
19 harm categories).  This module gathers the statistics used for that question:

* distribution distances between the rewards of two groups:
  :func:`ks_distance` (two-sample Kolmogorov-Smirnov statistic and p-value)
  and :func:`wasserstein1` (1-D earth mover's distance);
* dependence between rewards and categories:
  :func:`binned_mutual_information` (built on :func:`bin_labels`);
* mean-reward gaps: :func:`parity_gap` and :func:`relative_drop`;
* classification scores: :func:`roc_auc` and :func:`balanced_accuracy`;
* the post-hoc predictability audit of GUARD appendix A.7:
  :func:`predictability_audit`, which trains a small MLP to predict the
  category from frozen rewards and reports its cross-validated AUC and
  balanced accuracy (AUC 0.5 / balanced accuracy 1/C means "unpredictable");
* significance and evaluation statistics: :func:`permutation_pvalue`
  (two-sample permutation test, W1 by default), :func:`mcnemar` (paired
  binary outcomes of two models), :func:`bias_rate` (share of stereotypical
  preferences and its standard error), :func:`semantic_diversity` (GUARD B.2)
  and :func:`paired_bootstrap_diversity` (CI and p-value of a diversity
  difference over the same prompts).

Every function accepts numpy arrays, torch tensors or plain Python lists,
converts numeric inputs to float64 numpy arrays internally and returns plain
Python floats (or a dict of floats).  Invalid input (empty arrays, NaN/inf,
mismatched lengths, bad parameters) raises :class:`ValueError` with a message
naming the argument and the problem.

Example::

    from guard import metrics

    d, p = metrics.ks_distance(rewards_group_a, rewards_group_b)
    w = metrics.wasserstein1(rewards_group_a, rewards_group_b)
    mi = metrics.binned_mutual_information(rewards, categories, bins=50)
    audit = metrics.predictability_audit(rewards, categories, folds=5, seed=0)
    print(audit["auc_mean"], audit["auc_std"])

Runtime dependencies: numpy and torch only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "ks_distance",
    "wasserstein1",
    "bin_labels",
    "binned_mutual_information",
    "parity_gap",
    "relative_drop",
    "roc_auc",
    "balanced_accuracy",
    "predictability_audit",
    "permutation_pvalue",
    "mcnemar",
    "bias_rate",
    "semantic_diversity",
    "paired_bootstrap_diversity",
]

#: Largest ``len(a) * len(b)`` for which :func:`ks_distance` computes the exact
#: p-value; above it the asymptotic Kolmogorov distribution is used.
KS_EXACT_MAX_PRODUCT = 100_000


# ---------------------------------------------------------------------------
# input helpers
# ---------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """Convert a torch tensor / array-like to a numpy array (no dtype change)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_float(x: Any, name: str, ndim: int = 1) -> np.ndarray:
    """Validated float64 copy of ``x``.

    ``ndim=1`` requires a non-empty 1-D input; ``ndim=2`` accepts [N] (turned
    into [N, 1]) or [N, K].  NaN/inf raise ValueError naming the first bad
    index (row index for 2-D input).
    """
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().to(torch.float64).numpy()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be numeric: {exc}") from None
    if ndim == 1:
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    else:
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"{name} must be [N] or [N, K], got shape {tuple(arr.shape)}")
        if arr.shape[1] == 0:
            raise ValueError(f"{name} has no feature columns (shape {tuple(arr.shape)})")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = ~finite if arr.ndim == 1 else ~finite.all(axis=1)
        first = int(np.flatnonzero(bad_rows)[0])
        what = "row" if ndim == 2 else "index"
        raise ValueError(f"{name} contains NaN or inf (first at {what} {first})")
    return arr


def _vector(x: Any, name: str) -> np.ndarray:
    """A non-empty 1-D array of `x` (list, tuple, numpy array or tensor); a list mixing strings with other
    values becomes an object array, where np.asarray would silently turn [1, "1"] into two equal strings."""
    if isinstance(x, (list, tuple)):
        try:
            arr = np.asarray(x)
        except ValueError as exc:  # ragged nesting
            raise ValueError(f"{name} must be 1-D: {exc}") from None
        if arr.dtype.kind in "US" and not all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in x):
            arr = np.empty(len(x), dtype=object)
            arr[:] = list(x)
    else:
        arr = _to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _as_labels(x: Any, name: str) -> np.ndarray:
    """Validated 1-D array of hashable labels (numeric, bool, str or object)."""
    arr = _vector(x, name)
    if arr.dtype.kind in "fc":
        finite = np.isfinite(arr)
        if not finite.all():
            first = int(np.flatnonzero(~finite)[0])
            raise ValueError(f"{name} contains NaN or inf (first at index {first})")
    return arr


def _encode(labels: np.ndarray) -> tuple[np.ndarray, list]:
    """Map labels to codes 0..C-1 in sorted order of the unique labels.

    Returns ``(codes, classes)``.  Labels that cannot be sorted (mixed types)
    are numbered in order of first appearance.
    """
    try:
        classes, codes = np.unique(labels, return_inverse=True)
        return codes.reshape(-1).astype(np.int64), classes.tolist()
    except TypeError:
        mapping: dict = {}
        codes = np.empty(labels.shape[0], dtype=np.int64)
        for k, v in enumerate(labels.tolist()):
            codes[k] = mapping.setdefault(v, len(mapping))
        return codes, list(mapping)


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same length (got {a.shape[0]} and {b.shape[0]})"
        )


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# ---------------------------------------------------------------------------
# distribution distances
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# mutual information
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# gaps
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# classification scores
# ---------------------------------------------------------------------------


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties receiving the average of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = xs.shape[0]
    starts = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]]))
    ends = np.concatenate([starts[1:], [n]])  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _auc_codes(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUC for a boolean positive mask (both classes present)."""
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    ranks = _average_ranks(scores)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc(scores: Any, y_true_binary: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic.

    AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), where R_pos is the
    sum of the (1-based, tie-averaged) ranks of the positive scores; equal to
    P(s_pos > s_neg) + 0.5 P(s_pos = s_neg).  ``y_true_binary`` must hold
    exactly two distinct labels; the larger one (1 / True for 0-1 labels) is
    the positive class, as in sklearn.
    """
    s = _as_float(scores, "scores")
    y = _as_labels(y_true_binary, "y_true_binary")
    _check_same_length(s, y, "scores", "y_true_binary")
    codes, classes = _encode(y)
    if len(classes) != 2:
        raise ValueError(
            f"y_true_binary must contain exactly 2 classes to define an AUC, got {len(classes)}"
        )
    return _auc_codes(s, codes == 1)


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Balanced accuracy: mean over classes c present in y_true of the recall
    |{i: y_true_i = c and y_pred_i = c}| / |{i: y_true_i = c}|.

    Predicted labels that never occur in y_true only count as errors.
    """
    yt = _as_labels(y_true, "y_true")
    yp = _as_labels(y_pred, "y_pred")
    _check_same_length(yt, yp, "y_true", "y_pred")
    codes, classes = _encode(yt)
    index = {c: k for k, c in enumerate(classes)}
    pred = np.fromiter((index.get(v, -1) for v in yp.tolist()), dtype=np.int64, count=yp.shape[0])
    return _balanced_accuracy_codes(codes, pred, len(classes))


def _balanced_accuracy_codes(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    support = np.bincount(y, minlength=n_classes).astype(np.float64)
    hits = np.bincount(y[pred == y], minlength=n_classes).astype(np.float64)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def _macro_ovr_auc(prob: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """AUC of class 1 for C == 2, else macro one-vs-rest mean over the classes
    that have both positives and negatives in ``y``."""
    if n_classes == 2:
        return _auc_codes(prob[:, 1], y == 1)
    aucs = []
    for c in range(n_classes):
        pos = y == c
        if 0 < pos.sum() < y.shape[0]:
            aucs.append(_auc_codes(prob[:, c], pos))
    return float(np.mean(aucs)) if aucs else float("nan")


# ---------------------------------------------------------------------------
# predictability audit (GUARD A.7)
# ---------------------------------------------------------------------------


def _stratified_folds(y: np.ndarray, n_classes: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per sample.  Per class, its indices are permuted and dealt
    round-robin into the folds; the dealing position carries over from one
    class to the next so that fold sizes differ by at most one."""
    fold_of = np.empty(y.shape[0], dtype=np.int64)
    pos = 0
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = (pos + np.arange(idx.shape[0])) % folds
        pos += idx.shape[0]
    return fold_of


def _stratified_holdout(
    idx: np.ndarray, y: np.ndarray, n_classes: int, frac: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (fit, validation), taking round(frac * n_c) members
    of each class c (at least 1 when the class has >= 2 members here, never
    all of them) for validation."""
    fit, val = [], []
    for c in range(n_classes):
        members = rng.permutation(idx[y[idx] == c])
        n_c = members.shape[0]
        n_val = 0 if n_c < 2 else min(n_c - 1, max(1, int(round(frac * n_c))))
        val.append(members[:n_val])
        fit.append(members[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def _init_linear(layer: torch.nn.Linear, gen: torch.Generator) -> None:
    """PyTorch's default Linear init distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for weight and bias, but drawn from ``gen`` (global RNG untouched)."""
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * (2 * bound) - bound)


def _fit_predict_fold(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    n_classes: int,
    hidden: int,
    max_epochs: int,
    patience: int,
    lr: float,
    torch_seed: int,
) -> np.ndarray:
    """Train the audit MLP and return class probabilities for ``x_test``."""
    gen = torch.Generator().manual_seed(torch_seed)
    k = x_fit.shape[1]
    # skip_init: no draw from the global torch RNG; weights come from ``gen``.
    l1 = torch.nn.utils.skip_init(torch.nn.Linear, k, hidden, dtype=torch.float32)
    l2 = torch.nn.utils.skip_init(torch.nn.Linear, hidden, n_classes, dtype=torch.float32)
    _init_linear(l1, gen)
    _init_linear(l2, gen)
    model = torch.nn.Sequential(l1, torch.nn.ReLU(), l2)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()

    xf = torch.from_numpy(x_fit.astype(np.float32))
    yf = torch.from_numpy(y_fit)
    xv = torch.from_numpy(x_val.astype(np.float32))
    yv_t = torch.from_numpy(y_val)
    # Early-stopping score: validation macro AUC when it is defined, else
    # negative validation loss; with no validation set, train all epochs.
    use_auc = np.unique(y_val).shape[0] >= 2
    has_val = y_val.shape[0] > 0

    best_score = -math.inf
    best_state = None
    since_best = 0
    for _ in range(max_epochs):
        model.train()
        opt.zero_grad()
        loss = loss_fn(model(xf), yf)
        loss.backward()
        opt.step()
        if not has_val:
            continue
        model.eval()
        with torch.no_grad():
            logits_v = model(xv)
            if use_auc:
                pv = torch.softmax(logits_v, dim=1).double().numpy()
                score = _macro_ovr_auc(pv, y_val, n_classes)
            else:
                score = -float(loss_fn(logits_v, yv_t))
        if score > best_score:
            best_score = score
            best_state = {name: t.detach().clone() for name, t in model.state_dict().items()}
            since_best = 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x_test.astype(np.float32)))
        return torch.softmax(logits, dim=1).double().numpy()


def predictability_audit(
    features: Any,
    categories: Any,
    folds: int = 5,
    seed: int = 0,
    hidden: int = 64,
    max_epochs: int = 300,
    patience: int = 30,
    lr: float = 1e-2,
) -> dict[str, float]:
    """Post-hoc predictability audit (GUARD appendix A.7).

    Can the category be predicted from frozen rewards?  A fresh 2-layer MLP
    ``Linear(K, hidden) -> ReLU -> Linear(hidden, C)`` is trained with
    cross-entropy (Adam, learning rate ``lr``, full batch, float32) under
    stratified ``folds``-fold cross-validation:

    * ``features``: [N] (one reward per sample) or [N, K]; standardized with
      the training fold's per-column mean and std (std 0 -> 1).
    * ``categories``: N labels of any type, mapped to 0..C-1 in sorted order
      of the unique labels.
    * folds: per class, its indices are permuted with
      ``np.random.default_rng(seed)`` and dealt round-robin into the folds.
    * inside each training fold a stratified 20% is held out for early
      stopping on validation AUC: the best state is kept and training stops
      after ``patience`` epochs without improvement (at most ``max_epochs``).
    * the test fold is scored with the macro one-vs-rest AUC (C == 2: the AUC
      of class 1's probability; C > 2: mean over classes c of
      AUC(prob_c, y == c), as sklearn's ``multi_class='ovr', average='macro'``)
      and the balanced accuracy of the argmax prediction.

    Deterministic for a given ``seed`` (numpy Generator for the splits, a
    ``torch.Generator`` seeded from ``seed`` and the fold number for the
    weights; the global torch RNG is not used).

    Returns ``{"auc_mean", "auc_std", "ba_mean", "ba_std"}``; the stds are
    population standard deviations over the folds (``np.std``, ddof=0).
    Chance level is AUC 0.5 and balanced accuracy 1/C.

    Raises ValueError for NaN/inf features (naming the first bad row), a
    length mismatch, fewer than 2 classes, or a class with fewer members
    than ``folds``.
    """
    folds = _check_int(folds, "folds", 2)
    hidden = _check_int(hidden, "hidden", 1)
    max_epochs = _check_int(max_epochs, "max_epochs", 1)
    patience = _check_int(patience, "patience", 1)
    seed = _check_int(seed, "seed", 0)
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    x = _as_float(features, "features", ndim=2)
    cats = _as_labels(categories, "categories")
    _check_same_length(x, cats, "features", "categories")
    y, classes = _encode(cats)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(f"categories must contain at least 2 classes, got {n_classes}")
    counts = np.bincount(y, minlength=n_classes)
    if counts.min() < folds:
        small = int(np.argmin(counts))
        raise ValueError(
            f"class {classes[small]!r} in categories has {int(counts[small])} members, "
            f"fewer than folds={folds}"
        )

    rng = np.random.default_rng(seed)
    fold_of = _stratified_folds(y, n_classes, folds, rng)
    aucs, bas = [], []
    for f in range(folds):
        test_idx = np.flatnonzero(fold_of == f)
        train_idx = np.flatnonzero(fold_of != f)
        mean = x[train_idx].mean(axis=0)
        std = x[train_idx].std(axis=0)
        std = np.where(std > 0, std, 1.0)
        xs = (x - mean) / std
        fit_idx, val_idx = _stratified_holdout(train_idx, y, n_classes, 0.2, rng)
        torch_seed = int(np.random.SeedSequence([seed, f]).generate_state(1)[0])
        prob = _fit_predict_fold(
            xs[fit_idx], y[fit_idx], xs[val_idx], y[val_idx], xs[test_idx],
            n_classes, hidden, max_epochs, patience, lr, torch_seed,
        )
        y_test = y[test_idx]
        aucs.append(_macro_ovr_auc(prob, y_test, n_classes))
        bas.append(_balanced_accuracy_codes(y_test, np.argmax(prob, axis=1), n_classes))
    return {
        "auc_mean": float(np.mean(aucs)),
        "auc_std": float(np.std(aucs)),
        "ba_mean": float(np.mean(bas)),
        "ba_std": float(np.std(bas)),
    }


# ---------------------------------------------------------------------------
# evaluation statistics (issue 8): permutation test, McNemar, bias rate,
# semantic diversity and its paired bootstrap
# ---------------------------------------------------------------------------


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


def _as_binary(x: Any, name: str) -> np.ndarray:
    """Validated non-empty 1-D bool array from booleans or 0/1 numbers.

    Anything else (2, 0.5, NaN, strings, None) raises ValueError naming ``name``
    and the first bad row.
    """
    arr = _vector(x, name)
    if arr.dtype.kind == "b":
        return arr.astype(bool)
    if arr.dtype.kind in "iuf":
        ok = (arr == 0) | (arr == 1)
    else:
        ok = np.fromiter(
            (
                isinstance(v, (bool, np.bool_))
                or (isinstance(v, (int, float, np.integer, np.floating)) and (v == 0 or v == 1))
                for v in arr.tolist()
            ),
            dtype=bool,
            count=arr.shape[0],
        )
    if not ok.all():
        first = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"{name} must hold booleans or 0/1 (row {first} is {arr[first]!r})")
    return np.asarray(arr == 1, dtype=bool)


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
