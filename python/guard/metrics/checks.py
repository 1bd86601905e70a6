"""Input checks and conversions shared by guard.metrics: numpy arrays, torch tensors or lists in, validated
float64 / label / boolean numpy arrays out, and a ValueError naming the argument and the first bad row otherwise.

Private to the package (the statistics import them); tested through every public function in tests/test_metrics.py
and tests/test_eval_stats.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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
