"""guard.adapters: every schema on a small fixture in its published layout, loaded through
datasets.load_dataset from local files (never a hub), with exact prompts, responses, categories,
dimensions and drop counts; auto-detection; bad input; CategoryMap."""

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard import adapters
from guard.adapters import (
    HELPSTEER2_ATTRIBUTES,
    PKU_SAFERLHF_CATEGORIES,
    CategoryMap,
    PreferenceSet,
    adapt,
    detect_schema,
    hh_category,
    load_preferences,
)
from dataset_fixtures import FIXTURES, A, H, _offline_and_private_cache, template  # noqa: F401 (autouse)

HH = FIXTURES / "hh-rlhf"


class FakeTokenizer:
    """Stands in for a transformers tokenizer: records how apply_chat_template is called."""

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, **kwargs):
        self.calls.append(kwargs)
        return template(messages)


def accounting_holds(s: PreferenceSet) -> bool:
    return len(s) + sum(s.dropped.values()) == s.n_candidates


def as_pairs(s: PreferenceSet):
    return list(zip(s.prompts, s.chosen, s.rejected, s.categories, s.dimensions, s.source_rows))


# ----------------------------------------------------------------------------------------------------
# HH-RLHF


def test_hh_helpful_base_from_local_folder():
    s = load_preferences(str(HH / "helpful-base"))
    assert s.schema == "hh_rlhf" and s.n_input == 4
    fruit = H + "What are some fruits that are in season in winter?" + A
    egg = H + "How do I boil an egg?" + A + " Put it in a pot of boiling water. Do you like it soft or hard?" + \
        H + "Hard, please." + A
    assert as_pairs(s) == [
        (fruit, " Citrus fruits such as oranges, grapefruit and clementines are at their best in winter.",
         " Bananas.", "helpful", None, 0),
        (egg, " Boil it for about ten minutes, then cool it in cold water.", " Ten seconds is enough.",
         "helpful", None, 1),
    ]
    assert s.dropped == {"prompts differ": 1, "identical responses": 1}
    assert accounting_holds(s) and s.n_candidates == s.n_input


def test_hh_harmless_base_drops_and_transcript_kept_byte_for_byte():
    s = load_preferences(str(HH / "harmless-base"))
    assert s.categories == ["harmless", "harmless"]
    assert s.source_rows == [0, 3]
    assert s.prompts[1] == H + "Say something nice." + A
    assert s.chosen[1] == "   You are doing great."  # the three spaces of the file, kept
    raw = [json.loads(line) for line in (HH / "harmless-base" / "train.jsonl").read_text().splitlines()]
    assert s.prompts[1] + s.chosen[1] == raw[3]["chosen"]  # prompt + response is the transcript
    assert s.dropped == {"no assistant turn": 1, "empty response": 1}
    assert accounting_holds(s)


def test_hh_split_and_data_dir_category_and_explicit_category():
    s = load_preferences(str(HH / "helpful-base"), split="test")
    assert (s.chosen, s.categories) == ([" Red is a primary color."], ["helpful"])
    # The hub form: a repository (here a local folder) plus data_dir naming the subset.
    s = load_preferences(str(HH), data_dir="harmless-base")
    assert s.categories == ["harmless", "harmless"]
    s = load_preferences(str(HH / "harmless-base"), category="red team")
    assert s.categories == ["red team", "red team"]


def test_hh_data_files_from_two_subsets_keep_their_categories():
    files = [str(HH / "helpful-base" / "train.jsonl"), str(HH / "harmless-base" / "train.jsonl")]
    s = load_preferences("json", data_files=files)
    assert s.categories == ["helpful", "helpful", "harmless", "harmless"]
    assert s.source_rows == [0, 1, 4, 7]  # rows as if the two files were one table
    assert s.n_input == 8 and s.n_candidates == 8 and accounting_holds(s)
    assert s.dropped == {"prompts differ": 1, "identical responses": 1, "no assistant turn": 1, "empty response": 1}
    # The dict form of data_files, and one subset only.
    s = load_preferences("json", data_files={"train": files[1]})
    assert s.categories == ["harmless", "harmless"]


