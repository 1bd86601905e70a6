"""The reward-model recipe: Bradley–Terry reward models with GUARD's fairness adversary.

    python -m guard.train rm --data pairs.jsonl --model tiny --output-dir runs/rm
    python -m guard.train rm --data PKU-Alignment/PKU-SafeRLHF --model meta-llama/Llama-3.2-1B --lora \\
        --output-dir runs/pku --lambda-adv 0,0.2,0.8      # a λ sweep: one run per value, then sweep.csv
    torchrun --nproc_per_node 8 -m guard.train rm ...        # the same run sharded with FSDP2
    python -m guard.train rm --help                          # every option

A run reads top to bottom in `train_one`: data (load, categories, dedup, tokenize, hold out 10%) -> model
(LoRA, FSDP2) -> the loop: the step's pairs (--batch-size, or best fit into --tokens-per-step), packed in one
row when the model allows it (--packing, guard/train/batches.py), score the batch's chosen and rejected
sequences (a packed row: the score head on each sequence's last token), gather the rewards from every
rank, the fused BT loss with per-category moments (guard.ops.bt_loss), (2) an adversary step on the
detached features, (3) the model step on L_BT − λ·penalty (guard/fairness.py) -> held-out evaluation
(rewards.jsonl and the GUARD audit) -> report.md with plots -> the final model in Hugging Face format.
"""

from __future__ import annotations

import csv
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from guard import distributed, jsonfiles, models, ops
from guard.report import Report, format_table
from guard.train import batches, inputs, loop, options, reports, rundir, session
from guard.train.options import RMConfig


# ----------------------------------------------------------------------------------------------------
# Data


RMData = inputs.TrainEval  # the training and held-out pairs of a run (guard.train.common)
load_data = inputs.load_train_eval
to_tensors = loop.to_tensors


