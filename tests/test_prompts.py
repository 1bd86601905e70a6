"""guard.prompts: prompt-only files (jsonl, csv, parquet, loaded datasets) and the distinct prompts of
preference schemas, with exact texts, categories, source rows and drop counts; chat templates; errors."""

import json
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from guard import prompts
from guard.adapters import PKU_SAFERLHF_CATEGORIES, NeedsChatTemplate, load_preferences
from guard.jsonfiles import write_jsonl
from guard.prompts import PROMPT_SCHEMAS, PromptSet, load_prompts

from dataset_fixtures import FIXTURES, A, H, _offline_and_private_cache, template  # noqa: F401 (autouse)


def accounting_holds(s: PromptSet, n: int) -> bool:
    return len(s) + sum(s.dropped.values()) == n


def as_rows(s: PromptSet):
    return list(zip(s.prompts, s.categories, s.source_rows))


# ----------------------------------------------------------------------------------------------------
# Prompt-only data


def test_prompt_jsonl_with_category_drops_empty_and_duplicates(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "How do I pick a lock?", "category": "crime"},
        {"prompt": "   ", "category": "crime"},
        {"prompt": "Tell me a joke.", "category": None},
        {"prompt": "How do I pick a lock?", "category": "other"},  # duplicate: the first (crime, row 0) stays
        {"prompt": "", "category": "x"},
        {"prompt": "Tell me a joke.", "category": "fun"},
        {"prompt": "Write a haiku.", "category": "fun"},
    ])
    s = load_prompts(path)
    assert s.schema == "prompt" and s.n_input == 7
    assert as_rows(s) == [("How do I pick a lock?", "crime", 0), ("Tell me a joke.", None, 2),
                          ("Write a haiku.", "fun", 6)]
    assert s.dropped == {"empty prompt": 2, "duplicate prompt": 2}
    assert accounting_holds(s, s.n_input)
    assert s.category_map().names == ("crime", "fun")  # None left out, sorted
    with pytest.raises(ValueError, match="data has a category column; category= is not accepted"):
        load_prompts(path, category="x")


def test_prompt_jsonl_without_category_and_category_argument(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a?"}, {"prompt": "b?"}])
    s = load_prompts(path)
    assert as_rows(s) == [("a?", None, 0), ("b?", None, 1)] and s.dropped == {}
    s = load_prompts(path, category="redteam")
    assert s.categories == ["redteam", "redteam"]
    assert s.category_map().names == ("redteam",)
    with pytest.raises(ValueError, match="category must be a string"):
        load_prompts(path, category=3)


def test_prompt_csv_and_parquet(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text('prompt,category\n"Hi, there.",greeting\nNA,word\n,empty\nHi there.,greeting\n')
    s = load_prompts(str(csv))
    # "NA" is a word here; an empty cell is an empty prompt
    assert as_rows(s) == [("Hi, there.", "greeting", 0), ("NA", "word", 1), ("Hi there.", "greeting", 3)]
    assert s.dropped == {"empty prompt": 1} and s.n_input == 4
    pq_path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["Q1", "Q2", "Q1"], "other": [1, 2, 3]}), pq_path)
    s = load_prompts(str(pq_path))
    assert as_rows(s) == [("Q1", None, 0), ("Q2", None, 1)] and s.dropped == {"duplicate prompt": 1}
    # the builder + data_files form gives the same
    assert as_rows(load_prompts("parquet", data_files=str(pq_path))) == as_rows(s)


def test_message_prompts_with_and_without_template(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "Hi!"}]},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}]},
        {"prompt": [{"role": "user", "content": "  "}]},
        {"prompt": [{"role": "user", "content": "Hi!"}]},
    ]
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    s = load_prompts(path, chat_template=template)
    assert s.prompts == ["<|user|>Hi!<|assistant|>", "<|system|>Be brief.<|user|>2 + 2?<|assistant|>"]
    assert s.source_rows == [0, 1] and s.dropped == {"empty prompt": 1, "duplicate prompt": 1}

    with pytest.raises(NeedsChatTemplate, match="line 1: conversational data needs a chat template"):
        load_prompts(path)