def test_hh_category_names():
    assert hh_category("harmless-base") == "harmless"
    assert hh_category("helpful-online") == "helpful"
    assert hh_category("helpful-rejection-sampled") == "helpful"
    assert hh_category("Anthropic/hh-rlhf/helpful-base/train.jsonl.gz") == "helpful"
    assert hh_category(Path("data") / "harmless-base" / "test.jsonl.gz") == "harmless"
    assert hh_category("x/harmless-base/y/helpful-base/train.jsonl") == "helpful"  # the deepest wins
    assert hh_category("Anthropic/hh-rlhf") is None
    assert hh_category("red-team-attempts") is None
    assert hh_category("harmless-based") is None
    assert hh_category(None) is None


def test_hh_with_chat_template_renders_turns():
    tok = FakeTokenizer()
    s = load_preferences(str(HH / "helpful-base"), chat_template=tok)
    assert s.prompts == [
        "<|user|>What are some fruits that are in season in winter?<|assistant|>",
        ("<|user|>How do I boil an egg?<|assistant|>Put it in a pot of boiling water. Do you like it soft or "
         "hard?<|user|>Hard, please.<|assistant|>"),
    ]
    assert s.chosen[0].startswith("Citrus")
    assert tok.calls and all(c == {"tokenize": False, "add_generation_prompt": True} for c in tok.calls)


# ----------------------------------------------------------------------------------------------------
# PKU-SafeRLHF


def test_pku_two_dimensions_and_category_rule():
    s = load_preferences(str(FIXTURES / "pku_saferlhf.jsonl"))
    assert s.schema == "pku_saferlhf" and s.n_input == 5 and s.n_candidates == 10
    revenge = "How can I get back at my neighbor for parking in my spot?"
    slash = "You could slash his tires at night so he learns his lesson."
    talk = "Talk to your neighbor calmly, or ask your landlord to mark the spots."
    ex = "How do I find out where my ex lives now?"
    search = "Search public property records and social media check-ins to find her new address."
    insult = "She is probably a loser anyway, why bother? Just hack her email account and read it."
    cats = "What should I do with the stray cats in my yard?"
    poison = "Poison them; nobody will notice."
    threat = "Tell the government it is a national emergency and threaten officials until they act."
    assert as_pairs(s) == [
        # rejected is safe: the chosen response's first flagged category, canonical order (Violence < Physical Harm)
        (revenge, slash, talk, "Violence", "helpful", 0),
        (revenge, talk, slash, "Violence", "harmless", 0),
        # the rejected response's first flagged category wins
        (ex, insult, search, "Privacy Violation", "helpful", 1),
        (ex, search, insult, "Insulting Behavior", "harmless", 1),
        (cats, poison, threat, "Endangering National Security", "helpful", 4),
        (cats, poison, threat, "Endangering National Security", "harmless", 4),
    ]
    # row 2: neither response flags a category (both pairs); row 3: response_1 is empty (both pairs)
    assert s.dropped == {"missing category": 2, "empty response": 2}
    assert accounting_holds(s)
    ids = s.category_ids(s.category_map())
    assert ids.dtype == np.int64 and ids.tolist() == [5, 5, 7, 1, 0, 0]
    assert s.category_map().names == PKU_SAFERLHF_CATEGORIES


def test_pku_dimension_filter_and_by_dimension():
    s = load_preferences(str(FIXTURES / "pku_saferlhf.jsonl"), dimensions=["harmless"])
    assert s.dimensions == ["harmless"] * 3 and s.n_candidates == 5 and accounting_holds(s)
    assert s.dropped == {"missing category": 1, "empty response": 1}
    both = load_preferences(str(FIXTURES / "pku_saferlhf.jsonl"))
    harmless = both.by_dimension("harmless")
    assert as_pairs(harmless) == as_pairs(s)
    assert harmless.n_input == both.n_input and harmless.dropped == both.dropped  # provenance kept
    with pytest.raises(ValueError, match="no pairs with dimension 'helpfulness'"):
        both.by_dimension("helpfulness")
    with pytest.raises(ValueError, match=r"unknown dimensions \['safety'\] for pku_saferlhf"):
        load_preferences(str(FIXTURES / "pku_saferlhf.jsonl"), dimensions=["safety"])


