"""The PPO recipe: a LoRA policy with a value head, trained against a reward model (e.g. one the rm recipe
made fair) with a per-token KL penalty to the reference, an adaptive KL coefficient and GUARD's RND
curiosity bonus (GUARD appendix B).

    python -m guard.train ppo --model POLICY --reward-model runs/rm/model --data prompts.jsonl --output-dir runs/ppo
    python -m guard.train ppo ... --curiosity 0             # no curiosity bonus
    python -m guard.train ppo ... --no-adaptive-kl          # a fixed KL coefficient --kl-coef
    torchrun --nproc_per_node 8 -m guard.train ppo ...      # rollouts and updates split over 8 processes (FSDP2)
    python -m guard.train ppo --help                        # every option

Prompts: a prompt-only file (a `prompt` column, string or messages, optional `category`) or any preference
dataset the other recipes read (its distinct prompts); see guard/prompts.py. A fixed-seed share is held out.

One update (`step`), read top to bottom in `train`: take --batch-size prompts -> (1) rollouts: sample a
response to each (temperature, top-p, --max-new-tokens), cut at the stop token (guard.rollout) -> (2)
experience, without gradients: the policy's log-probs and entropy of the sampled tokens and the reference's
log-probs (the adapter disabled), all through guard.ops.token_logprobs on the backbone's hidden states (no
[tokens x vocab] logits; the rollouts packed in one row when the model allows it, --packing), the value
head's values, the reward model's score (minus --missing-eos-penalty for a response that never stopped) plus
the curiosity bonus η·novelty of the mean-pooled response hidden states
(guard.curiosity, whose predictor then takes one step) -> per-token rewards −β·KL with the sequence reward
on the last token, GAE, whitened advantages (guard.rl) -> (3) --ppo-epochs passes over the rollouts in
minibatches: clipped policy loss + vf_coef · clipped value loss, one optimizer step per minibatch -> (4)
the KL coefficient follows the batch's KL. At the end: the reference and the trained policy answer the
held-out prompts (same seeds), the reward model scores both, and report.md shows the curves and the scores
by category.

Log-probs are those of the sampling distribution, softmax(logits / temperature), for the policy and the
reference alike (as TRL's PPO trainer does); top-p's truncation is not part of them. The policy runs without
dropout (--lora-dropout 0): PPO's ratio compares the rollout's log-probs with the update's, which must be
the same function of the weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from guard import attention, distributed, jsonfiles, models, ops, rl
from guard import data as gdata
from guard.config import ConfigError
from guard.report import Report, format_table
from guard.rollout import GenerationSettings, RewardScorer, Rollout, answer, concat_rollouts, generate
from guard.train import batches, inputs, loop, options, reports, rundir, session
from guard.train.options import PPOConfig
from guard.train.pref import hidden_forward


# ----------------------------------------------------------------------------------------------------
# Prompts


def load_prompt_data(cfg: PPOConfig, tok: gdata.Tokenizer, chat_template
                     ) -> tuple[inputs.PromptData, inputs.PromptData]:
    """(training prompts, held-out prompts): --eval-data, or a fixed-seed --eval-fraction of --data."""
    from guard.prompts import load_prompts

    def load(source: str, what: str):
        return inputs.load_pair_set(source, split=cfg.split, schema=cfg.schema, dimensions=cfg.dimensions,
                                    chat_template=chat_template, tokenizer_name=f"the tokenizer of {cfg.tokenizer or cfg.model}",
                                    what=what, loader=load_prompts, items="prompts")

    train_set = load(cfg.data, "data")
    cmap = inputs.category_map(train_set, cfg.categories)
    train = inputs.tokenize_prompts(train_set, tok, cmap, cfg.max_prompt_length, f"training prompts {cfg.data}")
    if cfg.eval_data:
        held_out = inputs.tokenize_prompts(load(cfg.eval_data, "eval_data"), tok, cmap, cfg.max_prompt_length,
                                    f"eval prompts {cfg.eval_data}")
        set_aside = {f"train {k}": v for k, v in train.set_aside.items()}
        set_aside.update({f"eval {k}": v for k, v in held_out.set_aside.items()})
        shown = {f"train {k}": v for k, v in train.set_aside_rows.items()}
        shown.update({f"eval {k}": v for k, v in held_out.set_aside_rows.items()})
        train.set_aside = held_out.set_aside = set_aside
        train.set_aside_rows = held_out.set_aside_rows = shown
        return train, held_out
    train_rows, eval_rows = inputs.holdout_split(len(train), cfg.eval_fraction, cfg.seed)
    return train.select(train_rows), train.select(eval_rows)


# ----------------------------------------------------------------------------------------------------
# The policy's passes over rollouts, without logits


@dataclass
class TokenStats:
    """Per response token [B, R] (0 past each row's end): log-probs, entropies, values; and the rows'
    mean-pooled response hidden states [B, H] when asked for."""

    logp: torch.Tensor
    entropy: torch.Tensor | None
    values: torch.Tensor | None
    mask: torch.Tensor
    features: torch.Tensor | None = None


def _scatter(mask: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)
    out[mask] = flat
    return out


def rollout_inputs(rollout: Rollout, packed: bool) -> tuple[dict, torch.Tensor | None]:
    """(keyword arguments of a backbone forward over the rollouts, each rollout's first position in the packed
    row or None): the padded rows as they are, or, `packed`, their prompt + response tokens end to end in one
    row (guard.attention.packed_inputs), the padding left out."""
    if not packed:
        return {"input_ids": rollout.input_ids, "attention_mask": rollout.attention_mask}, None
    lengths = rollout.prompt_lengths + rollout.response_lengths
    columns = torch.arange(rollout.input_ids.shape[1], device=lengths.device)
    real = columns[None, :] < lengths[:, None]
    starts = lengths.cumsum(0) - lengths
    cu_seqlens = torch.cat([starts, lengths.sum().view(1)])
    position_ids = columns.expand_as(real)[real][None]
    return attention.packed_inputs(rollout.input_ids[real][None], position_ids, cu_seqlens,
                                   int(lengths.max())), starts


def token_pass(model, value_head, rollout: Rollout, temperature: float, autocast: bool, *,
               features: bool = False, packed: bool = False) -> TokenStats:
    """The policy's (or, with value_head None, a reference's) statistics of the rollout's response tokens:
    the backbone's hidden state before each response token through the LM head's fused log-prob/entropy
    op (guard.ops.token_logprobs), and the value head on the same states. Differentiable. `packed`: the
    backbone runs over the rollouts packed in one row (rollout_inputs), the same numbers without the padding."""
    from guard.curiosity import mean_pool

    positions, mask = rollout.response_index()
    inputs, starts = rollout_inputs(rollout, packed)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        hidden, weight = hidden_forward(model)(**inputs)
    size = hidden.shape[-1]

    def states(at: torch.Tensor) -> torch.Tensor:  # [B, R, H]: the hidden state at each rollout's positions `at`
        if starts is not None:
            return hidden[0][starts[:, None] + at]
        return hidden.gather(1, at.unsqueeze(-1).expand(-1, -1, size))

    before = states(positions - 1)  # the state predicting token t
    labels = rollout.input_ids.gather(1, positions)
    wants_values = value_head is not None
    out = ops.token_logprobs(before[mask], weight, labels[mask], temperature=temperature,
                             return_entropy=wants_values)
    logp, entropy = out if wants_values else (out, None)
    values = value_head(before.float()).squeeze(-1) * mask if wants_values else None
    pooled = None
    if features:
        pooled = mean_pool(states(positions), mask).detach()
    return TokenStats(_scatter(mask, logp.float()), None if entropy is None else _scatter(mask, entropy.float()),
                      values, mask, pooled)


@torch.no_grad()
def reference_logp(model, reference, rollout: Rollout, temperature: float, autocast: bool, *,
                   packed: bool = False) -> torch.Tensor:
    """[B, R] log-probs of the response tokens under the reference: `reference` (a frozen copy) when given,
    else `model` with its LoRA adapter disabled."""
    scope = model.disable_adapter() if reference is None else contextlib.nullcontext()
    with scope:
        return token_pass(reference if reference is not None else model, None, rollout, temperature, autocast,
                          packed=packed).logp


def value_head_for(model, device) -> torch.nn.Linear:
    """A scalar value head on the policy's final hidden states, zero-initialized (every value starts at 0)."""
    head = torch.nn.Linear(model.config.hidden_size, 1, device=device, dtype=torch.float32)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


