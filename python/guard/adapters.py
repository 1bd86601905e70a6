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

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np

SCHEMAS = ("auto", "hh_rlhf", "pku_saferlhf", "ultrafeedback_binarized", "ultrafeedback", "helpsteer2", "generic")

# PKU-SafeRLHF's 19 harm categories, in the order of the dataset card (ids 0..18).
PKU_SAFERLHF_CATEGORIES = (
    "Endangering National Security",
    "Insulting Behavior",
    "Discriminatory Behavior",
    "Endangering Public Health",
    "Copyright Issues",
    "Violence",
    "Drugs",
    "Privacy Violation",
    "Economic Crime",
    "Mental Manipulation",
    "Human Trafficking",
    "Physical Harm",
    "Sexual Content",
    "Cybercrime",
    "Disrupting Public Order",
    "Environmental Damage",
    "Psychological Harm",
    "White-Collar Crime",
    "Animal Abuse",
)
PKU_SAFERLHF_DIMENSIONS = ("helpful", "harmless")
ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
# Anthropic/hh-rlhf preference subsets (folder names) -> category. red-team-attempts has another schema.
HH_RLHF_SUBSETS = {
    "helpful-base": "helpful",
    "helpful-online": "helpful",
    "helpful-rejection-sampled": "helpful",
    "harmless-base": "harmless",
}

# Drop reasons (the keys of PreferenceSet.dropped).
DIMENSION_NOT_SELECTED = "dimension not selected"
SINGLE_RESPONSE = "single response"
TIE = "tie"
MISSING_CATEGORY = "missing category"
NO_ASSISTANT_TURN = "no assistant turn"
PROMPTS_DIFFER = "prompts differ"
EMPTY_RESPONSE = "empty response"
IDENTICAL_RESPONSES = "identical responses"

_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_FILE_BUILDERS = {
    ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
    ".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv", ".arrow": "arrow",
}


# ----------------------------------------------------------------------------------------------------
# Category ids