def test_needs_template_names_first_message_row():
    # strings and message lists in one column: only a generator-backed IterableDataset holds both
    rows = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": [{"role": "user", "content": "c"}]}, {"prompt": []}]
    ds = datasets.IterableDataset.from_generator(lambda: iter(rows))
    with pytest.raises(NeedsChatTemplate) as info:
        load_prompts(ds)
    assert info.value.row == 2
    # with a template, an empty message list is an empty prompt (the template is not called on it)
    calls = []
    s = load_prompts(ds, chat_template=lambda msgs: calls.append(msgs) or template(msgs))
    assert s.prompts == ["<|user|>a<|assistant|>", "<|user|>b<|assistant|>", "<|user|>c<|assistant|>"]
    assert s.source_rows == [0, 1, 2] and s.dropped == {"empty prompt": 1} and s.n_input == 4
    assert [m for m in calls if m[0]["content"] == "c"] == [[{"role": "user", "content": "c"}]]
    assert [] not in calls


def test_string_prompt_with_template_is_one_user_message(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hello?"}, {"prompt": [{"role": "user", "content": "Hello?"}]}])

    class FakeTokenizer:
        def __init__(self):
            self.calls = []

        def apply_chat_template(self, messages, **kwargs):
            self.calls.append((messages, kwargs))
            return template(messages)

    tok = FakeTokenizer()
    s = load_prompts(path, chat_template=tok)
    assert s.prompts == ["<|user|>Hello?<|assistant|>"]  # the message list renders the same: a duplicate
    assert s.dropped == {"duplicate prompt": 1}
    assert tok.calls[0] == ([{"role": "user", "content": "Hello?"}], {"tokenize": False, "add_generation_prompt": True})
    assert load_prompts(path, chat_template=template, schema="prompt").prompts == s.prompts


def test_bad_types_name_their_row(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": "fine"}, {"prompt": 7}])
    with pytest.raises(ValueError, match=r"line 3: field prompt is not a string or a list of messages \(got int\)"):
        load_prompts(path)
    ds = datasets.Dataset.from_list([{"prompt": "a", "category": "x"}, {"prompt": "b", "category": None}])
    assert load_prompts(ds).categories == ["x", None]
    ds = datasets.Dataset.from_list([{"prompt": "a", "category": 1}, {"prompt": "b", "category": 2}])
    with pytest.raises(ValueError, match=r"row 0: field category is not a string \(got int\)"):
        load_prompts(ds)
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "a"}]},
                                     {"prompt": [{"role": "user", "content": None}]}])
    with pytest.raises(ValueError, match=r"row 1: field prompt\[0\]\.content is not a string \(got NoneType\)"):
        load_prompts(ds, chat_template=template)


