"""Dataset adapters: preference datasets in their published schemas -> one `PreferenceSet` of
(prompt, chosen, rejected) text triples with a category and a dimension per pair.

    from guard.adapters import CategoryMap, PKU_SAFERLHF_CATEGORIES, load_preferences

    hh = load_preferences("Anthropic/hh-rlhf", data_dir="harmless-base")            # category "harmless"
    pku = load_preferences("PKU-Alignment/PKU-SafeRLHF", dimensions=["harmless"])     # 19 harm categories
    uf = load_preferences("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs", chat_template=tok)
    mine = load_preferences("pairs.jsonl")                                            # prompt/chosen/rejected

    cmap = CategoryMap.from_labels(pku.categories, order=PKU_SAFERLHF_CATEGORIES)
    cmap.save(run_dir / "categories.json")
    ids = pku.category_ids(cmap)                  # int64 numpy array, one id per pair
    print(len(pku), pku.dropped)                  # every removed pair is counted by reason

Everything goes through `datasets.load_dataset(source, name, split=split, data_files=data_files, ...)`:
a hub name, a local folder or a builder name ("json", "parquet", "csv") with `data_files` is passed on
unchanged; a path to a single file is turned into its builder plus `data_files=path` (load_dataset
cannot open a bare file). `adapt(dataset, ...)` does the same work on an already loaded
`datasets.Dataset` / `IterableDataset`. Tokenization, dedup and packing happen later, in guard.data.

Schemas (`schema="auto"` picks one from the column names; the first that fits, in this order):

- "pku_saferlhf"  PKU-Alignment/PKU-SafeRLHF: prompt, response_0/1, better_response_id,
                  safer_response_id, response_{0,1}_harm_category (19 named bools). Up to two pairs per
                  row: dimension "helpful" (better_response_id) and "harmless" (safer_response_id).
                  Category: the first harm category, in PKU's canonical order
                  (`PKU_SAFERLHF_CATEGORIES`), flagged on the pair's rejected response, else on its
                  chosen response; a pair neither of whose responses flags one is dropped ("missing
                  category": it has no place in a per-category fairness objective). Data without the
                  harm-category columns (PKU-SafeRLHF v0) gives category None and drops nothing for it.
- "ultrafeedback" openbmb/UltraFeedback: instruction, completions[{response, annotations}]. One pair per
                  aspect (helpfulness, honesty, instruction_following, truthfulness): the first
                  completion with the highest rating against the first with the lowest; "N/A" ratings
                  are left out; all equal or fewer than two rated -> "tie"; fewer than two completions
                  -> "single response".
- "helpsteer2"    nvidia/HelpSteer2: prompt, response, helpfulness, correctness, coherence, complexity,
                  verbosity; one response per row. Rows are grouped by identical prompt text (wherever
                  they are in the file); per group and attribute the first response with the highest
                  score is chosen over the first with the lowest; all equal -> "tie"; a prompt with one
                  response -> "single response". "Higher is preferred" for every attribute, verbosity
                  and complexity included: each column is one preference dimension as SPO treats it;
                  pick the dimensions you want with `dimensions=`.
- "ultrafeedback_binarized"  HuggingFaceH4/ultrafeedback_binarized (splits train_prefs, test_prefs):
                  prompt, chosen/rejected as full conversations, score_chosen/score_rejected. The prompt is
                  the conversation before the final assistant message, rendered with the chat template;
                  equal scores -> "tie".
- "hh_rlhf"       Anthropic/hh-rlhf (string chosen/rejected, no prompt column): transcripts "\\n\\nHuman: ... \\n\\nAssistant: ...".
                  Prompt: the transcript up to and including the last "\\n\\nAssistant:"; response: the
                  rest, so prompt + response is the transcript byte for byte (the response keeps the
                  space after "Assistant:", as TRL's HH processing does; with a chat template the
                  prompt is rendered and that space is dropped). The two prompts must be equal
                  ("prompts differ"); no "\\n\\nAssistant:" -> "no assistant turn". Category from the
                  subset (`hh_category`): helpful-* -> "helpful", harmless-base -> "harmless", read from
                  `category=`, then `data_dir=`, `name`, `data_files`, then the source path.
                  `data_files` from several subsets are loaded file by file so that each pair keeps its
                  own category.
- "generic"       prompt, chosen, rejected [, category] [, dimension] as strings, or TRL's conversational
                  form: prompt a list of {"role", "content"} messages and chosen/rejected the assistant
                  turn(s) that follow; without a prompt column chosen/rejected are whole conversations
                  (TRL's implicit prompt). Rows whose dimension is not in `dimensions=` are counted as
                  "dimension not selected".

Chat templates. `chat_template` is a callable(messages) -> str or a transformers tokenizer (anything
with `apply_chat_template`, called with tokenize=False, add_generation_prompt=True). Message-list
prompts need one ("conversational data needs a chat template: pass chat_template=..."). When one is
given, plain-string prompts (PKU, UltraFeedback, HelpSteer2, generic strings) are rendered as a single
user message and HH transcripts turn by turn ("Human" -> user, "Assistant" -> assistant); without one
they stay the text they are. Responses are never templated: they are the assistant message's content.

Checks, in this order, on every candidate pair; the first that fails names the drop reason:
    a field of the wrong type                 -> ValueError "row i: field X is not a string (got T)"
    "dimension not selected" (generic), "single response", "tie", "missing category",
    "no assistant turn", "prompts differ"     -> schema-specific drops
    "empty response"                          -> a chosen or rejected response that is empty or whitespace
    "identical responses"                     -> chosen == rejected

Accounting. A "candidate" is one pair a schema could produce: one per input row (hh_rlhf,
ultrafeedback_binarized, generic), one per (row, dimension) (pku_saferlhf, ultrafeedback), one per
(prompt group, dimension) (helpsteer2). For the set `load_preferences` returns,
    len(set) + sum(set.dropped.values()) == set.n_candidates
and `n_input` is the number of rows read. `source_rows[k]` is the input row of pair k (for HelpSteer2,
the row of the chosen response).
"""

