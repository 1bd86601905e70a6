"""The reward-model recipe: Bradley–Terry reward models with GUARD's fairness adversary.

    python -m guard.train rm --data pairs.jsonl --model tiny --output-dir runs/rm
    python -m guard.train rm --data PKU-Alignment/PKU-SafeRLHF --model meta-llama/Llama-3.2-1B --lora \\
        --output-dir runs/pku --lambda-adv 0,0.2,0.8      # a λ sweep: one run per value, then sweep.csv
    torchrun --nproc_per_node 8 -m guard.train rm ...        # the same run sharded with FSDP2
    python -m guard.train rm --help                          # every option

A run reads top to bottom in `train_one`: data (load, categories, dedup, tokenize, hold out 10%) -> model
(LoRA, FSDP2) -> the loop: score the batch's chosen and rejected sequences, gather the rewards from every
rank, the fused BT loss with per-category moments (guard.ops.bt_loss), (2) an adversary step on the
detached features, (3) the model step on L_BT − λ·penalty (DESIGN.md §3) -> held-out evaluation
(rewards.jsonl and the GUARD audit) -> report.md with plots -> the final model in Hugging Face format.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from guard import audit, data as gdata, distributed, models, ops, plots
from guard.adapters import SCHEMAS
from guard.config import ConfigError, add_arguments, build_config, option, save_config
from guard.fairness import CategoryAdversary, adversary_penalty, adversary_step
from guard.report import Report, format_table
from guard.train import common


@dataclass
class RMConfig:
    # data
    data: str = option("", "training pairs: a .jsonl/.json/.parquet/.csv file, a folder or a hub dataset name")
    eval_data: str | None = option(None, "held-out pairs; none: a fixed-seed --eval-fraction of --data is held out")
    eval_fraction: float = option(0.1, "share of --data held out for evaluation when --eval-data is not given")
    split: str = option("train", "dataset split to read")
    schema: str = option("auto", "data schema (auto: detected from the columns)", choices=SCHEMAS)
    dimensions: list[str] | None = option(None, "keep only these preference dimensions, e.g. harmless")
    categories: list[str] | None = option(
        None, "category names in order (data with another category is an error); default: the training data's")
    margin_column: str | None = option(None, "column holding a per-pair margin m in -logσ(r_c - r_r - m)")
    max_length: int = option(1024, "tokens per prompt+response sequence; a longer response is cut at its end")
    max_prompt_length: int | None = option(None, "keep at most the last N prompt tokens")
    # model
    model: str = option("tiny", "a local model directory, a hub name, or the preset 'tiny' (a small random Llama)")
    tokenizer: str | None = option(None, "tokenizer.json or a folder holding one (default: the model's; tiny: bundled)")
    lora: bool = option(False, "train LoRA adapters (peft) instead of every weight")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_target_modules: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "modules given adapters")
    save_adapter: bool = option(False, "with --lora: save the adapter alone instead of the merged model")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    bf16: bool = option(True, "bf16 autocast on GPU (CPU runs stay in float32)")
    trust_remote_code: bool = option(False, "allow model code from the hub (off: safe by default)")
    # optimisation
    epochs: int = option(1, "passes over the training pairs")
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides --epochs)")
    batch_size: int = option(32, "preference pairs per optimizer step, over all processes")
    eval_batch_size: int = option(64, "pairs per forward pass when scoring the held-out set")
    lr: float = option(1e-5, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.03, "share of the steps spent in linear warmup")
    lr_schedule: str = option("cosine", "decay after warmup", choices=("cosine", "linear", "constant"))
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)")
    center_coef: float = option(0.0, "weight of the reward-centering term mean((r_c + r_r)²)")
    # fairness (GUARD)
    lambda_adv: list[float] = option([0.2], "fairness weight λ; 0 = plain BT; several values (0,0.2,0.8) run a sweep")
    adversary: str = option("rewards", "what the adversary reads: each pair's rewards, or per-category moments",
                            choices=("rewards", "moments"))
    adv_objective: str = option("ce", "what the model maximises: the adversary's cross-entropy (paper) or "
                                "its predictive entropy (authors' code)", choices=("ce", "entropy"))
    adv_hidden: int = option(64, "hidden units of the adversary MLP")
    adv_lr: float = option(1e-3, "adversary learning rate (Adam)")
    # run
    output_dir: str = option("", "where the run writes config, metrics, checkpoints, model and report")
    seed: int = option(0, "seed of the data order, the held-out split, the model init and the audit")
    log_every: int = option(10, "write metrics every N steps")
    save_every: int = option(200, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = option(2, "checkpoints kept on disk")
    resume: bool = option(False, "continue from the last checkpoint in --output-dir")
    overwrite: bool = option(False, "replace a finished or stopped run in --output-dir")
    device: str = option("auto", "cuda, cpu, or auto (cuda when available)")


# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class RMData:
    train: common.PairData
    eval: common.PairData
    set_aside: dict[str, int]  # every row or pair left out of train + eval, by stage and reason


def load_data(cfg: RMConfig, tok: gdata.Tokenizer, eos_token_id: int | None) -> RMData:
    """Training and held-out pairs, tokenized, with the category ids of the run."""
    train_set = common.load_pair_set(cfg.data, split=cfg.split, schema=cfg.schema, dimensions=cfg.dimensions)
    cmap = common.category_map(train_set, cfg.categories)
    encode = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, eos_token_id=eos_token_id)
    margins = None if cfg.margin_column is None else common.load_margins(cfg.data, train_set, cfg.margin_column,
                                                                         split=cfg.split)
    train = common.tokenize_pairs(train_set, tok, cmap, margins=margins, what=f"training data {cfg.data}", **encode)
    if cfg.eval_data:
        eval_set = common.load_pair_set(cfg.eval_data, split=cfg.split, schema=cfg.schema,
                                        dimensions=cfg.dimensions, what="eval_data")
        eval_margins = None if cfg.margin_column is None else common.load_margins(
            cfg.eval_data, eval_set, cfg.margin_column, split=cfg.split)
        held_out = common.tokenize_pairs(eval_set, tok, cmap, margins=eval_margins,
                                         what=f"eval data {cfg.eval_data}", **encode)
        set_aside = {f"train {k}": v for k, v in train.set_aside.items()}
        set_aside.update({f"eval {k}": v for k, v in held_out.set_aside.items()})
    else:
        train_rows, eval_rows = common.holdout_split(len(train), cfg.eval_fraction, cfg.seed)
        train, held_out, set_aside = common.subset(train, train_rows), common.subset(train, eval_rows), train.set_aside
    return RMData(train, held_out, set_aside)


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(batch[k]).to(device, non_blocking=True) for k in ("input_ids", "attention_mask")}


def score(model: torch.nn.Module, batch: dict[str, torch.Tensor], autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (fp32) of a padded pair batch: chosen rows first, then rejected."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rewards = rewards.squeeze(-1).float()
    half = rewards.shape[0] // 2
    return rewards[:half], rewards[half:]


def local_rows(rows: np.ndarray, dist: distributed.Dist) -> np.ndarray:
    """This rank's contiguous share of a global batch, so the gathered rewards come back in batch order."""
    share = len(rows) // dist.world_size
    return rows[dist.rank * share:(dist.rank + 1) * share]


