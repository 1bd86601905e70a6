"""Benchmark: one PPO update of the ppo recipe, split into its phases (generation, experience, PPO epochs).

    python bench/bench_ppo.py                                          # on a GPU: 1B Llama-3.2-shaped policy + RM
    python bench/bench_ppo.py --out bench/results/ppo-H100-2026-11-24.md
    python bench/bench_ppo.py --config tiny --prompts 4 --new-tokens 4 --steps 1 --warmup 0   # the CPU smoke run

What runs is the recipe's own code (python/guard/train/ppo.py) on random weights built locally: a
LlamaForCausalLM policy with LoRA (r 16, α 32 on q/k/v/o, GUARD appendix B) and its value head, a
LlamaForSequenceClassification reward model, and the RND curiosity module; `--prompts` random prompts of
`--prompt-len` tokens. Per update: (1) guard.rollout.generate samples `--new-tokens` per prompt (temperature 0.7,
top-p 0.9; a random model almost never stops, so every response is full length: the worst case), (2)
ppo.make_experience (policy log-probs, entropy and values, the reference's log-probs with the adapter disabled,
the reward model's scores, the curiosity bonus and the RND step, GAE), (3) ppo.ppo_epochs (2 epochs of
minibatches `--minibatch`, micro-batches `--micro`, one AdamW step per minibatch).

Per phase: seconds per update (CUDA-synchronised, mean of the timed updates) and tokens/s: generation counts
generated tokens, experience and training count prompt + response tokens (training once per PPO epoch). Peak
device memory over the run. No peer runs here: TRL's PPOTrainer trains a separate value model and its rollout
loop differs, so a ratio would not compare like with like; this is guard's own figure (issue 7).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train  # noqa: E402  (the shared model configs, tokenizer and device helpers)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", choices=("auto", *bench_train.MODEL_CONFIGS), default="auto",
                   help="policy and reward model shape (auto: 1b on a GPU, tiny on the CPU)")
    p.add_argument("--prompts", type=int, default=64, help="rollouts per update")
    p.add_argument("--prompt-len", type=int, default=128, help="tokens per prompt")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens generated per prompt")
    p.add_argument("--minibatch", type=int, default=16, help="rollouts per optimizer step")
    p.add_argument("--micro", type=int, default=8, help="rollouts per forward/backward (and per experience forward)")
    p.add_argument("--curiosity", type=float, default=0.05, help="η of the RND bonus (0: off)")
    p.add_argument("--steps", type=int, default=2, help="timed updates")
    p.add_argument("--warmup", type=int, default=1, help="untimed updates first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", help="also write the table as markdown to this file (for bench/results/)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from guard import distributed, models
    from guard.curiosity import RNDCuriosity
    from guard.rollout import GenerationSettings, RewardScorer, generate
    from guard.train import ppo

    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    name = args.config if args.config != "auto" else ("1b" if device.type == "cuda" else "tiny")
    cuda, autocast = device.type == "cuda", device.type == "cuda"
    attn = models.attention_implementation(device)
    torch.manual_seed(args.seed)

    cfg = ppo.PPOConfig(batch_size=args.prompts, minibatch_size=args.minibatch, micro_batch_size=args.micro,
                        max_new_tokens=args.new_tokens, eval_batch_size=args.micro, curiosity=args.curiosity,
                        seed=args.seed)
    dist = distributed.init_distributed(device)
    hf_tok = bench_train.bench_tokenizer(bench_train.MODEL_CONFIGS[name]["vocab_size"])
    with torch.device(device):
        policy = LlamaForCausalLM(bench_train.llama_config(name, attn))
        reward_model = LlamaForSequenceClassification(bench_train.llama_config(name, attn, num_labels=1))
    with warnings.catch_warnings():  # peft reads a property transformers 5 deprecates: not ours to fix
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        policy = get_peft_model(policy, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    scorer = RewardScorer(reward_model, hf_tok, None, policy_tokenizer=hf_tok, autocast=autocast)
    value_head = ppo.value_head_for(policy, device)
    rnd = RNDCuriosity(policy.config.hidden_size, seed=args.seed, device=device) if args.curiosity > 0 else None
    opt = ppo.PPOOptimization(cfg, policy, value_head, rnd, device)
    ctl = ppo.kl_controller(cfg)
    gen = np.random.default_rng(args.seed)
    vocab = bench_train.MODEL_CONFIGS[name]["vocab_size"]
    prompts = [gen.integers(bench_train.FIRST_WORD_ID, vocab, args.prompt_len) for _ in range(args.prompts)]
    settings = GenerationSettings(args.new_tokens, cfg.temperature, cfg.top_p, (hf_tok.eos_token_id,))

    def synced() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    phases = {"generation": [], "experience": [], "training": []}
    tokens = {}
    for step in range(args.warmup + args.steps):
        t0 = synced()
        rollout = generate(policy, prompts, settings, pad_id=hf_tok.pad_token_id, autocast=autocast)
        t1 = synced()
        exp, metrics = ppo.make_experience(cfg, policy, None, value_head, scorer, rnd, rollout, ctl, dist, autocast)
        t2 = synced()
        ppo.ppo_epochs(cfg, policy, value_head, exp, opt, step, dist, autocast)
        t3 = synced()
        if step >= args.warmup:
            for key, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[key].append(seconds)
        sequence_tokens = float(rollout.attention_mask.sum())
        tokens = {"generation": float(rollout.response_lengths.sum()), "experience": sequence_tokens,
                  "training": sequence_tokens * cfg.ppo_epochs}
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if cuda else "n/a"

    rows = []
    for key, times in phases.items():
        seconds = sum(times) / len(times)
        rows.append((key, seconds, tokens[key] / seconds))
    total = sum(s for _, s, _ in rows)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = ["# ppo: one update of the recipe, by phase", "",
             f"- device: {bench_train.device_name(device)}; date: {stamp}; {bench_train.versions()}",
             f"- policy and reward model: random Llama `{name}` ({attn}, bf16 autocast: {autocast}); LoRA r 16 on "
             f"q/k/v/o; {args.prompts} prompts x {args.prompt_len} tokens, {args.new_tokens} new tokens, minibatch "
             f"{args.minibatch}, micro-batch {args.micro}, {cfg.ppo_epochs} PPO epochs, curiosity η {args.curiosity:g}",
             f"- {args.steps} timed update(s) after {args.warmup} warmup; peak memory {peak}", "",
             "| phase | s per update | share | tokens/s |", "|---|---|---|---|"]
    lines += [f"| {key} | {seconds:.4g} | {seconds / total:.1%} | {rate:.4g} |" for key, seconds, rate in rows]
    lines.append(f"| total | {total:.4g} | 100% | |")
    if not cuda:
        lines += ["", "CPU run: this only shows the harness works; throughput is meaningful on a GPU."]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
