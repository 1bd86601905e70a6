"""A recipe's options and its command line: the shared option dataclasses (TrainOptions, PairTrainOptions),
the flags and yaml they become (guard.config), the checks every value passes before any work, and the
`error: ...` exit of a user-facing problem.

    cfg = parse_recipe("rm", ["--data", "pairs.jsonl", "--output-dir", "runs/rm"])   # RMConfig, values checked
    check_options(cfg, cfg.lambda_adv)      # ConfigError naming the flag, before any data or model is loaded

Nothing here imports torch, so `--help` answers at once.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from guard.adapters import SCHEMAS
from guard.config import ConfigError, option
from guard.prompts import PROMPT_SCHEMAS


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a recipe's main; a user-facing problem (bad config, bad data, missing model) ends with
    "error: ..." on stderr and exit status 2 instead of a traceback. GUARD_DEBUG=1 shows the traceback."""
    try:
        return main(argv)
    except (ConfigError, FileNotFoundError) as err:
        if os.environ.get("GUARD_DEBUG"):
            traceback.print_exc()
        message = str(err) if not isinstance(err, FileNotFoundError) or not err.filename else (
            f"{err.strerror or 'not found'}: {err.filename}")
        print(f"error: {message}", file=sys.stderr)
        return 2


#: What a randomly initialised model (--model tiny) trains with when the user gives no --lr: it learns from
#: scratch, so a from-scratch learning rate without clipping (the fine-tuning defaults, lr 1e-5 clipped at 1,
#: leave its BT loss at ln 2). A --max-grad-norm of the user's still wins.
FROM_SCRATCH: dict[str, object] = {"lr": 2e-3, "max_grad_norm": 0.0}
#: A model this small is fastest on one CPU thread, and its numbers then do not depend on the machine's cores.
TINY_THREADS = 1


def parse_config(cls: type, argv: list[str] | None, prog: str, description: str,
                 presets: dict[str, dict] | None = None, *, announce: bool = True):
    """A recipe's config from the command line: every field of `cls` as a flag, `--config run.yaml`, and, when
    the recipe has `presets`, the one named by --preset (on the command line or in the yaml) under both. With
    --model tiny and no --lr, the options in FROM_SCRATCH the user did not set take those values, and --threads
    defaults to TINY_THREADS. Every value is checked
    against its domain before anything is loaded; `announce` prints the settings that differ from the
    defaults (on the main process)."""
    from guard.config import ArgumentParser, add_arguments, build_config, given_fields

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", metavar="FILE", help="a yaml file of options; flags given on the command line win")
    add_arguments(parser, cls)
    args = parser.parse_args(argv)
    preset = None
    if presets:
        name = getattr(args, "preset", None)
        if not isinstance(name, str) and args.config:  # a preset named in the yaml file
            name = build_config(cls, None, yaml_path=args.config).preset
        preset = presets.get(name) if isinstance(name, str) else None
    cfg = build_config(cls, args, yaml_path=args.config, preset=preset)
    scratch = {}
    if getattr(cfg, "model", None) == "tiny":
        given = given_fields(cls, args, args.config, preset)
        if "lr" not in given:
            scratch = {k: v for k, v in FROM_SCRATCH.items() if hasattr(cfg, k) and k not in given}
        if hasattr(cfg, "threads") and "threads" not in given:
            scratch["threads"] = TINY_THREADS
        if scratch:
            cfg = build_config(cls, args, yaml_path=args.config, preset=preset, defaults=scratch)
    if announce and os.environ.get("RANK", "0") == "0":
        print(describe_settings(cfg, scratch), flush=True)
    return cfg


def describe_settings(cfg, scratch: dict | None = None) -> str:
    """The options of `cfg` that differ from its class's defaults, one line, and the from-scratch defaults
    of a random-init model named as such."""
    from guard.config import _show, config_to_dict

    defaults = config_to_dict(type(cfg)())
    changed = {k: v for k, v in config_to_dict(cfg).items() if v != defaults[k] and k not in (scratch or {})}
    line = "settings: " + (" ".join(f"{k}={_show(v)}" for k, v in changed.items()) or "the defaults")
    if scratch:
        line += ("\n          " + " ".join(f"{k}={_show(v)}" for k, v in scratch.items())
                 + " (defaults of the random-init tiny model; "
                 + ", ".join("--" + k.replace("_", "-") for k in scratch) + " to change)")
    return line


