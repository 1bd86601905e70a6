"""The preference-optimization recipe: DPO, IPO, APO-zero/down, KTO-pair and sequential SPO rounds on a causal
LM, with GUARD's fairness adversary on the implicit rewards.

    python -m guard.train pref --loss sigmoid --beta 0.1 --data pairs.jsonl --model tiny --output-dir runs/dpo
    python -m guard.train pref --loss apo_zero --data PKU-Alignment/PKU-SafeRLHF --model meta-llama/Llama-3.2-1B \\
        --output-dir runs/apo --lambda-adv 0.2               # fairness on the implicit rewards by category
    python -m guard.train pref --loss spo --dimensions helpful,harmless --alpha 0.1 --data DATA ...
                                                              # one SPO round per dimension, in that order
    python -m guard.train pref --no-lora --precompute-ref ... # full fine-tuning, reference log-probs cached
    python -m guard.train pref --preset spo ...               # a paper's settings (PRESETS); flags still win
    python -m guard.train pref --help                         # every option

A run reads top to bottom in `train_one`: data (guard.train.common, as the reward-model recipe) -> policy
(LoRA by default; the reference is the same model with the adapter disabled, a frozen copy without LoRA, or
log-probs computed once and cached on disk) -> the loop: the step's pairs (--batch-size, or best fit into
--tokens-per-step), packed in one row when the model allows it (--packing, guard/train/batches.py), the
backbone's final hidden states of the batch's chosen and rejected sequences (never the *ForCausalLM forward,
which builds [tokens x vocab] logits), the
fused loss with implicit rewards and their per-category moments (guard.ops.fused_preference_loss on the
LM head's weight), (2) an adversary step on the detached features, (3) the policy step on L − λ·penalty ->
held-out implicit rewards (rewards.jsonl and the GUARD audit) -> report.md -> the model.

SPO (`run_spo`): round n trains on dimension n from round n−1's model, which is also its reference. After
each round the new policy's sequence log-probs of every later round's pairs (and of every held-out set) are
written to OUTPUT_DIR/spo-cache/, so round n reads its reference log-probs and the log-ratios of all earlier
rounds (SPO eq. 7) from disk and holds one model. spo.csv tracks each dimension's held-out accuracy after
every round.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from guard import data as gdata, distributed, jsonfiles, losses, models, ops
from guard.config import ConfigError
from guard.report import Report, format_table
from guard.train import batches, inputs, loop, options, reports, rundir, session
from guard.train.options import PrefConfig

# ----------------------------------------------------------------------------------------------------
# The policy without logits


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack under the LM head (LoRA layers live inside it, so they apply)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def lm_head_weight(model: torch.nn.Module) -> torch.Tensor:
    """The LM head's weight [V, H]: the input embedding itself when tied, so its gradient reaches both uses."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ConfigError("LM heads with a bias are not supported by the pref recipe")
    return head.weight


