"""guard.models: name resolution, tokenizers (HF and guard agree), tiny models, LoRA, and HF-format saves.

Everything is local: a tokenizer.json built here with the `tokenizers` package, the "tiny" preset, and
the hub path only with the hub forced offline.

    python -m pytest tests/test_models.py -q
"""

from __future__ import annotations

import json
import time

import huggingface_hub.constants
import pytest
import torch
from tokenizers import Tokenizer as HFBackend
from tokenizers import models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from guard import models as gm
from guard.config import ConfigError
from guard.models import (
    PRESETS, LoraSettings, attention_implementation, load_causal_lm, load_reward_model, load_tokenizer,
    resolve_model, save_pretrained,
)

WORDS = "the a cat dog sat on mat and ran far good bad reply answer question is not".split()
TEXTS = ["the cat sat on the mat", "a dog ran far", "good answer", "the unknownword is bad and not good"]


def make_tokenizer_json(path, specials=("<s>", "</s>", "<unk>"), template=True) -> str:
    """A word-level tokenizer.json; `specials` first in the vocabulary, a "<s> $A </s>" template if asked."""
    vocab = {tok: i for i, tok in enumerate([*specials, *WORDS])}
    tok = HFBackend(models.WordLevel(vocab, unk_token="<unk>"))  # without "<unk>" in vocab: no unk token
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(specials))
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    tok.save(str(path))
    return str(path)


@pytest.fixture
def tok_file(tmp_path):
    return make_tokenizer_json(tmp_path / "tokenizer.json", specials=("<s>", "</s>", "<unk>", "<pad>"))


@pytest.fixture
def tokenizers_(tok_file):
    return load_tokenizer(tok_file)


def batch(hf, texts=TEXTS):
    return hf(texts, padding=True, return_tensors="pt")


def scores(model, b) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**b).logits.float()


