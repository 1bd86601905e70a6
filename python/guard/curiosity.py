"""GUARD's curiosity bonus: Random Network Distillation (RND, Burda et al. 2019) on the policy's response
features, as in the GUARD paper's appendix B ("2-layer MLP with ReLU activations, hidden size 512 ...
Adam (lr 1e-4) on the cosine similarity loss between target and predictor features. Intrinsic reward is
scaled by η_cur = 0.05 and added to the scalar RM score before PPO optimization").

Once per PPO rollout batch::

    rnd = RNDCuriosity(policy.config.hidden_size, device=device)        # built once, before training
    ...
    hidden = policy.model(input_ids, attention_mask=attn).last_hidden_state  # the backbone: no vocab logits
    feats = mean_pool(hidden, response_mask).detach()                  # [N, H] float32
    rewards = rm_scores + rnd.intrinsic_reward(feats)                 # η · novelty / running RMS
    stats["rnd_loss"] = rnd.update(feats)                             # one Adam step of the predictor
    ...
    save_checkpoint(..., optimizers={..., "curiosity": rnd.optimizer}, modules={..., "curiosity": rnd})

Networks. A frozen random *target* f and a trained *predictor* f̂, both Linear(input_dim, hidden) → ReLU
→ Linear(hidden, output_dim) (the paper's 2-layer MLP; the predictor has the target's shape, as the paper
says, not the deeper predictor of Burda et al.). Weights are orthogonal (gain √2 on the first layer, 1 on
the second) and biases zero, as in Burda et al.; both networks are drawn, target first, from one CPU
generator seeded with `seed` (or the `generator` given), so a module is reproducible from its seed. The
target's parameters have requires_grad=False and are not in the optimizer; they never change.

Novelty. novelty(x) = 1 − cos(f̂(x), f(x)) ∈ [0, 2], per row, without gradient: the paper trains on the
cosine loss, so the bonus is the same quantity. With zero biases and ReLU the target is positively
homogeneous (f(c·x) = c·f(x) for c > 0), so the target's feature *direction*, hence the novelty at
initialisation, does not depend on the norm of a feature row. It also makes the zero row special: f(0) =
0 has no direction to predict. A zero row is what `mean_pool` returns for a response with no tokens, so
zero rows are defined to have novelty 0 (reward 0, no curiosity for an empty response) and are left out
of the predictor loss and of the running statistic below.

Intrinsic reward. intrinsic_reward(x) = η · novelty(x) / s, where s is the bias-corrected exponential
moving average (momentum `scale_momentum`, one step per call) of the batch mean of novelty², square-
rooted, i.e. a running *RMS* of novelty over recent batches:

    ema ← m·ema + (1 − m)·mean_i(novelty_i²)        (non-zero rows of the batch)
    w   ← m·w   + (1 − m)·1                          (w = 1 − m^t, Adam-style bias correction)
    s   = max(√(ema / w), eps)

What is normalised and why: RND's raw novelty has no fixed scale. It starts near 1 (an untrained
predictor is uncorrelated with the target) and shrinks as the predictor learns, so a fixed η would give a
bonus that is large early and vanishes later, with a size unrelated to the RM scores it is added to.
Burda et al. divide intrinsic rewards by a running standard deviation of intrinsic returns. Here every
response is a one-step episode with one bonus, so the "return" is the novelty itself. We divide by its
running RMS rather than its standard deviation and subtract no mean: the bonus stays ≥ 0 (curiosity never
penalises a response), and it cannot blow up when novelty is nearly constant over a batch (where the std
→ 0). After normalisation the bonus has RMS ≈ η over recent batches, so η = 0.05 means "about 0.05 RM-
score units". The EMA (not a cumulative mean) lets the scale follow novelty as it falls during training;
each call weighs the same whatever its batch size. The statistic is updated *before* the batch is
normalised (the batch counts towards its own scale), so the first call is well defined: its rewards
have RMS exactly η. With update_stats=False the state is left alone (e.g. for evaluation); before any
update that uses the batch's own RMS. The state lives in buffers (`novelty_sq_ema`, `ema_weight`), so it
is saved and restored with state_dict().

Training. update(x) takes one Adam step (lr `lr`) of the predictor on mean_i(1 − cos(f̂(x_i), f(x_i))) over
the batch's non-zero rows and returns that loss (before the step) as a float. The module owns the
optimizer as `rnd.optimizer`: checkpoint it next to the module (state_dict() holds tensors only, which is
what guard.distributed.save_checkpoint expects of a module). Put the module on its device before the
first update (pass `device=`, or `.to()` it before training): Adam's state is created on the parameters'
device at the first step. Call intrinsic_reward before update on the same batch, so the bonus reflects
how novel the batch was before the predictor saw it.

Inputs. Features are [N, input_dim] rows of any floating dtype and device; they are detached, moved to
the module's device and computed in float32. They are validated with clear errors: a tensor of the
wrong rank or width, a non-floating dtype, an empty batch, or a row with NaN/inf (the error names the
first such row; this check reads one value back from the device per call). In a multi-process run,
gather every rank's features first (guard.distributed.gather_rows) and call intrinsic_reward / update
with the full batch on every rank: the replicas and their statistics then stay identical.

Caveat: no input whitening is done (Burda et al. normalise observations; the paper is silent). Pooled
LM hidden states share a large common direction; the predictor learns it within a few steps and then
novelty reflects what differs between responses, which the running-RMS normalisation rescales to η.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RNDCuriosity", "mean_pool"]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the sequence: hidden [N, T, H] (any floating dtype), mask [N, T] (bool, or any
    dtype where non-zero means "keep", e.g. an int attention mask or a response mask) → [N, H] float32.

    Row n is the mean of hidden[n, t] over the kept positions t, summed in float32. A row with no kept
    position (an empty response) gives zeros, not NaN (RNDCuriosity gives zero rows novelty 0). Masked-out
    positions are excluded, not multiplied by 0, so NaN/inf in padding does not leak into the result.
    Differentiable with respect to hidden; detach the result before passing it to RNDCuriosity."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"mean_pool: hidden must be a [N, T, H] tensor, got shape {_shape(hidden)}")
    if not hidden.is_floating_point():
        raise TypeError(f"mean_pool: hidden must be a floating tensor, got {hidden.dtype}")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"mean_pool: mask must have shape [N, T] = {list(hidden.shape[:2])} like hidden, "
                         f"got {_shape(mask)}")
    keep = (mask != 0).to(hidden.device)
    summed = hidden.float().masked_fill(~keep.unsqueeze(-1), 0.0).sum(dim=1)
    counts = keep.sum(dim=1, keepdim=True).clamp(min=1).float()
    return summed / counts


def _shape(x) -> str:
    return str(list(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _mlp(input_dim: int, hidden: int, output_dim: int, generator: torch.Generator) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, output_dim))
    with torch.no_grad():
        nn.init.orthogonal_(net[0].weight, gain=math.sqrt(2.0), generator=generator)
        nn.init.orthogonal_(net[2].weight, gain=1.0, generator=generator)
        nn.init.zeros_(net[0].bias)
        nn.init.zeros_(net[2].bias)
    return net


class RNDCuriosity(nn.Module):
    """RND curiosity bonus over response features (see the module docstring for the definitions).

    input_dim: the feature width (the policy's hidden size). hidden: the MLPs' hidden width (paper: 512).
    output_dim: the width of the target/predictor features. lr: the predictor's Adam learning rate
    (paper: 1e-4). eta: η_cur, the bonus scale (paper: 0.05). scale_momentum: the EMA momentum of the
    running novelty RMS, per call (0.99: a horizon of about 100 rollout batches). eps: the smallest scale
    divided by. seed / generator: where the initial weights come from (generator wins when given; it must
    be a CPU generator). device: where the module lives."""

    def __init__(self, input_dim: int, *, hidden: int = 512, output_dim: int = 512, lr: float = 1e-4,
                 eta: float = 0.05, scale_momentum: float = 0.99, eps: float = 1e-8, seed: int = 0,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None):
        super().__init__()
        for name, value in (("input_dim", input_dim), ("hidden", hidden), ("output_dim", output_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        if not 0.0 <= scale_momentum < 1.0:
            raise ValueError(f"scale_momentum must be in [0, 1), got {scale_momentum!r}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {eps!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(seed)
        self.input_dim, self.hidden, self.output_dim = input_dim, hidden, output_dim
        self.eta, self.scale_momentum, self.eps = float(eta), float(scale_momentum), float(eps)

        self.target = _mlp(input_dim, hidden, output_dim, generator)
        self.target.requires_grad_(False)
        self.predictor = _mlp(input_dim, hidden, output_dim, generator)
        # The running mean of novelty² (un-debiased) and the EMA of 1 (its bias correction, 1 − m^t).
        self.register_buffer("novelty_sq_ema", torch.zeros((), dtype=torch.float32))
        self.register_buffer("ema_weight", torch.zeros((), dtype=torch.float32))
        if device is not None:
            self.to(device)
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=lr)

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, hidden={self.hidden}, output_dim={self.output_dim}, "
                f"eta={self.eta}, scale_momentum={self.scale_momentum}")

    # ---------------------------------------------------------------------------------------------
    # Inputs

    def _prepare(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features as float32 on the module's device, detached; bool [N]: the row is not all zeros)."""
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.dim() != 2 or features.shape[1] != self.input_dim:
            raise ValueError(f"features must have shape [N, input_dim={self.input_dim}], got {list(features.shape)}")
        if not features.is_floating_point():
            raise TypeError(f"features must be a floating tensor, got {features.dtype}")
        if features.shape[0] == 0:
            raise ValueError("features has no rows")
        x = features.detach().to(device=self.novelty_sq_ema.device, dtype=torch.float32)
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0, 0])
            raise ValueError(f"features row {row} is not finite (NaN or inf): {x[row, :8].tolist()}...")
        return x, (x != 0).any(dim=1)

    def _cosine_distance(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.target(x)
        return 1.0 - F.cosine_similarity(self.predictor(x), target, dim=1, eps=1e-8)

    # ---------------------------------------------------------------------------------------------
    # The public surface

    def novelty(self, features: torch.Tensor) -> torch.Tensor:
        """[N] float32: 1 − cos(predictor(x), target(x)) per row, no gradient; 0 for all-zero rows."""
        x, valid = self._prepare(features)
        with torch.no_grad():
            return torch.where(valid, self._cosine_distance(x), 0.0)

    def running_scale(self) -> torch.Tensor | None:
        """The current running novelty RMS s (a 0-dim tensor), or None before any statistics update."""
        if float(self.ema_weight) == 0.0:
            return None
        return (self.novelty_sq_ema / self.ema_weight).sqrt().clamp(min=self.eps)

    def intrinsic_reward(self, features: torch.Tensor, *, update_stats: bool = True) -> torch.Tensor:
        """[N] float32: eta · novelty / s (module docstring). With update_stats (the default) the running
        statistic first takes this batch's mean novelty² over its non-zero rows (a batch of only zero
        rows leaves it alone); without, it is read as is (before any update: this batch's own RMS)."""
        x, valid = self._prepare(features)
        with torch.no_grad():
            novelty = torch.where(valid, self._cosine_distance(x), 0.0)
            n_valid = valid.sum()
            batch_ms = (novelty.square() * valid).sum() / n_valid.clamp(min=1)
            has_rows = n_valid > 0
            ema, weight = self.novelty_sq_ema, self.ema_weight
            if update_stats:
                m = self.scale_momentum
                ema.copy_(torch.where(has_rows, m * ema + (1 - m) * batch_ms, ema))
                weight.copy_(torch.where(has_rows, m * weight + (1 - m), weight))
            # Read back without a host sync; with no statistic yet (weight 0), this batch's own.
            seen = weight > 0
            mean_sq = torch.where(seen, ema / torch.where(seen, weight, 1.0), batch_ms)
            scale = mean_sq.sqrt().clamp(min=self.eps)
            return self.eta * novelty / scale

    def update(self, features: torch.Tensor) -> float:
        """One Adam step of the predictor on the mean cosine loss mean_i(1 − cos) over the batch's non-zero
        rows. Returns that loss, measured before the step. A batch of only zero rows takes no step and
        returns 0.0."""
        x, valid = self._prepare(features)
        if not bool(valid.all()):
            x = x[valid]
            if x.shape[0] == 0:
                return 0.0
        loss = self._cosine_distance(x).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