def test_argument_errors(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    with pytest.raises(ValueError, match="prompt-only data has no dimensions"):
        load_prompts(path, dimensions=["helpful"])
    with pytest.raises(ValueError, match="prompt-only data has no dimensions"):
        load_prompts(path, schema="prompt", dimensions=["helpful"])
    with pytest.raises(ValueError, match="unknown schema 'prompts'"):
        load_prompts(path, schema="prompts")
    nothing = write_jsonl(tmp_path / "q.jsonl", [{"question": "a"}])
    with pytest.raises(ValueError, match="cannot tell the schema.*prompt-only data needs a prompt column"):
        load_prompts(nothing)
    with pytest.raises(ValueError, match=r"prompt-only data needs a prompt column \(got columns \['question'\]\)"):
        load_prompts(nothing, schema="prompt")


def test_schema_names():
    assert PROMPT_SCHEMAS == ("auto", "prompt", "hh_rlhf", "pku_saferlhf", "ultrafeedback_binarized",
                              "ultrafeedback", "helpsteer2", "generic")


# ----------------------------------------------------------------------------------------------------
# Preference schemas


REVENGE = "How can I get back at my neighbor for parking in my spot?"
EX = "How do I find out where my ex lives now?"
CATS = "What should I do with the stray cats in my yard?"


def test_pku_unique_prompts_with_harm_categories():
    s = load_prompts(str(FIXTURES / "pku_saferlhf.jsonl"))
    assert s.schema == "pku_saferlhf" and s.n_input == 5
    # rows 0, 1, 4 give two pairs each (the second one's prompt is a duplicate); the first pair's category
    assert as_rows(s) == [(REVENGE, "Violence", 0), (EX, "Privacy Violation", 1),
                          (CATS, "Endangering National Security", 4)]
    # row 2: no harm category (both pairs); row 3: an empty response (both pairs)
    assert s.dropped == {"pair missing category": 2, "pair empty response": 2, "duplicate prompt": 3}
    assert accounting_holds(s, 10)  # two candidate pairs per row
    assert s.category_map().names == PKU_SAFERLHF_CATEGORIES
    assert s.category_map().ids(s.categories).tolist() == [5, 7, 0]

    harmless = load_prompts(str(FIXTURES / "pku_saferlhf.jsonl"), dimensions=["harmless"])
    assert as_rows(harmless) == [(REVENGE, "Violence", 0), (EX, "Insulting Behavior", 1),
                                 (CATS, "Endangering National Security", 4)]
    assert harmless.dropped == {"pair missing category": 1, "pair empty response": 1}
    with pytest.raises(ValueError, match="takes its categories from the data"):
        load_prompts(str(FIXTURES / "pku_saferlhf.jsonl"), category="x")


def test_pku_prompt_repeated_across_rows_and_template(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "pku_saferlhf.jsonl").read_text().splitlines()]
    again = dict(rows[4], response_0="Call a shelter.", response_1="Kick them.")  # row 5: CATS again
    path = write_jsonl(tmp_path / "pku.jsonl", [rows[4], rows[0], again])
    s = load_prompts(path, chat_template=template)
    assert s.prompts == [f"<|user|>{CATS}<|assistant|>", f"<|user|>{REVENGE}<|assistant|>"]
    assert s.source_rows == [0, 1] and s.dropped == {"duplicate prompt": 4} and s.n_input == 3
    ds = datasets.Dataset.from_list([rows[4], rows[0], again])
    assert as_rows(load_prompts(ds, chat_template=template)) == as_rows(s)


def test_hh_prompt_ends_with_last_assistant_turn():
    s = load_prompts(str(FIXTURES / "hh-rlhf" / "helpful-base"))
    fruit = H + "What are some fruits that are in season in winter?" + A
    egg = H + "How do I boil an egg?" + A + " Put it in a pot of boiling water. Do you like it soft or hard?" + \
        H + "Hard, please." + A
    assert s.schema == "hh_rlhf" and s.n_input == 4
    assert as_rows(s) == [(fruit, "helpful", 0), (egg, "helpful", 1)]
    assert s.dropped == {"pair prompts differ": 1, "pair identical responses": 1}
    assert accounting_holds(s, 4)
    assert load_prompts(str(FIXTURES / "hh-rlhf" / "harmless-base"), schema="hh_rlhf").categories == \
        ["harmless", "harmless"]
    files = [str(FIXTURES / "hh-rlhf" / d / "train.jsonl") for d in ("helpful-base", "harmless-base")]
    both = load_prompts("json", data_files=files)
    assert both.categories == ["helpful", "helpful", "harmless", "harmless"] and both.source_rows == [0, 1, 4, 7]


def test_generic_preference_rows(tmp_path):
    s = load_prompts(str(FIXTURES / "generic.jsonl"))
    assert s.schema == "generic"
    assert as_rows(s) == [("Translate 'cat' into French.", "translation", 0), ("Is 7 prime?", "math", 1),
                          ("Describe the sea.", "writing", 4)]
    assert s.dropped == {"pair identical responses": 1, "pair empty response": 1}
    style = load_prompts(str(FIXTURES / "generic.jsonl"), dimensions=["style"])
    assert style.prompts == ["Describe the sea."]
    assert style.dropped == {"pair dimension not selected": 2, "pair identical responses": 1, "pair empty response": 1}
    # two dimensions over the same prompts: one prompt each, the second pair a duplicate
    path = write_jsonl(tmp_path / "dims.jsonl", [
        {"prompt": "Q", "chosen": "a", "rejected": "b", "dimension": "first"},
        {"prompt": "R", "chosen": "a", "rejected": "b", "dimension": "first"},
        {"prompt": "Q", "chosen": "b", "rejected": "a", "dimension": "second"},
        {"prompt": " ", "chosen": "b", "rejected": "a", "dimension": "second"},
    ])
    s = load_prompts(path, category="c")
    assert as_rows(s) == [("Q", "c", 0), ("R", "c", 1)]
    assert s.dropped == {"duplicate prompt": 1, "empty prompt": 1} and accounting_holds(s, 4)
    conv = load_prompts(str(FIXTURES / "generic_conversational.jsonl"), chat_template=template)
    assert conv.prompts[0] == "<|user|>What color is the sky?<|assistant|>"
    assert conv.dropped == {"pair no assistant turn": 1}