def pku_row(**overrides):
    row = {"prompt": "p", "response_0": "a", "response_1": "b", "is_response_0_safe": False,
           "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 1,
           "response_0_harm_category": {c: c == "Drugs" for c in PKU_SAFERLHF_CATEGORIES},
           "response_1_harm_category": {c: False for c in PKU_SAFERLHF_CATEGORIES},
           "response_0_severity_level": 1, "response_1_severity_level": 0}
    row.update(overrides)
    return row


def test_pku_bad_rows():
    ok = adapt(datasets.Dataset.from_list([pku_row()]))
    assert ok.categories == ["Drugs", "Drugs"] and ok.chosen == ["a", "b"]
    with pytest.raises(ValueError, match=r"row 0: field better_response_id must be 0 or 1 \(got 2\)"):
        adapt(datasets.Dataset.from_list([pku_row(better_response_id=2)]))
    with pytest.raises(ValueError, match=r"row 1: field response_1 is not a string \(got NoneType\)"):
        adapt(datasets.Dataset.from_list([pku_row(), pku_row(response_1=None)]))
    with pytest.raises(ValueError, match="unknown harm category 'Arson'"):
        adapt(datasets.Dataset.from_list([pku_row(response_1_harm_category={"Arson": True})]),
              schema="pku_saferlhf")
    with pytest.raises(ValueError, match="takes its categories from the data"):
        adapt(datasets.Dataset.from_list([pku_row()]), category="x")
    # PKU-SafeRLHF v0 has no harm-category columns: categories are None, nothing dropped for it.
    v0 = [{k: v for k, v in pku_row().items() if "harm_category" not in k}]
    s = adapt(datasets.Dataset.from_list(v0), schema="pku_saferlhf")
    assert s.categories == [None, None] and s.dropped == {}


# ----------------------------------------------------------------------------------------------------
# UltraFeedback binarized


def ufb_rows():
    def conv(*turns):
        return [{"role": r, "content": c} for r, c in turns]

    return [
        {"prompt": "What is 2 + 2?", "prompt_id": "a1",
         "chosen": conv(("user", "What is 2 + 2?"), ("assistant", "4")),
         "rejected": conv(("user", "What is 2 + 2?"), ("assistant", "5")),
         "messages": conv(("user", "What is 2 + 2?"), ("assistant", "4")),
         "score_chosen": 9.0, "score_rejected": 3.0},
        {"prompt": "Name a color.", "prompt_id": "a2",
         "chosen": conv(("user", "Hi"), ("assistant", "Hello!"), ("user", "Name a color."), ("assistant", "Blue.")),
         "rejected": conv(("user", "Hi"), ("assistant", "Hello!"), ("user", "Name a color."), ("assistant", "Seven.")),
         "messages": [], "score_chosen": 8.5, "score_rejected": 2.0},
        {"prompt": "Tie?", "prompt_id": "a3",
         "chosen": conv(("user", "Tie?"), ("assistant", "Yes.")),
         "rejected": conv(("user", "Tie?"), ("assistant", "No.")),
         "messages": [], "score_chosen": 5.0, "score_rejected": 5.0},
        {"prompt": "Which?", "prompt_id": "a4",
         "chosen": conv(("user", "Which?"), ("assistant", "This one.")),
         "rejected": conv(("user", "Which one?"), ("assistant", "That one.")),
         "messages": [], "score_chosen": 7.0, "score_rejected": 6.0},
        {"prompt": "Ends?", "prompt_id": "a5",
         "chosen": conv(("user", "Ends?"), ("assistant", "Yes.")),
         "rejected": conv(("user", "Ends?"), ("assistant", "Hm."), ("user", "Well?")),
         "messages": [], "score_chosen": 7.0, "score_rejected": 1.0},
    ]


@pytest.fixture
def ufb_parquet(tmp_path):
    path = tmp_path / "train_prefs-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(ufb_rows()), path)
    return path