@torch.no_grad()
def score_pairs(model, data: common.PairData, batch_size: int, pad_id: int, dist: distributed.Dist,
                autocast: bool) -> tuple[np.ndarray, np.ndarray]:
    """float64 rewards of every pair in `data` (in order), the work split over the ranks."""
    model.eval()
    chosen, rejected = [], []
    step = max(dist.world_size, batch_size - batch_size % dist.world_size)
    for start in range(0, len(data), step):
        rows = np.arange(start, min(start + step, len(data)))
        n = len(rows)
        if n % dist.world_size:  # every rank runs the same number of forwards (FSDP collectives)
            rows = np.concatenate([rows, np.full(dist.world_size - n % dist.world_size, rows[-1])])
        batch = to_tensors(gdata.padded_batch(data.encoded, local_rows(rows, dist), pad_id), dist.device)
        r_c, r_r = score(model, batch, autocast)
        chosen.append(distributed.gather_rows(r_c, dist)[:n].double().cpu())
        rejected.append(distributed.gather_rows(r_r, dist)[:n].double().cpu())
    model.train()
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


# ----------------------------------------------------------------------------------------------------
# One run


def run_name(lambda_adv: float) -> str:
    return f"lambda-{lambda_adv:g}"


def train_one(cfg: RMConfig, lambda_adv: float, run_dir: Path, data: RMData, hf_tok, dist: distributed.Dist) -> dict:
    """Train one reward model with fairness weight `lambda_adv` into `run_dir`; returns its held-out summary."""
    summary_path = run_dir / "summary.json"
    if cfg.resume and summary_path.exists():  # finished before the interruption (a sweep's earlier λ)
        return json.loads(summary_path.read_text(encoding="utf-8"))
    run_dir = common.prepare_run_dir(run_dir, resume=cfg.resume, overwrite=cfg.overwrite, is_main=dist.is_main)
    distributed.barrier(dist)
    if dist.is_main:
        save_config(replace(cfg, lambda_adv=[lambda_adv]), run_dir / "config.yaml")
    train, names = data.train, data.train.category_names
    num_categories = len(names)
    if lambda_adv > 0 and num_categories < 2:
        raise ConfigError("--lambda-adv > 0 needs at least two categories; the data has "
                          f"{list(names)} (give it a category column, or pass --lambda-adv 0)")
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training pairs")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    device, autocast = dist.device, dist.device.type == "cuda" and cfg.bf16

    # Model, optimizers, adversary: the same initial weights on every rank and for every λ of a sweep.
    common.seed_everything(cfg.seed)
    lora = models.LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                               target_modules=tuple(cfg.lora_target_modules)) if cfg.lora else None
    model = models.load_reward_model(cfg.model, vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id,
                                     lora=lora, gradient_checkpointing=cfg.gradient_checkpointing,
                                     trust_remote_code=cfg.trust_remote_code, seed=cfg.seed, device=device)
    model = distributed.shard_model(model, dist, param_dtype=torch.bfloat16 if autocast else None)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    adversary = adv_optimizer = None
    if num_categories >= 2:  # with λ = 0 it only watches: its loss says how much the rewards leak
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            adversary = CategoryAdversary(num_categories, mode=cfg.adversary, hidden=cfg.adv_hidden).to(device)
        adv_optimizer = torch.optim.Adam(adversary.parameters(), lr=cfg.adv_lr)
    optimizers = {"model": optimizer} | ({"adversary": adv_optimizer} if adversary is not None else {})
    modules = {"adversary": adversary} if adversary is not None else {}

    start_step = 0
    checkpoint = distributed.latest_checkpoint(run_dir) if cfg.resume else None
    if checkpoint is not None:
        start_step = distributed.load_checkpoint(checkpoint, model, optimizers, modules, dist)["step"]
    log = common.MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if cfg.resume else None,
                            enabled=dist.is_main)

    categories = torch.from_numpy(train.categories).to(device)
    margins = None if train.margins is None else torch.from_numpy(train.margins).to(device)
    lengths = train.encoded.lengths.sum(1)
    order, order_epoch = None, -1
    bar = tqdm(total=total_steps, initial=start_step, disable=not dist.is_main, desc=f"rm λ={lambda_adv:g}",
               dynamic_ncols=True)
    tokens, clock = 0, time.perf_counter()
    for step in range(start_step, total_steps):
        epoch, k = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = common.epoch_order(len(train), cfg.seed, epoch), epoch
        rows = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        lr = cfg.lr * common.lr_factor(cfg.lr_schedule, step, warmup_steps, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # (1) rewards of the whole batch on every rank, the fused BT loss and per-category moments
        batch = to_tensors(gdata.padded_batch(train.encoded, local_rows(rows, dist), hf_tok.pad_token_id), device)
        r_c, r_r = score(model, batch, autocast)
        r_c, r_r = distributed.gather_rows(r_c, dist), distributed.gather_rows(r_r, dist)
        index = torch.from_numpy(rows).to(device)
        cats = categories[index]
        out = ops.bt_loss(r_c, r_r, categories=cats, num_categories=num_categories,
                          margin=None if margins is None else margins[index], center_coef=cfg.center_coef)
        loss = out.loss
        adv_loss = None
        if adversary is not None:
            # (2) the adversary learns to tell the categories from detached features
            features, targets = adversary.features(out.moments, out.counts, r_c, r_r, cats)
            adv_loss = adversary_step(adversary, adv_optimizer, features, targets)
            # (3) the model step: BT loss minus λ times what the adversary is made to lose
            if lambda_adv > 0:
                loss = loss - lambda_adv * adversary_penalty(adversary, features, targets, objective=cfg.adv_objective)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        tokens += int(lengths[rows].sum())
        bar.update(1)

        done = step + 1
        if done % cfg.log_every == 0 or done == total_steps:
            elapsed = time.perf_counter() - clock
            row = {"step": done, "epoch": round(done / steps_per_epoch, 4), "loss": loss.item(),
                   "bt_loss": out.loss.item(), "adv_loss": None if adv_loss is None else adv_loss.item(),
                   "accuracy": out.accuracy.item(), "lr": lr, "tokens_per_s": tokens / max(elapsed, 1e-9)}
            log.log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.3f}")
            tokens, clock = 0, time.perf_counter()
        if (cfg.save_every and done % cfg.save_every == 0) or done == total_steps:
            distributed.save_checkpoint(run_dir, done, model, optimizers, modules, {"step": done}, dist,
                                        keep=cfg.keep_checkpoints)
    bar.close()

    # Held-out evaluation, the final model and the report
    chosen, rejected = score_pairs(model, data.eval, cfg.eval_batch_size, hf_tok.pad_token_id, dist, autocast)
    state = distributed.full_state_dict(model, dist)
    summary = None
    if dist.is_main:
        eval_names = [names[c] for c in data.eval.categories]
        audit.write_rewards_jsonl(run_dir / "rewards.jsonl", eval_names, chosen, rejected)
        summary = audit.reward_summary(chosen, rejected, eval_names, seed=cfg.seed)
        margin = 0.0 if data.eval.margins is None else data.eval.margins.astype(np.float64)
        summary["bt_loss"] = float(np.mean(np.logaddexp(0.0, -(chosen - rejected - margin))))
        summary["lambda_adv"] = lambda_adv
        models.save_pretrained(model, run_dir / "model", tokenizer=hf_tok, state_dict=state,
                               merge_lora=not cfg.save_adapter)
        write_report(run_dir, cfg, lambda_adv, data, summary, chosen, rejected, eval_names)
        common.write_json(summary_path, summary)
    distributed.barrier(dist)
    return summary if summary is not None else {}


