"""Benchmark: one whole training step of a recipe, guard against TRL's trainer, on the same model, weights and batch.

    python bench/bench_train.py rm                                # on a GPU: the 1B Llama config, 8 pairs x 1024 tokens
    python bench/bench_train.py rm --config tiny --steps 2        # the CPU smoke run (what the test runs)
    python bench/bench_train.py rm --out bench/results/train-rm-H100-2026-11-24.md   # also write the table

Cases (a registry, CASES, so issue 6 can add `dpo`: guard's fused DPO step against TRL's DPOTrainer):
  rm    reward model step: forward chosen + rejected, Bradley–Terry loss, backward, AdamW step.
        guard  the recipe's step (python/guard/train/rm.py): rm.score -> guard.ops.bt_loss -> backward -> AdamW.
        trl    TRL's RewardTrainer built on a datasets.Dataset holding exactly the same batch (pre-tokenized
               chosen_ids / rejected_ids), its own collator, accelerator.prepare(model, optimizer) as
               Trainer.train() does (bf16 autocast on GPU), then trainer.training_step + optimizer.step + zero_grad.
Models are random LlamaForSequenceClassification (num_labels 1) built locally: "1b" has Llama-3.2-1B's shape,
"tiny" is for the CPU. Both implementations start from the same weights (one CPU snapshot loaded into each) and
see the same right-padded batch of random non-zero token ids (pad id 0, varied lengths, one row full length).

Before anything is timed the first step is checked: the two batches are identical, the rewards of the first
forward agree, the step-1 losses agree (TRL 1.16's loss is -logσ(r_c - r_r) averaged over pairs plus, when
center_rewards_coefficient is set, coef·mean((r_c + r_r)²); guard's bt_loss with center_coef = the same coef
is the same function) and the step-2 losses agree (so both took the same AdamW step). A mismatch exits 1.

Per row: real (non-pad) tokens/s, ms per step (CUDA-synchronised wall clock, mean of the timed steps), peak
device memory (torch.cuda.max_memory_allocated: weights, gradients, AdamW state and activations) and the
tokens/s ratio guard/TRL. CPU numbers only show the harness works; throughput is meaningful on a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

# ----------------------------------------------------------------------------------------------------
# Shared: models, batches, timing, checks, reporting (a later `dpo` case reuses all of these)

MODEL_CONFIGS = {
    # Llama-3.2-1B's shape (random weights; no hub access needed).
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
               max_position_embeddings=131072, rms_norm_eps=1e-5),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, tie_word_embeddings=True, rope_theta=500000.0,
                 max_position_embeddings=256, rms_norm_eps=1e-5),
}
DEFAULT_SHAPES = {"1b": (8, 1024), "tiny": (2, 32)}  # (pairs, max tokens per sequence)
PAD_ID = 0


def llama_config(name: str, attn_implementation: str, num_labels: int | None = None):
    from transformers import LlamaConfig

    kwargs = dict(MODEL_CONFIGS[name], pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=1)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    config = LlamaConfig(**kwargs)
    config._attn_implementation = attn_implementation
    return config


def initial_state(model_cls, config, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random initial weights as a CPU snapshot, so each implementation can start from exactly these weights
    without two models sharing the device (which would spoil the peak-memory numbers)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls(config)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    del model
    free_device(device)
    return state


def build_model(model_cls, config, state: dict[str, torch.Tensor], device: torch.device):
    with torch.device(device):
        model = model_cls(config)
    model.load_state_dict(state, strict=True)
    return model.train()


def random_pairs(pairs: int, seq_len: int, vocab: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """chosen and rejected token-id lists: ids in [1, vocab) (never the pad id 0), lengths in [seq_len/2, seq_len],
    the first chosen sequence full length so the padded batch is exactly seq_len wide."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, seq_len // 2), seq_len + 1, (2, pairs), generator=gen)
    lengths[0, 0] = seq_len
    rows = [torch.randint(1, vocab, (int(n),), generator=gen).tolist() for n in lengths.flatten()]
    return rows[:pairs], rows[pairs:]


