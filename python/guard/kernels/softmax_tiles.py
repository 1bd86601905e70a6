"""Tile-level pieces of the log-softmax that both log-prob kernels (linear_logprobs, logits_logprobs) share:
the online logsumexp fold of a logit tile, the merge of its partial sums, and the gradient of log p(label)
and the entropy for a tile.

For scaled logits z of one row with max m: s = Σ_v e^{z_v−m}, t = Σ_v e^{z_v−m}·(z_v − m), so
  lse = m + log s,   log p_v = z_v − lse,   entropy H = −Σ_v p_v log p_v = log s − t/s.
t is kept in this shifted form: the textbook lse − Σ_v p_v z_v subtracts two numbers of the size of the
logits (|z| ~ 50 in a peaked bf16 model) to get an entropy near 0, losing ~|z|·eps of it in fp32.
  d log p(label) / dz_v = onehot_v − p_v
  d H / dz_v            = −p_v (log p_v + H)
"""

import triton
import triton.language as tl


@triton.jit
def _online_logsumexp_fold(run_max, run_sum, run_ent, label_logit, z, cols, col_mask, labels, WITH_ENTROPY: tl.constexpr):
    """Fold a [BLOCK_N, BLOCK_V] tile z (columns outside col_mask ignored) into the running max m,
    s = Σ e^{z−m}, t = Σ e^{z−m}·(z − m) (with the entropy) and the label's logit."""
    z_safe = tl.where(col_mask[None, :], z, 0.0)
    z = tl.where(col_mask[None, :], z, float("-inf"))
    new_max = tl.maximum(run_max, tl.max(z, axis=1))
    rescale = tl.exp(run_max - new_max)
    shifted = z - new_max[:, None]
    p = tl.exp(shifted)
    if WITH_ENTROPY:
        # rebasing t from the old max to the new one: Σ e^{z−m'}(z − m') = e^{m−m'}·(t + s·(m − m')); on the
        # first tile s = 0 and m = −inf, where the product would be 0·inf (so would p·(z − m') be at masked columns)
        rebase = tl.where(run_sum > 0.0, run_max - new_max, 0.0)
        run_ent = rescale * (run_ent + run_sum * rebase) + tl.sum(p * tl.where(col_mask[None, :], shifted, 0.0), axis=1)
    run_sum = run_sum * rescale + tl.sum(p, axis=1)
    label_logit += tl.sum(tl.where(cols[None, :] == labels[:, None], z_safe, 0.0), axis=1)
    return new_max, run_sum, run_ent, label_logit


@triton.jit
def _finish_row(run_max, run_sum, run_ent, label_logit, labels, valid, V):
    """(log p(label), entropy, lse) of rows from their folded sums: 0 where not valid (ignored rows), NaN
    for a row whose label lies outside [0, V) (an unchecked bad label is never a plausible number)."""
    run_sum = tl.where(valid, run_sum, 1.0)  # rows without a label folded nothing: no log(0), no 0/0
    lse = run_max + tl.log(run_sum)
    bad = (labels < 0) | (labels >= V)
    logp = tl.where(valid, tl.where(bad, float("nan"), label_logit - lse), 0.0)
    entropy = tl.where(valid, tl.where(bad, float("nan"), tl.log(run_sum) - run_ent / run_sum), 0.0)
    lse = tl.where(valid, tl.where(bad, float("nan"), lse), 0.0)
    return logp, entropy, lse


@triton.jit
def _logprob_entropy_grad(z, lse, cols, labels, g_logp, g_ent, entropy, WITH_ENTROPY: tl.constexpr):
    """d(g_logp·log p(label) + g_ent·H)/dz for a tile z [BLOCK_N, BLOCK_V] of scaled logits."""
    logp = z - lse[:, None]
    p = tl.exp(logp)
    dz = g_logp[:, None] * (tl.where(cols[None, :] == labels[:, None], 1.0, 0.0) - p)
    if WITH_ENTROPY:
        dz -= g_ent[:, None] * p * (logp + entropy[:, None])
    return dz