def perturb_(model, *names, scale=0.2, seed=1):
    """Move the given (zero-initialised or untrained) parameters so merges and heads matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in names):
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def tiny_rm(tokenizers_, **kwargs):
    hf, tok = tokenizers_
    return load_reward_model("tiny", vocab_size=tok.vocab_size, pad_token_id=hf.pad_token_id, **kwargs)


# ----------------------------------------------------------------------------------------- resolution


def test_resolve_model(tmp_path, monkeypatch):
    assert resolve_model("tiny") == ("preset", str(PRESETS["tiny"]))
    assert PRESETS["tiny"].is_file()
    assert resolve_model(tmp_path) == ("local", str(tmp_path))
    for hub in ("meta-llama/Llama-3.2-1B", "gpt2", "org/name.v1_x"):
        assert resolve_model(hub) == ("hub", hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "weights.bin").write_text("x")
    for missing in ("./model", "/no/such/dir", "~/no-such-guard-model", "a/b/c", "runs/model", "my model"):
        with pytest.raises(ConfigError) as e:
            resolve_model(missing)
        assert str(e.value) == (f"model not found: {missing} (no such directory; use a local model directory, "
                                f"a hub name, or --model tiny)")
    with pytest.raises(ConfigError, match="model not found: weights.bin .a file, not a model directory"):
        resolve_model("weights.bin")
    with pytest.raises(ConfigError, match="no model given"):
        resolve_model("")


def test_attention_implementation(monkeypatch):
    import transformers.utils

    # guard_sdpa: transformers' SDPA that keeps packed sequences apart (guard.attention)
    assert attention_implementation("cpu") == "guard_sdpa"
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    assert attention_implementation("cpu") == "guard_sdpa"
    assert attention_implementation(torch.device("cuda", 0)) == "flash_attention_2"
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert attention_implementation("cuda") == "guard_sdpa"


# ------------------------------------------------------------------------------------------ tokenizers


def assert_same_ids(hf, tok, texts=TEXTS):
    assert tok.vocab_size == len(hf)
    for text in texts:
        for special in (True, False):
            assert tok.encode(text, special).tolist() == hf(text, add_special_tokens=special)["input_ids"]


def test_tokenizer_json_file(tokenizers_):
    hf, tok = tokenizers_
    assert (hf.bos_token, hf.eos_token, hf.unk_token, hf.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    assert hf.pad_token_id == 3 and tok.token_to_id("<pad>") == 3
    assert_same_ids(hf, tok)
    assert hf("the cat")["input_ids"] == [0, 4, 6, 1]


def test_pad_falls_back_to_eos_then_added_token(tmp_path):
    hf, tok = load_tokenizer(make_tokenizer_json(tmp_path / "a.json"))  # no pad token in the vocabulary
    assert hf.pad_token == "</s>" and hf.pad_token_id == hf.eos_token_id == 1
    assert len(hf) == tok.vocab_size == 3 + len(WORDS)

    hf, tok = load_tokenizer(make_tokenizer_json(tmp_path / "b.json", specials=(), template=False))
    assert hf.eos_token is None and hf.bos_token is None
    assert hf.pad_token == "<pad>" and hf.pad_token_id == len(WORDS)  # added: the vocabulary grew by one
    assert tok.vocab_size == len(hf) == len(WORDS) + 1 and tok.token_to_id("<pad>") == hf.pad_token_id
    assert_same_ids(hf, tok, ["the cat sat on the mat", "a dog ran far", "the <pad> cat"])


def test_tokenizer_from_saved_directory(tokenizers_, tmp_path):
    hf, _ = tokenizers_
    hf.save_pretrained(tmp_path / "saved")
    hf2, tok2 = load_tokenizer(tmp_path / "saved")
    assert (hf2.bos_token, hf2.eos_token, hf2.pad_token) == ("<s>", "</s>", "<pad>")
    assert_same_ids(hf2, tok2)
    assert [hf2(t)["input_ids"] for t in TEXTS] == [hf(t)["input_ids"] for t in TEXTS]
    # a directory holding only a tokenizer.json
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "tokenizer.json").write_text(hf.backend_tokenizer.to_str())
    assert_same_ids(*load_tokenizer(tmp_path / "bare"))


def test_bundled_tokenizer_if_present():
    path = gm.TINY_TOKENIZER
    if not path.is_file():
        pytest.skip("python/guard/assets/tokenizer.json not generated yet")
    hf, tok = load_tokenizer(path)
    assert hf.pad_token is not None and hf.eos_token is not None
    assert_same_ids(hf, tok)


def test_tokenizer_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="tokenizer not found: ./nope.json .no such file"):
        load_tokenizer("./nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="tokenizer not found: .*empty .the directory has no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(ConfigError, match="cannot load tokenizer .*bad.json: "):
        load_tokenizer(tmp_path / "bad.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="cannot load tokenizer guard-test-nobody/no-such-tokenizer: "):
        load_tokenizer("guard-test-nobody/no-such-tokenizer")


# ----------------------------------------------------------------------------------------------- models


def test_tiny_reward_model(tokenizers_):
    hf, tok = tokenizers_
    preset = json.loads(PRESETS["tiny"].read_text())
    model = tiny_rm(tokenizers_)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    cfg = model.config
    assert cfg.num_labels == 1 and cfg.pad_token_id == hf.pad_token_id and cfg.vocab_size == tok.vocab_size
    assert all(getattr(cfg, k) == v for k, v in preset.items() if k != "vocab_size")
    assert cfg._attn_implementation == "guard_sdpa"
    assert scores(model, batch(hf)).shape == (len(TEXTS), 1)
    assert next(model.parameters()).dtype == torch.float32
    assert next(tiny_rm(tokenizers_, dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16


def test_tiny_init_is_reproducible_and_leaves_the_rng_alone(tokenizers_):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = tiny_rm(tokenizers_, seed=0, lora=LoraSettings(r=2))
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is untouched
    b = tiny_rm(tokenizers_, seed=0, lora=LoraSettings(r=2))
    c = tiny_rm(tokenizers_, seed=1, lora=LoraSettings(r=2))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    differ = [k for k in sa if not torch.equal(sa[k], sc[k])]
    assert any("lora_A" in k for k in differ) and any("embed_tokens" in k for k in differ)


def test_lora_trains_adapters_and_the_score_head(tokenizers_):
    model = tiny_rm(tokenizers_, lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "score.modules_to_save" in n for n in trainable)
    assert any("score.modules_to_save" in n for n in trainable)
    assert sum("q_proj.lora_A" in n for n in trainable) == 2 and not any("k_proj" in n for n in trainable)


@pytest.mark.parametrize("lora", [None, LoraSettings(r=2)])
def test_gradient_checkpointing_recomputes_layers(tokenizers_, lora):
    hf, _ = tokenizers_
    b = batch(hf)

    def forward_calls(checkpointing: bool) -> int:
        model = tiny_rm(tokenizers_, lora=lora, gradient_checkpointing=checkpointing).train()
        mlp = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp"))
        calls = []
        # a pre-hook: the recompute stops (torch's early stop) inside the MLP, before a post-hook would run
        mlp.register_forward_pre_hook(lambda *_: calls.append(1))
        model(**b).logits.sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        return len(calls)

    assert forward_calls(False) == 1
    assert forward_calls(True) == 2  # the backward pass ran the layer again


def test_pad_id_outside_vocab(tokenizers_):
    _, tok = tokenizers_
    with pytest.raises(ConfigError, match="pad_token_id 999 is outside the vocabulary"):
        load_reward_model("tiny", vocab_size=tok.vocab_size, pad_token_id=999)


def test_model_load_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"^model not found: ./no/such/model \(no such directory"):
        load_reward_model("./no/such/model", vocab_size=10, pad_token_id=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^cannot load model .*empty: \w+"):
        load_reward_model(tmp_path / "empty", vocab_size=10, pad_token_id=0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_reward_model("guard-test-nobody/no-such-model", vocab_size=10, pad_token_id=0)
    assert time.monotonic() - start < 20
    assert str(e.value).startswith("cannot load model guard-test-nobody/no-such-model: ") and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------- saving


def test_save_plain_round_trip_and_vocab_growth(tokenizers_, tmp_path):
    hf, tok = tokenizers_
    model = tiny_rm(tokenizers_)
    perturb_(model, "score")
    b = batch(hf)
    save_pretrained(model, tmp_path / "m", tokenizer=hf)
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert loaded.config.pad_token_id == hf.pad_token_id and loaded.config.num_labels == 1
    torch.testing.assert_close(scores(loaded, b), scores(model, b), rtol=0, atol=0)
    # the saved directory is itself a model and tokenizer guard loads (tokenizer with 2 more ids)
    hf2, _ = load_tokenizer(tmp_path / "m")
    again = load_reward_model(tmp_path / "m", vocab_size=tok.vocab_size + 2, pad_token_id=hf2.pad_token_id)
    assert again.get_input_embeddings().num_embeddings == tok.vocab_size + 2
    torch.testing.assert_close(scores(again, b), scores(model, b), rtol=0, atol=0)


def test_save_lora_merged_and_adapter(tokenizers_, tmp_path):
    hf, _ = tokenizers_
    model = tiny_rm(tokenizers_, lora=LoraSettings(r=4, alpha=16))
    perturb_(model, "lora_B", "score.modules_to_save")
    b = batch(hf)
    expected = scores(model, b)
    with model.disable_adapter():
        without_lora = scores(model, b)
    assert (expected - without_lora).abs().max() > 1e-3  # the adapter matters, so the checks below can fail

    save_pretrained(model, tmp_path / "merged", tokenizer=hf)
    save_pretrained(model, tmp_path / "adapter", tokenizer=hf, merge_lora=False)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    # the live model is untouched by saving
    assert type(model).__name__.startswith("Peft")
    torch.testing.assert_close(scores(model, b), expected, rtol=0, atol=0)

    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(scores(merged, b), expected, rtol=1e-5, atol=1e-5)
    reference = model.merge_and_unload().state_dict()  # peft's own merge (last: it changes the model)
    saved = merged.state_dict()
    assert saved.keys() == reference.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], reference[key], rtol=1e-6, atol=1e-6)

    adapter = AutoModelForSequenceClassification.from_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(scores(adapter, b), expected, rtol=1e-5, atol=1e-5)


def test_save_uses_the_given_state_dict(tokenizers_, tmp_path):
    """The FSDP path: a gathered full state dict is what gets saved, not the live parameters."""
    hf, _ = tokenizers_
    model = tiny_rm(tokenizers_, lora=LoraSettings(r=2))
    other = tiny_rm(tokenizers_, lora=LoraSettings(r=2), seed=5)
    perturb_(other, "lora_B", "score.modules_to_save")
    b = batch(hf)
    assert (scores(model, b) - scores(other, b)).abs().max() > 1e-3
    save_pretrained(model, tmp_path / "m", state_dict={k: v.clone() for k, v in other.state_dict().items()})
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(scores(loaded, b), scores(other, b), rtol=1e-5, atol=1e-5)


def test_causal_lm_lora_merged_round_trip(tokenizers_, tmp_path):
    hf, tok = tokenizers_
    model = load_causal_lm("tiny", vocab_size=tok.vocab_size, pad_token_id=hf.pad_token_id,
                           lora=LoraSettings(r=2, target_modules=("q_proj", "o_proj", "down_proj")))
    perturb_(model, "lora_B")
    b = batch(hf)
    save_pretrained(model, tmp_path / "lm")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(scores(loaded, b), scores(model, b), rtol=1e-5, atol=1e-5)