def right_padded(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def bench_tokenizer():
    """A 3-token tokenizer: TRL's trainers need one for the pad/eos ids; the batches come pre-tokenized."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<pad>": PAD_ID, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def free_device(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Runner:
    """One implementation of a case, ready to step: `step()` runs one optimizer step and returns the loss
    (detached); `probe` holds what the first step exposed for the correctness check (e.g. rewards)."""

    impl: str
    step: Callable[[], torch.Tensor]
    tokens_per_step: int
    optimizer: str
    probe: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


@dataclass
class Measured:
    impl: str
    losses: list[float]
    step_s: list[float]  # timed steps only
    tokens_per_step: int
    peak_gb: float | None
    optimizer: str
    probe: dict[str, Any]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step * len(self.step_s) / sum(self.step_s)

    @property
    def ms_per_step(self) -> float:
        return 1e3 * sum(self.step_s) / len(self.step_s)


def measure(make_runner: Callable[[], Runner], device: torch.device, steps: int, warmup: int) -> Measured:
    """Build a runner, run warmup + steps optimizer steps (the first is the one checked), free it all."""
    runner = make_runner()
    try:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        losses, times = [], []
        for i in range(warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = runner.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            losses.append(loss)
            if i >= warmup:
                times.append(elapsed)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        return Measured(runner.impl, [float(x) for x in losses], times, runner.tokens_per_step, peak,
                        runner.optimizer, runner.probe)
    finally:
        runner.close()
        del runner
        free_device(device)


def adamw_kind(optimizer: torch.optim.Optimizer, device: torch.device) -> str:
    """Which AdamW implementation torch runs: fused when asked, else foreach on CUDA (its default), else a loop."""
    if optimizer.defaults.get("fused"):
        return "fused"
    foreach = optimizer.defaults.get("foreach")
    return "foreach" if foreach or (foreach is None and device.type == "cuda") else "for-loop"


class CheckFailed(RuntimeError):
    pass


def check_close(what: str, got: torch.Tensor | float, want: torch.Tensor | float, rtol: float, atol: float) -> str:
    """A one-line account of the comparison, or CheckFailed naming what differed and by how much."""
    got_t, want_t = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    err = (got_t - want_t).abs().max().item()
    bound = atol + rtol * want_t.abs().max().item()
    if not (err <= bound):  # also catches NaN
        raise CheckFailed(f"{what}: guard and TRL differ by {err:.3g} (allowed {bound:.3g}); "
                          f"guard {got_t.flatten()[:4].tolist()}, TRL {want_t.flatten()[:4].tolist()}")
    return f"{what}: max |diff| {err:.2g} <= {bound:.2g}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()})"


def versions() -> str:
    import transformers
    import trl

    return f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"


def result_rows(case: str, results: list[Measured], baseline: str = "trl") -> list[dict]:
    base = next(r for r in results if r.impl == baseline)
    return [{"case": case, "impl": r.impl, "tokens_per_s": r.tokens_per_s, "ms_per_step": r.ms_per_step,
             "peak_gb": r.peak_gb, "ratio_vs_trl": r.tokens_per_s / base.tokens_per_s, "step1_loss": r.losses[0],
             "optimizer": r.optimizer} for r in results]


def markdown(title: str, header: list[str], rows: list[dict], checks: list[str]) -> str:
    lines = [f"# {title}", ""] + [f"- {h}" for h in header] + [""]
    lines += ["| case | impl | tokens/s | ms/step | peak GB | tokens/s ratio guard/TRL | step-1 loss | optimizer |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = "n/a" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        lines.append(f"| {r['case']} | {r['impl']} | {r['tokens_per_s']:.4g} | {r['ms_per_step']:.4g} | {peak} | "
                     f"{r['ratio_vs_trl']:.3f} | {r['step1_loss']:.6f} | {r['optimizer']} |")
    lines += ["", "Correctness checks (before timing):", ""] + [f"- {c}" for c in checks]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# Case `rm`: a reward-model optimizer step


def add_rm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", choices=("auto", *MODEL_CONFIGS), default="auto",
                        help="model shape (auto: 1b on CUDA, tiny on the CPU)")
    parser.add_argument("--pairs", type=int, help="preference pairs per step (default 1b: 8, tiny: 2)")
    parser.add_argument("--seq-len", type=int, help="tokens of the longest sequence (default 1b: 1024, tiny: 32)")
    parser.add_argument("--center-coef", type=float, default=0.0,
                        help="reward-centering coefficient, guard's center_coef = TRL's center_rewards_coefficient")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate of both (weight decay 0)")


def run_rm(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[str], list[str]]:
    from transformers import LlamaForSequenceClassification

    from guard import models

    name = args.config if args.config != "auto" else ("1b" if device.type == "cuda" else "tiny")
    pairs, seq_len = args.pairs or DEFAULT_SHAPES[name][0], args.seq_len or DEFAULT_SHAPES[name][1]
    if pairs < 1 or seq_len < 2:
        raise SystemExit(f"error: --pairs must be >= 1 and --seq-len >= 2, got {pairs} and {seq_len}")
    attn = models.attention_implementation(device)
    config = llama_config(name, attn, num_labels=1)
    chosen, rejected = random_pairs(pairs, seq_len, config.vocab_size, args.seed)
    state = initial_state(LlamaForSequenceClassification, config, args.seed, device)
    make = lambda: build_model(LlamaForSequenceClassification, config, state, device)  # noqa: E731
    bf16 = device.type == "cuda"

    results = [measure(lambda: runner(make, chosen, rejected, device, args, bf16), device, args.steps, args.warmup)
               for runner in (guard_rm_runner, trl_rm_runner)]
    checks = check_rm(results, bf16)
    header = [f"model: random LlamaForSequenceClassification, config `{name}` "
              f"({sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters), attention {attn}, "
              f"{'fp32 weights + bf16 autocast' if bf16 else 'fp32'}",
              f"batch: {pairs} pairs, sequences of {max(1, seq_len // 2)}..{seq_len} tokens, right-padded; "
              f"{results[0].tokens_per_step} real tokens per step; center coef {args.center_coef:g}, lr {args.lr:g}",
              f"steps: {args.warmup} warmup + {args.steps} timed (step = forward chosen + rejected, BT loss, "
              "backward, AdamW step; no clipping or scheduler in either)"]
    return result_rows("rm", results), header, checks


def guard_rm_runner(make_model, chosen, rejected, device, args, bf16: bool) -> Runner:
    from guard import ops
    from guard.train import rm

    model = make_model()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)  # as rm.train_one builds it
    host = right_padded(chosen + rejected)
    probe: dict[str, Any] = {"batch": host}

    def step() -> torch.Tensor:
        batch = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        r_c, r_r = rm.score(model, batch, bf16)
        out = ops.bt_loss(r_c, r_r, center_coef=args.center_coef)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if "rewards" not in probe:
            probe["rewards"] = torch.cat([r_c, r_r]).detach().float().cpu()
        return out.loss.detach()

    def close():
        nonlocal model, optimizer
        model = optimizer = None

    return Runner("guard", step, int(host["attention_mask"].sum()), f"torch AdamW ({adamw_kind(optimizer, device)})",
                  probe, close)


def trl_rm_runner(make_model, chosen, rejected, device, args, bf16: bool) -> Runner:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    tmp = tempfile.TemporaryDirectory(prefix="bench-trl-")
    with warnings.catch_warnings():  # TrainingArguments' own deprecation notices about fields we do not set
        warnings.simplefilter("ignore", FutureWarning)
        config = RewardConfig(
            output_dir=tmp.name, report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
            disable_tqdm=True, per_device_train_batch_size=len(chosen), learning_rate=args.lr, weight_decay=0.0,
            bf16=bf16, max_length=None, seed=args.seed, dataloader_num_workers=0, use_cpu=device.type != "cuda",
            center_rewards_coefficient=args.center_coef or None,
        )
    dataset = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    trainer = RewardTrainer(model=make_model(), args=config, train_dataset=dataset, processing_class=bench_tokenizer())
    # What Trainer.train() does before its loop (_prepare_for_training): the optimizer, then accelerator.prepare,
    # which wraps the forward in bf16 autocast under mixed precision.
    trainer.create_optimizer()
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model_wrapped = model
    trainer.current_gradient_accumulation_steps = 1  # set per step by the train loop; no accumulation here
    # The collated batch exactly as the train dataloader builds it (in dataset order rather than shuffled).
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    probe: dict[str, Any] = {"batch": {k: inputs[k] for k in ("input_ids", "attention_mask")}}

    def capture(_module, _args, output):
        if "rewards" not in probe:
            probe["rewards"] = output.logits.detach().squeeze(-1).float().cpu()

    hook = trainer.model.register_forward_hook(capture)

    def step() -> torch.Tensor:
        loss = trainer.training_step(model, dict(inputs))  # a fresh dict: compute_loss adds use_cache to it
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        return loss.detach()

    def close():
        nonlocal trainer, model
        hook.remove()
        trainer.accelerator.free_memory()
        trainer = model = None
        tmp.cleanup()

    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's AcceleratedOptimizer wraps it
    optim = getattr(config.optim, "value", config.optim)
    return Runner("trl", step, int(inputs["attention_mask"].sum()), f"{optim} ({adamw_kind(inner, device)})",
                  probe, close)


def check_rm(results: list[Measured], bf16: bool) -> list[str]:
    guard, trl = (next(r for r in results if r.impl == impl) for impl in ("guard", "trl"))
    for key in ("input_ids", "attention_mask"):
        if not torch.equal(guard.probe["batch"][key], trl.probe["batch"][key].cpu()):
            raise CheckFailed(f"the batches differ in {key}: guard's padded batch is not what TRL's collator built")
    # bf16 autocast: the same kernels run in both, so rewards agree closely; the loss math is fp32 in both.
    tol = dict(rtol=2e-2, atol=2e-2) if bf16 else dict(rtol=1e-5, atol=1e-5)
    checks = ["batch: guard's padded batch equals TRL's collated batch (input_ids, attention_mask)",
              check_close("step-1 rewards (chosen then rejected)", guard.probe["rewards"], trl.probe["rewards"], **tol),
              check_close("step-1 loss", guard.losses[0], trl.losses[0],
                          **(dict(rtol=2e-3, atol=2e-3) if bf16 else tol))]
    if len(guard.losses) > 1:
        checks.append(check_close("step-2 loss (after one AdamW step)", guard.losses[1], trl.losses[1],
                                  **(dict(rtol=2e-2, atol=2e-2) if bf16 else dict(rtol=1e-4, atol=1e-4))))
    return checks


# ----------------------------------------------------------------------------------------------------
# Registry and entry point


@dataclass
class Case:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, torch.device], tuple[list[dict], list[str], list[str]]]


CASES: dict[str, Case] = {
    "rm": Case("reward-model step: guard's recipe vs TRL RewardTrainer", add_rm_arguments, run_rm),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="case", required=True)
    for name, case in CASES.items():
        p = sub.add_parser(name, help=case.help, description=case.help,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        case.add_arguments(p)
        p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per implementation")
        p.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first step is the checked one)")
        p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
        p.add_argument("--device", default="auto", help="cuda, cpu or auto")
        p.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
        p.add_argument("--out", help="also write the table as markdown to this file (for bench/results/)")
        p.add_argument("--json", help="also write the rows and checks as json to this file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))

    try:
        rows, header, checks = CASES[args.case].run(args, device)
    except CheckFailed as e:
        print(f"error: correctness check failed, nothing timed is trustworthy: {e}", file=sys.stderr)
        return 1
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    header = [f"device: {device_name(device)}; date: {stamp}; {versions()}"] + header
    if device.type != "cuda":
        header.append("CPU run: this only shows the harness works; the throughput comparison is meaningful on a GPU")
    text = markdown(f"{args.case}: one training step, guard vs TRL", header, rows, checks)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}" + ("" if device.type == "cuda" else " (a CPU run: not a throughput result)"))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name(device), "date": stamp, "header": header,
                                               "rows": rows, "checks": checks}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
