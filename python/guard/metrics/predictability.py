"""The post-hoc predictability audit of GUARD appendix A.7: can a small MLP predict the category from frozen
rewards? Stratified k-fold cross-validation, early stopping on a stratified hold-out, and the AUC and balanced
accuracy of each test fold (chance: AUC 0.5, balanced accuracy 1/C). Deterministic for a seed; the global torch
RNG is never drawn from.

    from guard import metrics
    audit = metrics.predictability_audit(rewards, categories, folds=5, seed=0)

Tests: tests/test_metrics.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from guard.metrics.checks import _as_float, _as_labels, _check_int, _check_same_length, _encode
from guard.metrics.scores import _balanced_accuracy_codes, _macro_ovr_auc


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