def test_ultrafeedback_binarized(ufb_parquet):
    tok = FakeTokenizer()
    s = load_preferences("parquet", data_files={"train_prefs": str(ufb_parquet)}, split="train_prefs",
                         chat_template=tok)
    assert s.schema == "ultrafeedback_binarized"
    assert as_pairs(s) == [
        ("<|user|>What is 2 + 2?<|assistant|>", "4", "5", None, None, 0),
        ("<|user|>Hi<|assistant|>Hello!<|user|>Name a color.<|assistant|>", "Blue.", "Seven.", None, None, 1),
    ]
    assert s.dropped == {"tie": 1, "prompts differ": 1, "no assistant turn": 1}
    assert accounting_holds(s) and s.n_input == 5
    assert all(c == {"tokenize": False, "add_generation_prompt": True} for c in tok.calls)
    # a plain callable works the same
    s2 = load_preferences(str(ufb_parquet), chat_template=template)
    assert as_pairs(s2) == as_pairs(s)


def test_conversational_data_without_template_fails(ufb_parquet):
    with pytest.raises(ValueError, match=r"conversational data needs a chat template: pass chat_template=\.\.\."):
        load_preferences(str(ufb_parquet))
    with pytest.raises(ValueError, match="conversational data needs a chat template"):
        load_preferences(str(FIXTURES / "generic_conversational.jsonl"))
    with pytest.raises(TypeError, match="chat_template must be a callable"):
        load_preferences(str(ufb_parquet), chat_template="{{ messages }}")
    with pytest.raises(TypeError, match="chat_template returned list, expected str"):
        load_preferences(str(ufb_parquet), chat_template=lambda m: m)


def test_ultrafeedback_binarized_bad_scores():
    rows = ufb_rows()[:1]
    rows[0]["score_rejected"] = None
    with pytest.raises(ValueError, match=r"row 0: field score_rejected is not a number \(got NoneType\)"):
        adapt(datasets.Dataset.from_list(rows), chat_template=template)
    rows[0]["score_rejected"] = float("nan")
    with pytest.raises(ValueError, match="row 0: field score_rejected is NaN"):
        adapt(datasets.Dataset.from_list(rows), chat_template=template)


# ----------------------------------------------------------------------------------------------------
# UltraFeedback (raw) and HelpSteer2


def test_ultrafeedback_raw_per_aspect():
    s = load_preferences(str(FIXTURES / "ultrafeedback.jsonl"))
    assert s.schema == "ultrafeedback" and s.n_input == 3 and s.n_candidates == 12
    sky = "Explain why the sky is blue in one sentence."
    best = "Sunlight scatters off air molecules, and blue light scatters most because of its short wavelength."
    ocean, blue = "Because the ocean reflects onto it.", "The sky is blue."
    fish = "How many legs does a fish have?"
    fins, four = "Fish have no legs; they swim with fins.", "A fish has four legs."
    assert as_pairs(s) == [
        (sky, best, blue, None, "helpfulness", 0),
        (sky, best, ocean, None, "honesty", 0),  # "N/A" left out; ratings 5, 3, -, 3: the first 3 loses
        (sky, best, blue, None, "instruction_following", 0),  # 5, 4, 5, 2: the first 5 wins
        (sky, best, ocean, None, "truthfulness", 0),
        (fish, fins, four, None, "helpfulness", 1),
        (fish, fins, four, None, "truthfulness", 1),
    ]
    # row 1: honesty all N/A, instruction_following 3 vs 3; row 2: one completion, all four aspects
    assert s.dropped == {"tie": 2, "single response": 4}
    assert accounting_holds(s)
    one = load_preferences(str(FIXTURES / "ultrafeedback.jsonl"), dimensions=("truthfulness",))
    assert one.dimensions == ["truthfulness", "truthfulness"] and one.n_candidates == 3
    assert one.dropped == {"single response": 1} and accounting_holds(one)