# ----------------------------------------------------------------------------------------------------
# One batch of experience


def pad_tokens(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))


@dataclass
class Experience:
    """One update's rollouts on this rank with everything PPO needs per response token [B, R]."""

    rollout: Rollout
    logp: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    mask: torch.Tensor


def kl_controller(cfg: PPOConfig) -> rl.FixedKLController:
    if cfg.adaptive_kl:
        return rl.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    return rl.FixedKLController(cfg.kl_coef)


def make_experience(cfg: PPOConfig, model, reference, value_head, scorer: RewardScorer, rnd, rollout: Rollout,
                    ctl: rl.FixedKLController, dist, autocast: bool, packed: bool = False) -> tuple[Experience, dict]:
    """(2) in the module docstring: log-probs, values, reference log-probs, scores and the curiosity bonus of
    this rank's rollouts, then rewards, GAE and whitened advantages (with the whole batch's statistics).
    Returns the experience and the batch's metrics (means over every rank's rollouts). `packed`: the policy's
    and the reference's forwards over packed rows (token_pass); the reward model scores its own padded batch."""
    width = int(rollout.response_lengths.max())
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logp", "entropy", "values", "ref", "features", "score")}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rollout), cfg.eval_batch_size):
                part = rollout.select(np.arange(start, min(start + cfg.eval_batch_size, len(rollout))))
                stats = token_pass(model, value_head, part, cfg.temperature, autocast, features=True, packed=packed)
                parts["logp"].append(pad_tokens(stats.logp, width))
                parts["entropy"].append(pad_tokens(stats.entropy, width))
                parts["values"].append(pad_tokens(stats.values, width))
                parts["features"].append(stats.features)
                parts["ref"].append(pad_tokens(reference_logp(model, reference, part, cfg.temperature, autocast,
                                                              packed=packed), width))
                parts["score"].append(scorer.score(part))
    finally:
        model.train(was_training)
    logp, entropy, values, ref_logp, features, score = (torch.cat(parts[k]) for k in (
        "logp", "entropy", "values", "ref", "features", "score"))
    _, mask = rollout.response_index()
    mask = pad_tokens(mask, width)

    # The sequence reward: the score, the penalty for never stopping, the curiosity bonus.
    penalty = cfg.missing_eos_penalty * (~rollout.ended).float()
    intrinsic = torch.zeros_like(score)
    rnd_loss = None
    if rnd is not None:
        every = distributed.gather_rows(features, dist)  # every rank updates its replica on the whole batch
        share = len(features)
        intrinsic = rnd.intrinsic_reward(every)[dist.rank * share:(dist.rank + 1) * share]
        rnd_loss = rnd.update(every)
    sequence_reward = score - penalty + intrinsic

    # Per-token rewards: −β·KL everywhere, the sequence reward on the last token; GAE; whitening.
    kl = rl.kl_penalty(logp, ref_logp, cfg.kl_estimator) * mask
    rewards = -ctl.value * kl
    last = (rollout.response_lengths - 1).unsqueeze(1)
    rewards = rewards.scatter_add(1, last, sequence_reward.unsqueeze(1))
    advantages, returns = rl.gae(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
    stats = distributed.all_reduce_sum(rl.whiten_stats(advantages, mask), dist)
    advantages = rl.masked_whiten(advantages, mask, stats=tuple(stats))

    n_tokens = float(mask.sum())
    sums = distributed.all_reduce_sum([
        float(score.sum()), float((score * score).sum()), float(sequence_reward.sum()), float(intrinsic.sum()),
        float(kl.sum()), float((entropy * mask).sum()), n_tokens, float((~rollout.ended).sum()),
        float((values * mask).sum()), float((returns * mask).sum()), len(rollout)], dist)
    (s_score, s_score2, s_reward, s_intrinsic, s_kl, s_entropy, s_tokens, s_unended, s_values, s_returns,
     n) = sums
    mean_score = s_score / n
    metrics = {"score": mean_score, "score_std": math.sqrt(max(s_score2 / n - mean_score ** 2, 0.0)),
               "reward": s_reward / n, "intrinsic": s_intrinsic / n,
               "rnd_loss": rnd_loss, "kl": s_kl / n, "kl_coef": ctl.value, "non_score_reward": -ctl.value * s_kl / n,
               "entropy": s_entropy / s_tokens, "response_length": s_tokens / n, "no_stop_frac": s_unended / n,
               "values": s_values / s_tokens, "returns": s_returns / s_tokens}
    return Experience(rollout, logp, values, advantages, returns, mask), metrics


# ----------------------------------------------------------------------------------------------------
# (3) PPO epochs


class PPOOptimization:
    """AdamW for the policy's trainable weights and one for the value head (each module's parameters in an
    optimizer of their own, as guard.distributed checkpoints want); the RND predictor's Adam rides along in
    the checkpoint."""

    def __init__(self, cfg: PPOConfig, model, value_head, rnd, device: torch.device):
        fused = device.type == "cuda"
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.policy = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        self.value = torch.optim.AdamW(value_head.parameters(), lr=cfg.lr, weight_decay=0.0, fused=fused)
        self.value_head, self.rnd = value_head, rnd
        self.max_grad_norm = cfg.max_grad_norm

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.policy, "value_head": self.value} | (
            {"curiosity": self.rnd.optimizer} if self.rnd is not None else {})

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"value_head": self.value_head} | ({"curiosity": self.rnd} if self.rnd is not None else {})

    def set_lr(self, lr: float) -> None:
        for opt in (self.policy, self.value):
            for group in opt.param_groups:
                group["lr"] = lr

    def zero_grad(self) -> None:
        self.policy.zero_grad(set_to_none=True)
        self.value.zero_grad(set_to_none=True)

    def step(self, dist) -> None:
        """Average the value head's gradients over ranks (FSDP does the policy's), clip each, step both."""
        distributed.average_gradients(self.value_head, dist)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            torch.nn.utils.clip_grad_norm_(self.value_head.parameters(), self.max_grad_norm)
        self.policy.step()
        self.value.step()


