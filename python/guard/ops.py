"""guard's fused ops: log-probs straight from hidden states and the LM head, and the preference / reward
losses with per-category reward moments, forward and backward. Callable from anyone's training code.

    from guard import ops
    logp = ops.token_logprobs(hidden, lm_head.weight, labels)                     # [N], no [N, V] logits
    out = ops.fused_preference_loss(hidden, lm_head.weight, labels, ref_logps, loss_type="sigmoid")
    out.loss.backward()

Backends: on CUDA tensors the Triton kernels in guard.kernels run; elsewhere a chunked torch path computes
the same numbers with memory bounded by a [chunk, V] tile (so users without a GPU can call every op).
`set_backend("triton" | "torch" | "auto")` or `with backend(...)` forces one (tests run the Triton kernels
on the CPU under TRITON_INTERPRET=1 this way). Inputs are checked; a ValueError names the row and reason.
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
    "sequence_logprobs",
    "set_backend",
    "token_logprobs",
    "token_logprobs_from_logits",
]

PREFERENCE_LOSS_TYPES = (*losses.LOSS_TYPES, "spo")
_BACKENDS = ("auto", "triton", "torch")
_backend = os.environ.get("GUARD_BACKEND", "auto")

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


# --------------------------------------------------------------------------- torch path (reference and CPU)


def _logprob_stats(z: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, with_entropy: bool):
    """log p(label), entropy (or None) and lse of scaled logits z [n, V]; ignored rows give 0."""
    lse = torch.logsumexp(z, dim=-1)
    logp = torch.where(valid, z.gather(1, labels.clamp(min=0)[:, None])[:, 0] - lse, 0.0)
    entropy = None
    if with_entropy:
        entropy = torch.where(valid, lse - (torch.softmax(z, dim=-1) * z).sum(-1), 0.0)
    return logp, entropy, lse


def _grad_scaled_logits(z, labels, valid, lse, entropy, grad_logp, grad_entropy, inv_temperature):
    """d(Σ g_logp·logp + g_ent·entropy) / d(logits) for z = logits / T."""
    logp_all = z - lse[:, None]
    p = torch.exp(logp_all)
    dz = -grad_logp[:, None] * p
    dz.scatter_add_(1, labels.clamp(min=0)[:, None], grad_logp[:, None])
    if entropy is not None:
        dz -= grad_entropy[:, None] * p * (logp_all + entropy[:, None])
    return torch.where(valid[:, None], dz * inv_temperature, 0.0)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _ChunkedLinearLogprobs(torch.autograd.Function):
    """The torch path of token_logprobs: logits built [chunk, V] at a time and recomputed in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, inv_temperature, ignore_index, with_entropy):
        ctype = _compute_dtype(hidden.dtype)
        chunk = max(1, TORCH_CHUNK_ELEMENTS // max(weight.shape[0], 1))
        valid = labels != ignore_index
        logp, lse = hidden.new_zeros(hidden.shape[0], dtype=ctype), hidden.new_zeros(hidden.shape[0], dtype=ctype)
        entropy = hidden.new_zeros(hidden.shape[0] if with_entropy else 0, dtype=ctype)
        w, b = weight.to(ctype), None if bias is None else bias.to(ctype)  # converted once, not per chunk
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
        hidden, weight, bias, labels, lse, entropy = ctx.saved_tensors
        inv_temperature, ignore_index, with_entropy, chunk = ctx.args
        ctype = lse.dtype
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.to(ctype)
        grad_entropy = torch.zeros_like(entropy) if grad_entropy is None else grad_entropy.to(ctype)
        valid = labels != ignore_index
        grad_hidden = torch.zeros(hidden.shape, dtype=ctype, device=hidden.device)
        grad_weight = torch.zeros(weight.shape, dtype=ctype, device=weight.device)
        grad_bias = torch.zeros(weight.shape[0], dtype=ctype, device=weight.device) if bias is not None else None
        w, b = weight.to(ctype), None if bias is None else bias.to(ctype)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            z = _ChunkedLinearLogprobs._scaled_logits(hidden[rows], w, b, inv_temperature, ctype)
            dlogits = _grad_scaled_logits(
                z, labels[rows], valid[rows], lse[rows], entropy[rows] if with_entropy else None,
                grad_logp[rows], grad_entropy[rows] if with_entropy else None, inv_temperature,
            )
            grad_hidden[rows] = dlogits @ w
            grad_weight += dlogits.T @ hidden[rows].to(ctype)
            if grad_bias is not None:
                grad_bias += dlogits.sum(0)
        return (grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype),
                grad_bias.to(bias.dtype) if bias is not None else None, None, None, None, None)


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


def _check_labels(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    index = losses.first_index((labels != ignore_index) & ((labels < 0) | (labels >= vocab)))
    if index is not None:
        raise ValueError(
            f"labels[{index}] = {int(labels[index])} is outside the vocabulary [0, {vocab}) and is not ignore_index ({ignore_index})"
        )


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the labels, straight from hidden states and the LM head.

    ``log softmax((hidden @ weight.T + bias) / temperature)[label]`` for hidden [N, H], weight [V, H],
    bias [V] | None, labels [N] (the token each hidden state predicts: the caller shifts). Rows whose
    label is ``ignore_index`` give 0. With ``return_entropy`` also the entropy of each row's distribution
    ``-Σ_v p_v log p_v`` (0 for ignored rows), for PPO. Returns float32 (float64 for float64 inputs on
    the torch path); gradients reach hidden, weight and bias. No [N, V] tensor is ever built: the Triton
    path keeps logit tiles on chip, the torch path builds [chunk, V] at a time.
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] and labels [N], got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    _check_head(hidden, weight, bias, labels, ignore_index, temperature)
    return _token_logprobs(hidden, weight, labels, bias, 1.0 / temperature, ignore_index, return_entropy)


