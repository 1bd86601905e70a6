"""Tokenizers and transformer models for guard's trainers: load, optionally wrap in LoRA, save in HF format.

    hf_tok, tok = load_tokenizer("python/guard/assets/tokenizer.json")   # or a model dir, or a hub name
    model = load_reward_model("tiny", vocab_size=tok.vocab_size, pad_token_id=hf_tok.pad_token_id,
                              lora=LoraSettings(r=8), gradient_checkpointing=True)
    ...train...
    save_pretrained(model, "out/model", tokenizer=hf_tok)                # LoRA merged; merge_lora=False: adapter
    AutoModelForSequenceClassification.from_pretrained("out/model")      # loads it back

Models are named by a preset (``"tiny"``: a small random Llama built locally, see :data:`PRESETS`), a
local model directory, or a hub name. Anything that does not resolve or load is a
:class:`guard.config.ConfigError` with the name and the reason on one line.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from guard import assets, attention
from guard.config import ConfigError
from guard.data import Tokenizer

__all__ = [
    "ASSETS", "PRESETS", "TINY_TOKENIZER", "LoraSettings", "attention_implementation", "packing_unsupported",
    "resolve_model", "load_tokenizer", "load_reward_model", "load_causal_lm", "save_pretrained",
]

#: The bundled assets (guard.assets): sample data, a tokenizer.json and the tiny model preset.
ASSETS = assets.ASSETS_DIR
#: The tokenizer the "tiny" preset is used with (the default job's).
TINY_TOKENIZER = assets.TOKENIZER

#: Model presets built locally with random weights: a json of LlamaConfig keyword arguments, without
#: vocab_size (the tokenizer gives it).
PRESETS: dict[str, Path] = {"tiny": assets.TINY_LLAMA}


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the attention projections; the reward head is trained in full."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def peft_config(self, task_type: str):
        from peft import LoraConfig

        # task_type SEQ_CLS makes peft train (and save) the `score` head through modules_to_save.
        return LoraConfig(task_type=task_type, r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules))


def attention_implementation(device: str | torch.device) -> str:
    """``"flash_attention_2"`` on a CUDA device when flash-attn is installed and usable, else ``"guard_sdpa"``:
    transformers' SDPA for padded batches that runs a packed row sequence by sequence (guard.attention says why
    this rather than transformers' block-diagonal mask). Both keep packed sequences apart."""
    attention.register()
    if torch.device(device).type != "cuda":
        return attention.NAME
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if is_flash_attn_2_available() else attention.NAME


def packing_unsupported(model: nn.Module, *, head: str | None = None) -> str | None:
    """Why `model` cannot train on packed rows (guard.attention.packed_inputs), or None when it can: its
    attention must go through transformers' attention interface with an implementation that keeps the
    sequences of a packed row apart, and with `head` ("score": a reward model), the head the recipe calls on
    each sequence's last hidden state must be there."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    implementation = getattr(base.config, "_attn_implementation", None)
    if not getattr(base, "_supports_attention_backend", False):
        return (f"{type(base).__name__} does not run its attention through transformers' attention interface, "
                "so nothing keeps the sequences of a packed row apart")
    if implementation not in attention.PACKED_IMPLEMENTATIONS:
        return (f"its attention implementation {implementation!r} attends across a packed row's sequences (packing "
                f"needs one of {', '.join(attention.PACKED_IMPLEMENTATIONS)})")
    if head is not None and not isinstance(getattr(base, head, None), nn.Module):
        return f"{type(base).__name__} has no `{head}` head to score each sequence's last token with"
    return None


# ------------------------------------------------------------------------------------------ name resolution

# A hub repository id: "name" or "org/name" (letters, digits, "-", "_", ".").
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _looks_like_path(name: str) -> bool:
    """True for names a user meant as a local path: "./m", "/abs", "~/m", "a/b/c", "runs/m" where runs/
    exists, or anything that cannot be a hub id. A plain "org/name" reads as a hub id."""
    if name.startswith((".", "~", "/")) or (os.sep != "/" and os.sep in name) or not _HUB_ID.fullmatch(name):
        return True
    parts = Path(name).parts
    return len(parts) > 1 and Path(parts[0]).exists()  # partly exists: a typo in a local path


def resolve_model(name_or_path: str | os.PathLike) -> tuple[str, str]:
    """``("preset", json path)``, ``("local", directory)`` or ``("hub", name)`` for a model name.
    ConfigError for a path-like name that is not a directory."""
    name = os.fspath(name_or_path)
    if name in PRESETS:
        return "preset", str(PRESETS[name])
    if not name.strip():
        raise ConfigError("no model given (use a local model directory, a hub name, or --model tiny)")
    path = Path(name).expanduser()
    if path.is_dir():
        return "local", str(path)
    if path.exists():
        raise ConfigError(f"model not found: {name} (a file, not a model directory; use a local model "
                          f"directory, a hub name, or --model tiny)")
    if _looks_like_path(name):
        raise ConfigError(f"model not found: {name} (no such directory; use a local model directory, a hub "
                          f"name, or --model tiny)")
    return "hub", name


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ------------------------------------------------------------------------------------------- tokenizers

# Conventional names, tried in order, for special tokens a bare tokenizer.json does not label.
_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]")
_EOS_NAMES = ("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "[SEP]")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>", "<|finetune_right_pad_id|>")
_UNK_NAMES = ("<unk>", "[UNK]", "<|unk|>")


def _template_specials(processor: dict | None) -> tuple[str | None, str | None]:
    """(leading, trailing) special token of a post-processor's single-sequence template: BOS and EOS."""
    if not processor:
        return None, None
    kind = processor.get("type")
    if kind == "Sequence":
        found = [_template_specials(p) for p in processor.get("processors", [])]
        return (next((b for b, _ in found if b), None), next((e for _, e in found if e), None))
    if kind in ("BertProcessing", "RobertaProcessing"):
        return processor["cls"][0], processor["sep"][0]
    if kind == "TemplateProcessing":
        single = processor.get("single", [])
        first = single[0].get("SpecialToken", {}).get("id") if single else None
        last = single[-1].get("SpecialToken", {}).get("id") if len(single) > 1 else None
        return first, last
    return None, None