def ppo_epochs(cfg: PPOConfig, model, value_head, exp: Experience, opt: PPOOptimization, step: int, dist,
               autocast: bool, packed: bool = False) -> dict:
    """--ppo-epochs passes over this rank's rollouts in minibatches (the same order on every rank for a given
    seed and update), one optimizer step per minibatch; the losses are token means over the whole minibatch
    (every rank, every micro-batch). Returns the mean losses and clip fractions."""
    share = cfg.minibatch_size // dist.world_size
    micro = cfg.micro_batch_size or share
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    totals = dict.fromkeys(("policy_loss", "value_loss", "policy_clipfrac", "value_clipfrac", "approx_kl"), 0.0)
    tokens_seen = 0.0
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(len(exp.rollout), generator=generator)
        for start in range(0, len(order), share):
            rows = order[start:start + share]
            local_tokens = float(exp.mask[rows].sum())
            denominator = distributed.all_reduce_sum([local_tokens], dist)[0] / dist.world_size
            opt.zero_grad()
            for first in range(0, len(rows), micro):
                part = rows[first:first + micro]
                sub = exp.rollout.select(part)
                stats = token_pass(model, value_head, sub, cfg.temperature, autocast, packed=packed)
                width = stats.logp.shape[1]
                idx = part.to(exp.mask.device)
                mask, old_logp = exp.mask[idx, :width], exp.logp[idx, :width]
                pg, pg_clip, approx_kl = rl.policy_loss(stats.logp, old_logp, exp.advantages[idx, :width], mask,
                                                        clip=cfg.cliprange, denominator=denominator)
                vf, vf_clip = rl.value_loss(stats.values, exp.values[idx, :width], exp.returns[idx, :width], mask,
                                            clip=cfg.cliprange_value, denominator=denominator)
                loss = pg + cfg.vf_coef * vf
                if cfg.entropy_coef:
                    loss = loss - cfg.entropy_coef * (stats.entropy * mask).sum() / denominator
                loss.backward()
                n = float(mask.sum())
                totals["policy_loss"] += float(pg.detach()) * denominator
                totals["value_loss"] += float(vf.detach()) * denominator
                for key, value in (("policy_clipfrac", pg_clip), ("value_clipfrac", vf_clip), ("approx_kl", approx_kl)):
                    totals[key] += float(value) * n
                tokens_seen += n
            opt.step(dist)
    summed = distributed.all_reduce_sum([*totals.values(), tokens_seen], dist)
    return {key: value / max(summed[-1], 1.0) for key, value in zip(totals, summed)}