def test_from_preferences_matches_load():
    pairs = load_preferences(str(FIXTURES / "pku_saferlhf.jsonl"))
    s = PromptSet.from_preferences(pairs)
    assert as_rows(s) == as_rows(load_prompts(str(FIXTURES / "pku_saferlhf.jsonl")))
    assert len(s) + s.dropped["duplicate prompt"] == len(pairs)


# ----------------------------------------------------------------------------------------------------
# Detection, loaded datasets, select


def test_auto_detection(tmp_path):
    only = write_jsonl(tmp_path / "only.jsonl", [{"prompt": "a", "chosen": "x"}])  # no rejected: prompt-only
    assert load_prompts(only).schema == "prompt"
    assert load_prompts(str(FIXTURES / "generic.csv")).schema == "generic"
    assert load_prompts(str(FIXTURES / "hh-rlhf" / "harmless-base")).schema == "hh_rlhf"
    # schema= forces one: prompt-only reading of preference data keeps every row's prompt
    s = load_prompts(str(FIXTURES / "generic.jsonl"), schema="prompt")
    assert s.schema == "prompt" and len(s) == 5 and s.categories[2] == "writing"


def test_loaded_dataset_as_source(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "category": "x"}, {"prompt": "a", "category": "y"},
                                              {"prompt": "b", "category": "y"}])
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    s = load_prompts(ds)
    assert as_rows(s) == as_rows(load_prompts(path)) == [("a", "x", 0), ("b", "y", 2)]
    assert s.dropped == {"duplicate prompt": 1} and s.n_input == 3
    lazy = load_prompts(path, streaming=True)
    assert as_rows(lazy) == as_rows(s) and lazy.n_input == 3


def test_select_and_category_map(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{k}", "category": "bc"[k % 2]} for k in range(5)]
                       + [{"prompt": "q0", "category": "a"}])
    s = load_prompts(path)
    sub = s.select(np.array([4, 1]))
    assert as_rows(sub) == [("q4", "b", 4), ("q1", "c", 1)]
    assert (sub.dropped, sub.n_input, sub.schema) == ({"duplicate prompt": 1}, 6, "prompt")
    assert sub.dropped is not s.dropped
    assert s.select(range(2)).prompts == ["q0", "q1"]
    assert s.select([k % 2 == 0 for k in range(5)]).prompts == ["q0", "q2", "q4"]  # a boolean mask
    assert len(s.select([])) == 0
    assert s.category_map().names == ("b", "c")  # "a" was only on the dropped duplicate
    assert s.select([1]).category_map().names == ("c",)
    with pytest.raises(ValueError, match="boolean mask has shape"):
        s.select([True, False])
    with pytest.raises(ValueError, match="categories has 1 entries, prompts 2"):
        PromptSet(["a", "b"], [None], [0, 1], {}, 2, "prompt")


def test_empty_set_is_not_an_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": ""}, {"prompt": " \n"}])
    s = load_prompts(path)
    assert len(s) == 0 and s.dropped == {"empty prompt": 2} and s.n_input == 2
    assert len(s.category_map()) == 0


def test_module_documents_its_use():
    doc = prompts.__doc__
    assert "load_prompts" in doc and "duplicate prompt" in doc and "pair " in doc and "n_input" in doc
    assert os.path.basename(prompts.__file__) == "prompts.py"