@dataclass
class TrainOptions:
    """The options every recipe shares (data, model, optimisation, run); a recipe's config subclasses it
    (or PairTrainOptions), adds its own and may redeclare a field to change its default or its help."""

    # data
    data: str = option("", "training pairs: a .jsonl/.json/.parquet/.csv file, a folder or a hub dataset name")
    eval_data: str | None = option(None, "held-out pairs; none: a fixed-seed --eval-fraction of --data is held out")
    eval_fraction: float = option(0.1, "share of --data held out for evaluation when --eval-data is not given",
                                  domain="(0, 1)")
    split: str = option("train", "dataset split to read")
    schema: str = option("auto", "data schema (auto: detected from the columns)", choices=SCHEMAS)
    dimensions: list[str] | None = option(None, "keep only these preference dimensions, e.g. harmless")
    categories: list[str] | None = option(
        None, "category names in order (data with another category is an error); default: the training data's")
    max_prompt_length: int | None = option(None, "keep at most the last N prompt tokens", domain=">= 1")
    # model
    model: str = option("tiny", "a local model directory, a hub name, or the preset 'tiny' (a small random Llama)")
    tokenizer: str | None = option(None, "tokenizer.json or a folder holding one (default: the model's; tiny: bundled)")
    lora: bool = option(False, "train LoRA adapters (peft) instead of every weight")
    lora_r: int = option(16, "LoRA rank", domain=">= 1")
    lora_alpha: int = option(32, "LoRA alpha", domain=">= 1")
    lora_dropout: float = option(0.05, "LoRA dropout", domain="[0, 1)")
    lora_target_modules: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "modules given adapters")
    save_adapter: bool = option(False, "with --lora: save the adapter alone instead of the merged model")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    bf16: bool = option(True, "bf16 autocast on GPU (CPU runs stay in float32)")
    trust_remote_code: bool = option(False, "allow model code from the hub (off: safe by default)")
    # optimisation
    epochs: int = option(1, "passes over the training pairs", domain=">= 1")
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides --epochs)", domain=">= 1")
    batch_size: int = option(32, "preference pairs per optimizer step, over all processes", domain=">= 1")
    eval_batch_size: int = option(64, "pairs per forward pass when scoring the held-out set", domain=">= 1")
    lr: float = option(1e-5, "peak learning rate (AdamW)", domain="> 0", default_note="0.002 with --model tiny")
    weight_decay: float = option(0.0, "AdamW weight decay", domain=">= 0")
    warmup_ratio: float = option(0.03, "share of the steps spent in linear warmup", domain="[0, 1]")
    lr_schedule: str = option("cosine", "decay after warmup", choices=("cosine", "linear", "constant"))
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)", domain=">= 0",
                                 default_note="0 with --model tiny and no --lr")
    # run
    output_dir: str = option("", "where the run writes config, metrics, checkpoints, model and report",
                             required=True)
    seed: int = option(0, "seed of the data order, the held-out split, the model init and the audit", domain=">= 0")
    log_every: int = option(10, "write metrics every N steps", domain=">= 1")
    save_every: int = option(200, "checkpoint every N steps (0: only at the end)", domain=">= 0")
    keep_checkpoints: int = option(2, "checkpoints kept on disk", domain=">= 1")
    resume: bool = option(False, "continue from the last checkpoint in --output-dir (with the same data, split, "
                          "model and objective)")
    resume_changes: list[str] | None = option(None, "with --resume: options allowed to differ from the run's "
                                              "config.yaml, e.g. lr,max_steps (never the data, split, model, seed or "
                                              "batch size)")
    overwrite: bool = option(False, "replace a finished or stopped run in --output-dir")
    device: str = option("auto", "cuda, cpu, or auto (cuda when available)")
    threads: int | None = option(None, "torch CPU threads (none: torch's choice)", domain=">= 1",
                                 default_note="1 with --model tiny")
    packing: bool | None = option(None, "lay a batch's sequences end to end in one row, attention kept inside each "
                                  "sequence, so no padding is computed (--no-packing: padded rows); default: on "
                                  "where the model's attention allows it, else off with the reason printed")
    chat_template: str | None = option(None, "a Jinja chat template file for conversational data, when the "
                                       "tokenizer has none (plain-text prompts are used as they are)")