# ----------------------------------------------------------------------------------------------------
# Held-out prompts: the reference and the trained policy, same seeds


def sample_held_out(cfg: PPOConfig, model, reference, scorer: RewardScorer, prompts: inputs.PromptData, settings,
                    pad_id: int, dist, autocast: bool, *, adapter: bool) -> tuple[np.ndarray, list[dict]]:
    """(scores [n], rows of {response_ids, ended}) of every held-out prompt answered by the policy
    (adapter=False: the reference), with the same seed for both so the two see the same random numbers."""
    policy = reference if reference is not None and not adapter else model
    scope = model.disable_adapter() if reference is None and not adapter else contextlib.nullcontext()
    with scope:
        return answer(policy, prompts.ids, settings, pad_id=pad_id, dist=dist, batch_size=cfg.eval_batch_size,
                      seed=cfg.seed, prompts=prompts.texts, scorer=scorer, autocast=autocast)


def evaluate(cfg: PPOConfig, model, reference, scorer, prompts: inputs.PromptData, settings, hf_tok, dist, autocast: bool,
             run_dir: Path) -> dict:
    """Held-out scores of the reference and the trained policy, by category, and samples.jsonl."""
    ref_scores, ref_samples = sample_held_out(cfg, model, reference, scorer, prompts, settings, hf_tok.pad_token_id,
                                              dist, autocast, adapter=False)
    scores, samples = sample_held_out(cfg, model, reference, scorer, prompts, settings, hf_tok.pad_token_id, dist,
                                      autocast, adapter=True)
    names = [prompts.category_names[c] for c in prompts.categories]
    by_category = {}
    for c in dict.fromkeys(names):
        rows = np.asarray([n == c for n in names])
        by_category[c] = {"n": int(rows.sum()), "score_reference": float(ref_scores[rows].mean()),
                          "score_policy": float(scores[rows].mean())}

    def gap(key: str) -> float:
        means = [v[key] for v in by_category.values()]
        return float(max(means) - min(means))

    if dist.is_main:
        with open(run_dir / "samples.jsonl", "w", encoding="utf-8") as f:
            for k in range(len(prompts)):
                f.write(json.dumps({
                    "prompt": prompts.texts[k], "category": names[k],
                    "reference": hf_tok.decode(ref_samples[k]["response_ids"], skip_special_tokens=False),
                    "reference_score": float(ref_scores[k]), "reference_ended": ref_samples[k]["ended"],
                    "policy": hf_tok.decode(samples[k]["response_ids"], skip_special_tokens=False),
                    "policy_score": float(scores[k]), "policy_ended": samples[k]["ended"]}) + "\n")
    return {"held_out_prompts": len(prompts), "score_reference": float(ref_scores.mean()),
            "score_policy": float(scores.mean()), "parity_gap_reference": gap("score_reference"),
            "parity_gap_policy": gap("score_policy"), "categories": by_category}


