"""Benchmark: one whole training step of a recipe, guard against TRL's trainer, on the same model, weights and batch;
and guard's own step on padded against packed batches.

    python bench/bench_train.py rm                                # on a GPU: the 1B Llama config, 8 pairs x 1024 tokens
    python bench/bench_train.py dpo                               # the same for DPO (LoRA), 8 pairs x 1024 tokens
    python bench/bench_train.py rm --config tiny --steps 2        # the CPU smoke run (what the test runs)
    python bench/bench_train.py dpo --config tiny --steps 2       # the same for DPO
    python bench/bench_train.py rm --out bench/results/train-rm-H100-2026-11-24.md     # also write the table
    python bench/bench_train.py dpo --out bench/results/train-dpo-H100-2026-11-24.md   # the same for DPO
    python bench/bench_train.py dpo --help                        # every option (beta, LoRA rank, lr, shape, ...)
    python bench/bench_train.py packing --config tiny --device cpu --threads 1   # padded vs packed, on the CPU

Cases (a registry, CASES; each builds its two runners and its checks from the shared pieces below):
  rm    reward model step: forward chosen + rejected, Bradley–Terry loss, backward, AdamW step.
        guard  the recipe's step (python/guard/train/rm.py): rm.score -> guard.ops.bt_loss -> backward -> AdamW.
        trl    TRL's RewardTrainer built on a datasets.Dataset holding exactly the same batch (pre-tokenized
               chosen_ids / rejected_ids), its own collator, accelerator.prepare(model, optimizer) as
               Trainer.train() does (bf16 autocast on GPU), then trainer.training_step + optimizer.step + zero_grad.
  dpo   DPO step with LoRA (loss sigmoid, beta 0.1, rank 16, alpha 32, dropout 0 on q/k/v/o/gate/up/down_proj, the
        pref recipe's targets): reference forward (the adapter disabled), policy forward, loss, backward, AdamW step.
        guard  the pref recipe's step (python/guard/train/pref.py): pref.reference_logps (reference = the peft
               model with its adapter disabled) -> pref.preference_step (the backbone's hidden states and
               guard.ops.fused_preference_loss on the LM head's weight) -> backward -> AdamW (fused on CUDA, as
               the recipes build it); the batch is guard.data.encode_pairs + guard.data.padded_batch of the texts.
        trl    TRL's DPOTrainer given the base model and the same peft LoraConfig (so, as TRL does with peft, its
               reference is the adapter disabled; precompute_ref_log_probs off, gradient checkpointing off), its
               own tokenization of the same texts and its DataCollatorForPreference, accelerator.prepare as above,
               then trainer.training_step (DPOTrainer.compute_loss: the policy and the reference forward through
               TRL's fused LM head, the loss, TRL's metrics) + optimizer.step + zero_grad.
        The texts are random word tokens ("w17 w4 ...") of a word-level tokenizer whose word wN is id N, so both
        tokenizations give known ids. LoRA's B matrices start random (std 0.02) instead of peft's zeros, in both,
        so the step-1 log-ratios are not all zero and their comparison means something.
  packing  guard's rm step (full fine-tuning) and DPO step (LoRA) on the same pairs, padded and packed
        (guard.train.batches.Layout; the attention guard.models picks: flash-attn varlen on CUDA when installed,
        else guard_sdpa), drawn from a synthetic HH-RLHF-like length mix (prompts 20..600 tokens, responses
        10..400, log-uniform); before timing, the packed step-1 rewards / log-ratios and step-1/step-2 losses
        must match the padded ones. Also a table over the whole synthetic set: token slots computed per real token
        and attention scores per the sequences' own, for random batches of --pairs (the recipes' --batch-size),
        length-grouped padding and best fit into --tokens-per-step, padded and packed.
Models are random Llama models built locally (LlamaForSequenceClassification with num_labels 1 for rm,
LlamaForCausalLM for dpo): "1b" has Llama-3.2-1B's shape, "tiny" is for the CPU. Both implementations start from
the same weights (one CPU snapshot, LoRA included for dpo, loaded into each) and see the same right-padded batch
(pad id 0, varied lengths, one row full length).

Before anything is timed the first step is checked: the two batches are identical, then for rm the rewards of
the first forward agree, the step-1 losses agree (TRL 1.16's loss is -logσ(r_c - r_r) averaged over pairs plus,
when center_rewards_coefficient is set, coef·mean((r_c + r_r)²); guard's bt_loss with center_coef = the same coef
is the same function); for dpo the log-probs hooked from TRL's two forwards reproduce TRL's own logged rewards,
the reference log-probs, the chosen / rejected log-ratios log π − log π_ref and the step-1 losses agree (both
-logσ(β·(lr_c − lr_r)) averaged over pairs); for both the step-2 losses agree (so both took the same AdamW step).
A mismatch exits 1. Tolerances: fp32 (CPU) near rounding; bf16 autocast (GPU) see check_rm / dpo_tolerances.

Per row: real (non-pad) tokens/s (for dpo each token goes through the reference and the policy forward but is
counted once), ms per step (CUDA-synchronised wall clock, mean of the timed steps), peak device memory
(torch.cuda.max_memory_allocated: weights, gradients, AdamW state and activations; n/a on the CPU) and the
tokens/s ratio guard/TRL. CPU numbers only show the harness works; throughput is meaningful on a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------------
# Shared: models, batches, timing, checks, reporting (used by every case)

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


FIRST_WORD_ID = 3  # ids 0, 1, 2 are <pad>, </s>, <unk>


def bench_tokenizer(vocab_size: int | None = None):
    """A word-level tokenizer: <pad> 0, </s> 1 (EOS), <unk> 2 and, with vocab_size, the words w3 .. w{vocab_size-1}
    split on whitespace, so the text "w5 w9</s>" is the ids [5, 9, 1] (TRL's trainers need a tokenizer for the
    pad/eos ids; rm's batches come pre-tokenized, dpo's are tokenized by both implementations from text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "</s>": 1, "<unk>": 2} | {f"w{i}": i for i in range(FIRST_WORD_ID, vocab_size or 0)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
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


def check_close(what: str, got: torch.Tensor | float, want: torch.Tensor | float, rtol: float, atol: float,
                names: tuple[str, str] = ("guard", "TRL")) -> str:
    """A one-line account of the comparison, or CheckFailed naming what differed and by how much."""
    got_t, want_t = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    err = (got_t - want_t).abs().max().item()
    bound = atol + rtol * want_t.abs().max().item()
    if not (err <= bound):  # also catches NaN
        ours, theirs = names
        raise CheckFailed(f"{what}: {ours} and {theirs} differ by {err:.3g} (allowed {bound:.3g}); "
                          f"{ours} {got_t.flatten()[:4].tolist()}, {theirs} {want_t.flatten()[:4].tolist()}")
    return f"{what}: max |diff| {err:.2g} <= {bound:.2g}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from bench_data import cpu_model  # bench/ is the script's folder, on sys.path

    return f"CPU ({cpu_model()}, {os.cpu_count()} logical CPUs, torch threads: {torch.get_num_threads()})"


def versions(with_trl: bool = True) -> str:
    import transformers

    text = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if with_trl:
        import trl

        text += f", trl {trl.__version__}"
    return text


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


def add_shape_arguments(parser: argparse.ArgumentParser, lr: float) -> None:
    """The options every case has: model shape, batch shape, learning rate."""
    parser.add_argument("--config", choices=("auto", *MODEL_CONFIGS), default="auto",
                        help="model shape (auto: 1b on CUDA, tiny on the CPU)")
    parser.add_argument("--pairs", type=int, help="preference pairs per step (default 1b: 8, tiny: 2)")
    parser.add_argument("--seq-len", type=int, help="tokens of the longest sequence (default 1b: 1024, tiny: 32)")
    parser.add_argument("--lr", type=float, default=lr, help="AdamW learning rate of both (weight decay 0)")


def resolve_shape(args: argparse.Namespace, device: torch.device, min_seq_len: int) -> tuple[str, int, int]:
    """(config name, pairs, seq_len) from the options and the device."""
    name = args.config if args.config != "auto" else ("1b" if device.type == "cuda" else "tiny")
    pairs, seq_len = args.pairs or DEFAULT_SHAPES[name][0], args.seq_len or DEFAULT_SHAPES[name][1]
    if pairs < 1 or seq_len < min_seq_len:
        raise SystemExit(f"error: --pairs must be >= 1 and --seq-len >= {min_seq_len}, got {pairs} and {seq_len}")
    return name, pairs, seq_len


# ----------------------------------------------------------------------------------------------------
# Case `rm`: a reward-model optimizer step


def add_rm_arguments(parser: argparse.ArgumentParser) -> None:
    add_shape_arguments(parser, lr=1e-5)
    parser.add_argument("--center-coef", type=float, default=0.0,
                        help="reward-centering coefficient, guard's center_coef = TRL's center_rewards_coefficient")


def run_rm(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[str], list[str]]:
    from transformers import LlamaForSequenceClassification

    from guard import models

    name, pairs, seq_len = resolve_shape(args, device, min_seq_len=2)
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


def guard_runner(model, host: dict, loss_fn, lr: float, device, probe: dict[str, Any], impl: str = "guard") -> Runner:
    """guard's side of a case: `loss_fn()` (the recipe's own forward and loss, filling `probe` on its first
    call), backward and the AdamW step the recipes build (loop.Optimization; no clipping, no schedule). Real
    tokens per step: those of `host`'s labels (a padded batch's attention mask, a packed row's length)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=device.type == "cuda")

    def step() -> torch.Tensor:
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def close():
        nonlocal model, optimizer
        model = optimizer = None

    tokens = int(host["attention_mask"].sum()) if "attention_mask" in host else int(host["input_ids"].numel())
    return Runner(impl, step, tokens, f"torch AdamW ({adamw_kind(optimizer, device)})", probe, close)


def guard_rm_runner(make_model, chosen, rejected, device, args, bf16: bool) -> Runner:
    from guard import ops
    from guard.train import rm

    model = make_model()
    host = right_padded(chosen + rejected)
    probe: dict[str, Any] = {"batch": host}

    def loss() -> torch.Tensor:
        batch = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        r_c, r_r = rm.score(model, batch, bf16)
        out = ops.bt_loss(r_c, r_r, center_coef=args.center_coef)
        if "rewards" not in probe:
            probe["rewards"] = torch.cat([r_c, r_r]).detach().float().cpu()
        return out.loss

    return guard_runner(model, host, loss, args.lr, device, probe)


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

    return trl_runner(trainer, model, inputs, trainer.model.register_forward_hook(capture), tmp, config, device, probe)


def trl_runner(trainer, model, inputs: dict, hook, tmp, config, device, probe: dict[str, Any],
               after_first_step=None) -> Runner:
    """TRL's side of a case: trainer.training_step on the collated batch + optimizer.step + zero_grad, as its
    train loop does; `after_first_step()` may read TRL's logged metrics into `probe`."""

    def step() -> torch.Tensor:
        loss = trainer.training_step(model, dict(inputs))  # a fresh dict: compute_loss adds use_cache to it
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        if after_first_step is not None and "logged" not in probe:
            after_first_step()
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
# Case `dpo`: a DPO optimizer step with LoRA, the reference being the adapter disabled

# The pref recipe's default LoRA targets (PrefConfig.lora_target_modules): every projection of a Llama block.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_B_STD = 0.02  # LoRA B starts random, not zero, so the policy differs from the reference at step 1


def add_dpo_arguments(parser: argparse.ArgumentParser) -> None:
    add_shape_arguments(parser, lr=5e-6)  # the pref recipe's default lr
    parser.add_argument("--beta", type=float, default=0.1, help="DPO β of both")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank of both")
    parser.add_argument("--lora-alpha", type=float, default=32, help="LoRA alpha of both (dropout is 0)")


@dataclass
class DpoSetup:
    config: Any  # LlamaConfig
    state: dict[str, torch.Tensor]  # the peft model's initial state dict (base weights and LoRA), on the CPU
    lora_config: Callable[[], Any]  # a fresh peft LoraConfig
    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    beta: float
    lr: float


def random_preference_texts(pairs: int, seq_len: int, vocab: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Prompts and chosen / rejected responses as text of random words w3 .. w{vocab-1} (see bench_tokenizer).
    A sequence is prompt + response + EOS, seq_len/2 .. seq_len tokens, its prompt 1 .. seq_len/4 of them; the
    first chosen sequence is seq_len long so the padded batch is exactly seq_len wide. Responses start with a
    space: TRL tokenizes prompt + response as one string."""
    gen = torch.Generator().manual_seed(seed)
    totals = torch.randint(max(3, seq_len // 2), seq_len + 1, (2, pairs), generator=gen)
    totals[0, 0] = seq_len
    prompt_lens = torch.randint(1, max(1, seq_len // 4) + 1, (pairs,), generator=gen)
    prompt_lens = torch.minimum(prompt_lens, totals.min(dim=0).values - 2)  # at least one response token each

    def words(n: int) -> str:
        return " ".join(f"w{i}" for i in torch.randint(FIRST_WORD_ID, vocab, (int(n),), generator=gen).tolist())

    prompts = [words(p) for p in prompt_lens]
    chosen = [" " + words(t - p - 1) for t, p in zip(totals[0], prompt_lens)]
    rejected = [" " + words(t - p - 1) for t, p in zip(totals[1], prompt_lens)]
    return prompts, chosen, rejected


def peft_causal_lm(config, lora_config, device: torch.device):
    """A random LlamaForCausalLM on `device` wrapped by peft's get_peft_model."""
    from peft import get_peft_model
    from transformers import LlamaForCausalLM

    with torch.device(device):
        return get_peft_model(LlamaForCausalLM(config), lora_config)


def initial_peft_state(config, lora_config, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The random LlamaForCausalLM wrapped by peft, LoRA B drawn from N(0, LORA_B_STD²), as a CPU snapshot."""
    torch.manual_seed(seed)
    model = peft_causal_lm(config, lora_config, device)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * LORA_B_STD)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    del model
    free_device(device)
    return state


def run_dpo(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[str], list[str]]:
    from guard import models

    # peft (get_peft_model) and TRL (every reference forward) read a model property transformers 5 deprecates;
    # not ours to fix (guard.models hides it the same way)
    warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
    name, pairs, seq_len = resolve_shape(args, device, min_seq_len=3)
    if not args.beta > 0 or args.lora_r < 1:
        raise SystemExit(f"error: --beta must be > 0 and --lora-r >= 1, got {args.beta} and {args.lora_r}")
    attn = models.attention_implementation(device)
    config = llama_config(name, attn)
    lora = models.LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=0.0, target_modules=LORA_TARGETS)
    lora_config = lambda: lora.peft_config("CAUSAL_LM")  # noqa: E731
    prompts, chosen, rejected = random_preference_texts(pairs, seq_len, config.vocab_size, args.seed)
    state = initial_peft_state(config, lora_config(), args.seed, device)
    setup = DpoSetup(config, state, lora_config, prompts, chosen, rejected, args.beta, args.lr)
    bf16 = device.type == "cuda"

    results = [measure(lambda: runner(setup, device, args, bf16), device, args.steps, args.warmup)
               for runner in (guard_dpo_runner, trl_dpo_runner)]
    checks = check_dpo(results, bf16, args.beta)
    trainable = sum(v.numel() for k, v in state.items() if "lora_" in k)
    header = [f"model: random LlamaForCausalLM, config `{name}` "
              f"({sum(v.numel() for k, v in state.items() if 'lora_' not in k) / 1e6:.1f}M parameters), attention "
              f"{attn}, {'fp32 weights + bf16 autocast' if bf16 else 'fp32'}; LoRA r {args.lora_r}, alpha "
              f"{args.lora_alpha:g}, dropout 0 on {', '.join(LORA_TARGETS)} ({trainable / 1e6:.2f}M trainable), "
              f"B initialised N(0, {LORA_B_STD}²); reference = the adapter disabled",
              f"batch: {pairs} pairs (prompt + chosen, prompt + rejected), sequences of {max(3, seq_len // 2)}.."
              f"{seq_len} tokens with EOS, right-padded; {results[0].tokens_per_step} real tokens per step (each "
              f"through the reference and the policy forward, counted once); loss sigmoid, β {args.beta:g}, "
              f"lr {args.lr:g}",
              f"steps: {args.warmup} warmup + {args.steps} timed (step = reference forward, policy forward, DPO loss, "
              "backward, AdamW step; no clipping or scheduler in either; TRL's step also computes its logged metrics)"]
    return result_rows("dpo", results), header, checks


def make_peft_policy(setup: DpoSetup, device: torch.device):
    """The causal LM wrapped by peft with the shared LoRA config and the shared initial weights."""
    model = peft_causal_lm(setup.config, setup.lora_config(), device)
    model.load_state_dict(setup.state, strict=True)
    return model.train()


def guard_dpo_runner(setup: DpoSetup, device, args, bf16: bool) -> Runner:
    from guard import data as gdata
    from guard.train import pref

    hf_tok = bench_tokenizer(setup.config.vocab_size)
    tok = gdata.Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    encoded = gdata.encode_pairs(tok, setup.prompts, setup.chosen, setup.rejected, max_length=None,
                                 eos_token_id=hf_tok.eos_token_id)
    if len(encoded) != len(setup.prompts):
        raise CheckFailed(f"guard's encode_pairs dropped pairs: {encoded.dropped}")
    host = {k: torch.from_numpy(v) for k, v in
            gdata.padded_batch(encoded, np.arange(len(encoded)), hf_tok.pad_token_id).items()}
    model = make_peft_policy(setup, device)
    cfg = pref.PrefConfig(loss="sigmoid", beta=setup.beta)
    probe: dict[str, Any] = {"batch": host}

    def loss() -> torch.Tensor:
        batch = {k: host[k].to(device, non_blocking=True) for k in pref.PAIR_KEYS}
        ref_logps = pref.reference_logps(model, None, batch, bf16)  # None: the adapter disabled
        out = pref.preference_step(model, None, batch, cfg, bf16, None, None, ref_logps)
        if "logratios" not in probe:
            probe["ref_logps"] = ref_logps.detach().float().cpu()
            probe["logratios"] = (out.logps.detach().float() - ref_logps.float()).cpu()
        return out.loss

    return guard_runner(model, host, loss, setup.lr, device, probe)


def trl_dpo_runner(setup: DpoSetup, device, args, bf16: bool) -> Runner:
    import datasets
    from transformers import LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()  # DPOTrainer tokenizes with dataset.map
    tmp = tempfile.TemporaryDirectory(prefix="bench-trl-")
    with warnings.catch_warnings():  # TrainingArguments' own deprecation notices about fields we do not set
        warnings.simplefilter("ignore", FutureWarning)
        config = DPOConfig(
            output_dir=tmp.name, report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
            disable_tqdm=True, per_device_train_batch_size=len(setup.prompts), learning_rate=setup.lr,
            weight_decay=0.0, bf16=bf16, seed=args.seed, dataloader_num_workers=0, use_cpu=device.type != "cuda",
            loss_type=["sigmoid"], beta=setup.beta, precompute_ref_log_probs=False, gradient_checkpointing=False,
            max_length=None, pad_to_multiple_of=None,
        )
    dataset = datasets.Dataset.from_dict({"prompt": setup.prompts, "chosen": setup.chosen, "rejected": setup.rejected})
    with torch.device(device):
        base = LlamaForCausalLM(setup.config)
    trainer = DPOTrainer(model=base, args=config, train_dataset=dataset,
                         processing_class=bench_tokenizer(setup.config.vocab_size), peft_config=setup.lora_config())
    trainer.model.load_state_dict(setup.state, strict=True)  # the shared weights, LoRA included
    # What Trainer.train() does before its loop (_prepare_for_training), as in the rm case.
    trainer.create_optimizer()
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model_wrapped = model
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    probe: dict[str, Any] = {"batch": {k: inputs[k] for k in ("input_ids", "attention_mask", "completion_mask")}}

    # compute_loss calls the peft model twice: the policy (with grad) and the reference (adapter disabled, no grad);
    # both return TRL's per-token log-probs, which it sums per sequence.
    def capture(_module, _args, output):
        key = "policy_logps" if output.log_probs.requires_grad else "ref_logps"
        if key not in probe:
            probe[key] = output.log_probs.detach().float().sum(dim=1).cpu()

    def read_logged():  # TRL's own step-1 metrics, to confirm the hook saw the forwards the loss used
        probe["logged"] = {k: trainer._metrics["train"][k][0] for k in ("rewards/chosen", "rewards/rejected")}

    return trl_runner(trainer, model, inputs, trainer.model.register_forward_hook(capture), tmp, config, device, probe,
                      after_first_step=read_logged)


def dpo_tolerances(bf16: bool) -> dict[str, dict[str, float]]:
    """rtol/atol per compared quantity.

    fp32 (CPU): both sum the same fp32 per-token log-probs in a different order (guard's chunked torch path vs
    TRL's chunked head), so sequence log-probs (|x| ~ T·log V) agree to ~1e-6 relative and the log-ratios (their
    differences, |x| ~ 1) to ~1e-5 absolute (the tiny config shows 0: both run the same chunked torch math). The
    step-2 bound (~2e-5) is well under what one AdamW step moves the tiny loss at the default lr (~5e-4), so a
    missed or different step fails it.
    bf16 autocast (GPU): the backbones run the same kernels, but TRL's fused head writes each logit tile in bf16
    (~2^-9 relative; trl/kernels/chunked_logprob.py) while guard's kernel folds its fp32 dot accumulators, so
    each token's log-prob may differ by ~1e-2 and a sequence
    sum of ~1000 tokens by ~0.1-0.3 (a random walk); log-ratios take two such sums. The loss moves by at most
    β/2 x the log-ratio gap per pair. Not yet calibrated on a GPU: the checks print the observed gaps.
    """
    if not bf16:
        return {"ref_logps": dict(rtol=1e-5, atol=1e-4), "logratios": dict(rtol=1e-4, atol=1e-4),
                "loss": dict(rtol=1e-5, atol=1e-5), "loss2": dict(rtol=1e-5, atol=1e-5),
                "logged": dict(rtol=1e-5, atol=1e-6)}
    return {"ref_logps": dict(rtol=2e-4, atol=0.5), "logratios": dict(rtol=2e-2, atol=0.5),
            "loss": dict(rtol=2e-2, atol=2e-2), "loss2": dict(rtol=2e-2, atol=2e-2),
            "logged": dict(rtol=1e-3, atol=1e-4)}


def check_dpo(results: list[Measured], bf16: bool, beta: float) -> list[str]:
    guard, trl = (next(r for r in results if r.impl == impl) for impl in ("guard", "trl"))
    g_batch, t_batch = guard.probe["batch"], trl.probe["batch"]
    for key in ("input_ids", "attention_mask"):
        if not torch.equal(g_batch[key], t_batch[key].cpu()):
            raise CheckFailed(f"the batches differ in {key}: guard's encode_pairs + padded_batch is not what "
                              "TRL's tokenization + DataCollatorForPreference built")
    if not torch.equal(g_batch["labels"] != -100, t_batch["completion_mask"].cpu().bool()):
        raise CheckFailed("the batches differ in which tokens are scored: guard's labels != -100 is not TRL's "
                          "completion_mask")
    for key in ("policy_logps", "ref_logps", "logged"):
        if key not in trl.probe:
            raise CheckFailed(f"the hook on TRL's model saw no {key} (did DPOTrainer.compute_loss change?)")
    tol = dpo_tolerances(bf16)
    t_logratios = trl.probe["policy_logps"] - trl.probe["ref_logps"]
    half = t_logratios.shape[0] // 2
    logged = trl.probe["logged"]
    checks = [
        "batch: guard's padded batch equals TRL's collated batch (input_ids, attention_mask; labels != -100 = "
        "completion_mask)",
        check_close("TRL probe: hooked log-ratios give TRL's logged step-1 rewards/chosen, rewards/rejected",
                    torch.stack([beta * t_logratios[:half].mean(), beta * t_logratios[half:].mean()]),
                    torch.tensor([logged["rewards/chosen"], logged["rewards/rejected"]]), **tol["logged"]),
        check_close("step-1 reference log-probs (chosen then rejected)", guard.probe["ref_logps"],
                    trl.probe["ref_logps"], **tol["ref_logps"]),
        check_close("step-1 log-ratios log π − log π_ref (chosen then rejected)", guard.probe["logratios"],
                    t_logratios, **tol["logratios"]),
        check_close("step-1 loss", guard.losses[0], trl.losses[0], **tol["loss"]),
    ]
    if not t_logratios.abs().max() > 0:
        raise CheckFailed("TRL's step-1 log-ratios are all zero: the LoRA weights did not reach the policy")
    if len(guard.losses) > 1:
        checks.append(check_close("step-2 loss (after one AdamW step)", guard.losses[1], trl.losses[1],
                                  **tol["loss2"]))
    return checks


# ----------------------------------------------------------------------------------------------------
# Case `packing`: guard's own steps on padded vs packed batches of an HH-RLHF-like length mix

HH_PROMPT_TOKENS = (20, 600)  # HH-RLHF-like: prompts (the dialogue so far) of 20..600 tokens,
HH_RESPONSE_TOKENS = (10, 400)  # responses of 10..400, both log-uniform (many short, a long tail)


def add_packing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", choices=("auto", *MODEL_CONFIGS), default="auto",
                        help="model shape (auto: 1b on CUDA, tiny on the CPU)")
    parser.add_argument("--recipes", default="rm,dpo",
                        help="comma-separated: rm (full fine-tuning) and/or dpo (LoRA, reference = the adapter disabled)")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per timed step (the recipes' --batch-size)")
    parser.add_argument("--max-length", type=int, default=1024,
                        help="tokens per prompt + response sequence (the recipes' --max-length; the response is cut)")
    parser.add_argument("--tokens-per-step", type=int, default=16384,
                        help="the token budget of the compute table's best-fit and length-grouped rows")
    parser.add_argument("--dataset-pairs", type=int, default=4000,
                        help="synthetic pairs the compute table is measured over")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (weight decay 0)")
    parser.add_argument("--beta", type=float, default=0.1, help="dpo: β")


def hh_like_lengths(n: int, max_length: int, seed: int) -> np.ndarray:
    """int64 [n, 3]: prompt, chosen response and rejected response lengths, log-uniform over HH_PROMPT_TOKENS and
    HH_RESPONSE_TOKENS, each response cut so that prompt + response <= max_length (as encode_pairs cuts)."""
    rng = np.random.default_rng([seed, 0x4848])

    def log_uniform(lo: int, hi: int, size) -> np.ndarray:
        return np.exp(rng.uniform(np.log(lo), np.log(hi + 1), size)).astype(np.int64).clip(lo, hi)

    prompt = np.minimum(log_uniform(*HH_PROMPT_TOKENS, n), max_length - 1)
    responses = np.minimum(log_uniform(*HH_RESPONSE_TOKENS, (n, 2)), (max_length - prompt)[:, None])
    return np.column_stack([prompt, responses])


def compute_table(lengths: np.ndarray, pairs: int, budget: int, seed: int) -> list[dict]:
    """Token slots each layout computes per real token, and attention scores (query x key pairs, causal halves
    alike) per those of the sequences alone, over the whole synthetic set, for the ways guard can batch it."""
    from guard import data as gdata

    seqs = np.column_stack([lengths[:, 0] + lengths[:, 1], lengths[:, 0] + lengths[:, 2]]).astype(np.float64)

    def padded(batches_) -> tuple[float, float]:
        """(padded slots / real tokens, padded attention scores / the sequences' own) of these batches."""
        slots = attention = real = alone = 0.0
        for b in batches_:
            width = seqs[b].max()
            slots += 2 * len(b) * width
            attention += 2 * len(b) * width ** 2
            real += seqs[b].sum()
            alone += (seqs[b] ** 2).sum()
        return slots / real, attention / alone

    order = np.random.default_rng([seed, 0]).permutation(len(seqs))
    slots_random, attention_random = padded([order[k:k + pairs] for k in range(0, len(order) - pairs + 1, pairs)])
    slots_grouped, attention_grouped = padded(gdata.group_by_length(seqs.astype(np.int64), budget))
    slots_fit, attention_fit = padded(gdata.pack(seqs.astype(np.int64), budget))
    return [
        {"batching": f"{pairs} pairs per step, random order (the recipes' --batch-size)", "layout": "padded",
         "slots_per_token": slots_random, "attention_per_sequence": attention_random},
        {"batching": f"{pairs} pairs per step, random order (the recipes' --batch-size)", "layout": "packed",
         "slots_per_token": 1.0, "attention_per_sequence": 1.0},
        {"batching": f"length-grouped to {budget} padded slots (guard.data.group_by_length)", "layout": "padded",
         "slots_per_token": slots_grouped, "attention_per_sequence": attention_grouped},
        {"batching": f"best fit into {budget} tokens (--tokens-per-step)", "layout": "padded",
         "slots_per_token": slots_fit, "attention_per_sequence": attention_fit},
        {"batching": f"best fit into {budget} tokens (--tokens-per-step)", "layout": "packed",
         "slots_per_token": 1.0, "attention_per_sequence": 1.0},
    ]


def hh_like_batch(lengths: np.ndarray, vocab: int, seed: int):
    """guard.data.EncodedPairs of random ids (never the pad id 0, nor EOS) with the given [n, 3] lengths, each
    pair's two sequences sharing their prompt."""
    from guard import data as gdata

    rng = np.random.default_rng([seed, 1])
    chosen, rejected = [], []
    for prompt, c, r in lengths:
        head = rng.integers(FIRST_WORD_ID, vocab, prompt)
        chosen.append(np.concatenate([head, rng.integers(FIRST_WORD_ID, vocab, c)]))
        rejected.append(np.concatenate([head, rng.integers(FIRST_WORD_ID, vocab, r)]))

    def texts(rows):
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in rows])]).astype(np.int64)
        return gdata.EncodedTexts(np.concatenate(rows).astype(np.int32), offsets, np.arange(len(rows)), {})

    prompts = lengths[:, 0].astype(np.int64)
    return gdata.EncodedPairs(texts(chosen), texts(rejected), prompts, prompts.copy(), np.arange(len(lengths)), {})