class CategoryMap:
    """A fixed, ordered list of category names; a name's id is its position.

    Build it once (`from_labels` on the training set, or an explicit order such as
    `PKU_SAFERLHF_CATEGORIES`), save it beside the run, and load it for evaluation so ids never shift.
    """

    def __init__(self, names: Iterable[str]):
        names = tuple(names)
        for k, name in enumerate(names):
            if not isinstance(name, str):
                raise ValueError(f"category name {k} is not a string (got {type(name).__name__})")
        index = {name: k for k, name in enumerate(names)}
        if len(index) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"category names repeat: {dupes}")
        self._names = names
        self._index = index

    @classmethod
    def from_labels(cls, labels: Iterable[str | None], order: Sequence[str] | None = None) -> CategoryMap:
        """Sorted unique labels (None entries skipped), or `order` as given, which must cover every label."""
        seen = {label for label in labels if label is not None}
        if order is None:
            bad = [label for label in seen if not isinstance(label, str)]
            if bad:
                raise ValueError(f"category labels must be strings (got {type(bad[0]).__name__})")
            return cls(sorted(seen))
        cmap = cls(order)
        missing = sorted(str(label) for label in seen if label not in cmap._index)
        if missing:
            raise ValueError(f"labels not in the given order: {missing}")
        return cmap

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CategoryMap) and other._names == self._names

    def __hash__(self) -> int:
        return hash(self._names)

    def __repr__(self) -> str:
        return f"CategoryMap({list(self._names)!r})"

    def id(self, label: str) -> int:
        return int(self.ids([label])[0])

    def ids(self, labels: Iterable[str | None]) -> np.ndarray:
        """int64 ids, one per label; an unknown or missing label raises ValueError naming its row."""
        labels = list(labels)
        out = np.empty(len(labels), dtype=np.int64)
        for row, label in enumerate(labels):
            k = self._index.get(label) if isinstance(label, str) else None
            if k is None:
                raise ValueError(f"row {row}: unknown category {label!r}; known: {_preview(self._names)}")
            out[row] = k
        return out

    def to_dict(self) -> dict[str, int]:
        return dict(self._index)

    def save(self, path: str | os.PathLike) -> None:
        """Write the map as JSON (through a temporary name, then renamed)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"format": "guard.CategoryMap", "version": 1, "names": list(self._names)}, f,
                      indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CategoryMap:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != "guard.CategoryMap" or not isinstance(
            data.get("names"), list
        ):
            raise ValueError(f"{os.fspath(path)} is not a saved guard CategoryMap")
        return cls(data["names"])


def _preview(names: Sequence[Any], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"


# ----------------------------------------------------------------------------------------------------
# The common output


def index_list(indices: Iterable[int] | np.ndarray, n: int) -> list[int]:
    """The positions `indices` picks from a set of n items: integers as they are, or a boolean mask of length n."""
    idx = np.asarray(indices if not isinstance(indices, range) else list(indices))
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"boolean mask has shape {idx.shape}, expected ({n},)")
        idx = np.flatnonzero(idx)
    elif idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be integers or a boolean mask (got dtype {idx.dtype})")
    return [int(k) for k in idx.reshape(-1)]


@dataclass
class PreferenceSet:
    """Parallel lists of preference pairs plus where they came from and what was left out.

    prompts[k] + chosen[k] / prompts[k] + rejected[k] are the two texts of pair k; categories[k] and
    dimensions[k] are None where the schema has none. `dropped` maps a reason to the number of
    candidate pairs removed for it; `n_input` rows were read and `n_candidates` pairs considered, with
    len(self) + sum(dropped.values()) == n_candidates (see the module docstring). `select` and
    `by_dimension` keep `dropped`, `n_input` and `n_candidates` of the load they came from.
    """

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    categories: list[str | None] | None = None
    dimensions: list[str | None] | None = None
    source_rows: list[int] | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    n_input: int | None = None
    n_candidates: int | None = None
    schema: str = "generic"

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if self.categories is None:
            self.categories = [None] * n
        if self.dimensions is None:
            self.dimensions = [None] * n
        if self.source_rows is None:
            self.source_rows = list(range(n))
        for name in ("chosen", "rejected", "categories", "dimensions", "source_rows"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PreferenceSet: {name} has {len(getattr(self, name))} entries, prompts {n}")
        if self.n_candidates is None:
            self.n_candidates = n + sum(self.dropped.values())
        if self.n_input is None:
            self.n_input = self.n_candidates

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return (f"PreferenceSet(schema={self.schema!r}, pairs={len(self)}, n_input={self.n_input}, "
                f"dropped={self.dropped})")

    @property
    def dimension_names(self) -> list[str]:
        """The dimensions present, in order of first appearance (None left out)."""
        return list(dict.fromkeys(d for d in self.dimensions if d is not None))

    def select(self, indices: Iterable[int] | np.ndarray) -> PreferenceSet:
        """The pairs at `indices` (ints, or a boolean mask of length len(self)), in that order."""
        picked = index_list(indices, len(self))

        def take(xs: list) -> list:
            return [xs[k] for k in picked]

        return PreferenceSet(
            prompts=take(self.prompts), chosen=take(self.chosen), rejected=take(self.rejected),
            categories=take(self.categories), dimensions=take(self.dimensions),
            source_rows=take(self.source_rows), dropped=dict(self.dropped), n_input=self.n_input,
            n_candidates=self.n_candidates, schema=self.schema,
        )

    def by_dimension(self, name: str) -> PreferenceSet:
        """The pairs of one dimension (e.g. "harmless", "helpfulness"); ValueError if there are none."""
        keep = [k for k, d in enumerate(self.dimensions) if d == name]
        if not keep:
            raise ValueError(f"no pairs with dimension {name!r}; present: {self.dimension_names}")
        return self.select(keep)

    def category_map(self) -> CategoryMap:
        """PKU's canonical 19 for PKU-SafeRLHF, else the sorted unique categories present."""
        if self.schema == "pku_saferlhf":
            return CategoryMap.from_labels(self.categories, order=PKU_SAFERLHF_CATEGORIES)
        return CategoryMap.from_labels(self.categories)

    def category_ids(self, mapping: CategoryMap | Mapping[str, int]) -> np.ndarray:
        """int64 category id per pair; a pair whose category is missing or unknown raises ValueError."""
        if isinstance(mapping, CategoryMap):
            return mapping.ids(self.categories)
        out = np.empty(len(self), dtype=np.int64)
        for row, label in enumerate(self.categories):
            if not isinstance(label, str) or label not in mapping:
                raise ValueError(f"row {row}: unknown category {label!r}; known: {_preview(list(mapping))}")
            out[row] = int(mapping[label])
        return out

    def to_dict(self) -> dict[str, list]:
        """Columns as a dict of lists (for `datasets.Dataset.from_dict`, pandas, json)."""
        return {"prompt": list(self.prompts), "chosen": list(self.chosen), "rejected": list(self.rejected),
                "category": list(self.categories), "dimension": list(self.dimensions),
                "source_row": list(self.source_rows)}

    @classmethod
    def concat(cls, sets: Sequence[PreferenceSet]) -> PreferenceSet:
        """One set from several loads, in order; source rows are offset as if the inputs were one table."""
        if not sets:
            return cls([], [], [], dropped={}, n_input=0, n_candidates=0)
        out = cls([], [], [], dropped={}, n_input=0, n_candidates=0,
                  schema=sets[0].schema if all(s.schema == sets[0].schema for s in sets) else "mixed")
        for s in sets:
            out.prompts += s.prompts
            out.chosen += s.chosen
            out.rejected += s.rejected
            out.categories += s.categories
            out.dimensions += s.dimensions
            out.source_rows += [r + out.n_input for r in s.source_rows]
            for reason, count in s.dropped.items():
                out.dropped[reason] = out.dropped.get(reason, 0) + count
            out.n_input += s.n_input
            out.n_candidates += s.n_candidates
        return out