from guard.adapters.fields import NeedsChatTemplate
from guard.adapters.helpsteer2 import HELPSTEER2_ATTRIBUTES
from guard.adapters.hh_rlhf import HH_RLHF_SUBSETS, hh_category
from guard.adapters.files import DataFileError
from guard.adapters.loading import UnknownSchema, adapt, detect_schema, load_preferences
from guard.adapters.pairs import (
    DIMENSION_NOT_SELECTED,
    EMPTY_RESPONSE,
    IDENTICAL_RESPONSES,
    MISSING_CATEGORY,
    NO_ASSISTANT_TURN,
    PROMPTS_DIFFER,
    SCHEMAS,
    SINGLE_RESPONSE,
    TIE,
    CategoryMap,
    PreferenceSet,
    RowError,
    index_list,
)
from guard.adapters.pku_saferlhf import PKU_SAFERLHF_CATEGORIES, PKU_SAFERLHF_DIMENSIONS
from guard.adapters.ultrafeedback import ULTRAFEEDBACK_ASPECTS

__all__ = [
    "DIMENSION_NOT_SELECTED", "EMPTY_RESPONSE", "HELPSTEER2_ATTRIBUTES", "HH_RLHF_SUBSETS", "IDENTICAL_RESPONSES",
    "MISSING_CATEGORY", "NO_ASSISTANT_TURN", "PKU_SAFERLHF_CATEGORIES", "PKU_SAFERLHF_DIMENSIONS", "PROMPTS_DIFFER",
    "SCHEMAS", "SINGLE_RESPONSE", "TIE", "ULTRAFEEDBACK_ASPECTS", "CategoryMap", "DataFileError", "NeedsChatTemplate",
    "PreferenceSet", "RowError", "UnknownSchema", "adapt", "detect_schema", "hh_category", "index_list", "load_preferences",
]