def _complete_special_tokens(hf) -> None:
    """Fill in BOS/EOS/UNK a bare tokenizer.json leaves unnamed, and make sure there is a pad token.

    BOS/EOS come from the post-processor's template (leading/trailing special token), else from
    conventional names present in the vocabulary. The pad token, when the tokenizer has none, is the
    first that exists of: the file's padding token, a dedicated pad token ("<pad>", "[PAD]", ...), EOS,
    UNK; only when none exists is a "<pad>" token added (the vocabulary grows by one; the guard tokenizer is
    built afterwards, so both agree). A dedicated pad token is preferred over EOS because
    LlamaForSequenceClassification reads the score at the last token that is not the pad id.
    """
    spec = json.loads(hf.backend_tokenizer.to_str())
    vocab = hf.get_vocab()
    present = lambda tok: tok if tok is not None and tok in vocab else None  # noqa: E731
    first = lambda names: next((t for t in names if t in vocab), None)  # noqa: E731
    bos, eos = (present(t) for t in _template_specials(spec.get("post_processor")))
    unk = present((spec.get("model") or {}).get("unk_token"))
    new = {}
    if hf.bos_token is None and (bos or first(_BOS_NAMES)):
        new["bos_token"] = bos or first(_BOS_NAMES)
    if hf.eos_token is None and (eos or first(_EOS_NAMES)):
        new["eos_token"] = eos or first(_EOS_NAMES)
    if hf.unk_token is None and (unk or first(_UNK_NAMES)):
        new["unk_token"] = unk or first(_UNK_NAMES)
    if new:
        hf.add_special_tokens(new)
    if hf.pad_token is None:
        padding = present((spec.get("padding") or {}).get("pad_token"))
        hf.add_special_tokens({"pad_token": padding or first(_PAD_NAMES) or hf.eos_token or hf.unk_token or "<pad>"})


def _tokenizer_from_file(path: Path, name: str):
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(path))
    except Exception as e:  # a file that does not parse as a tokenizer: report it, not the library's stack
        raise ConfigError(f"cannot load tokenizer {name}: {_one_line(e)}") from e


def _auto_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except Exception as e:  # hub unreachable, no such repo, broken files
        raise ConfigError(f"cannot load tokenizer {name}: {_one_line(e)}") from e
    if not getattr(hf, "is_fast", False) or getattr(hf, "backend_tokenizer", None) is None:
        raise ConfigError(f"cannot load tokenizer {name}: guard needs a fast tokenizer (a tokenizer.json), "
                          f"got {type(hf).__name__}")
    return hf