# ----------------------------------------------------------------------------------------------------
# Field checks and chat templates


def _need_str(row: int, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"row {row}: field {name} is not a string (got {type(value).__name__})")
    return value


def _need_number(row: int, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"row {row}: field {name} is not a number (got {type(value).__name__})")
    if math.isnan(value):
        raise ValueError(f"row {row}: field {name} is NaN")
    return value


def _messages(row: int, name: str, value: Any) -> list[dict[str, str]]:
    """A validated copy of a message list; keys whose value is None (arrow fills absent keys) are dropped."""
    if not isinstance(value, list):
        raise ValueError(f"row {row}: field {name} is not a string or a list of messages (got {type(value).__name__})")
    out = []
    for j, msg in enumerate(value):
        if not isinstance(msg, Mapping):
            raise ValueError(f"row {row}: field {name}[{j}] is not a message dict (got {type(msg).__name__})")
        _need_str(row, f"{name}[{j}].role", msg.get("role"))
        _need_str(row, f"{name}[{j}].content", msg.get("content"))
        out.append({k: v for k, v in msg.items() if v is not None})
    return out


class NeedsChatTemplate(ValueError):
    """Conversational data (message lists) was given no chat template; `row` is the first such row."""

    def __init__(self, row: int | None):
        self.row = row
        where = f"row {row}: " if row is not None else ""
        super().__init__(f"{where}conversational data needs a chat template: pass chat_template=...")


class _Renderer:
    """Applies the user's chat template (or none) to prompts."""

    def __init__(self, chat_template: Any):
        if chat_template is None:
            self.fn: Callable[[list[dict[str, str]]], Any] | None = None
        elif hasattr(chat_template, "apply_chat_template"):
            tok = chat_template
            self.fn = lambda msgs: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        elif callable(chat_template):
            self.fn = chat_template
        else:
            raise TypeError("chat_template must be a callable(messages) -> str or an object with "
                            f"apply_chat_template (a transformers tokenizer); got {type(chat_template).__name__}")

    def require(self, row: int | None = None) -> None:
        if self.fn is None:
            raise NeedsChatTemplate(row)

    def messages(self, msgs: list[dict[str, str]], row: int | None = None) -> str:
        self.require(row)
        text = self.fn(msgs)
        if not isinstance(text, str):
            raise TypeError(f"chat_template returned {type(text).__name__}, expected str")
        return text

    def text(self, prompt: str) -> str:
        """A plain-string prompt: unchanged without a template, else one user message."""
        return prompt if self.fn is None else self.messages([{"role": "user", "content": prompt}])


def _conversation(prompt_msgs: list, chosen_msgs: list, rejected_msgs: list, render: _Renderer):
    """(prompt text, chosen, rejected) from message lists, or a drop reason."""
    full_c, full_r = prompt_msgs + chosen_msgs, prompt_msgs + rejected_msgs
    if not full_c or not full_r or full_c[-1]["role"] != "assistant" or full_r[-1]["role"] != "assistant":
        return NO_ASSISTANT_TURN
    if full_c[:-1] != full_r[:-1]:
        return PROMPTS_DIFFER
    return render.messages(full_c[:-1]), full_c[-1]["content"], full_r[-1]["content"]


