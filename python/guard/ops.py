"""guard's fused ops: log-probs straight from hidden states and the LM head, and the preference / reward
losses with per-category reward moments, forward and backward. Callable from anyone's training code.

    from guard import ops
    logp = ops.token_logprobs(hidden, lm_head.weight, labels)                     # [N], no [N, V] logits
    out = ops.fused_preference_loss(hidden, lm_head.weight, labels, ref_logps, loss_type="sigmoid")
    out.loss.backward()

Backends: on CUDA tensors the Triton kernels in guard.kernels run; elsewhere a chunked torch path computes
the same numbers with memory bounded by a [chunk, V] tile (so users without a GPU can call every op).
`set_backend("triton" | "torch" | "auto")` or `with backend(...)` forces one (tests run the Triton kernels
on the CPU under TRITON_INTERPRET=1 this way). The Triton log-prob op has two backward designs, chosen by
the argument `impl` or else the environment variable GUARD_LOGPROB_IMPL: "chunked" (the default; per
vocabulary chunk a kernel writes dz and cuBLAS does the two GEMMs: no atomics, deterministic) and "tiled"
(one kernel with fp32 atomics). Both skip the gradients nobody asked for (a frozen LM head costs no weight
gradient) and take a head in another dtype than the hidden states without copying it.

Checks. Shapes, dtypes and options (beta, temperature, ...) are always checked; a ValueError names the
argument. Checks of values -- labels inside the vocabulary, finite hidden / weight / ref_logps / rewards,
categories in range, a response token in every preference row -- need the device's answer, a host sync,
so they run only with ``check=True`` (one sync for all of them), with the same messages on every path.
Without them nothing synchronises, torch.compile(fullgraph=True) sees no break, and bad values give
loud results on every path, never plausible numbers: a label outside [0, V) that is not ignore_index gives
NaN for that row's log-prob and entropy (and NaN gradients), a non-finite input gives non-finite outputs,
a category outside [0, C) makes every moment NaN. Trainers stop at the first non-finite loss.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from guard import losses

__all__ = [
    "PreferenceOutput",
    "RewardOutput",
    "backend",
    "bt_loss",
    "fused_preference_loss",
    "segment_sums",
    "sequence_logprobs",
    "set_backend",
    "LOGPROB_IMPLS",
    "token_logprobs",
    "token_logprobs_from_logits",
]

PREFERENCE_LOSS_TYPES = (*losses.LOSS_TYPES, "spo")
_BACKENDS = ("auto", "triton", "torch")
_backend = os.environ.get("GUARD_BACKEND", "auto")
#: The backward designs of the Triton log-prob op (guard.kernels.linear_logprobs).
LOGPROB_IMPLS = ("chunked", "tiled")
_default_impl = os.environ.get("GUARD_LOGPROB_IMPL", "chunked")

#: The torch path materialises logits for at most this many elements at a time (64 MiB in fp32).
TORCH_CHUNK_ELEMENTS = 1 << 24


def set_backend(name: str) -> None:
    """Choose the implementation: "auto" (Triton on CUDA, torch elsewhere), "triton" or "torch"."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _use_triton(t: torch.Tensor) -> bool:
    return _backend == "triton" or (_backend == "auto" and t.is_cuda)


def _resolve_impl(impl: str | None) -> str:
    name = _default_impl if impl is None else impl
    if name not in LOGPROB_IMPLS:
        source = "impl" if impl is not None else "the environment variable GUARD_LOGPROB_IMPL"
        raise ValueError(f"{source} must be one of {LOGPROB_IMPLS}, got {name!r}")
    return name


# --------------------------------------------------------------------------- torch path (reference and CPU)


def _logprob_stats(z: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, with_entropy: bool):
    """log p(label), entropy (or None) and lse of scaled logits z [n, V]; ignored rows give 0, a row whose
    label lies outside [0, V) NaN (its lse too, so its gradients are NaN as on the Triton path)."""
    vocab = z.shape[-1]
    bad = valid & ((labels < 0) | (labels >= vocab))
    lse = torch.where(bad, float("nan"), torch.logsumexp(z, dim=-1))
    logp = torch.where(valid, z.gather(1, labels.clamp(0, vocab - 1)[:, None])[:, 0] - lse, 0.0)
    entropy = None
    if with_entropy:  # −Σ p·(z − lse): the shifted form, no cancellation between lse and Σ p·z
        shifted = z - lse[:, None]
        entropy = torch.where(valid, -(torch.exp(shifted) * shifted).sum(-1), 0.0)
    return logp, entropy, lse