def _check_head(hidden, weight, bias, labels, ignore_index, temperature) -> None:
    """The checks token_logprobs and sequence_logprobs share; labels keep their shape so errors name
    (sequence, position) for [S, T] labels."""
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden [..., H] and weight [V, H] must have the same H, got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    _check_labels(labels, weight.shape[0], ignore_index)
    _check_temperature(temperature)


def _token_logprobs(hidden, weight, labels, bias, inv_temperature, ignore_index, return_entropy):
    if _use_triton(hidden):
        from guard.kernels.linear_logprobs import LinearLogprobsFunction

        fn = LinearLogprobsFunction
    else:
        fn = _ChunkedLinearLogprobs
    logp, entropy = fn.apply(hidden, weight, bias, labels, inv_temperature, ignore_index, return_entropy)
    return (logp, entropy) if return_entropy else logp


def token_logprobs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs` for a caller that already has logits [N, V]: reads them once forward and
    once backward, writes the gradient once, allocates nothing [N, V] besides that gradient."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, V] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    _check_labels(labels, logits.shape[1], ignore_index)
    _check_temperature(temperature)
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
) -> torch.Tensor:
    """Sequence log-probabilities [S]: the sum (or with ``average`` the mean) over the non-ignored tokens
    of :func:`token_logprobs`, for hidden [S, T, H] and labels [S, T]. A fully ignored row gives 0."""
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be [S, T, H] and labels [S, T], got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    _check_head(hidden, weight, bias, labels, ignore_index, temperature)
    seqs, steps, size = hidden.shape
    logp = _token_logprobs(
        hidden.reshape(seqs * steps, size), weight, labels.reshape(-1), bias, 1.0 / temperature, ignore_index, False
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
    if categories is None:
        if num_categories is not None:
            raise ValueError("num_categories was given without categories")
        return
    if num_categories is None or num_categories < 1:
        raise ValueError(f"categories need num_categories >= 1, got {num_categories}")
    if categories.shape != (batch,):
        raise ValueError(f"categories must be [B] = [{batch}] (one per pair), got {tuple(categories.shape)}")
    losses.check_category_values(categories, num_categories)


def _pair_moments(rewards_chosen, rewards_rejected, categories, num_categories):
    if categories is None:
        return None, None
    return losses.category_moments(torch.stack([rewards_chosen, rewards_rejected], dim=1), categories, num_categories)


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

    Launches on the Triton path: forward = the linear log-softmax kernel + its split merge (7 small ops)
    + 2 ops for the per-sequence sum + 1 head kernel (losses, rewards, moments); backward = 1 head kernel
    + 1 linear kernel (+ zero-fills and dtype casts).
    """
    losses.check_preference_params(loss_type, beta, label_smoothing, PREFERENCE_LOSS_TYPES)
    if hidden.dim() != 3 or hidden.shape[0] % 2:
        raise ValueError(f"hidden must be [2B, T, H] (chosen rows, then rejected rows), got {tuple(hidden.shape)}")
    rows = hidden.shape[0]
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

    logps = sequence_logprobs(hidden, weight, labels, bias=bias, temperature=temperature, ignore_index=ignore_index)
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
                                      alphas=alphas if alphas is not None else 0.0)
    else:
        pair = losses.pair_losses(lr_c, lr_r, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing)
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
) -> RewardOutput:
    """The reward-model Bradley–Terry loss with category moments, fused into one kernel each way.

    ``pair_losses = -logσ(r_c - r_r - margin) + center_coef·(r_c + r_r)²`` for chosen_rewards and
    rejected_rewards [B] (any float dtype; math in fp32), margin a float or [B] or None, categories [B]
    in [0, C) with num_categories = C. Returns :class:`RewardOutput` with loss = mean, pair_losses [B],
    moments [C, 2, 4] and counts [C] (None without categories) and accuracy = share of r_c > r_r.
    Gradients from loss, pair_losses and moments reach both reward tensors.
    """
    if chosen_rewards.dim() != 1 or chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards and rejected_rewards must both be [B], got {tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    batch = chosen_rewards.shape[0]
    _check_categories(categories, num_categories, batch)
    if isinstance(margin, torch.Tensor) and margin.shape != (batch,):
        raise ValueError(f"margin must be a float or [B] = [{batch}], got {tuple(margin.shape)}")
    if _use_triton(chosen_rewards):
        from guard.kernels.bt_head import BTHeadFunction

        loss, pair, moments, counts, accuracy = BTHeadFunction.apply(
            chosen_rewards, rejected_rewards, margin, categories, num_categories, center_coef
        )
        return RewardOutput(loss, pair, moments, counts, accuracy)

    pair = losses.bt_pair_losses(chosen_rewards, rejected_rewards, margin=margin, center_coef=center_coef)
    moments, counts = _pair_moments(chosen_rewards, rejected_rewards, categories, num_categories)
    accuracy = (chosen_rewards > rejected_rewards).float().mean()
    return RewardOutput(pair.mean(), pair, moments, counts, accuracy)