# ----------------------------------------------------------------------------------------------------
# The run


def stop_token_ids(cfg: PPOConfig, hf_tok) -> tuple[int, ...]:
    if cfg.stop_token is None:
        if hf_tok.eos_token_id is None:
            raise ConfigError("the tokenizer has no EOS token: name the token responses end with, --stop-token TOKEN")
        return (hf_tok.eos_token_id,)
    token_id = hf_tok.convert_tokens_to_ids(cfg.stop_token)
    if token_id is None or token_id == hf_tok.unk_token_id:
        raise ConfigError(f"--stop-token {cfg.stop_token!r} is not one token of the tokenizer")
    return (token_id,)


def check_ppo_options(cfg: PPOConfig, dist) -> None:
    """What the option domains cannot say alone (each value's range was checked when the config was built)."""
    if not cfg.reward_model:
        raise ConfigError("--reward-model is required (a directory the rm recipe wrote, e.g. runs/rm/model)")
    if cfg.batch_size % cfg.minibatch_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be a multiple of --minibatch-size {cfg.minibatch_size}")
    if cfg.minibatch_size % dist.world_size:
        raise ConfigError(f"--minibatch-size {cfg.minibatch_size} must be a multiple of the {dist.world_size} processes")


def train(cfg: PPOConfig, hf_tok, tok: gdata.Tokenizer, dist) -> dict:
    """The whole run (module docstring); returns the summary."""
    check_ppo_options(cfg, dist)
    settings = GenerationSettings(cfg.max_new_tokens, cfg.temperature, cfg.top_p, stop_token_ids(cfg, hf_tok))
    prompts, held_out = load_prompt_data(cfg, tok, inputs.chat_template_source(hf_tok, cfg.chat_template))
    if dist.is_main:
        cut = [f"{prompts.truncated + held_out.truncated} prompts cut to their last {cfg.max_prompt_length} tokens"]
        print(inputs.describe_set_aside(f"data: {prompts.rows_read} rows read -> {len(prompts)} training + "
                                        f"{len(held_out)} held-out prompts", prompts.set_aside, prompts.set_aside_rows,
                                        cut), flush=True)
    run_dir = rundir.start_run(Path(cfg.output_dir), cfg, cfg, dist)
    schedule = loop.plan_steps(cfg, len(prompts), "training prompts")
    device, autocast = dist.device, dist.device.type == "cuda" and cfg.bf16
    param_dtype = torch.bfloat16 if autocast else None

    # Policy (+ value head), reference, reward model, curiosity: the same initial weights on every rank.
    loop.seed_everything(cfg.seed)
    lora = models.LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                               target_modules=tuple(cfg.lora_target_modules)) if cfg.lora else None
    model = models.load_causal_lm(cfg.model, vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, lora=lora,
                                  gradient_checkpointing=cfg.gradient_checkpointing,
                                  trust_remote_code=cfg.trust_remote_code, seed=cfg.seed, device=device)
    value_head = value_head_for(model, device)
    reference = None
    if lora is None:
        reference = distributed.shard_model(copy.deepcopy(model).eval().requires_grad_(False), dist,
                                            param_dtype=param_dtype)
    model = distributed.shard_model(model, dist, param_dtype=param_dtype)
    models.resolve_model(cfg.reward_model)
    scorer = RewardScorer.load(cfg.reward_model, policy_tokenizer=hf_tok, device=device, dist=dist,
                               trust_remote_code=cfg.trust_remote_code, autocast=autocast)
    rnd = None
    if cfg.curiosity > 0:
        from guard.curiosity import RNDCuriosity

        rnd = RNDCuriosity(model.config.hidden_size, hidden=cfg.rnd_hidden, output_dim=cfg.rnd_hidden, lr=cfg.rnd_lr,
                           eta=cfg.curiosity, seed=cfg.seed + 2, device=device)
    packed = batches.decide_packing(cfg.packing, model, dist)
    opt = PPOOptimization(cfg, model, value_head, rnd, device)
    ctl = kl_controller(cfg)
    saved = {}
    start_step, log = rundir.resume_state(cfg, run_dir, model, opt, dist, saved)
    if saved:
        ctl.load_state_dict(saved["kl_controller"])
    model.train()
    bar = tqdm(total=schedule.total_steps, initial=start_step, disable=not dist.is_main, desc="ppo", dynamic_ncols=True)
    for step, rows, lr in schedule.steps(start_step, cfg.seed, cfg.lr, cfg.lr_schedule):
        opt.set_lr(lr)
        mine = prompts.select(distributed.local_rows(rows, dist))
        # (1) rollouts
        clock = time.perf_counter()
        parts = []
        for start in range(0, len(mine), cfg.generation_batch_size):
            chunk = mine.select(np.arange(start, min(start + cfg.generation_batch_size, len(mine))))
            parts.append(generate(model, chunk.ids, settings, pad_id=hf_tok.pad_token_id, prompts=chunk.texts,
                                  synced=dist.enabled, autocast=autocast))
        rollout = concat_rollouts(parts, hf_tok.pad_token_id)
        generation_s = time.perf_counter() - clock
        # (2) experience
        clock = time.perf_counter()
        exp, metrics = make_experience(cfg, model, reference, value_head, scorer, rnd, rollout, ctl, dist, autocast,
                                       packed)
        experience_s = time.perf_counter() - clock
        # (3) PPO epochs
        clock = time.perf_counter()
        losses = ppo_epochs(cfg, model, value_head, exp, opt, step, dist, autocast, packed)
        training_s = time.perf_counter() - clock
        # (4) the KL coefficient follows the batch's KL (mean over responses of the summed per-token KL)
        ctl.update(metrics["kl"], cfg.batch_size)
        bar.update(1)

        done = step + 1
        loop.require_finite(done, {**metrics, **losses})
        if rundir.log_now(done, cfg, schedule.total_steps):
            generated, sequence_tokens = distributed.all_reduce_sum(
                [float(rollout.response_lengths.sum()), float(rollout.attention_mask.sum())], dist)
            row = {"step": done, "epoch": schedule.epoch(done), **metrics, **losses, "lr": lr,
                   "time/generation_s": generation_s, "time/experience_s": experience_s, "time/training_s": training_s,
                   "tokens_per_s/generation": generated / max(generation_s, 1e-9),
                   "tokens_per_s/training": sequence_tokens * cfg.ppo_epochs / max(training_s, 1e-9)}
            log.log(row)
            bar.set_postfix(score=f"{row['score']:.3f}", kl=f"{row['kl']:.3f}")
        if rundir.checkpoint_now(done, cfg, schedule.total_steps):
            rundir.save_step(run_dir, done, model, opt, cfg, dist, {"kl_controller": ctl.state_dict()})
    bar.close()

    # Held-out prompts, the model, the report
    summary = {"steps": schedule.total_steps, "kl_coef": ctl.value,
               **evaluate(cfg, model, reference, scorer, held_out, settings, hf_tok, dist, autocast, run_dir),
               "data": {"rows_read": prompts.rows_read, "train_prompts": len(prompts), "eval_prompts": len(held_out),
                        "truncated_prompts": prompts.truncated + held_out.truncated,
                        "set_aside": dict(prompts.set_aside), "set_aside_rows": dict(prompts.set_aside_rows)}}
    state = distributed.full_state_dict(model, dist)
    if dist.is_main:
        models.save_pretrained(model, run_dir / "model", tokenizer=hf_tok, state_dict=state,
                               merge_lora=not cfg.save_adapter)
        write_report(run_dir, cfg, prompts, held_out, summary)
        jsonfiles.write_json(run_dir / "summary.json", summary)
    distributed.barrier(dist)
    return summary


