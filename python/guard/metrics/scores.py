"""Classification scores: ROC AUC by the Mann-Whitney U statistic (tie-averaged ranks), balanced accuracy, and
the macro one-vs-rest AUC the predictability audit reports.

Tests: tests/test_metrics.py (scikit-learn as the oracle).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from guard.metrics.checks import _as_float, _as_labels, _check_same_length, _encode


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