def _grad_scaled_logits(z, labels, valid, lse, entropy, grad_logp, grad_entropy, inv_temperature):
    """d(Σ g_logp·logp + g_ent·entropy) / d(logits) for z = logits / T."""
    logp_all = z - lse[:, None]
    p = torch.exp(logp_all)
    dz = -grad_logp[:, None] * p
    dz.scatter_add_(1, labels.clamp(0, z.shape[-1] - 1)[:, None], grad_logp[:, None])
    if entropy is not None:
        dz -= grad_entropy[:, None] * p * (logp_all + entropy[:, None])
    return torch.where(valid[:, None], dz * inv_temperature, 0.0)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _head_in_compute_dtype(weight: torch.Tensor, hidden_dtype: torch.dtype, ctype: torch.dtype) -> torch.Tensor:
    """The head as the products see it: rounded to hidden's dtype first (bf16 hidden with an fp32 head
    multiplies bf16 values, as the Triton kernels and autocast do), then widened for the math."""
    return weight.to(hidden_dtype).to(ctype)


class _ChunkedLinearLogprobs(torch.autograd.Function):
    """The torch path of token_logprobs: logits built [chunk, V] at a time and recomputed in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, inv_temperature, ignore_index, with_entropy):
        ctype = _compute_dtype(hidden.dtype)
        chunk = max(1, TORCH_CHUNK_ELEMENTS // max(weight.shape[0], 1))
        valid = labels != ignore_index
        logp, lse = hidden.new_zeros(hidden.shape[0], dtype=ctype), hidden.new_zeros(hidden.shape[0], dtype=ctype)
        entropy = hidden.new_zeros(hidden.shape[0] if with_entropy else 0, dtype=ctype)
        w = _head_in_compute_dtype(weight, hidden.dtype, ctype)  # converted once, not per chunk
        b = None if bias is None else bias.to(ctype)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            z = _ChunkedLinearLogprobs._scaled_logits(hidden[rows], w, b, inv_temperature, ctype)
            lp, ent, ls = _logprob_stats(z, labels[rows], valid[rows], with_entropy)
            logp[rows], lse[rows] = lp, ls
            if with_entropy:
                entropy[rows] = ent
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy)
        ctx.args = (inv_temperature, ignore_index, with_entropy, chunk)
        return logp, entropy

    @staticmethod
    def _scaled_logits(hidden, weight, bias, inv_temperature, ctype):
        """(hidden @ weight.T + bias) / T in ctype; weight and bias already in ctype."""
        logits = hidden.to(ctype) @ weight.T
        if bias is not None:
            logits = logits + bias
        return logits * inv_temperature

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        if not (need_hidden or need_weight or need_bias):
            return (None,) * 7
        hidden, weight, bias, labels, lse, entropy = ctx.saved_tensors
        inv_temperature, ignore_index, with_entropy, chunk = ctx.args
        ctype = lse.dtype
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.to(ctype)
        grad_entropy = torch.zeros_like(entropy) if grad_entropy is None else grad_entropy.to(ctype)
        valid = labels != ignore_index
        grad_hidden = torch.zeros(hidden.shape, dtype=ctype, device=hidden.device) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=ctype, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=ctype, device=weight.device) if need_bias else None
        w = _head_in_compute_dtype(weight, hidden.dtype, ctype)
        b = None if bias is None else bias.to(ctype)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            z = _ChunkedLinearLogprobs._scaled_logits(hidden[rows], w, b, inv_temperature, ctype)
            dlogits = _grad_scaled_logits(
                z, labels[rows], valid[rows], lse[rows], entropy[rows] if with_entropy else None,
                grad_logp[rows], grad_entropy[rows] if with_entropy else None, inv_temperature,
            )
            if need_hidden:
                grad_hidden[rows] = dlogits @ w
            if need_weight:  # an ignored row may hold anything (NaN at a padded position): 0·NaN is NaN
                grad_weight += dlogits.T @ torch.where(valid[rows, None], hidden[rows].to(ctype), 0.0)
            if need_bias:
                grad_bias += dlogits.sum(0)
        return (grad_hidden.to(hidden.dtype) if need_hidden else None,
                grad_weight.to(weight.dtype) if need_weight else None,
                grad_bias.to(bias.dtype) if need_bias else None, None, None, None, None)


class _ChunkedLogitsLogprobs(torch.autograd.Function):
    """The torch path of token_logprobs_from_logits, [chunk, V] at a time in fp32."""

    @staticmethod
    def forward(ctx, logits, labels, inv_temperature, ignore_index, with_entropy):
        ctype = _compute_dtype(logits.dtype)
        chunk = max(1, TORCH_CHUNK_ELEMENTS // max(logits.shape[1], 1))
        valid = labels != ignore_index
        parts = [
            _logprob_stats(logits[s : s + chunk].to(ctype) * inv_temperature, labels[s : s + chunk], valid[s : s + chunk], with_entropy)
            for s in range(0, logits.shape[0], chunk)
        ]
        empty = logits.new_zeros(0, dtype=ctype)
        logp = torch.cat([p[0] for p in parts]) if parts else empty
        entropy = torch.cat([p[1] for p in parts]) if parts and with_entropy else empty
        lse = torch.cat([p[2] for p in parts]) if parts else empty
        ctx.save_for_backward(logits, labels, lse, entropy)
        ctx.args = (inv_temperature, ignore_index, with_entropy, chunk)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        logits, labels, lse, entropy = ctx.saved_tensors
        inv_temperature, ignore_index, with_entropy, chunk = ctx.args
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.to(lse.dtype)
        grad_entropy = torch.zeros_like(entropy) if grad_entropy is None else grad_entropy.to(lse.dtype)
        valid = labels != ignore_index
        grad_logits = torch.empty_like(logits)
        for s in range(0, logits.shape[0], chunk):
            rows = slice(s, s + chunk)
            z = logits[rows].to(lse.dtype) * inv_temperature
            grad_logits[rows] = _grad_scaled_logits(
                z, labels[rows], valid[rows], lse[rows], entropy[rows] if with_entropy else None,
                grad_logp[rows], grad_entropy[rows] if with_entropy else None, inv_temperature,
            ).to(logits.dtype)
        return grad_logits, None, None, None, None


# --------------------------------------------------------------------------- input checks


def _check_labels_dtype(labels: torch.Tensor) -> None:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")


def _label_problem(labels: torch.Tensor, vocab: int, ignore_index: int) -> losses.Problem:
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    return bad, lambda where: (
        f"labels[{where}] = {int(labels[where])} is outside the vocabulary [0, {vocab}) and is not ignore_index ({ignore_index})"
    )


def _head_problems(hidden, weight, bias, labels, ignore_index) -> list[losses.Problem]:
    """The value checks of the log-prob ops (check=True): labels in the vocabulary, finite inputs (hidden
    only at rows with a label: the ops never read the others)."""
    nonfinite_hidden = ~torch.isfinite(hidden) & (labels != ignore_index)[..., None]
    problems = [_label_problem(labels, weight.shape[0], ignore_index),
                (nonfinite_hidden, losses.nonfinite_problem("hidden", hidden)[1]),
                losses.nonfinite_problem("weight", weight)]
    if bias is not None:
        problems.append(losses.nonfinite_problem("bias", bias))
    return problems


def _check_temperature(temperature: float) -> None:
    losses.check_finite_number("temperature", temperature, positive=True)


# --------------------------------------------------------------------------- public ops


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    check: bool = False,
    impl: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the labels, straight from hidden states and the LM head.

    ``log softmax((hidden @ weight.T + bias) / temperature)[label]`` for hidden [N, H], weight [V, H],
    bias [V] | None, labels [N] (the token each hidden state predicts: the caller shifts). Rows whose
    label is ``ignore_index`` give 0, cost no kernel work, and their hidden states are never used (a
    padded position may hold anything, even NaN). With ``return_entropy`` also the entropy of
    each row's distribution ``-Σ_v p_v log p_v`` (0 for ignored rows), for PPO. Returns float32 (float64
    for float64 inputs on the torch path); gradients reach hidden, weight and bias (only those that
    require grad are computed). No [N, V] tensor is ever built: the Triton path keeps logit tiles on chip
    (its backward writes dz one vocabulary chunk at a time with impl="chunked"), the torch path builds
    [chunk, V] at a time.

    hidden and weight may have different dtypes (bf16 hidden with an fp32 head): the products are taken
    in hidden's dtype, accumulated in fp32, and the head is never copied whole. ``check=True`` raises a
    ValueError for a label outside [0, V) that is not ignore_index and for a non-finite hidden, weight or
    bias (one host sync); unchecked, such a label gives NaN for its row. ``impl``: "chunked" | "tiled" |
    None (GUARD_LOGPROB_IMPL, else "chunked"), the Triton backward's design.
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] and labels [N], got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    _check_head(hidden, weight, bias, labels, temperature)
    if check:
        losses.raise_problems(_head_problems(hidden, weight, bias, labels, ignore_index))
    return _token_logprobs(hidden, weight, labels, bias, 1.0 / temperature, ignore_index, return_entropy, impl)


def _check_head(hidden, weight, bias, labels, temperature) -> None:
    """The sync-free checks token_logprobs and sequence_logprobs share."""
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden [..., H] and weight [V, H] must have the same H, got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if t is not None and not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
    _check_labels_dtype(labels)
    _check_temperature(temperature)


def _token_logprobs(hidden, weight, labels, bias, inv_temperature, ignore_index, return_entropy, impl):
    impl = _resolve_impl(impl)
    if _use_triton(hidden):
        from guard.kernels.linear_logprobs import LinearLogprobsFunction

        logp, entropy = LinearLogprobsFunction.apply(
            hidden, weight, bias, labels, inv_temperature, ignore_index, return_entropy, impl)
    else:
        logp, entropy = _ChunkedLinearLogprobs.apply(hidden, weight, bias, labels, inv_temperature, ignore_index, return_entropy)
    return (logp, entropy) if return_entropy else logp


def token_logprobs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    check: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs` for a caller that already has logits [N, V]: reads them once forward and
    once backward, writes the gradient once, allocates nothing [N, V] besides that gradient. ``check``
    as in :func:`token_logprobs` (labels in the vocabulary, finite logits)."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, V] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    _check_labels_dtype(labels)
    _check_temperature(temperature)
    if check:
        losses.raise_problems([_label_problem(labels, logits.shape[1], ignore_index), losses.nonfinite_problem("logits", logits)])
    inv_temperature = 1.0 / temperature
    if _use_triton(logits):
        from guard.kernels.logits_logprobs import LogitsLogprobsFunction

        fn = LogitsLogprobsFunction
    else:
        fn = _ChunkedLogitsLogprobs
    logp, entropy = fn.apply(logits, labels, inv_temperature, ignore_index, return_entropy)
    return (logp, entropy) if return_entropy else logp


def sequence_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    average: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    check: bool = False,
    impl: str | None = None,
) -> torch.Tensor:
    """Sequence log-probabilities [S]: the sum (or with ``average`` the mean) over the non-ignored tokens
    of :func:`token_logprobs`, for hidden [S, T, H] and labels [S, T] (padded rows), or for packed rows:
    hidden [N, H] and labels [N] holding S sequences back to back, sequence s being rows
    ``cu_seqlens[s]:cu_seqlens[s + 1]`` (``cu_seqlens`` [S + 1] integers from 0 to N, as varlen attention
    takes them). Either way labels[..., t] is the token hidden[..., t] predicts (the caller shifts; in a
    packed row, shift the labels left by one and put ignore_index last, so the row's last position and
    every sequence's first token are ignored). A sequence whose labels are all ignore_index has no token
    to score: it gives 0 (the log-probability of an empty continuation), with or without ``average``, and
    no gradient. ``check`` and ``impl`` as in :func:`token_logprobs` (``check`` also checks cu_seqlens);
    an error names the (sequence, position) of a bad label, or the packed row's position."""
    _check_layout(hidden, labels, cu_seqlens, "S")
    _check_head(hidden, weight, bias, labels, temperature)
    if check:
        losses.raise_problems(_head_problems(hidden, weight, bias, labels, ignore_index)
                              + _cu_seqlens_problems(cu_seqlens, hidden.shape[0]))
    return _sequence_logprobs(hidden, weight, labels, bias, temperature, ignore_index, average, impl, cu_seqlens)


def _check_layout(hidden: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor | None, rows: str) -> None:
    """The shapes of padded rows (hidden [rows, T, H], labels [rows, T]) or of a packed row (hidden [N, H],
    labels [N], cu_seqlens [rows + 1] integers)."""
    if cu_seqlens is None:
        if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
            raise ValueError(f"hidden must be [{rows}, T, H] and labels [{rows}, T] (or a packed row with cu_seqlens), "
                             f"got {tuple(hidden.shape)} and {tuple(labels.shape)}")
        return
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"with cu_seqlens, hidden must be a packed row [N, H] and labels [N], got "
                         f"{tuple(hidden.shape)} and {tuple(labels.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be [{rows} + 1] with at least 2 entries, got {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}")