# ----------------------------------------------------------------------------------------------------
# Reports


SUMMARY_ROWS = (("pair accuracy", "accuracy"), ("BT loss", "bt_loss"), ("KS", "ks"), ("KS p-value", "ks_pvalue"),
                ("Wasserstein-1", "w1"), ("binned MI (nats)", "binned_mi"), ("audit AUC", "audit_auc"))


def write_report(run_dir: Path, cfg: RMConfig, lambda_adv: float, data: RMData, summary: dict,
                 chosen: np.ndarray, rejected: np.ndarray, eval_names: list[str]) -> None:
    """report.md with the held-out audit, the data accounting, reward histograms and training curves."""
    names = np.asarray(eval_names)
    by_category = {c: np.concatenate([chosen[names == c], rejected[names == c]]) for c in dict.fromkeys(eval_names)}
    plots.reward_histograms(run_dir / "rewards_by_category.png", by_category,
                            f"held-out rewards by category (λ = {lambda_adv:g})")
    plots.chosen_rejected_histogram(run_dir / "chosen_vs_rejected.png", chosen, rejected,
                                    f"held-out rewards, chosen vs rejected (λ = {lambda_adv:g})")
    history = common.read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    steps = [m["step"] for m in history]
    plots.curves(run_dir / "training_curves.png", {key: (steps, [m[key] for m in history])
                                                   for key in ("bt_loss", "accuracy") if history},
                 "training (per logged step)", "value")

    report = Report(f"Reward model, λ = {lambda_adv:g}")
    report.text(f"Model `{cfg.model}`, data `{cfg.data}`, adversary `{cfg.adversary}` / `{cfg.adv_objective}`, "
                f"{len(data.train)} training pairs, {len(data.eval)} held-out pairs, categories: "
                f"{', '.join(data.train.category_names)}.")
    report.heading("Held-out audit", 2)
    report.table([{"metric": label, "value": summary.get(key)} for label, key in SUMMARY_ROWS])
    report.table([{"category": c, **v} for c, v in summary.get("categories", {}).items()])
    report.image("rewards_by_category.png", "rewards by category")
    report.image("chosen_vs_rejected.png", "chosen vs rejected rewards")
    report.heading("Training", 2)
    report.image("training_curves.png", "training curves")
    report.heading("Data set aside", 2)
    report.text(f"Rows read: {data.train.rows_read}. Every row or pair left out, by stage and reason "
                "(none: nothing was set aside):")
    report.table([{"reason": k, "count": v} for k, v in data.set_aside.items()] or [{"reason": "none", "count": 0}])
    report.write(run_dir / "report.md")


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
    parser = argparse.ArgumentParser(prog="python -m guard.train rm", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="a yaml file of options; flags given on the command line win")
    add_arguments(parser, RMConfig)
    args = parser.parse_args(argv)
    return build_config(RMConfig, args, yaml_path=args.config)