def score(model: torch.nn.Module, batch: dict[str, torch.Tensor], autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (fp32) of a pair batch, chosen sequences first, then rejected: a padded batch through the model's
    own forward, a packed row (batches.Layout) through packed_rewards."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        if batches.is_packed(batch):
            rewards = packed_rewards(model)(batch)
        else:
            rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    rewards = rewards.float()
    half = rewards.shape[0] // 2
    return rewards[:half], rewards[half:]


def packed_rewards(model: torch.nn.Module):
    """model's packed row -> one reward per sequence [S]: the backbone over the row, then the score head on each
    sequence's last token that is not the pad id (the token *ForSequenceClassification scores in a padded row,
    so a trained model scores alike in either layout and in transformers). The *ForSequenceClassification
    forward cannot take a packed row: it scores one token per row. An FSDP2 forward method
    (distributed.forward_method), so the root unit (embeddings, norm, score head) is gathered."""
    def make():
        def _guard_packed_rewards(batch: dict) -> torch.Tensor:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            inputs = batches.backbone_inputs(batch)
            hidden = getattr(base, base.base_model_prefix)(**inputs, use_cache=False).last_hidden_state[0]
            ids, cu = batch["input_ids"][0], batch["cu_seqlens"].long()
            # The last non-pad position of each sequence: a running max of the non-pad positions, read at each
            # sequence's end; a sequence of nothing but pad ids falls back to its first position, as argmax does.
            position = torch.arange(ids.shape[0], device=ids.device)
            last = torch.cummax(torch.where(ids != model.config.pad_token_id, position, -1), dim=0).values[cu[1:] - 1]
            last = torch.maximum(last, cu[:-1])
            return base.score(hidden[last]).squeeze(-1)
        return _guard_packed_rewards

    return distributed.forward_method(model, "_guard_packed_rewards", make)


@torch.no_grad()
def score_pairs(model, data: inputs.PairData, batch_size: int, pad_id: int, dist: distributed.Dist,
                autocast: bool, packed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """float64 rewards of every pair in `data` (in order), the work split over the ranks; `packed`: in packed
    rows."""
    layout = batches.Layout(packed, pad_id, dist.device)
    model.eval()
    try:
        return loop.score_pairs(lambda batch: score(model, batch, autocast), data, batch_size, pad_id, dist,
                                batch_of=lambda rows: layout.pairs(data.encoded, rows))
    finally:
        model.train()


# ----------------------------------------------------------------------------------------------------
# One run


def run_name(lambda_adv: float) -> str:
    return f"lambda-{lambda_adv:g}"


def train_one(cfg: RMConfig, lambda_adv: float, run_dir: Path, data: RMData, hf_tok, dist: distributed.Dist) -> dict:
    """Train one reward model with fairness weight `lambda_adv` into `run_dir`; returns its held-out summary."""
    summary_path = run_dir / "summary.json"
    if cfg.resume and summary_path.exists():  # finished before the interruption (a sweep's earlier λ)
        rundir.check_resumable(run_dir, cfg, replace(cfg, lambda_adv=[lambda_adv]))
        return jsonfiles.read_json(summary_path)
    run_dir = rundir.start_run(run_dir, cfg, replace(cfg, lambda_adv=[lambda_adv]), dist)
    train, names = data.train, data.train.category_names
    options.check_fairness(lambda_adv, names)
    schedule = batches.plan_steps(cfg, train, dist)
    device, autocast = dist.device, dist.device.type == "cuda" and cfg.bf16

    # Model, optimizers, adversary: the same initial weights on every rank and for every λ of a sweep.
    loop.seed_everything(cfg.seed)
    lora = models.LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                               target_modules=tuple(cfg.lora_target_modules)) if cfg.lora else None
    model = models.load_reward_model(cfg.model, vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id,
                                     lora=lora, gradient_checkpointing=cfg.gradient_checkpointing,
                                     trust_remote_code=cfg.trust_remote_code, seed=cfg.seed, device=device)
    model = distributed.shard_model(model, dist, param_dtype=torch.bfloat16 if autocast else None)
    model.train()
    layout = batches.Layout(batches.decide_packing(cfg.packing, model, dist, head="score"), hf_tok.pad_token_id, device)
    opt = loop.Optimization(cfg, model, len(names), device)
    start_step, log = rundir.resume_state(cfg, run_dir, model, opt, dist)
    finite = loop.FiniteWatch(device, dist)

    categories = torch.from_numpy(train.categories).to(device)
    margins = None if train.margins is None else torch.from_numpy(train.margins).to(device)
    lengths = train.encoded.lengths.sum(1)
    bar = tqdm(total=schedule.total_steps, initial=start_step, disable=not dist.is_main, desc=f"rm λ={lambda_adv:g}",
               dynamic_ncols=True)
    tokens, clock = 0, time.perf_counter()
    for step, rows, lr in schedule.steps(start_step, cfg.seed, cfg.lr, cfg.lr_schedule):
        opt.set_lr(lr)
        # (1) rewards of the whole batch on every rank, the fused BT loss and per-category moments
        batch = layout.pairs(train.encoded, schedule.local_rows(step, rows, dist))
        r_c, r_r = score(model, batch, autocast)
        r_c, r_r = distributed.gather_rows(r_c, dist), distributed.gather_rows(r_r, dist)
        index = torch.from_numpy(rows).to(device)
        cats = categories[index]
        out = ops.bt_loss(r_c, r_r, categories=cats, num_categories=len(names),
                          margin=None if margins is None else margins[index], center_coef=cfg.center_coef)
        # (2) the adversary step on detached features, (3) the model step on L_BT − λ·penalty
        loss, adv_loss = opt.fairness(out.loss, lambda_adv, out.moments, out.counts, r_c, r_r, cats)
        opt.step(loss)
        tokens += int(lengths[rows].sum())
        bar.update(1)

        done = step + 1
        finite.watch(done, loss)
        if rundir.log_now(done, cfg, schedule.total_steps):
            finite.check(lr)
            elapsed = time.perf_counter() - clock
            row = {"step": done, "epoch": schedule.epoch(done), "loss": loss.item(),
                   "bt_loss": out.loss.item(), "adv_loss": None if adv_loss is None else adv_loss.item(),
                   "fair_penalty": opt.fair_penalty(),
                   "accuracy": out.accuracy.item(), "lr": lr, "tokens_per_s": tokens / max(elapsed, 1e-9)}
            log.log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.3f}")
            tokens, clock = 0, time.perf_counter()
        if rundir.checkpoint_now(done, cfg, schedule.total_steps):
            finite.check(lr)
            rundir.save_step(run_dir, done, model, opt, cfg, dist)
    bar.close()
    finite.check()

    # Held-out evaluation, the final model and the report
    chosen, rejected = score_pairs(model, data.eval, cfg.eval_batch_size, hf_tok.pad_token_id, dist, autocast,
                                   layout.packed)
    eval_names = [names[c] for c in data.eval.categories]
    margin = 0.0 if data.eval.margins is None else data.eval.margins.astype(np.float64)
    extra = {"bt_loss": float(np.mean(np.logaddexp(0.0, -(chosen - rejected - margin)))), "lambda_adv": lambda_adv,
             "data": data.accounting()}
    return session.finish_run(
        run_dir, model, hf_tok, dist, save_adapter=cfg.save_adapter, eval_names=eval_names, chosen=chosen,
        rejected=rejected, seed=cfg.seed, extra=extra,
        write_report=lambda summary: write_report(run_dir, cfg, lambda_adv, data, summary, chosen, rejected,
                                                  eval_names))