def _cu_seqlens_problems(cu_seqlens: torch.Tensor | None, n: int) -> list[losses.Problem]:
    """check=True of a packed row's boundaries: 0 first, N last, never decreasing."""
    if cu_seqlens is None:
        return []
    ends = torch.zeros_like(cu_seqlens, dtype=torch.bool)
    ends[0], ends[-1] = cu_seqlens[0] != 0, cu_seqlens[-1] != n
    decreasing = torch.cat([cu_seqlens.new_zeros(1, dtype=torch.bool), cu_seqlens.diff() < 0])
    return [(ends, lambda i: f"cu_seqlens[{i}] = {int(cu_seqlens[i])}: a packed row's boundaries run from 0 to "
                             f"its {n} rows"),
            (decreasing, lambda i: f"cu_seqlens[{i}] = {int(cu_seqlens[i])} is below cu_seqlens[{i - 1}] = "
                                   f"{int(cu_seqlens[i - 1])}: boundaries never decrease")]


def segment_sums(values: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[S] sums of values[cu_seqlens[s]:cu_seqlens[s + 1]] for a packed row's values [N] (differentiable).
    The difference of a float64 running sum: no atomics (the same bits every run, on every device), no host
    sync, and a sum of N values of |x| <= M off by at most ~N·M·1e-16, far below float32's rounding."""
    running = torch.cat([values.new_zeros(1, dtype=torch.float64), values.double().cumsum(0)])
    cu = cu_seqlens.long()
    return (running[cu[1:]] - running[cu[:-1]]).to(values.dtype)


def _sequence_logprobs(hidden, weight, labels, bias, temperature, ignore_index, average, impl, cu_seqlens=None):
    if cu_seqlens is not None:
        logp = _token_logprobs(hidden, weight, labels, bias, 1.0 / temperature, ignore_index, False, impl)
        total = segment_sums(logp, cu_seqlens)
        if average:
            total = total / segment_sums((labels != ignore_index).to(total.dtype), cu_seqlens).clamp(min=1)
        return total
    seqs, steps, size = hidden.shape
    logp = _token_logprobs(
        hidden.reshape(seqs * steps, size), weight, labels.reshape(-1), bias, 1.0 / temperature, ignore_index, False, impl
    ).view(seqs, steps)
    total = logp.sum(dim=1)
    if average:
        total = total / (labels != ignore_index).sum(dim=1).clamp(min=1)
    return total


@dataclass
class PreferenceOutput:
    """What :func:`fused_preference_loss` returns. B pairs, C categories."""

    loss: torch.Tensor  # scalar: mean of pair_losses
    pair_losses: torch.Tensor  # [B]
    logps: torch.Tensor  # [2B] policy sequence log-probs, chosen rows first
    rewards: torch.Tensor  # [2B] implicit rewards beta * (logps - ref_logps)
    moments: torch.Tensor | None  # [C, 2, 4] mean, variance, skewness, excess kurtosis of chosen / rejected rewards
    counts: torch.Tensor | None  # [C] pairs per category


@dataclass
class RewardOutput:
    """What :func:`bt_loss` returns. B pairs, C categories."""

    loss: torch.Tensor  # scalar: mean of pair_losses
    pair_losses: torch.Tensor  # [B]
    moments: torch.Tensor | None  # [C, 2, 4] of chosen (0) and rejected (1) rewards
    counts: torch.Tensor | None  # [C]
    accuracy: torch.Tensor  # scalar: share of pairs with r_c > r_r


def _check_categories(categories: torch.Tensor | None, num_categories: int | None, batch: int) -> None:
    """The sync-free checks of categories; their values are checked with check=True (_category_problems)."""
    if categories is None:
        if num_categories is not None:
            raise ValueError("num_categories was given without categories")
        return
    if num_categories is None or num_categories < 1:
        raise ValueError(f"categories need num_categories >= 1, got {num_categories}")
    if categories.shape != (batch,):
        raise ValueError(f"categories must be [B] = [{batch}] (one per pair), got {tuple(categories.shape)}")
    if categories.dtype.is_floating_point or categories.dtype == torch.bool:
        raise ValueError(f"categories must be an integer tensor, got {categories.dtype}")


def _category_problems(categories: torch.Tensor | None, num_categories: int | None) -> list[losses.Problem]:
    return [] if categories is None else [losses.category_problem(categories, num_categories)]


def _pair_moments(rewards_chosen, rewards_rejected, categories, num_categories):
    if categories is None:
        return None, None
    return losses.category_moments(torch.stack([rewards_chosen, rewards_rejected], dim=1), categories, num_categories, check=False)


def _empty_response_problem(labels: torch.Tensor, ignore_index: int, batch: int,
                            cu_seqlens: torch.Tensor | None = None) -> losses.Problem:
    scored = (labels != ignore_index).long()
    empty = (scored.sum(dim=1) if cu_seqlens is None else segment_sums(scored, cu_seqlens)) == 0

    def message(row) -> str:
        side = "chosen" if row < batch else "rejected"
        where = f"labels[{row}]" if cu_seqlens is None else f"sequence {row} of the packed row"
        return (f"{where} marks no response token (every label is ignore_index, {ignore_index}): the {side} "
                f"sequence of pair {row % batch} is empty, so the pair has no log-ratio")

    return empty, message


def fused_preference_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_logps: torch.Tensor | None,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    categories: torch.Tensor | None = None,
    num_categories: int | None = None,
    previous_logratios: torch.Tensor | None = None,
    alphas: float | Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    cu_seqlens: torch.Tensor | None = None,
    check: bool = False,
    impl: str | None = None,
) -> PreferenceOutput:
    """A preference-optimization step's loss in one op: sequence log-probs from the LM head, log-ratios,
    the loss, implicit rewards and per-category reward moments, with gradients from every output.

    Shapes (B pairs, T tokens, H hidden, V vocab, C categories, R earlier SPO rounds):
      hidden [2B, T, H], labels [2B, T] -- rows ordered chosen first: row i and row B+i are one pair;
      labels[s, t] is the token hidden[s, t] predicts (shifted by the caller), ``ignore_index`` marks
      prompt and padding; weight [V, H], bias [V] | None; ref_logps [2B] (the reference model's sequence
      log-probs, a constant) or None for reference-free; categories [B] ints in [0, C) with
      num_categories = C, or None; previous_logratios [R, 2B] (SPO's cached log-ratios, oldest round
      first) with alphas (a float or R floats).
      Packed instead of padded: hidden [N, H] and labels [N] hold the 2B sequences back to back (chosen
      first, as the rows above), sequence s being rows cu_seqlens[s]:cu_seqlens[s + 1] (cu_seqlens [2B + 1]),
      labels shifted as :func:`sequence_logprobs` says; only the response tokens are read either way.

    With lr = logps − ref_logps, lr_c = lr[:B], lr_r = lr[B:], Δ = lr_c − lr_r, ε = label_smoothing:
      sigmoid   (DPO)        -(1-ε)·logσ(βΔ) - ε·logσ(-βΔ)
      ipo                    (Δ - 1/(2β))²
      apo_zero  (APO eq. 7)  1 - σ(β·lr_c) + σ(β·lr_r)
      apo_down  (APO eq. 8)  σ(β·lr_c) + 1 - σ(β·(lr_c - lr_r))
      kto_pair  (APO eq. 9)  (1 - σ(β(lr_c - z_r)) + 1 - σ(β(z_c - lr_r))) / 2,
                             z_c = mean(lr_c).clamp(min=0), z_r = mean(lr_r).clamp(min=0), both detached
      spo       (SPO eq. 7)  -logσ(R_n(y_w) - R_n(y_l)),  R_n(y) = β·lr(y) + Σ_i κ_i·lr_i(y) over earlier
                             rounds, κ from guard.losses.spo_kappas(β, alphas, R); R = 0 is DPO

    Returns :class:`PreferenceOutput`: loss (mean of pair_losses), pair_losses [B], logps [2B] (fp32),
    rewards [2B] = β·lr, moments [C, 2, 4] (mean, population variance, skewness, excess kurtosis of the
    chosen / rejected rewards of each category; empty categories give zeros) and counts [C], or None
    for both without categories. Gradients from loss, pair_losses, logps, rewards and moments reach
    hidden, weight and bias.

    A row whose labels are all ignore_index (no response token, e.g. truncated away) has no log-ratio:
    ``check=True`` refuses it with a ValueError naming the row and its pair; unchecked, its logps is 0
    (the empty sum), its reward is −β·ref_logps and its pair's loss is computed from that. ``check=True``
    also checks labels, finite hidden / weight / bias / ref_logps / previous_logratios and categories in
    range, with one host sync; unchecked, bad values give NaN (see the module docstring). beta,
    label_smoothing, temperature and alphas are always checked (finite, in range). ``impl`` as in
    :func:`token_logprobs`.

    Launches on the Triton path: forward = the permutation (sort, sum), the linear log-softmax kernel and
    its split merge, the per-sequence sum, the SPO shift (2 ops per earlier round), 1 head kernel
    (losses, rewards, moments); backward = 1 head kernel + the log-prob backward (chunked: 1 kernel and
    the GEMMs per vocabulary chunk).
    """
    losses.check_preference_params(loss_type, beta, label_smoothing, PREFERENCE_LOSS_TYPES)
    if cu_seqlens is None and (hidden.dim() != 3 or hidden.shape[0] % 2):
        raise ValueError(f"hidden must be [2B, T, H] (chosen rows, then rejected rows), got {tuple(hidden.shape)}")
    if cu_seqlens is None and labels.shape != hidden.shape[:2]:
        raise ValueError(f"labels must be [2B, T] = {list(hidden.shape[:2])}, got {tuple(labels.shape)}")
    _check_layout(hidden, labels, cu_seqlens, "2B")
    rows = hidden.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    if rows % 2:
        raise ValueError(f"cu_seqlens must hold 2B + 1 boundaries (chosen sequences, then rejected), got {rows + 1}")
    batch = rows // 2
    if ref_logps is not None and ref_logps.shape != (rows,):
        raise ValueError(f"ref_logps must be [2B] = [{rows}], got {tuple(ref_logps.shape)}")
    _check_categories(categories, num_categories, batch)
    if previous_logratios is not None:
        if loss_type != "spo":
            raise ValueError(f"previous_logratios only applies to loss_type='spo', got {loss_type!r}")
        if previous_logratios.dim() != 2 or previous_logratios.shape[1] != rows:
            raise ValueError(f"previous_logratios must be [R, 2B] = [R, {rows}], got {tuple(previous_logratios.shape)}")
    rounds = previous_logratios.shape[0] if previous_logratios is not None else 0
    kappas = tuple(losses.spo_kappas(beta, alphas if alphas is not None else 0.0, rounds)) if loss_type == "spo" else ()
    _check_head(hidden, weight, bias, labels, temperature)
    if check:
        problems = _head_problems(hidden, weight, bias, labels, ignore_index)
        cu_problems = _cu_seqlens_problems(cu_seqlens, hidden.shape[0])
        if cu_problems:  # the boundaries first: the empty-response check reads them
            losses.raise_problems(cu_problems)
        problems.append(_empty_response_problem(labels, ignore_index, batch, cu_seqlens))
        for name, t in (("ref_logps", ref_logps), ("previous_logratios", previous_logratios)):
            if t is not None:
                problems.append(losses.nonfinite_problem(name, t))
        losses.raise_problems(problems + _category_problems(categories, num_categories))

    logps = _sequence_logprobs(hidden, weight, labels, bias, temperature, ignore_index, False, impl, cu_seqlens)
    if _use_triton(hidden):
        from guard.kernels.preference_head import PreferenceHeadFunction

        loss, pair, rewards, moments, counts = PreferenceHeadFunction.apply(
            logps.float(),
            ref_logps.float() if ref_logps is not None else None,
            categories,
            previous_logratios.float() if previous_logratios is not None else None,
            loss_type, beta, label_smoothing, kappas, num_categories,
        )
        return PreferenceOutput(loss, pair, logps, rewards, moments, counts)

    logratios = logps - ref_logps.to(logps.dtype) if ref_logps is not None else logps
    lr_c, lr_r = logratios[:batch], logratios[batch:]
    if loss_type == "spo":
        prev = previous_logratios if previous_logratios is not None else logps.new_zeros(0, rows)
        prev = prev.to(logps.dtype)
        pair = losses.spo_pair_losses(lr_c, lr_r, prev[:, :batch], prev[:, batch:], beta=beta,
                                      alphas=alphas if alphas is not None else 0.0, check=False)
    else:
        pair = losses.pair_losses(lr_c, lr_r, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing, check=False)
    rewards = beta * logratios
    moments, counts = _pair_moments(rewards[:batch], rewards[batch:], categories, num_categories)
    return PreferenceOutput(pair.mean(), pair, logps, rewards, moments, counts)


