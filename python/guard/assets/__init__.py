"""guard's bundled assets for the default job (`python -m guard.train` with no arguments).

    from guard.assets import SAMPLE_PAIRS, TOKENIZER, TINY_LLAMA
    prefs = guard.adapters.load_preferences(str(SAMPLE_PAIRS))   # 4000 pairs, categories helpful/harmless

The files are written by `python -m guard.assets.make_assets` (deterministic; see README.md here).
"""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
SAMPLE_PAIRS = ASSETS_DIR / "sample_pairs.jsonl"  # preference pairs, guard's "generic" schema
TOKENIZER = ASSETS_DIR / "tokenizer.json"  # a word-level Hugging Face tokenizer trained on the sample
TINY_LLAMA = ASSETS_DIR / "tiny-llama.json"  # LlamaConfig kwargs (all but vocab_size) of the "tiny" preset

__all__ = ["ASSETS_DIR", "SAMPLE_PAIRS", "TOKENIZER", "TINY_LLAMA"]