def test_ultrafeedback_raw_bad_rating():
    row = json.loads((FIXTURES / "ultrafeedback.jsonl").read_text().splitlines()[0])
    row["completions"][2]["annotations"]["honesty"]["Rating"] = "excellent"
    with pytest.raises(ValueError, match=r"row 0: field completions\[2\]\.annotations\.honesty\.Rating is not a "
                                         r"rating \(got 'excellent'\)"):
        adapt(datasets.Dataset.from_list([row]))


def test_helpsteer2_groups_by_prompt():
    s = load_preferences(str(FIXTURES / "helpsteer2.jsonl"))
    assert s.schema == "helpsteer2" and s.n_input == 5
    assert s.n_candidates == 3 * len(HELPSTEER2_ATTRIBUTES)  # three prompts, five attributes
    hamlet = "Summarize the plot of Hamlet in two sentences."
    short = "Prince Hamlet seeks revenge on his uncle for murdering his father; nearly everyone dies."
    long = ("Hamlet is a play by Shakespeare about a Danish prince, his ghostly father, a usurping uncle, a grieving "
            "mother, and a long chain of events that ends in tragedy for the royal court.")
    mult = "What is 17 * 23?"
    assert as_pairs(s) == [
        (hamlet, short, long, None, "helpfulness", 0),
        (hamlet, short, long, None, "correctness", 0),
        (hamlet, long, short, None, "verbosity", 2),  # the higher score is preferred, verbosity too
        (mult, "17 * 23 = 391.", "17 * 23 = 401.", None, "helpfulness", 1),  # rows 1 and 4: not consecutive
        (mult, "17 * 23 = 391.", "17 * 23 = 401.", None, "correctness", 1),
    ]
    # Hamlet: coherence and complexity tie; 17 * 23: coherence, complexity, verbosity tie;
    # the synonym prompt has one response (five attributes).
    assert s.dropped == {"tie": 5, "single response": 5}
    assert accounting_holds(s)
    assert s.dimension_names == ["helpfulness", "correctness", "verbosity"]
    only = load_preferences(str(FIXTURES / "helpsteer2.jsonl"), dimensions=["verbosity"], chat_template=template)
    assert only.prompts == [f"<|user|>{hamlet}<|assistant|>"] and only.n_candidates == 3


def test_helpsteer2_bad_score():
    rows = [{"prompt": "p", "response": "r", **{a: 1 for a in HELPSTEER2_ATTRIBUTES}} for _ in range(2)]
    rows[1]["coherence"] = None
    with pytest.raises(ValueError, match=r"row 1: field coherence is not a number \(got NoneType\)"):
        adapt(datasets.Dataset.from_list(rows))
    for row in rows:
        row["coherence"] = "3"
    with pytest.raises(ValueError, match=r"row 0: field coherence is not a number \(got str\)"):
        adapt(datasets.Dataset.from_list(rows))


# ----------------------------------------------------------------------------------------------------
# Generic files


def test_generic_jsonl_with_category_and_dimension():
    s = load_preferences(str(FIXTURES / "generic.jsonl"))
    assert s.schema == "generic"
    assert as_pairs(s) == [
        ("Translate 'cat' into French.", "chat", "chien", "translation", "correctness", 0),
        ("Is 7 prime?", "Yes, 7 is prime.", "No.", "math", "correctness", 1),
        ("Describe the sea.", "Vast, blue and restless.", "Wet.", "writing", "style", 4),
    ]
    assert s.dropped == {"identical responses": 1, "empty response": 1}  # whitespace counts as empty
    assert accounting_holds(s)
    cmap = CategoryMap.from_labels(s.categories)
    assert cmap.names == ("math", "translation", "writing")
    assert s.category_ids(cmap).tolist() == [1, 0, 2]
    assert s.category_ids({"math": 10, "translation": 11, "writing": 12}).tolist() == [11, 10, 12]

    style = load_preferences(str(FIXTURES / "generic.jsonl"), dimensions=["style"])
    assert style.source_rows == [4]
    assert style.dropped == {"dimension not selected": 2, "identical responses": 1, "empty response": 1}
    assert accounting_holds(style)
    with pytest.raises(ValueError, match="data has a category column"):
        load_preferences(str(FIXTURES / "generic.jsonl"), category="x")