def hidden_and_labels(model, batch: dict, autocast: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The backbone's final hidden states, the labels they predict, the LM head's weight [V, H] and the packed
    row's sequence boundaries: padded, hidden [2B, T-1, H], labels [2B, T-1] and None; packed (batches.Layout),
    hidden [N, H], labels [N] and cu_seqlens [2B + 1]. Through `hidden_forward`, so FSDP2 gathers the root's
    parameters."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        hidden, weight = hidden_forward(model)(**batches.backbone_inputs(batch))
    if batches.is_packed(batch):
        return hidden[0], batches.shifted_labels(batch), weight, batch["cu_seqlens"]
    return hidden[:, :-1], batches.shifted_labels(batch), weight, None


def hidden_forward(model):
    """model's backbone forward -> (final hidden states, LM head weight): (input_ids, attention_mask) of a
    padded batch, or the keyword arguments of a packed row (guard.attention.packed_inputs). An FSDP2 forward
    method (distributed.forward_method), so the root unit (embeddings, norm, LM head) is all-gathered and its
    gradients reduced."""
    def make():
        def _guard_hidden_forward(input_ids, attention_mask=None, **packed):
            hidden = backbone(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                     **packed).last_hidden_state
            return hidden, lm_head_weight(model)
        return _guard_hidden_forward

    return distributed.forward_method(model, "_guard_hidden_forward", make)


@torch.no_grad()
def reference_logps(model, reference, batch: dict[str, torch.Tensor], autocast: bool) -> torch.Tensor:
    """Sequence log-probs [2B] (fp32) of the reference: `reference` when given (a frozen copy), else `model`
    with its LoRA adapter disabled; through the chunked LM-head op, so no [tokens x vocab] logits either."""
    ref = reference if reference is not None else model
    scope = model.disable_adapter() if reference is None else contextlib.nullcontext()
    with scope:
        return policy_logps(ref, batch, autocast)


def policy_logps(model, batch: dict[str, torch.Tensor], autocast: bool) -> torch.Tensor:
    """Sequence log-probs [2B] (fp32) of `model` as it is, through the chunked LM-head op (either layout)."""
    hidden, labels, weight, cu_seqlens = hidden_and_labels(model, batch, autocast)
    return ops.sequence_logprobs(hidden, weight, labels, cu_seqlens=cu_seqlens).float()


def preference_step(model, reference, batch: dict[str, torch.Tensor], cfg: PrefConfig, autocast: bool,
                    categories: torch.Tensor | None, num_categories: int | None, ref_logps: torch.Tensor | None = None,
                    previous_logratios: torch.Tensor | None = None, alphas=None) -> ops.PreferenceOutput:
    """The fused loss of one pair batch (chosen rows first) with implicit rewards and per-category moments.
    The reference log-probs are `ref_logps` when given (precomputed), else computed live (reference_logps)."""
    if ref_logps is None:
        ref_logps = reference_logps(model, reference, batch, autocast)
    hidden, labels, weight, cu_seqlens = hidden_and_labels(model, batch, autocast)
    return ops.fused_preference_loss(hidden, weight, labels, ref_logps, loss_type=cfg.loss,
                                     beta=cfg.beta, label_smoothing=cfg.label_smoothing, categories=categories,
                                     num_categories=num_categories, previous_logratios=previous_logratios,
                                     alphas=alphas, cu_seqlens=cu_seqlens)


# ----------------------------------------------------------------------------------------------------
# Reference log-probs: live, or computed once


PAIR_KEYS = ("input_ids", "attention_mask", "labels")


@dataclass
class ReferenceLogps:
    """Precomputed sequence log-probs, [2, n] float64 (row 0 chosen, row 1 rejected) for the training and the
    held-out pairs; for SPO also `previous` [R, 2, n_train]: the cached log-ratios of the R earlier rounds
    on this round's training pairs, oldest first, with their `alphas`."""

    train: np.ndarray
    eval: np.ndarray
    previous: np.ndarray | None = None
    alphas: tuple[float, ...] = ()

    @staticmethod
    def batch(logps: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """[..., 2, n] at `rows` -> [..., 2B] (chosen first), float32 on `device`."""
        picked = logps[..., rows]
        return torch.from_numpy(picked.reshape(*picked.shape[:-2], -1)).float().to(device)


def all_logps(model, data: inputs.PairData, cfg: PrefConfig, pad_id: int, dist, autocast: bool,
              adapter: bool = True) -> np.ndarray:
    """[2, n] float64 sequence log-probs of every pair of `data` under `model` (adapter=False: with its LoRA
    adapter disabled), the work split over the ranks; packed rows as training packs them (--packing)."""
    layout = batches.Layout(batches.decide_packing(cfg.packing, model, dist, announce=False), pad_id, dist.device)
    was_training = model.training
    model.eval()
    scope = model.disable_adapter() if not adapter else contextlib.nullcontext()
    try:
        with scope:
            def score(batch):
                logps = policy_logps(model, batch, autocast)
                return logps[:len(logps) // 2], logps[len(logps) // 2:]

            chosen, rejected = loop.score_pairs(score, data, cfg.eval_batch_size, pad_id, dist,
                                                batch_of=lambda rows: layout.pairs(data.encoded, rows))
    finally:
        model.train(was_training)
    return np.stack([chosen, rejected])


def data_fingerprint(cfg: PrefConfig, data: inputs.TrainEval, autocast: bool) -> str:
    """A hash of what the reference log-probs depend on: the tokenized pairs (ids, prompt lengths, order),
    the reference model (name, and for a local folder its weight files' sizes and times) and the dtype."""
    digest = hashlib.sha256()
    model_path = Path(cfg.model).expanduser()
    files = sorted(model_path.glob("*.safetensors")) + sorted(model_path.glob("*.bin")) if model_path.is_dir() else []
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    digest.update(repr((cfg.model, cfg.tokenizer, autocast, stamp)).encode())
    for part in (data.train, data.eval):
        enc = part.encoded
        for array in (enc.chosen.ids, enc.chosen.offsets, enc.rejected.ids, enc.rejected.offsets,
                      enc.chosen_prompt_lengths, enc.rejected_prompt_lengths):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:24]


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """An .npz through a temporary name, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def precompute_reference(cfg: PrefConfig, model, data: inputs.TrainEval, hf_tok, dist, autocast: bool,
                         run_dir: Path) -> ReferenceLogps:
    """The reference's log-probs of the training and held-out pairs, read from the cache when a run with the
    same fingerprint wrote them, else computed now (the model as loaded: adapter disabled with LoRA) and
    cached."""
    cache_dir = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else run_dir / "ref-cache"
    path = cache_dir / f"ref-logps-{data_fingerprint(cfg, data, autocast)}.npz"
    if path.exists():
        with np.load(path) as cached:
            return ReferenceLogps(cached["train"], cached["eval"])
    adapter = not cfg.lora  # with LoRA the reference is the adapter disabled; without, the model before training
    train = all_logps(model, data.train, cfg, hf_tok.pad_token_id, dist, autocast, adapter=adapter)
    held_out = all_logps(model, data.eval, cfg, hf_tok.pad_token_id, dist, autocast, adapter=adapter)
    if dist.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_arrays(path, train=train, eval=held_out)
    distributed.barrier(dist)
    return ReferenceLogps(train, held_out)


# ----------------------------------------------------------------------------------------------------
# One run


def train_one(cfg: PrefConfig, run_dir: Path, data: inputs.TrainEval, hf_tok, dist: distributed.Dist, *,
              init_model: str | None = None, ref: ReferenceLogps | None = None, title: str | None = None) -> dict:
    """Train one policy from `init_model` (default cfg.model) into `run_dir`; returns the held-out summary of
    its implicit rewards. `ref` gives precomputed reference log-probs (SPO rounds); otherwise the reference
    is live, or precomputed and cached with --precompute-ref."""
    run_dir = rundir.start_run(run_dir, cfg, cfg, dist)
    train, names = data.train, data.train.category_names
    options.check_fairness(cfg.lambda_adv, names)
    schedule = batches.plan_steps(cfg, train, dist)
    device, autocast = dist.device, dist.device.type == "cuda" and cfg.bf16

    # Policy and reference: the same initial weights on every rank.
    loop.seed_everything(cfg.seed)
    lora = models.LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                               target_modules=tuple(cfg.lora_target_modules)) if cfg.lora else None
    model = models.load_causal_lm(init_model or cfg.model, vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id,
                                  lora=lora, gradient_checkpointing=cfg.gradient_checkpointing,
                                  trust_remote_code=cfg.trust_remote_code, seed=cfg.seed, device=device)
    reference = None
    if lora is None and ref is None and not cfg.precompute_ref:  # a frozen copy of the initial weights
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        reference = distributed.shard_model(reference, dist, param_dtype=torch.bfloat16 if autocast else None)
    model = distributed.shard_model(model, dist, param_dtype=torch.bfloat16 if autocast else None)
    model.train()
    layout = batches.Layout(batches.decide_packing(cfg.packing, model, dist), hf_tok.pad_token_id, device)
    if ref is None and cfg.precompute_ref:  # before a resumed checkpoint is loaded: these are the initial weights
        ref = precompute_reference(cfg, model, data, hf_tok, dist, autocast, run_dir)
    opt = loop.Optimization(cfg, model, len(names), device)
    start_step, log = rundir.resume_state(cfg, run_dir, model, opt, dist)
    finite = loop.FiniteWatch(device, dist)

    categories = torch.from_numpy(train.categories).to(device)
    lengths = train.encoded.lengths.sum(1)
    bar = tqdm(total=schedule.total_steps, initial=start_step, disable=not dist.is_main,
               desc=title or f"pref {cfg.loss}", dynamic_ncols=True)
    tokens, clock = 0, time.perf_counter()
    for step, rows, lr in schedule.steps(start_step, cfg.seed, cfg.lr, cfg.lr_schedule):
        opt.set_lr(lr)
        # (1) this rank's pairs: the fused loss on the backbone's hidden states, implicit rewards, moments
        mine = schedule.local_rows(step, rows, dist)
        batch = layout.pairs(train.encoded, mine)
        local_cats = categories[torch.from_numpy(mine).to(device)]
        ref_logps = previous = None
        if ref is not None:
            ref_logps = ReferenceLogps.batch(ref.train, mine, device)
            previous = None if ref.previous is None else ReferenceLogps.batch(ref.previous, mine, device)
        out = preference_step(model, reference, batch, cfg, autocast, local_cats, len(names), ref_logps, previous,
                              ref.alphas if ref is not None and ref.alphas else None)
        half = out.rewards.shape[0] // 2
        r_c = distributed.gather_rows(out.rewards[:half], dist)
        r_r = distributed.gather_rows(out.rewards[half:], dist)
        # (2) the adversary step on the batch's detached implicit rewards, (3) the policy step on L − λ·penalty.
        # out.loss is the mean over this rank's pairs; weighted by the rank's share of the pairs (1 unless a
        # token budget gives ranks different counts), FSDP's gradient mean makes it the batch mean.
        pref_loss = out.loss * (len(mine) * dist.world_size / len(rows))
        cats = categories[torch.from_numpy(rows).to(device)]
        moments, counts = (out.moments, out.counts) if not dist.enabled else losses.category_moments(
            torch.stack([r_c, r_r], dim=1), cats, len(names))
        loss, adv_loss = opt.fairness(pref_loss, cfg.lambda_adv, moments, counts, r_c, r_r, cats)
        opt.step(loss)
        tokens += int(lengths[rows].sum())
        bar.update(1)

        done = step + 1
        finite.watch(done, loss)
        if rundir.log_now(done, cfg, schedule.total_steps):
            finite.check(lr)
            elapsed = time.perf_counter() - clock
            lr_c, lr_r = r_c.detach() / cfg.beta, r_r.detach() / cfg.beta
            row = {"step": done, "epoch": schedule.epoch(done),
                   "loss": distributed.all_reduce_mean(loss.detach(), dist),  # every rank's pairs, as pref_loss
                   "pref_loss": distributed.all_reduce_mean(pref_loss.detach(), dist),
                   "adv_loss": None if adv_loss is None else adv_loss.item(), "fair_penalty": opt.fair_penalty(),
                   "rewards/chosen": r_c.mean().item(), "rewards/rejected": r_r.mean().item(),
                   "rewards/margins": (r_c - r_r).mean().item(), "rewards/accuracy": (r_c > r_r).float().mean().item(),
                   "logratio/chosen": lr_c.mean().item(), "logratio/rejected": lr_r.mean().item(),
                   "lr": lr, "tokens_per_s": tokens / max(elapsed, 1e-9)}
            log.log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['rewards/accuracy']:.3f}")
            tokens, clock = 0, time.perf_counter()
        if rundir.checkpoint_now(done, cfg, schedule.total_steps):
            finite.check(lr)
            rundir.save_step(run_dir, done, model, opt, cfg, dist)
    bar.close()
    finite.check()

    # Held-out implicit rewards β·(log π − log π_ref), the final model and the report
    policy = all_logps(model, data.eval, cfg, hf_tok.pad_token_id, dist, autocast)
    if ref is not None:
        reference_eval = ref.eval
    elif reference is not None:
        reference_eval = all_logps(reference, data.eval, cfg, hf_tok.pad_token_id, dist, autocast)
    else:
        reference_eval = all_logps(model, data.eval, cfg, hf_tok.pad_token_id, dist, autocast, adapter=False)
    chosen, rejected = cfg.beta * (policy - reference_eval)
    eval_names = [names[c] for c in data.eval.categories]
    extra = dict(loss=cfg.loss, beta=cfg.beta, lambda_adv=cfg.lambda_adv, margin=float(np.mean(chosen - rejected)),
                 data=data.accounting())
    intro = (f"Policy `{init_model or cfg.model}` ({'LoRA' if cfg.lora else 'full fine-tuning'}), loss `{cfg.loss}`, "
             f"β = {cfg.beta:g}, λ = {cfg.lambda_adv:g}, data `{cfg.data}`"
             f"{' (dimension ' + ', '.join(cfg.dimensions) + ')' if cfg.dimensions else ''}, {len(data.train)} "
             f"training pairs, {len(data.eval)} held-out pairs, categories: {', '.join(names)}. Rewards are the "
             "implicit rewards β·(log π − log π_ref) of the held-out chosen and rejected responses.")

    def write_report(summary: dict) -> None:
        reports.write_reward_report(run_dir, title or f"Preference optimization ({cfg.loss})", intro, data, summary,
                                   SUMMARY_ROWS, chosen, rejected, eval_names,
                                   ("pref_loss", "rewards/accuracy", "rewards/margins"), what="implicit rewards")

    return session.finish_run(run_dir, model, hf_tok, dist, save_adapter=cfg.save_adapter, eval_names=eval_names,
                             chosen=chosen, rejected=rejected, seed=cfg.seed, extra=extra, write_report=write_report)


SUMMARY_ROWS = (("pair accuracy", "accuracy"), ("mean margin", "margin"), ("KS", "ks"), ("KS p-value", "ks_pvalue"),
                ("Wasserstein-1", "w1"), ("binned MI (nats)", "binned_mi"), ("audit AUC", "audit_auc"))


# ----------------------------------------------------------------------------------------------------
# SPO: one round per dimension


def spo_alphas(cfg: PrefConfig, rounds: int) -> list[float]:
    """α of each dimension but the last (the last one is never looked back on)."""
    alphas = list(cfg.alpha)
    if len(alphas) == 1:
        alphas = alphas * (rounds - 1)
    elif len(alphas) == rounds:
        alphas = alphas[:-1]
    if len(alphas) != rounds - 1 or any(not 0 <= a <= 1 for a in alphas):
        raise ConfigError(f"--alpha must be one value in [0, 1] or one per dimension ({rounds - 1} or {rounds}), "
                          f"got {cfg.alpha}")
    return alphas


def round_name(n: int, dimension: str) -> str:
    return f"round-{n}-{dimension}"


def score_policy(cfg: PrefConfig, model_name: str, datas: list[inputs.TrainEval], later: int, hf_tok, dist,
                 autocast: bool) -> dict[str, np.ndarray]:
    """The log-probs π_k gives the training pairs of rounds `later`, `later`+1, ... and every held-out set:
    {"train-<n>": [2, n_train], "eval-<n>": [2, n_eval]} with n the 1-based round."""
    loop.seed_everything(cfg.seed)
    model = models.load_causal_lm(model_name, vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id,
                                  trust_remote_code=cfg.trust_remote_code, seed=cfg.seed, device=dist.device)
    model = distributed.shard_model(model, dist, param_dtype=torch.bfloat16 if autocast else None)
    out = {}
    for n, data in enumerate(datas, 1):
        if n >= later:
            out[f"train-{n}"] = all_logps(model, data.train, cfg, hf_tok.pad_token_id, dist, autocast)
        out[f"eval-{n}"] = all_logps(model, data.eval, cfg, hf_tok.pad_token_id, dist, autocast)
    del model
    return out


def run_spo(cfg: PrefConfig, hf_tok, tok: gdata.Tokenizer, eos: int | None, dist) -> list[dict]:
    """One SPO round per dimension of cfg.dimensions, in order (module docstring); returns each round's
    held-out summary (on its own dimension's pairs)."""
    dims = list(cfg.dimensions or [])
    if not dims:
        raise ConfigError("--loss spo needs --dimensions, the preference dimensions in training order "
                          "(e.g. --dimensions helpful,harmless)")
    if len(set(dims)) != len(dims):
        raise ConfigError(f"--dimensions names a dimension twice: {dims}")
    alphas = spo_alphas(cfg, len(dims))
    if cfg.save_adapter:
        raise ConfigError("--save-adapter is not available with --loss spo: each round starts from the merged model "
                          "of the one before")
    template = inputs.chat_template_source(hf_tok, cfg.chat_template)
    datas = [inputs.load_train_eval(replace(cfg, dimensions=[d]), tok, eos, template) for d in dims]
    if dist.is_main:
        for d, data in zip(dims, datas):
            print(data.describe(f"data of dimension {d!r}"), flush=True)
    out = rundir.prepare_run_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite, is_main=dist.is_main)
    cache = out / "spo-cache"
    if dist.is_main:
        cache.mkdir(exist_ok=True)
    distributed.barrier(dist)
    autocast = dist.device.type == "cuda" and cfg.bf16

    def policy_logps_cached(k: int, model_name: str) -> dict[str, np.ndarray]:
        path = cache / f"policy-{k}.npz"
        if not path.exists():
            arrays = score_policy(cfg, model_name, datas, k + 1, hf_tok, dist, autocast)
            if dist.is_main:
                save_arrays(path, **arrays)
            distributed.barrier(dist)
            return arrays
        with np.load(path) as cached:
            return dict(cached)

    logps = [policy_logps_cached(0, cfg.model)]  # logps[k]: the policy after round k (0: the initial model)
    summaries = []
    for n, dim in enumerate(dims, 1):
        run_dir = out / round_name(n, dim)
        ref = ReferenceLogps(train=logps[n - 1][f"train-{n}"], eval=logps[n - 1][f"eval-{n}"],
                             previous=np.stack([logps[i][f"train-{n}"] - logps[i - 1][f"train-{n}"]
                                                for i in range(1, n)]) if n > 1 else None,
                             alphas=tuple(alphas[:n - 1]))
        init = cfg.model if n == 1 else str(out / round_name(n - 1, dims[n - 2]) / "model")
        round_cfg = replace(cfg, dimensions=[dim], overwrite=cfg.overwrite or not cfg.resume)
        if cfg.resume and (run_dir / "summary.json").exists():
            rundir.check_resumable(run_dir, round_cfg, round_cfg)
            summaries.append(jsonfiles.read_json(run_dir / "summary.json"))
        else:
            summaries.append(train_one(round_cfg, run_dir, datas[n - 1], hf_tok, dist, init_model=init, ref=ref,
                                       title=f"SPO round {n}/{len(dims)}: {dim}"))
        logps.append(policy_logps_cached(n, str(run_dir / "model")))

    retention = retention_table(dims, logps)
    if dist.is_main:
        write_spo_results(out, cfg, dims, alphas, summaries, retention)
    return summaries


def retention_table(dims: list[str], logps: list[dict[str, np.ndarray]]) -> list[dict]:
    """Per round (0 = the initial model): each dimension's held-out accuracy of the policy against the initial
    model, i.e. the share of held-out pairs with log π_n/π_0 (chosen) > log π_n/π_0 (rejected)."""
    rows = []
    for n, after in enumerate(logps):
        row = {"round": n, "trained": "-" if n == 0 else dims[n - 1]}
        for k, dim in enumerate(dims, 1):
            ratio = after[f"eval-{k}"] - logps[0][f"eval-{k}"]
            row[f"accuracy/{dim}"] = float(np.mean(ratio[0] > ratio[1]))
        rows.append(row)
    return rows


def write_spo_results(out: Path, cfg: PrefConfig, dims: list[str], alphas: list[float], summaries: list[dict],
                      retention: list[dict]) -> None:
    """spo.csv (the retention table) and report.md linking the rounds."""
    with open(out / "spo.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(retention[0]))
        writer.writeheader()
        writer.writerows(retention)
    report = Report(f"SPO over {', '.join(dims)}")
    report.text(f"Policy `{cfg.model}`, β = {cfg.beta:g}, α = {', '.join(f'{a:g}' for a in alphas) or '-'}, "
                f"data `{cfg.data}`. Each dimension's held-out accuracy after each round, against the initial model "
                "(the share of pairs whose chosen response gained more log-probability than the rejected):")
    report.table(retention)
    report.heading("Rounds", 2)
    report.table([{"round": n, "dimension": d, "held-out accuracy vs its reference": s.get("accuracy"),
                   "mean margin": s.get("margin"), "report": f"[{round_name(n, d)}/report.md]({round_name(n, d)}/report.md)"}
                  for n, (d, s) in enumerate(zip(dims, summaries), 1)])
    report.write(out / "report.md")
    print(format_table(retention))
    print(f"report: {out / 'report.md'}")


# ----------------------------------------------------------------------------------------------------
# Entry point


def parse_config(argv: list[str] | None) -> PrefConfig:
    return options.parse_recipe("pref", argv)


def run(cfg: PrefConfig) -> dict | list[dict]:
    with session.recipe_session(cfg, [cfg.lambda_adv]) as (dist, hf_tok, tok, eos):
        if cfg.loss == "spo":
            return run_spo(cfg, hf_tok, tok, eos, dist)
        data = inputs.load_train_eval(cfg, tok, eos, inputs.chat_template_source(hf_tok, cfg.chat_template))
        if dist.is_main:
            print(data.describe(), flush=True)
        summary = train_one(cfg, Path(cfg.output_dir), data, hf_tok, dist)
        if dist.is_main:
            print(format_table([{"held-out metric": label, cfg.loss: summary.get(key)} for label, key in SUMMARY_ROWS]))
            print(f"report: {Path(cfg.output_dir) / 'report.md'}")
        return summary


def main(argv: list[str] | None = None) -> int:
    run(parse_config(argv))
    return 0