CURVES = {"score_curves.png": ("score and reward per update", ("score", "reward", "intrinsic")),
          "kl_curves.png": ("KL to the reference and its coefficient", ("kl", "kl_coef")),
          "policy_curves.png": ("policy", ("entropy", "response_length", "policy_clipfrac", "approx_kl")),
          "loss_curves.png": ("losses", ("policy_loss", "value_loss", "rnd_loss"))}


def write_report(run_dir: Path, cfg: PPOConfig, prompts: inputs.PromptData, held_out: inputs.PromptData,
                 summary: dict) -> None:
    """report.md: held-out scores (reference vs policy, by category), curves, samples and the data accounting."""
    from guard import plots

    history = jsonfiles.read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    steps = [m["step"] for m in history]
    report = Report("PPO")
    report.text(f"Policy `{cfg.model}` ({'LoRA' if cfg.lora else 'full fine-tuning'}), reward model "
                f"`{cfg.reward_model}`, prompts `{cfg.data}` ({len(prompts)} for training, {len(held_out)} held out), "
                f"{summary['steps']} updates of {cfg.batch_size} rollouts, β {cfg.kl_coef:g} "
                f"({'adaptive, target ' + format(cfg.kl_target, 'g') if cfg.adaptive_kl else 'fixed'}, final "
                f"{summary['kl_coef']:.4g}), curiosity η {cfg.curiosity:g}.")
    report.heading("Held-out prompts", 2)
    report.text("Mean reward-model score of one sampled response per held-out prompt (same sampling settings and "
                "seeds for both), by category; the parity gap is the largest minus the smallest category mean.")
    report.table([{"": "all", "reference": summary["score_reference"], "policy": summary["score_policy"]},
                  {"": "parity gap", "reference": summary["parity_gap_reference"],
                   "policy": summary["parity_gap_policy"]}])
    report.table([{"category": c, **v} for c, v in summary["categories"].items()])
    report.heading("Training", 2)
    for name, (title, keys) in CURVES.items():
        series = {k: (steps, [m[k] if m.get(k) is not None else math.nan for m in history]) for k in keys
                  if any(m.get(k) is not None for m in history)}
        if series:
            plots.curves(run_dir / name, series, title, "value")
            report.image(name, title)
    report.text("Samples (the first held-out prompts; all in samples.jsonl):")
    samples = jsonfiles.read_jsonl(run_dir / "samples.jsonl")[:5]
    report.table([{"prompt": s["prompt"][-80:], "reference": s["reference"][:120], "score": s["reference_score"],
                   "policy": s["policy"][:120], "score ": s["policy_score"]} for s in samples])
    reports.data_section(report, prompts.rows_read, prompts.set_aside, prompts.set_aside_rows,
                         [f"Prompts cut to their last {cfg.max_prompt_length} tokens: "
                          f"{prompts.truncated + held_out.truncated}."])
    report.write(run_dir / "report.md")


# ----------------------------------------------------------------------------------------------------
# Entry point


def parse_config(argv: list[str] | None) -> PPOConfig:
    return options.parse_recipe("ppo", argv)


def run(cfg: PPOConfig) -> dict:
    with session.recipe_session(cfg) as (dist, hf_tok, tok, _eos):
        summary = train(cfg, hf_tok, tok, dist)
        if dist.is_main:
            print(format_table([{"held-out": "mean score", "reference": summary["score_reference"],
                                 "policy": summary["score_policy"]},
                                {"held-out": "parity gap", "reference": summary["parity_gap_reference"],
                                 "policy": summary["parity_gap_policy"]}]))
            print(f"report: {Path(cfg.output_dir) / 'report.md'}")
        return summary


def main(argv: list[str] | None = None) -> int:
    run(parse_config(argv))
    return 0
