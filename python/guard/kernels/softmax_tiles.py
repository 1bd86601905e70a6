"""Tile-level pieces of the log-softmax that both log-prob kernels (linear_logprobs, logits_logprobs) share:
the online logsumexp fold of a logit tile, and the gradient of log p(label) and the entropy for a tile.

For scaled logits z of one row: lse = log Σ_v e^{z_v}; log p_v = z_v − lse; entropy H = lse − Σ_v p_v z_v.
  d log p(label) / dz_v = onehot_v − p_v
  d H / dz_v            = −p_v (log p_v + H)
"""

import triton
import triton.language as tl


@triton.jit
def _online_logsumexp_fold(run_max, run_sum, run_ent, label_logit, z, cols, col_mask, labels, WITH_ENTROPY: tl.constexpr):
    """Fold a [BLOCK_N, BLOCK_V] tile z (columns outside col_mask ignored) into the running max m,
    s = Σ e^{z−m}, t = Σ e^{z−m}·z (with the entropy) and the label's logit."""
    z_safe = tl.where(col_mask[None, :], z, 0.0)
    z = tl.where(col_mask[None, :], z, float("-inf"))
    new_max = tl.maximum(run_max, tl.max(z, axis=1))
    rescale = tl.exp(run_max - new_max)
    p = tl.exp(z - new_max[:, None])
    run_sum = run_sum * rescale + tl.sum(p, axis=1)
    if WITH_ENTROPY:
        run_ent = run_ent * rescale + tl.sum(p * z_safe, axis=1)
    label_logit += tl.sum(tl.where(cols[None, :] == labels[:, None], z_safe, 0.0), axis=1)
    return new_max, run_sum, run_ent, label_logit


@triton.jit
def _logprob_entropy_grad(z, lse, cols, labels, g_logp, g_ent, entropy, WITH_ENTROPY: tl.constexpr):
    """d(g_logp·log p(label) + g_ent·H)/dz for a tile z [BLOCK_N, BLOCK_V] of scaled logits."""
    logp = z - lse[:, None]
    p = tl.exp(logp)
    dz = g_logp[:, None] * (tl.where(cols[None, :] == labels[:, None], 1.0, 0.0) - p)
    if WITH_ENTROPY:
        dz -= g_ent[:, None] * p * (logp + entropy[:, None])
    return dz