# ----------------------------------------------------------------------------------------------------
# HH-RLHF


def hh_category(subset_or_path: str | os.PathLike | None) -> str | None:
    """"helpful" or "harmless" for an hh-rlhf subset name or a path through one, else None.

    The deepest path component naming a preference subset wins: "harmless-base",
    "Anthropic/hh-rlhf/helpful-online/train.jsonl.gz" -> "harmless", "helpful".
    """
    if subset_or_path is None:
        return None
    found = None
    for part in re.split(r"[\\/]", os.fspath(subset_or_path)):
        if part in HH_RLHF_SUBSETS:
            found = HH_RLHF_SUBSETS[part]
    return found


def _split_hh(text: str):
    """(prompt, response) of one HH transcript, or None without an assistant turn."""
    cut = text.rfind(_HH_ASSISTANT)
    if cut < 0:
        return None
    cut += len(_HH_ASSISTANT)
    return text[:cut], text[cut:]


def _hh_messages(prompt: str) -> list[dict[str, str]]:
    """The HH prompt (ending in "\\n\\nAssistant:") as messages, without the empty final assistant turn."""
    parts = _HH_TURN.split(prompt)
    lead, roles, texts = parts[0], parts[1::2], parts[2::2]
    msgs = [{"role": "user" if r == "Human" else "assistant", "content": t.removeprefix(" ")}
            for r, t in zip(roles, texts)]
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"].strip():
        msgs.pop()
    if lead.strip():  # text before the first "Human:" turn: keep it with the first message
        if msgs and msgs[0]["role"] == "user":
            msgs[0]["content"] = lead.strip() + "\n\n" + msgs[0]["content"]
        else:
            msgs.insert(0, {"role": "user", "content": lead.strip()})
    return msgs


def _hh_rows(rows, render: _Renderer, category: str | None, dims):
    for i, row in rows:
        chosen = _need_str(i, "chosen", row.get("chosen"))
        rejected = _need_str(i, "rejected", row.get("rejected"))
        c, r = _split_hh(chosen), _split_hh(rejected)
        if c is None or r is None:
            yield NO_ASSISTANT_TURN
            continue
        if c[0] != r[0]:
            yield PROMPTS_DIFFER
            continue
        if render.fn is None:  # raw transcript: prompt + response is the original text, byte for byte
            yield i, c[0], c[1], r[1], category, None
        else:  # templated: the template ends the prompt, so the space after "Assistant:" goes
            yield i, render.messages(_hh_messages(c[0]), i), c[1].removeprefix(" "), r[1].removeprefix(" "), category, None


# ----------------------------------------------------------------------------------------------------
# PKU-SafeRLHF