# ----------------------------------------------------------------------------------------------------
# Reports


SUMMARY_ROWS = (("pair accuracy", "accuracy"), ("BT loss", "bt_loss"), ("KS", "ks"), ("KS p-value", "ks_pvalue"),
                ("Wasserstein-1", "w1"), ("binned MI (nats)", "binned_mi"), ("audit AUC", "audit_auc"))


def write_report(run_dir: Path, cfg: RMConfig, lambda_adv: float, data: RMData, summary: dict,
                 chosen: np.ndarray, rejected: np.ndarray, eval_names: list[str]) -> None:
    """report.md with the held-out audit, the data accounting, reward histograms and training curves."""
    fair = cfg.fairness if cfg.fairness == "moments" else f"{cfg.fairness} ({cfg.adversary} / {cfg.adv_objective})"
    intro = (f"Model `{cfg.model}`, data `{cfg.data}`, fairness `{fair}`, "
             f"{len(data.train)} training pairs, {len(data.eval)} held-out pairs, categories: "
             f"{', '.join(data.train.category_names)}.")
    reports.write_reward_report(run_dir, f"Reward model, λ = {lambda_adv:g}", intro, data, summary, SUMMARY_ROWS,
                               chosen, rejected, eval_names, ("bt_loss", "accuracy"))


def write_sweep(out: Path, summaries: list[dict]) -> None:
    """sweep.csv (one row per λ: the shape of GUARD's Table 3) and a report.md linking the runs."""
    columns = ("lambda_adv", "bt_loss", "accuracy", "binned_mi", "ks", "w1", "audit_auc")
    with open(out / "sweep.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for s in summaries:
            writer.writerow([s.get(c) for c in columns])
    report = Report("Reward-model λ sweep")
    report.table([{c: s.get(c) for c in columns} for s in summaries])
    for s in summaries:
        name = run_name(s["lambda_adv"])
        report.text(f"- λ = {s['lambda_adv']:g}: [{name}/report.md]({name}/report.md)")
    for s in summaries:
        report.image(f"{run_name(s['lambda_adv'])}/rewards_by_category.png", f"λ = {s['lambda_adv']:g}")
    report.write(out / "report.md")


def print_summaries(out: Path, summaries: list[dict], labels: list[str]) -> None:
    rows = [{"held-out metric": label, **{name: s.get(key) for name, s in zip(labels, summaries)}}
            for label, key in SUMMARY_ROWS]
    print(format_table(rows))
    print(f"report: {out / 'report.md'}")
    for s in summaries:
        run_dir = out if len(summaries) == 1 else out / run_name(s["lambda_adv"])
        print(f"plots:  {run_dir / 'rewards_by_category.png'}  {run_dir / 'chosen_vs_rejected.png'}")


# ----------------------------------------------------------------------------------------------------
# Entry point


def parse_config(argv: list[str] | None) -> RMConfig:
    return options.parse_recipe("rm", argv)


def run(cfg: RMConfig, labels: list[str] | None = None) -> list[dict]:
    """Every λ of cfg.lambda_adv on the same data, model init and batch order; returns their summaries."""
    with session.recipe_session(cfg, cfg.lambda_adv) as (dist, hf_tok, tok, eos):
        data = load_data(cfg, tok, eos, inputs.chat_template_source(hf_tok, cfg.chat_template))
        if dist.is_main:
            print(data.describe(), flush=True)
        out = Path(cfg.output_dir)
        sweep = len(cfg.lambda_adv) > 1
        summaries = []
        for lam in cfg.lambda_adv:
            run_dir = out / run_name(lam) if sweep else out
            summaries.append(train_one(cfg, lam, run_dir, data, hf_tok, dist))
        if dist.is_main:
            if sweep:
                write_sweep(out, summaries)
            print_summaries(out, summaries, labels or [f"λ={lam:g}" for lam in cfg.lambda_adv])
        return summaries


def main(argv: list[str] | None = None) -> int:
    run(parse_config(argv))
    return 0