def packing_runner(recipe: str, make_model, encoded, packed: bool, device, args, bf16: bool) -> Runner:
    """One recipe step (rm: rm.score -> ops.bt_loss; dpo: pref.reference_logps with the adapter disabled ->
    pref.preference_step) on the batch in guard.train.batches' padded or packed layout."""
    from guard import ops
    from guard.train import batches, options, pref, rm

    model = make_model()
    layout = batches.Layout(packed, PAD_ID, device)
    batch = layout.pairs(encoded, np.arange(len(encoded)))
    host = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    probe: dict[str, Any] = {}
    cfg = options.PrefConfig(loss="sigmoid", beta=args.beta)

    def loss() -> torch.Tensor:
        if recipe == "rm":
            r_c, r_r = rm.score(model, batch, bf16)
            probe.setdefault("scores", torch.cat([r_c, r_r]).detach().float().cpu())
            return ops.bt_loss(r_c, r_r).loss
        ref_logps = pref.reference_logps(model, None, batch, bf16)
        out = pref.preference_step(model, None, batch, cfg, bf16, None, None, ref_logps)
        probe.setdefault("scores", (out.logps.detach().float() - ref_logps.float()).cpu())
        probe.setdefault("magnitude", ref_logps.abs().max().item())  # what the log-ratios' round-off scales with
        return out.loss

    return guard_runner(model, host, loss, args.lr, device, probe, impl="packed" if packed else "padded")