def _pku_flags(row: int, name: str, value: Any) -> list[str]:
    """Flagged harm categories of one response, in canonical order (None / absent keys = not flagged)."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise ValueError(f"row {row}: field {name} is not a dict of harm categories (got {type(value).__name__})")
    for key, flag in value.items():
        if key not in PKU_SAFERLHF_CATEGORIES:
            raise ValueError(f"row {row}: field {name} has unknown harm category {key!r}")
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(f"row {row}: field {name}[{key!r}] is not a bool (got {type(flag).__name__})")
    return [cat for cat in PKU_SAFERLHF_CATEGORIES if value.get(cat)]


def _pku_rows(rows, render: _Renderer, category: str | None, dims):
    for i, row in rows:
        prompt = _need_str(i, "prompt", row.get("prompt"))
        responses = (_need_str(i, "response_0", row.get("response_0")),
                     _need_str(i, "response_1", row.get("response_1")))
        has_categories = "response_0_harm_category" in row or "response_1_harm_category" in row
        flags = (_pku_flags(i, "response_0_harm_category", row.get("response_0_harm_category")),
                 _pku_flags(i, "response_1_harm_category", row.get("response_1_harm_category")))
        ids = {}
        for dim, col in (("helpful", "better_response_id"), ("harmless", "safer_response_id")):
            v = row.get(col)
            if isinstance(v, bool) or v not in (0, 1):
                raise ValueError(f"row {i}: field {col} must be 0 or 1 (got {v!r})")
            ids[dim] = int(v)
        rendered = None
        for dim in dims:
            win = ids[dim]
            lose = 1 - win
            cat = None
            if has_categories:
                flagged = flags[lose] or flags[win]
                if not flagged:
                    yield MISSING_CATEGORY
                    continue
                cat = flagged[0]
            if rendered is None:
                rendered = render.text(prompt)
            yield i, rendered, responses[win], responses[lose], cat, dim


# ----------------------------------------------------------------------------------------------------
# UltraFeedback (raw, fine-grained)


def _uf_rating(row: int, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.upper() in ("N/A", "NA", ""):
            return None
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"row {row}: field {name} is not a rating (got {value!r})") from None
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"row {row}: field {name} is not a rating (got {type(value).__name__})")


def _best_worst(scores: list[tuple[int, float]]):
    """(index of the first maximum, index of the first minimum), or None when all scores are equal."""
    best = max(scores, key=lambda t: t[1])  # max/min return the first of equal keys
    worst = min(scores, key=lambda t: t[1])
    return None if best[1] == worst[1] else (best[0], worst[0])


def _ultrafeedback_rows(rows, render: _Renderer, category: str | None, dims):
    for i, row in rows:
        prompt = _need_str(i, "instruction", row.get("instruction"))
        completions = row.get("completions")
        if not isinstance(completions, list):
            raise ValueError(f"row {i}: field completions is not a list (got {type(completions).__name__})")
        responses, ratings = [], []
        for k, comp in enumerate(completions):
            if not isinstance(comp, Mapping):
                raise ValueError(f"row {i}: field completions[{k}] is not a dict (got {type(comp).__name__})")
            responses.append(_need_str(i, f"completions[{k}].response", comp.get("response")))
            notes = comp.get("annotations") or {}
            per = {}
            for aspect in dims:
                note = notes.get(aspect) if isinstance(notes, Mapping) else None
                value = note.get("Rating") if isinstance(note, Mapping) else None
                per[aspect] = _uf_rating(i, f"completions[{k}].annotations.{aspect}.Rating", value)
            ratings.append(per)
        rendered = None
        for aspect in dims:
            if len(completions) < 2:
                yield SINGLE_RESPONSE
                continue
            rated = [(k, r[aspect]) for k, r in enumerate(ratings) if r[aspect] is not None]
            pick = _best_worst(rated) if len(rated) >= 2 else None
            if pick is None:
                yield TIE
                continue
            if rendered is None:
                rendered = render.text(prompt)
            yield i, rendered, responses[pick[0]], responses[pick[1]], category, aspect


# ----------------------------------------------------------------------------------------------------
# HelpSteer2


def _helpsteer2_rows(rows, render: _Renderer, category: str | None, dims):
    groups: dict[str, list[tuple[int, str, dict[str, float]]]] = {}
    for i, row in rows:
        prompt = _need_str(i, "prompt", row.get("prompt"))
        response = _need_str(i, "response", row.get("response"))
        scores = {d: _need_number(i, d, row.get(d)) for d in dims}
        groups.setdefault(prompt, []).append((i, response, scores))
    for prompt, members in groups.items():
        rendered = None
        for dim in dims:
            if len(members) < 2:
                yield SINGLE_RESPONSE
                continue
            pick = _best_worst([(k, m[2][dim]) for k, m in enumerate(members)])
            if pick is None:
                yield TIE
                continue
            if rendered is None:
                rendered = render.text(prompt)
            win, lose = members[pick[0]], members[pick[1]]
            yield win[0], rendered, win[1], lose[1], category, dim


# ----------------------------------------------------------------------------------------------------
# UltraFeedback binarized and generic files


def _turns(row: int, name: str, value: Any, role: str) -> list[dict[str, str]]:
    """A message list as is; a plain string as one message of `role`."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return _messages(row, name, value)


def _ultrafeedback_binarized_rows(rows, render: _Renderer, category: str | None, dims):
    for i, row in rows:
        score_c = _need_number(i, "score_chosen", row.get("score_chosen"))
        score_r = _need_number(i, "score_rejected", row.get("score_rejected"))
        chosen, rejected = row.get("chosen"), row.get("rejected")
        if isinstance(chosen, str) and isinstance(rejected, str):  # a flattened copy: prompt column + strings
            prompt = _need_str(i, "prompt", row.get("prompt"))
            if score_c == score_r:
                yield TIE
                continue
            yield i, render.text(prompt), chosen, rejected, category, None
            continue
        render.require(i)
        cm, rm = _turns(i, "chosen", chosen, "assistant"), _turns(i, "rejected", rejected, "assistant")
        if score_c == score_r:
            yield TIE
            continue
        # The published rows hold whole conversations (user turn included); a bare assistant reply
        # answers the prompt column.
        if len(cm) > 1 or len(rm) > 1:
            pm = []
        else:
            pm = [{"role": "user", "content": _need_str(i, "prompt", row.get("prompt"))}]
        out = _conversation(pm, cm, rm, render)
        yield out if isinstance(out, str) else (i, *out, category, None)