def bt_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    categories: torch.Tensor | None = None,
    num_categories: int | None = None,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
    check: bool = False,
) -> RewardOutput:
    """The reward-model Bradley–Terry loss with category moments, fused into one kernel each way.

    ``pair_losses = -logσ(r_c - r_r - margin) + center_coef·(r_c + r_r)²`` for chosen_rewards and
    rejected_rewards [B] (any float dtype; math in fp32), margin a float or [B] or None, categories [B]
    in [0, C) with num_categories = C. Returns :class:`RewardOutput` with loss = mean, pair_losses [B],
    moments [C, 2, 4] and counts [C] (None without categories) and accuracy = share of r_c > r_r.
    Gradients from loss, pair_losses and moments reach both reward tensors.

    ``check=True`` raises a ValueError for non-finite rewards or margin and categories out of range (one
    host sync); unchecked, non-finite rewards give non-finite losses and a stray category NaN moments.
    A float margin and center_coef are always checked (finite).
    """
    if chosen_rewards.dim() != 1 or chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards and rejected_rewards must both be [B], got {tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    batch = chosen_rewards.shape[0]
    _check_categories(categories, num_categories, batch)
    if isinstance(margin, torch.Tensor) and margin.shape != (batch,):
        raise ValueError(f"margin must be a float or [B] = [{batch}], got {tuple(margin.shape)}")
    if margin is not None and not isinstance(margin, torch.Tensor):
        losses.check_finite_number("margin", margin)
    losses.check_finite_number("center_coef", center_coef)
    if check:
        problems = [losses.nonfinite_problem("chosen_rewards", chosen_rewards),
                    losses.nonfinite_problem("rejected_rewards", rejected_rewards)]
        if isinstance(margin, torch.Tensor):
            problems.append(losses.nonfinite_problem("margin", margin))
        losses.raise_problems(problems + _category_problems(categories, num_categories))
    if _use_triton(chosen_rewards):
        from guard.kernels.bt_head import BTHeadFunction

        loss, pair, moments, counts, accuracy = BTHeadFunction.apply(
            chosen_rewards, rejected_rewards, margin, categories, num_categories, center_coef
        )
        return RewardOutput(loss, pair, moments, counts, accuracy)

    pair = losses.bt_pair_losses(chosen_rewards, rejected_rewards, margin=margin, center_coef=center_coef, check=False)
    moments, counts = _pair_moments(chosen_rewards, rejected_rewards, categories, num_categories)
    accuracy = (chosen_rewards > rejected_rewards).float().mean()
    return RewardOutput(pair.mean(), pair, moments, counts, accuracy)