def run_packing(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[str], list[str]]:
    from transformers import LlamaForSequenceClassification

    from guard import models

    warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
    recipes = [r for r in args.recipes.split(",") if r]
    if not recipes or set(recipes) - {"rm", "dpo"} or args.pairs < 1 or args.max_length < 3:
        raise SystemExit(f"error: --recipes must name rm and/or dpo, --pairs >= 1, --max-length >= 3; got "
                         f"{args.recipes!r}, {args.pairs}, {args.max_length}")
    name = args.config if args.config != "auto" else ("1b" if device.type == "cuda" else "tiny")
    lengths = hh_like_lengths(args.dataset_pairs, args.max_length, args.seed)
    compute = compute_table(lengths, args.pairs, args.tokens_per_step, args.seed)
    step_pairs = lengths[np.random.default_rng([args.seed, 0]).permutation(len(lengths))[:args.pairs]]
    attn = models.attention_implementation(device)
    bf16 = device.type == "cuda"
    rows, checks = [], []
    for recipe in recipes:
        config = llama_config(name, attn, num_labels=1 if recipe == "rm" else None)
        encoded = hh_like_batch(step_pairs, config.vocab_size, args.seed)
        if recipe == "rm":
            state = initial_state(LlamaForSequenceClassification, config, args.seed, device)
            make = lambda: build_model(LlamaForSequenceClassification, config, state, device)  # noqa: E731
        else:
            lora = models.LoraSettings(r=16, alpha=32, dropout=0.0, target_modules=LORA_TARGETS)
            state = initial_peft_state(config, lora.peft_config("CAUSAL_LM"), args.seed, device)
            setup = DpoSetup(config, state, lambda: lora.peft_config("CAUSAL_LM"), [], [], [], args.beta, args.lr)
            make = lambda: make_peft_policy(setup, device)  # noqa: E731
        reason = models.packing_unsupported(make(), head="score" if recipe == "rm" else None)
        if reason is not None:
            raise CheckFailed(f"{recipe}: the model cannot pack ({reason})")
        results = [measure(lambda: packing_runner(recipe, make, encoded, packed, device, args, bf16), device,
                           args.steps, args.warmup) for packed in (False, True)]
        checks += check_packing(recipe, results, bf16)
        base = results[0]
        rows += [{"case": recipe, "impl": r.impl, "tokens_per_s": r.tokens_per_s, "ms_per_step": r.ms_per_step,
                  "peak_gb": r.peak_gb, "ratio_vs_padded": r.tokens_per_s / base.tokens_per_s,
                  "step1_loss": r.losses[0], "optimizer": r.optimizer} for r in results]
    seqs = step_pairs[:, :1] + step_pairs[:, 1:]
    slots = seqs.size * int(seqs.max())
    header = [f"model: random Llama, config `{name}` (rm: LlamaForSequenceClassification, full fine-tuning; dpo: "
              f"LlamaForCausalLM with LoRA r 16 on {', '.join(LORA_TARGETS)}, reference = the adapter disabled, "
              f"β {args.beta:g}), attention {attn}, {'fp32 weights + bf16 autocast' if bf16 else 'fp32'}",
              f"lengths: synthetic HH-RLHF-like, prompts log-uniform {HH_PROMPT_TOKENS[0]}..{HH_PROMPT_TOKENS[1]} "
              f"tokens, responses {HH_RESPONSE_TOKENS[0]}..{HH_RESPONSE_TOKENS[1]}, sequences cut at "
              f"{args.max_length}; compute table over {args.dataset_pairs} pairs, seed {args.seed}",
              f"timed step: {args.pairs} pairs ({int(seqs.sum())} real tokens, sequences {int(seqs.min())}.."
              f"{int(seqs.max())}; padded: {slots} slots, {slots / seqs.sum():.2f} per real token), the same pairs "
              f"in both layouts; {args.warmup} warmup + {args.steps} timed steps (forward, loss, backward, AdamW; dpo "
              "adds the reference forward)"]
    return rows + [dict(r, case="compute") for r in compute], header, checks