def _generic_rows(rows, render: _Renderer, category: str | None, dims):
    for i, row in rows:
        dim = row.get("dimension")
        if dim is not None:
            _need_str(i, "dimension", dim)
        cat = row.get("category", category)
        if cat is not None:
            _need_str(i, "category", cat)
        prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
        has_prompt = "prompt" in row
        conversational = any(isinstance(v, list) for v in (prompt, chosen, rejected)) or not has_prompt
        if conversational:
            for name, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
                if (name != "prompt" or has_prompt) and not isinstance(v, (str, list)):
                    raise ValueError(f"row {i}: field {name} is not a string (got {type(v).__name__})")
            if not has_prompt:
                for name, v in (("chosen", chosen), ("rejected", rejected)):
                    if not isinstance(v, list):
                        raise ValueError(f"row {i}: field {name} is not a list of messages (data without a "
                                         "prompt column must hold whole conversations)")
            render.require(i)
            pm = _turns(i, "prompt", prompt, "user") if has_prompt else []
            cm = _turns(i, "chosen", chosen, "assistant")
            rm = _turns(i, "rejected", rejected, "assistant")
        else:
            _need_str(i, "prompt", prompt)
            _need_str(i, "chosen", chosen)
            _need_str(i, "rejected", rejected)
        if dims is not None and dim not in dims:
            yield DIMENSION_NOT_SELECTED
            continue
        if conversational:
            out = _conversation(pm, cm, rm, render)
            yield out if isinstance(out, str) else (i, *out, cat, dim)
        else:
            yield i, render.text(prompt), chosen, rejected, cat, dim


_ADAPTERS = {
    "hh_rlhf": _hh_rows,
    "pku_saferlhf": _pku_rows,
    "ultrafeedback": _ultrafeedback_rows,
    "helpsteer2": _helpsteer2_rows,
    "ultrafeedback_binarized": _ultrafeedback_binarized_rows,
    "generic": _generic_rows,
}
# Each schema's dimensions (None: the schema has none; generic reads a column).
_DIMENSIONS = {"pku_saferlhf": PKU_SAFERLHF_DIMENSIONS, "ultrafeedback": ULTRAFEEDBACK_ASPECTS,
               "helpsteer2": HELPSTEER2_ATTRIBUTES}


# ----------------------------------------------------------------------------------------------------
# Schema detection, loading, adapting


def _columns(dataset: Any) -> list[str]:
    cols = getattr(dataset, "column_names", None)
    if cols is None:  # an IterableDataset with unknown features: look at the first row
        first = next(iter(dataset), None)
        cols = list(first) if first is not None else []
    return list(cols)


def _is_text_column(dataset: Any, column: str) -> bool | None:
    """True / False when the column is known to hold strings / something else; None if unknown."""
    import datasets

    features = getattr(dataset, "features", None)
    if features is not None and column in features:
        feat = features[column]
        return isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string")
    first = next(iter(dataset), None)
    return None if first is None else isinstance(first.get(column), str)


def detect_schema(dataset: Any) -> str:
    """The schema name whose columns `dataset` (a datasets.Dataset or IterableDataset) has."""
    cols = set(_columns(dataset))
    if {"prompt", "response_0", "response_1", "better_response_id", "safer_response_id"} <= cols:
        return "pku_saferlhf"
    if {"instruction", "completions"} <= cols:
        return "ultrafeedback"
    if {"prompt", "response", *HELPSTEER2_ATTRIBUTES} <= cols:
        return "helpsteer2"
    if {"chosen", "rejected", "score_chosen", "score_rejected"} <= cols:
        return "ultrafeedback_binarized"
    if {"chosen", "rejected"} <= cols and "prompt" not in cols:
        return "generic" if _is_text_column(dataset, "chosen") is False else "hh_rlhf"
    if {"prompt", "chosen", "rejected"} <= cols:
        return "generic"
    raise ValueError(f"cannot tell the schema from the columns {sorted(cols)}; expected one of: "
                     "hh_rlhf (chosen, rejected), pku_saferlhf (prompt, response_0, response_1, "
                     "better_response_id, safer_response_id, ...), ultrafeedback_binarized (prompt, chosen, "
                     "rejected, score_chosen, score_rejected), ultrafeedback (instruction, completions), "
                     "helpsteer2 (prompt, response, " + ", ".join(HELPSTEER2_ATTRIBUTES) + "), "
                     "generic (prompt, chosen, rejected); or pass schema=")