def run(cfg: RMConfig, labels: list[str] | None = None) -> list[dict]:
    """Every λ of cfg.lambda_adv on the same data, model init and batch order; returns their summaries."""
    if not cfg.output_dir:
        raise ConfigError("--output-dir is required")
    if cfg.batch_size < 1 or cfg.epochs < 1 or (cfg.max_steps is not None and cfg.max_steps < 1):
        raise ConfigError("--batch-size, --epochs and --max-steps must be positive")
    if any(lam < 0 or not math.isfinite(lam) for lam in cfg.lambda_adv) or not cfg.lambda_adv:
        raise ConfigError(f"--lambda-adv must be one or more non-negative numbers, got {cfg.lambda_adv}")
    dist = distributed.init_distributed(cfg.device)
    try:
        if cfg.batch_size % dist.world_size:
            raise ConfigError(f"--batch-size {cfg.batch_size} must be a multiple of the {dist.world_size} processes")
        models.resolve_model(cfg.model)  # a missing model path fails here, before any data work
        hf_tok, tok = models.load_tokenizer(cfg.tokenizer or (models.TINY_TOKENIZER if cfg.model == "tiny" else cfg.model))
        eos = hf_tok.eos_token_id if hf_tok.eos_token_id not in (None, hf_tok.pad_token_id) else None
        data = load_data(cfg, tok, eos)
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
    finally:
        distributed.shutdown(dist)


def main(argv: list[str] | None = None) -> int:
    run(parse_config(argv))
    return 0