@dataclass
class PairTrainOptions(TrainOptions):
    """What the recipes that train on preference pairs (rm, pref) add: the sequence budget and GUARD's
    fairness adversary."""

    max_length: int = option(1024, "tokens per prompt+response sequence; a longer response is cut at its end",
                             domain=">= 2")
    tokens_per_step: int | None = option(None, "tokens (chosen + rejected, over all processes) per optimizer step "
                                         "instead of --batch-size pairs: whole pairs packed best-fit into "
                                         "TOKENS / processes per process; none: --batch-size pairs", domain=">= 1")
    # fairness (GUARD): guard/fairness.py
    lambda_adv: list[float] = option([0.2], "fairness weight λ; 0 = the plain loss; several values (0,0.2,0.8) "
                                     "run a sweep", domain=">= 0")
    fairness: str = option("moments", "the fairness penalty λ weighs: a direct penalty on the per-category reward "
                           "moments, GUARD's adversary, or both", choices=("moments", "adversary", "moments+adversary"))
    moment_weights: list[float] = option([4.0, 4.0, 0.0, 0.0], "moments penalty: weights of the spread between "
                                         "categories of the mean (η²), log-variance, skewness and kurtosis",
                                         domain=">= 0")
    balanced_batches: bool = option(True, "every batch holds at least one pair of each category (rare ones drawn "
                                    "again as needed), the rest in the usual shuffled order (not with "
                                    "--tokens-per-step)")
    adversary: str = option("rewards", "what the adversary reads: each pair's rewards, or per-category moments",
                            choices=("rewards", "moments"))
    adv_objective: str = option("ce", "what the model does to the adversary: maximise its cross-entropy (paper), "
                                "its predictive entropy (authors' code), or bring it to chance",
                                choices=("ce", "entropy", "chance"))
    adv_steps: int = option(1, "adversary updates per model step", domain=">= 1")
    adv_hidden: int = option(64, "hidden units of the adversary MLP", domain=">= 1")
    adv_lr: float = option(1e-2, "adversary learning rate (Adam)", domain="> 0")


def check_options(cfg: TrainOptions, lambdas: Sequence[float] | None = None) -> None:
    """The checks across options that every recipe makes before any work (each value's own range was checked
    when the config was built): an output directory that can be one, a prompt budget that leaves room for a
    response, one or more λ (for the recipes with a fairness weight)."""
    if not cfg.output_dir:
        raise ConfigError("--output-dir is required (where the run writes config, metrics, model and report)")
    if os.path.exists(cfg.output_dir) and not os.path.isdir(cfg.output_dir):
        raise ConfigError(f"--output-dir {cfg.output_dir} is a file, not a directory")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume continues the run in --output-dir and --overwrite replaces it: give one")
    max_length = getattr(cfg, "max_length", None)
    if max_length is not None and cfg.max_prompt_length is not None and cfg.max_prompt_length >= max_length:
        raise ConfigError(f"--max-prompt-length {cfg.max_prompt_length} leaves no room for a response within "
                          f"--max-length {max_length}")
    if lambdas is not None and not lambdas:
        raise ConfigError("--lambda-adv needs one or more values (0: the plain loss)")


def check_batch_split(cfg: TrainOptions, dist) -> None:
    if getattr(cfg, "tokens_per_step", None) is not None:  # the token budget sets the batch, per process
        return
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be a multiple of the {dist.world_size} processes")


def check_fairness(lambda_adv: float, names: Sequence[str]) -> None:
    if lambda_adv > 0 and len(names) < 2:
        raise ConfigError("--lambda-adv > 0 needs at least two categories; the data has "
                          f"{list(names)} (give it a category column, or pass --lambda-adv 0)")


# ----------------------------------------------------------------------------------------------------
# Each recipe's options (here rather than in the recipes, so `--help` and the checks need no torch)


@dataclass
class RMConfig(PairTrainOptions):
    margin_column: str | None = option(None, "column holding a per-pair margin m in -logσ(r_c - r_r - m)")
    center_coef: float = option(0.0, "weight of the reward-centering term mean((r_c + r_r)²)", domain=">= 0")


LOSSES = ("sigmoid", "ipo", "apo_zero", "apo_down", "kto_pair", "spo")