def _iter_rows(dataset: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index, row dict) in order, read in batches (Dataset or IterableDataset)."""
    i = 0
    for batch in dataset.iter(batch_size=1024):
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        for j in range(n):
            yield i, {k: batch[k][j] for k in keys}
            i += 1


def adapt(dataset: Any, schema: str = "auto", *, chat_template: Any = None,
          dimensions: Sequence[str] | None = None, category: str | None = None) -> PreferenceSet:
    """A loaded `datasets.Dataset` / `IterableDataset` -> PreferenceSet (see the module docstring).

    category: a label for every pair of a schema that has no category of its own (hh_rlhf, ultrafeedback,
    ultrafeedback_binarized, helpsteer2, generic data without a category column).
    """
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}; expected one of {SCHEMAS}")
    if schema == "auto":
        schema = detect_schema(dataset)
    if category is not None:
        if not isinstance(category, str):
            raise ValueError(f"category must be a string (got {type(category).__name__})")
        if schema == "pku_saferlhf":
            raise ValueError("pku_saferlhf takes its categories from the data; category= is not accepted")
        if schema == "generic" and "category" in _columns(dataset):
            raise ValueError("the data has a category column; category= is not accepted")
    dims = _resolve_dimensions(schema, dimensions, dataset)
    render = _Renderer(chat_template)

    counter = {"rows": 0}

    def rows():
        for i, row in _iter_rows(dataset):
            counter["rows"] = i + 1
            yield i, row

    out = PreferenceSet([], [], [], dropped={}, n_input=0, n_candidates=0, schema=schema)
    dropped: dict[str, int] = {}
    n_candidates = 0
    for item in _ADAPTERS[schema](rows(), render, category, dims):
        n_candidates += 1
        if isinstance(item, str):
            dropped[item] = dropped.get(item, 0) + 1
            continue
        row, prompt, chosen, rejected, cat, dim = item
        if not chosen.strip() or not rejected.strip():
            dropped[EMPTY_RESPONSE] = dropped.get(EMPTY_RESPONSE, 0) + 1
            continue
        if chosen == rejected:
            dropped[IDENTICAL_RESPONSES] = dropped.get(IDENTICAL_RESPONSES, 0) + 1
            continue
        out.prompts.append(prompt)
        out.chosen.append(chosen)
        out.rejected.append(rejected)
        out.categories.append(cat)
        out.dimensions.append(dim)
        out.source_rows.append(row)
    out.dropped = dropped
    out.n_input = counter["rows"]
    out.n_candidates = n_candidates
    return out


def _resolve_dimensions(schema: str, dimensions: Sequence[str] | None, dataset: Any):
    if dimensions is not None:
        if isinstance(dimensions, str):
            dimensions = [dimensions]
        dimensions = list(dimensions)
        if not dimensions:
            raise ValueError("dimensions= is empty")
        if len(set(dimensions)) != len(dimensions):
            raise ValueError(f"dimensions repeat: {dimensions}")
    known = _DIMENSIONS.get(schema)
    if known is not None:
        if dimensions is None:
            return list(known)
        unknown = [d for d in dimensions if d not in known]
        if unknown:
            raise ValueError(f"unknown dimensions {unknown} for {schema}; expected some of {list(known)}")
        return dimensions
    if dimensions is None:
        return None
    if schema == "generic" and "dimension" in _columns(dataset):
        return dimensions
    raise ValueError(f"{schema} data has no dimensions (generic data needs a dimension column); "
                     "leave dimensions=None")


def _split_files(data_files: Any, split: str | None) -> list[str] | None:
    """The file list that `split` reads from `data_files`, or None if it is not a plain list of paths."""
    if isinstance(data_files, Mapping):
        data_files = data_files.get(split) if split in data_files else None
    if isinstance(data_files, (str, os.PathLike)):
        return [os.fspath(data_files)]
    if isinstance(data_files, (list, tuple)) and all(isinstance(f, (str, os.PathLike)) for f in data_files):
        return [os.fspath(f) for f in data_files]
    return None


def _builder_for_file(path: str) -> str:
    lower = path.lower()
    for ext in sorted(_FILE_BUILDERS, key=len, reverse=True):
        if lower.endswith(ext):
            return _FILE_BUILDERS[ext]
    raise ValueError(f"{path}: cannot tell the file format from its name; expected one of "
                     f"{sorted(_FILE_BUILDERS)}, or pass a builder name (\"json\", \"parquet\", \"csv\") "
                     "with data_files=")


def _load(source: Any, name: str | None, split: str | None, data_files: Any, load_kwargs: dict) -> Any:
    import datasets

    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isfile(source)):
        path = os.fspath(source)
        if os.path.isfile(path):
            if data_files is not None:
                raise ValueError("source is a file; do not pass data_files= as well")
            source, data_files = _builder_for_file(path), path
        else:
            source = path
    if source == "csv":
        # Text data: an empty cell is an empty string and "NA"/"None" are words, not missing values.
        load_kwargs = {"keep_default_na": False, **load_kwargs}
    ds = datasets.load_dataset(source, name, split=split, data_files=data_files, **load_kwargs)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(f"load_dataset returned several splits {list(ds)}; pass split=")
    return ds


def load_preferences(source: Any, *, schema: str = "auto", split: str | None = "train", data_files: Any = None,
                     name: str | None = None, chat_template: Any = None, dimensions: Sequence[str] | None = None,
                     category: str | None = None, **load_kwargs: Any) -> PreferenceSet:
    """Load a preference dataset through `datasets.load_dataset` and adapt it to a PreferenceSet.

    source: a hub name ("Anthropic/hh-rlhf"), a local folder, a builder name ("json", "parquet", "csv")
        used with `data_files`, a path to one .jsonl/.json/.parquet/.csv file, or an already loaded
        datasets.Dataset / IterableDataset.
    schema: one of SCHEMAS; "auto" detects it from the columns.
    split, data_files, name, **load_kwargs (data_dir=, revision=, streaming=, cache_dir=, ...): passed
        to datasets.load_dataset unchanged (split= must name one split).
    chat_template: callable(messages) -> str, or a tokenizer with apply_chat_template.
    dimensions: the dimensions to keep (PKU: "helpful", "harmless"; UltraFeedback: its four aspects;
        HelpSteer2: its five attributes; generic: values of the dimension column). None keeps all.
    category: label for every pair of a schema without categories; for hh_rlhf it overrides the subset.
    """
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}; expected one of {SCHEMAS}")
    kwargs = {"chat_template": chat_template, "dimensions": dimensions}
    if not isinstance(source, (str, os.PathLike)):  # a loaded dataset
        return adapt(source, schema, category=category, **kwargs)

    # HH-RLHF files from several subsets: one load per file, so each pair keeps its subset's category.
    files = _split_files(data_files, split)
    if category is None and schema in ("auto", "hh_rlhf") and files and len(files) > 1:
        per_file = [hh_category(f) for f in files]
        if None not in per_file and len(set(per_file)) > 1:
            parts = []
            for f, cat in zip(files, per_file):
                one = {split: f} if isinstance(data_files, Mapping) else f
                ds = _load(source, name, split, one, dict(load_kwargs))
                parts.append(adapt(ds, schema, category=cat, **kwargs))
            return PreferenceSet.concat(parts)

    ds = _load(source, name, split, data_files, dict(load_kwargs))
    if schema == "auto":
        schema = detect_schema(ds)
    if schema == "hh_rlhf" and category is None:
        category = _hh_source_category(source, name, split, data_files, load_kwargs.get("data_dir"))
    return adapt(ds, schema, category=category, **kwargs)


def _hh_source_category(source: Any, name: str | None, split: str | None, data_files: Any,
                        data_dir: Any) -> str | None:
    """The hh-rlhf subset category named by data_dir, name, data_files (if they agree) or the source path."""
    for hint in (data_dir, name):
        cat = hh_category(hint) if isinstance(hint, (str, os.PathLike)) else None
        if cat is not None:
            return cat
    files = _split_files(data_files, split)
    if files:
        cats = {hh_category(f) for f in files}
        if len(cats) == 1:
            cat = cats.pop()
            if cat is not None:
                return cat
    return hh_category(source) if isinstance(source, (str, os.PathLike)) else None