def check_packing(recipe: str, results: list[Measured], bf16: bool) -> list[str]:
    padded, packed = results
    what = "rewards" if recipe == "rm" else "log-ratios"
    # fp32: the same sums in another order; bf16 autocast: a packed row's matmuls tile differently than padded
    # rows', so bf16 round-off differs per token (not calibrated on a GPU yet: the checks print the gaps). A
    # log-ratio is the difference of two sequence log-probs of |x| ~ T·log V: its round-off is theirs.
    tol = dict(rtol=2e-2, atol=5e-2) if bf16 else dict(rtol=1e-4, atol=1e-4)
    magnitude = padded.probe.get("magnitude", 1.0)
    score_tol = dict(tol, atol=tol["atol"] * max(1.0, magnitude / 100))
    names = ("packed", "padded")
    checks = [check_close(f"{recipe} step-1 {what}", packed.probe["scores"], padded.probe["scores"], **score_tol,
                          names=names),
              check_close(f"{recipe} step-1 loss", packed.losses[0], padded.losses[0], **tol, names=names)]
    if len(packed.losses) > 1:
        checks.append(check_close(f"{recipe} step-2 loss (after one AdamW step)", packed.losses[1], padded.losses[1],
                                  **(tol if bf16 else dict(rtol=1e-3, atol=1e-3)), names=names))
    return checks