def load_tokenizer(name_or_path: str | os.PathLike):
    """``(hf_tokenizer, guard.data.Tokenizer)`` from a tokenizer.json file, a directory holding one (a saved
    model directory, with its tokenizer_config.json when there is one) or a hub name.

    The HF tokenizer gets BOS/EOS and a pad token when it lacks them (see :func:`_complete_special_tokens`);
    the guard tokenizer is built from its final ``backend_tokenizer`` JSON, so both give the same ids.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_file():
        hf = _tokenizer_from_file(path, name)
    elif path.is_dir():
        if (path / "tokenizer_config.json").is_file():
            hf = _auto_tokenizer(str(path))
        elif (path / "tokenizer.json").is_file():
            hf = _tokenizer_from_file(path / "tokenizer.json", name)
        else:
            raise ConfigError(f"tokenizer not found: {name} (the directory has no tokenizer.json)")
    elif _looks_like_path(name):
        raise ConfigError(f"tokenizer not found: {name} (no such file or directory; use a tokenizer.json, a "
                          f"model directory or a hub name)")
    else:
        hf = _auto_tokenizer(name)
    _complete_special_tokens(hf)
    return hf, Tokenizer.from_str(hf.backend_tokenizer.to_str())


# --------------------------------------------------------------------------------------------- models


def _load(auto_name: str, task_type: str, name_or_path, *, vocab_size: int, pad_token_id: int | None,
          dtype: torch.dtype, device, lora: LoraSettings | None, gradient_checkpointing: bool,
          trust_remote_code: bool, seed: int, **config_kwargs) -> nn.Module:
    import transformers

    auto_cls = getattr(transformers, auto_name)
    kind, value = resolve_model(name_or_path)
    if pad_token_id is not None and not 0 <= pad_token_id < vocab_size:  # a tokenizer id, so below vocab_size
        raise ConfigError(f"pad_token_id {pad_token_id} is outside the vocabulary (size {vocab_size})")
    device = torch.device(device)
    attn = attention_implementation(device)
    # Every random init (a preset's weights, a new reward head, LoRA's A matrices) happens on the CPU
    # inside this fork, seeded: the same seed builds the same model, and the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        if kind == "preset":
            try:
                preset = json.loads(Path(value).read_text(encoding="utf-8"))
                preset.pop("vocab_size", None)
                config = transformers.LlamaConfig(**preset, vocab_size=vocab_size, pad_token_id=pad_token_id,
                                                  **config_kwargs)
            except (OSError, ValueError, TypeError) as e:
                raise ConfigError(f"bad model preset {name_or_path} ({value}): {_one_line(e)}") from e
            model = auto_cls.from_config(config, attn_implementation=attn)  # float32 init, cast below
        else:
            try:
                model = auto_cls.from_pretrained(value, attn_implementation=attn,
                                                 trust_remote_code=trust_remote_code, **config_kwargs)
            except Exception as e:  # hub unreachable, no weights, wrong architecture: one clear line
                raise ConfigError(f"cannot load model {name_or_path}: {_one_line(e)}") from e
        rows = model.get_input_embeddings().num_embeddings
        if vocab_size > rows:  # e.g. the tokenizer gained a "<pad>" token
            model.resize_token_embeddings(vocab_size, mean_resizing=False)
        model.config.pad_token_id = pad_token_id
        if gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if lora is not None:
            from peft import get_peft_model

            with warnings.catch_warnings():  # peft reads a property transformers 5 deprecates: not ours to fix
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                model = get_peft_model(model, lora.peft_config(task_type))
    return model.to(device=device, dtype=dtype)


def load_reward_model(name_or_path: str | os.PathLike, *, vocab_size: int, pad_token_id: int | None,
                      dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                      lora: LoraSettings | None = None, gradient_checkpointing: bool = False,
                      trust_remote_code: bool = False, seed: int = 0) -> nn.Module:
    """An ``AutoModelForSequenceClassification`` with one output (the reward), ``pad_token_id`` set on its
    config, embeddings grown to ``vocab_size`` when the tokenizer has more ids; a peft model when ``lora``
    is given (the score head trained in full). ``"tiny"`` builds a random Llama from the preset."""
    return _load("AutoModelForSequenceClassification", "SEQ_CLS", name_or_path, vocab_size=vocab_size,
                 pad_token_id=pad_token_id, dtype=dtype, device=device, lora=lora,
                 gradient_checkpointing=gradient_checkpointing, trust_remote_code=trust_remote_code, seed=seed,
                 num_labels=1)


def load_causal_lm(name_or_path: str | os.PathLike, *, vocab_size: int, pad_token_id: int | None,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   lora: LoraSettings | None = None, gradient_checkpointing: bool = False,
                   trust_remote_code: bool = False, seed: int = 0) -> nn.Module:
    """The same as :func:`load_reward_model` for an ``AutoModelForCausalLM`` (policies, reference models)."""
    return _load("AutoModelForCausalLM", "CAUSAL_LM", name_or_path, vocab_size=vocab_size,
                 pad_token_id=pad_token_id, dtype=dtype, device=device, lora=lora,
                 gradient_checkpointing=gradient_checkpointing, trust_remote_code=trust_remote_code, seed=seed)


# ---------------------------------------------------------------------------------------------- saving


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _base_state_dict(model, state_dict: dict[str, torch.Tensor], *, merge: bool) -> dict[str, Any]:
    """The peft model's full ``state_dict`` in the base model's own key names. ``merge``: LoRA folded in
    (W + scaling · B A); else the base weights as they were. Either way a module trained in full
    (modules_to_save, e.g. the score head) contributes its trained copy.

    Works on a state dict rather than the live model so the model is left as it is (training can go on)
    and so an FSDP run can pass a gathered full state dict.
    """
    from peft.tuners.lora import LoraLayer

    adapter = model.active_adapter
    prefix = "base_model.model."
    out = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    if merge:
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or adapter not in module.scaling:
                continue
            name = name.removeprefix(prefix)
            if module.use_dora.get(adapter) or getattr(module, "lora_bias", {}).get(adapter):
                raise ConfigError("cannot merge DoRA / LoRA-bias adapters here; save with merge_lora=False")
            scaling = module.scaling[adapter]
            if f"{name}.lora_A.{adapter}.weight" in out:  # Linear: y = x (W + s B A)^T
                a, b = out[f"{name}.lora_A.{adapter}.weight"], out[f"{name}.lora_B.{adapter}.weight"]
                delta = b.float() @ a.float() * scaling
                if getattr(module, "fan_in_fan_out", False):
                    delta = delta.T
            elif f"{name}.lora_embedding_A.{adapter}" in out:  # Embedding: W + s (B A)^T
                a, b = out[f"{name}.lora_embedding_A.{adapter}"], out[f"{name}.lora_embedding_B.{adapter}"]
                delta = (b.float() @ a.float()).T * scaling
            else:
                raise ConfigError(f"cannot merge the LoRA layer {name} ({type(module).__name__}); "
                                  f"save with merge_lora=False")
            key = f"{name}.base_layer.weight"
            out[key] = (out[key].float() + delta.to(out[key].device)).to(out[key].dtype)
    merged = {}
    for key, value in out.items():
        if ".lora_" in key or ".original_module." in key:
            continue  # adapter weights; the untrained copy of a module trained in full
        if ".modules_to_save." in key:
            head, _, rest = key.partition(".modules_to_save.")
            name, _, rest = rest.partition(".")
            if name != adapter:
                continue
            key = f"{head}.{rest}"
        merged[key.replace(".base_layer.", ".")] = value
    return merged


def save_pretrained(model: nn.Module, out_dir: str | os.PathLike, *, tokenizer=None,
                    state_dict: dict[str, torch.Tensor] | None = None, merge_lora: bool = True) -> None:
    """Save ``model`` in Hugging Face format (config.json + safetensors) so that
    ``AutoModelFor...from_pretrained(out_dir)`` loads it, plus ``tokenizer`` (an HF tokenizer) if given.

    A peft model is saved with LoRA merged into the weights (``merge_lora=True``), or as the base weights
    plus the adapter (adapter_config.json, adapter_model.safetensors) in the same directory: transformers
    then loads the base from the directory and applies the adapter; ``PeftModel.from_pretrained`` works
    too. ``state_dict`` is the model's full state dict when the live parameters are sharded (FSDP); by
    default ``model.state_dict()``. The model itself is not modified.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        state_dict = model.state_dict()
    if _is_peft(model):
        base = model.get_base_model()
        base.save_pretrained(out, state_dict=_base_state_dict(model, state_dict, merge=merge_lora))
        if not merge_lora:
            model.save_pretrained(out, state_dict=state_dict)
    else:
        model.save_pretrained(out, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