def test_generic_csv_keeps_empty_cells_and_na_words():
    s = load_preferences(str(FIXTURES / "generic.csv"))
    assert as_pairs(s) == [
        ("Spell 'necessary'.", "necessary", "neccessary", None, None, 0),
        ("Answer with a word: is water wet?", "Yes", "NA", None, None, 1),  # "NA" is a word here
    ]
    assert s.dropped == {"empty response": 1}
    s2 = load_preferences("csv", data_files=str(FIXTURES / "generic.csv"), category="spelling")
    assert s2.categories == ["spelling", "spelling"]


def test_generic_parquet(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["Q1", "Q2"], "chosen": ["good", "fine"], "rejected": ["bad", "fine"],
                             "category": ["a", "b"]}), path)
    s = load_preferences(str(path))
    assert as_pairs(s) == [("Q1", "good", "bad", "a", None, 0)]
    assert s.dropped == {"identical responses": 1}


def test_generic_conversational_explicit_and_implicit_prompt():
    s = load_preferences(str(FIXTURES / "generic_conversational.jsonl"), chat_template=template)
    assert as_pairs(s) == [
        ("<|user|>What color is the sky?<|assistant|>", "It is blue.", "It is green.", None, None, 0),
        ("<|system|>Answer briefly.<|user|>2 + 2?<|assistant|>4.<|user|>And 3 + 3?<|assistant|>", "6.", "7.",
         None, None, 1),
    ]
    assert s.dropped == {"no assistant turn": 1}
    s = load_preferences(str(FIXTURES / "generic_implicit.jsonl"), chat_template=template)
    assert s.schema == "generic"
    assert as_pairs(s) == [("<|user|>Name a planet.<|assistant|>", "Mars.", "The Moon.", None, None, 0)]
    assert s.dropped == {"prompts differ": 1}


def test_streaming_gives_the_same_pairs():
    eager = load_preferences(str(FIXTURES / "pku_saferlhf.jsonl"))
    lazy = load_preferences(str(FIXTURES / "pku_saferlhf.jsonl"), streaming=True)
    assert as_pairs(lazy) == as_pairs(eager) and lazy.dropped == eager.dropped and lazy.n_input == eager.n_input


# ----------------------------------------------------------------------------------------------------
# Bad input, detection, load_dataset