def packing_markdown(title: str, header: list[str], rows: list[dict], checks: list[str]) -> str:
    lines = [f"# {title}", ""] + [f"- {h}" for h in header] + [""]
    lines += ["Tokens of compute per real token (token slots the model runs over / real tokens) and attention "
              "scores per those of the sequences alone, over the whole synthetic set:", "",
              "| batching | layout | token slots per real token | attention scores per the sequences' own |",
              "|---|---|---|---|"]
    for r in (r for r in rows if r["case"] == "compute"):
        lines.append(f"| {r['batching']} | {r['layout']} | {r['slots_per_token']:.3f} | "
                     f"{r['attention_per_sequence']:.3f} |")
    lines += ["", "One training step, the same pairs padded and packed:", "",
              "| recipe | layout | real tokens/s | ms/step | peak GB | tokens/s ratio packed/padded | step-1 loss |",
              "|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["case"] != "compute"):
        peak = "n/a" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        lines.append(f"| {r['case']} | {r['impl']} | {r['tokens_per_s']:.4g} | {r['ms_per_step']:.4g} | {peak} | "
                     f"{r['ratio_vs_padded']:.3f} | {r['step1_loss']:.6f} |")
    lines += ["", "Correctness checks (before timing):", ""] + [f"- {c}" for c in checks]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# Registry and entry point


@dataclass
class Case:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, torch.device], tuple[list[dict], list[str], list[str]]]
    title: str = "one training step, guard vs TRL"
    render: Callable[[str, list[str], list[dict], list[str]], str] = markdown
    needs_trl: bool = True


CASES: dict[str, Case] = {
    "rm": Case("reward-model step: guard's recipe vs TRL RewardTrainer", add_rm_arguments, run_rm),
    "dpo": Case("DPO step with LoRA: guard's pref recipe vs TRL DPOTrainer", add_dpo_arguments, run_dpo),
    "packing": Case("rm and DPO steps on padded vs packed batches of an HH-RLHF-like length mix, and the tokens "
                    "of compute per real token of each way to batch it", add_packing_arguments, run_packing,
                    title="padded vs packed batches", render=packing_markdown, needs_trl=False),
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
    case = CASES[args.case]
    header = [f"device: {device_name(device)}; date: {stamp}; {versions(case.needs_trl)}"] + header
    if device.type != "cuda" and case.needs_trl:
        header.append("CPU run: this only shows the harness works; the throughput comparison is meaningful on a GPU")
    text = case.render(f"{args.case}: {case.title}", header, rows, checks)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        cpu_note = device.type != "cuda" and case.needs_trl
        print(f"wrote {args.out}" + (" (a CPU run: not a throughput result)" if cpu_note else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name(device), "date": stamp, "header": header,
                                               "rows": rows, "checks": checks}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
