"""Tokenizers trained here on a small multilingual corpus (no hub), and the texts that test them; shared by
tests/test_tokenize.py and tests/test_decode.py.

byte-level BPE with a BOS/EOS template post-processor, WordPiece with the BERT normalizer, pre-tokenizer and
post-processor, and Unigram with NFKC + Metaspace and an EOS template; each with its decoder. ``KINDS`` maps a
name to the function that trains one and saves its tokenizer.json at a path.
"""

import threading

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Héllo wörld, ça va? Naïve café, résumé.",
    "日本語のテキストと漢字、カタカナ。",
    "中文句子，包括标点符号。",
    "한국어 문장입니다.",
    "Emoji 😀 😂 👍🏽 👨‍👩‍👧 🏳️‍🌈 in text!",
    "Tabs\tand\nnewlines  and   runs of spaces",
    "Numbers 12345 and 3.14159, symbols #$%&* (brackets) [x] {y}",
    "مرحبا بالعالم",
    "Ελληνικά κείμενα και Кириллица тоже",
    "What is the capital of France? Paris is the capital.",
    "def f(x):\n    return x ** 2  # code",
]

TRICKY = [
    # emoji, skin tones, ZWJ sequences, flags, variation selectors
    "😀", "👍🏽👍🏿", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag 🇫🇷🇯🇵", "❤️ vs ❤", "🧑🏽‍💻 coder",
    # CJK and other scripts
    "漢字かなカナ한국어", "中文，标点。「引号」", "مرحبا بالعالم", "שלום עולם", "हिन्दी पाठ", "ไทย ภาษา",
    # combining marks and normalization-sensitive text
    "e\u0301", "n\u0303o", "a\u0308\u0301", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "ﬁ ligature ① ²", "Å vs A\u030a",
    # whitespace: runs, tabs, newlines, unusual spaces
    "a    b", "   leading", "trailing   ", "\t\ttabs\t", "line\nbreaks\r\nwindows", "\u00a0nbsp\u2003em space",
    "\u200bzero\u200bwidth", "mixed \t \n \r  whitespace", "\n\n\n", "x\n",
    # empty-ish
    " ", "\t", "\n", "  \n ", ".", "!", "\u200b",
    # control characters and outside-BMP letters
    "nul\x00byte", "del\x7fchar", "next\u0085line", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛",
    # special-token look-alikes in plain text
    "<s> hello </s>", "[CLS] x [SEP] [UNK]", "<unk> <pad>",
    # very long lines
    "word " * 20_000,
    "x" * 100_000,
    "".join(SENTENCES) * 200,
]


def corpus():
    rng = np.random.default_rng(0)
    words = " ".join(SENTENCES).split(" ")
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 20))) for _ in range(1500)]
    return SENTENCES * 5 + lines


def train_bpe(path):
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tok.save(str(path))


def train_wordpiece(path):
    tok = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=1200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    tok.save(str(path))


def train_unigram(path):
    tok = HFTokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    tok.save(str(path))


KINDS = {"bpe": train_bpe, "wordpiece": train_wordpiece, "unigram": train_unigram}


def from_threads(work, count: int = 4) -> list:
    """What `work()` returns when `count` threads call it at once (one shared tokenizer under test)."""
    results = [None] * count

    def run(k):
        results[k] = work()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