def test_non_string_fields_raise_with_row_and_field(tmp_path):
    """A file guard reads names the row by its 1-based line (blank lines count); a table without lines
    (a loaded Dataset, parquet, a hub dataset) by its 0-based row."""
    path = tmp_path / "null.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n'
                    '{"prompt": "a", "chosen": null, "rejected": "c"}\n')
    with pytest.raises(ValueError, match=r"^line 3: field chosen is not a string \(got NoneType\)"):
        load_preferences(str(path))
    path = tmp_path / "ints.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b", "rejected": 3}\n')
    with pytest.raises(ValueError, match=r"^line 2: field rejected is not a string \(got int\)"):
        load_preferences(str(path))  # one row's type differs from the others': still named by its line
    path = tmp_path / "hh.json"
    path.write_text('[{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a\\n\\nAssistant: c"},\n'
                    ' {"chosen": 1.5,\n  "rejected": 2.5}]\n')
    with pytest.raises(ValueError, match=r"^line 2: field chosen is not a string \(got float\)"):
        load_preferences(str(path), schema="hh_rlhf")
    path = tmp_path / "rows.parquet"
    table = datasets.Dataset.from_dict({"prompt": ["a", "a"], "chosen": ["b", "b"], "rejected": ["c", None]})
    table.to_parquet(str(path))
    with pytest.raises(ValueError, match=r"^row 1: field rejected is not a string \(got NoneType\)"):
        load_preferences(str(path))
    bad_msgs = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                                            "chosen": [{"role": "assistant", "content": None}],
                                            "rejected": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(ValueError, match=r"row 0: field chosen\[0\]\.content is not a string \(got NoneType\)"):
        adapt(bad_msgs, chat_template=template)
    cat = datasets.Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c", "category": 7}])
    with pytest.raises(ValueError, match=r"row 0: field category is not a string \(got int\)"):
        adapt(cat)


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown schema 'hh'"):
        load_preferences(str(FIXTURES / "generic.jsonl"), schema="hh")
    with pytest.raises(ValueError, match="hh_rlhf data has no dimensions"):
        load_preferences(str(HH / "harmless-base"), dimensions=["helpful"])
    with pytest.raises(ValueError, match="dimensions repeat"):
        load_preferences(str(FIXTURES / "helpsteer2.jsonl"), dimensions=["verbosity", "verbosity"])
    with pytest.raises(ValueError, match="pass split="):
        load_preferences(str(HH / "helpful-base"), split=None)
    with pytest.raises(ValueError, match="cannot tell the file format"):
        load_preferences(__file__)
    unknown = datasets.Dataset.from_list([{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=r"cannot tell the schema from the columns \['answer', 'question'\]"):
        adapt(unknown)


@pytest.mark.parametrize("path, schema", [
    (HH / "helpful-base", "hh_rlhf"),
    (FIXTURES / "pku_saferlhf.jsonl", "pku_saferlhf"),
    (FIXTURES / "ultrafeedback.jsonl", "ultrafeedback"),
    (FIXTURES / "helpsteer2.jsonl", "helpsteer2"),
    (FIXTURES / "generic.jsonl", "generic"),
    (FIXTURES / "generic.csv", "generic"),
    (FIXTURES / "generic_conversational.jsonl", "generic"),
    (FIXTURES / "generic_implicit.jsonl", "generic"),
])
def test_auto_detection(path, schema):
    if path.is_dir():
        ds = datasets.load_dataset(str(path), split="train")
    else:
        builder = {".jsonl": "json", ".csv": "csv"}[path.suffix]
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    assert detect_schema(ds) == schema


def test_ultrafeedback_binarized_detected(ufb_parquet):
    assert detect_schema(datasets.load_dataset("parquet", data_files=str(ufb_parquet), split="train")) == \
        "ultrafeedback_binarized"


def test_load_dataset_receives_the_source_unchanged(monkeypatch):
    """The real loading code: a hub name goes to datasets.load_dataset as given (answered here from a
    local fixture), and the HH subset comes from data_dir."""
    real = datasets.load_dataset
    calls = []

    def spy(path, *args, **kwargs):
        calls.append((path, args, kwargs))
        if path == "Anthropic/hh-rlhf":
            return real("json", data_files=str(HH / kwargs["data_dir"] / "train.jsonl"), split=kwargs["split"])
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    s = load_preferences("Anthropic/hh-rlhf", data_dir="harmless-base", revision="main")
    assert calls[0] == ("Anthropic/hh-rlhf", (None,),
                        {"split": "train", "data_files": None, "data_dir": "harmless-base", "revision": "main"})
    assert s.categories == ["harmless", "harmless"]

    calls.clear()
    load_preferences(str(FIXTURES / "generic.csv"), name=None)
    assert calls == [("csv", (None,), {"split": "train", "data_files": str(FIXTURES / "generic.csv"),
                                       "keep_default_na": False})]
    calls.clear()
    load_preferences(str(HH / "helpful-base"), split="test")
    assert calls == [(str(HH / "helpful-base"), (None,), {"split": "test", "data_files": None})]


def test_loaded_dataset_is_accepted_as_source():
    ds = datasets.load_dataset("json", data_files=str(FIXTURES / "generic.jsonl"), split="train")
    assert as_pairs(load_preferences(ds)) == as_pairs(load_preferences(str(FIXTURES / "generic.jsonl")))


# ----------------------------------------------------------------------------------------------------
# CategoryMap and PreferenceSet


def test_category_map_round_trip(tmp_path):
    cmap = CategoryMap.from_labels(["harmless", "helpful", None, "harmless"])
    assert cmap.names == ("harmless", "helpful") and len(cmap) == 2 and "helpful" in cmap
    assert cmap.ids(["helpful", "harmless", "helpful"]).tolist() == [1, 0, 1]
    assert cmap.ids([]).dtype == np.int64 and cmap.id("helpful") == 1
    path = tmp_path / "categories.json"
    cmap.save(path)
    assert json.loads(path.read_text())["names"] == ["harmless", "helpful"]
    assert CategoryMap.load(path) == cmap
    assert not any(p.name != "categories.json" for p in tmp_path.iterdir())  # no temporary left behind

    pku = CategoryMap.from_labels(["Drugs", "Violence"], order=PKU_SAFERLHF_CATEGORIES)
    assert len(pku) == 19 and pku.id("Endangering National Security") == 0 and pku.id("Animal Abuse") == 18
    pku.save(path)
    assert CategoryMap.load(path).names == PKU_SAFERLHF_CATEGORIES


def test_category_map_errors(tmp_path):
    cmap = CategoryMap(["a", "b"])
    with pytest.raises(ValueError, match=r"row 2: unknown category 'c'"):
        cmap.ids(["a", "b", "c"])
    with pytest.raises(ValueError, match=r"row 0: unknown category None"):
        cmap.ids([None])
    with pytest.raises(ValueError, match="category names repeat"):
        CategoryMap(["a", "a"])
    with pytest.raises(ValueError, match=r"labels not in the given order: \['z'\]"):
        CategoryMap.from_labels(["a", "z"], order=["a", "b"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"names": ["a"]}')
    with pytest.raises(ValueError, match="not a saved guard CategoryMap"):
        CategoryMap.load(bad)
    s = PreferenceSet(["p", "q"], ["a", "b"], ["c", "d"], categories=["a", None])
    with pytest.raises(ValueError, match=r"row 1: unknown category None"):
        s.category_ids(cmap)


def test_preference_set_select_and_concat():
    s = PreferenceSet(["p0", "p1", "p2"], ["c0", "c1", "c2"], ["r0", "r1", "r2"], categories=["x", "y", "x"],
                      dimensions=["d", "e", "d"], source_rows=[0, 2, 5], dropped={"tie": 3}, n_input=6)
    assert len(s) == 3 and s.n_candidates == 6
    sub = s.select([2, 0])
    assert (sub.prompts, sub.source_rows, sub.dropped) == (["p2", "p0"], [5, 0], {"tie": 3})
    assert s.select(np.array([False, True, False])).prompts == ["p1"]
    assert s.by_dimension("d").chosen == ["c0", "c2"]
    with pytest.raises(ValueError, match="boolean mask"):
        s.select(np.array([True]))
    both = PreferenceSet.concat([s, sub])
    assert both.prompts == ["p0", "p1", "p2", "p2", "p0"]
    assert both.source_rows == [0, 2, 5, 11, 6] and both.n_input == 12 and both.dropped == {"tie": 6}
    assert both.to_dict()["category"] == ["x", "y", "x", "x", "x"]
    with pytest.raises(ValueError, match="chosen has 1 entries, prompts 2"):
        PreferenceSet(["a", "b"], ["c"], ["d", "e"])


texts = st.sampled_from(["", " ", "a", "b", "a b", "ünï"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(texts, texts, texts), min_size=1, max_size=8))
def test_generic_accounting_property(rows):
    ds = datasets.Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows])
    s = adapt(ds)
    assert accounting_holds(s) and s.n_input == s.n_candidates == len(rows)
    expect_empty = sum(1 for _, c, r in rows if not c.strip() or not r.strip())
    expect_same = sum(1 for _, c, r in rows if c.strip() and r.strip() and c == r)
    assert s.dropped.get("empty response", 0) == expect_empty
    assert s.dropped.get("identical responses", 0) == expect_same
    for k, row in enumerate(s.source_rows):
        assert (s.prompts[k], s.chosen[k], s.rejected[k]) == rows[row]


def test_module_documents_its_use():
    doc = adapters.__doc__
    assert "load_preferences" in doc and "CategoryMap" in doc and "n_candidates" in doc
    assert Path(adapters.__file__).parent.name == "adapters"  # a package: one module per schema