#: The papers' settings (`--preset NAME`; any flag or yaml value still wins).
PRESETS: dict[str, dict] = {
    # GUARD appendix B: LoRA r 16, α 32 on the attention's query/key/value/output projections.
    "guard": dict(lora=True, lora_r=16, lora_alpha=32, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    # SPO §5: β 0.1, LoRA rank 8 with scaling 32, lr 1e-5, 2 epochs per dimension, α 0.1.
    "spo": dict(loss="spo", beta=0.1, lora=True, lora_r=8, lora_alpha=32, lr=1e-5, epochs=2, alpha=[0.1]),
    # APO §5: full fine-tuning, β 0.1, prompt and response 512 tokens each, batch 16, lr 2e-7 decaying linearly
    # to 0 (the paper uses RMSProp; guard uses AdamW), 18 epochs.
    "apo": dict(loss="apo_zero", beta=0.1, lora=False, max_length=1024, max_prompt_length=512, batch_size=16,
                lr=2e-7, lr_schedule="linear", warmup_ratio=0.0, epochs=18),
}


@dataclass
class PrefConfig(PairTrainOptions):
    # loss
    loss: str = option("sigmoid", "preference loss: sigmoid = DPO (also spelt dpo); spo = one round per "
                       "--dimensions entry", choices=LOSSES, aliases={"dpo": "sigmoid"})
    beta: float = option(0.1, "β: scale of the implicit reward β·(log π − log π_ref)", domain="> 0")
    label_smoothing: float = option(0.0, "ε of the conservative DPO loss (sigmoid only)", domain="[0, 0.5)")
    alpha: list[float] = option([0.1], "SPO: importance α of each earlier dimension, weighing how much later "
                                "rounds keep its alignment (one value for all, or one per dimension but the last)",
                                domain="[0, 1]")
    precompute_ref: bool = option(False, "compute the reference's log-probs once before training and cache them "
                                  "on disk, so training holds one model (SPO rounds always do)")
    ref_cache_dir: str | None = option(None, "where --precompute-ref caches log-probs, keyed by a fingerprint of "
                                       "the tokenized data and the reference (default: OUTPUT_DIR/ref-cache)")
    preset: str | None = option(None, "a paper's settings, applied under yaml and flags", choices=tuple(PRESETS))
    # defaults that differ from the reward-model recipe's
    lora: bool = option(True, "train LoRA adapters (reference: the adapter disabled); --no-lora: every weight, "
                        "against a frozen copy")
    lora_target_modules: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"], "modules given adapters")
    eval_batch_size: int = option(32, "pairs per forward pass when scoring the held-out set", domain=">= 1")
    lr: float = option(5e-6, "peak learning rate (AdamW)", domain="> 0", default_note="0.002 with --model tiny")
    warmup_ratio: float = option(0.1, "share of the steps spent in linear warmup", domain="[0, 1]")
    lambda_adv: float = option(0.0, "fairness weight λ on the implicit rewards; 0 = the plain loss", domain=">= 0")
    adversary: str = option("moments", "what the adversary reads: each pair's implicit rewards, or their "
                            "per-category moments", choices=("rewards", "moments"))


@dataclass
class PPOConfig(TrainOptions):
    data: str = option("", "prompts: a prompt-only .jsonl/.json/.parquet/.csv file (a prompt column, string or "
                       "messages, optional category), any preference data (its distinct prompts), a folder or a hub name")
    eval_data: str | None = option(None, "held-out prompts (any of the forms of --data); none: a fixed-seed "
                                   "--eval-fraction of --data is held out")
    schema: str = option("auto", "data schema (auto: detected from the columns; prompt: prompt-only rows)",
                         choices=PROMPT_SCHEMAS)
    reward_model: str = option("", "the reward model: a directory the rm recipe wrote (OUTPUT_DIR/model) or any "
                               "sequence-classification model with one output", required=True)
    # rollouts
    max_new_tokens: int = option(256, "longest response sampled", domain=">= 1")
    temperature: float = option(0.7, "sampling temperature (the log-probs are those of this distribution)",
                                domain="> 0")
    top_p: float = option(0.9, "nucleus sampling: keep the smallest set of tokens with this probability",
                          domain="(0, 1]")
    stop_token: str | None = option(None, "the token a response ends with (default: the tokenizer's EOS)")
    missing_eos_penalty: float = option(1.0, "subtracted from the score of a response that reaches "
                                        "--max-new-tokens without the stop token (0: no penalty)",
                                        domain=">= 0")
    generation_batch_size: int = option(64, "prompts per generate call on each process", domain=">= 1")
    # PPO
    batch_size: int = option(512, "prompts (rollouts) per PPO update, over all processes", domain=">= 1")
    minibatch_size: int = option(64, "rollouts per optimizer step, over all processes", domain=">= 1")
    micro_batch_size: int | None = option(None, "rollouts per forward/backward on each process, the minibatch "
                                          "share accumulated (default: the whole share)", domain=">= 1")
    ppo_epochs: int = option(2, "passes over each batch of rollouts", domain=">= 1")
    epochs: int = option(1, "passes over the prompts (--max-steps overrides)", domain=">= 1")
    kl_coef: float = option(0.05, "β: the KL penalty's coefficient (initial value with --adaptive-kl)",
                            domain=">= 0")
    kl_estimator: str = option("k1", "per-token KL estimator: k1 = log π − log π_ref, k2 = ½(log ratio)², "
                               "k3 = ratio − 1 − log ratio", choices=("k1", "k2", "k3"))
    adaptive_kl: bool = option(True, "adapt β toward --kl-target (Ziegler et al.); --no-adaptive-kl: β fixed")
    kl_target: float = option(6.0, "the adaptive controller's target: mean KL of a response (sum over its tokens)",
                              domain="> 0")
    kl_horizon: int = option(10000, "the adaptive controller's horizon in rollouts", domain=">= 1")
    gamma: float = option(1.0, "GAE discount γ", domain="[0, 1]")
    lam: float = option(0.95, "GAE λ", domain="[0, 1]")
    cliprange: float = option(0.2, "ε of the clipped policy ratio", domain="> 0")
    cliprange_value: float = option(0.2, "ε of the clipped value update", domain="> 0")
    vf_coef: float = option(0.1, "weight of the value loss", domain=">= 0")
    entropy_coef: float = option(0.0, "weight of an entropy bonus (0: none)", domain=">= 0")
    # curiosity (GUARD)
    curiosity: float = option(0.05, "η_cur: scale of the RND curiosity bonus added to the score (0: off)",
                              domain=">= 0")
    rnd_hidden: int = option(512, "hidden and output width of the RND target and predictor MLPs", domain=">= 1")
    rnd_lr: float = option(1e-4, "the RND predictor's learning rate (Adam)", domain="> 0")
    # defaults that differ from the other recipes'
    lora: bool = option(True, "train LoRA adapters (reference: the adapter disabled); --no-lora: every weight, "
                        "against a frozen copy")
    lora_dropout: float = option(0.0, "LoRA dropout (keep 0: see guard/train/ppo.py)", domain="[0, 1)")
    lr: float = option(1.41e-5, "learning rate of the policy and the value head (AdamW)", domain="> 0",
                       default_note="0.002 with --model tiny")
    warmup_ratio: float = option(0.0, "share of the updates spent in linear warmup", domain="[0, 1]")
    lr_schedule: str = option("constant", "decay after warmup", choices=("cosine", "linear", "constant"))
    max_prompt_length: int | None = option(512, "keep at most the last N prompt tokens", domain=">= 1")
    eval_batch_size: int = option(64, "rollouts per forward pass without gradients (experience, evaluation)",
                                 domain=">= 1")
    log_every: int = option(1, "write metrics every N updates", domain=">= 1")
    save_every: int = option(20, "checkpoint every N updates (0: only at the end)", domain=">= 0")


#: Each recipe of `python -m guard.train`: its options, the first line of its help, its named presets.
RECIPES: dict[str, tuple[type, str, dict | None]] = {
    "rm": (RMConfig, "The reward-model recipe: Bradley–Terry reward models with GUARD's fairness adversary.", None),
    "pref": (PrefConfig, "The preference-optimization recipe: DPO, IPO, APO-zero/down, KTO-pair and sequential SPO "
             "rounds on a causal LM, with GUARD's fairness adversary on the implicit rewards.", PRESETS),
    "ppo": (PPOConfig, "The PPO recipe: a LoRA policy with a value head against a reward model, with an adaptive "
            "KL penalty and GUARD's RND curiosity bonus.", None),
}


def parse_recipe(name: str, argv: list[str] | None, *, announce: bool = True):
    """The config of recipe `name` (rm, pref, ppo) from its command line (see parse_config)."""
    cls, about, presets = RECIPES[name]
    return parse_config(cls, argv, f"python -m guard.train {name}", about, presets, announce=announce)
