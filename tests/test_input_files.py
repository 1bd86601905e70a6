"""Local data files as guard reads them (guard.adapters.files) and what a run says about its data: every row
named by the 1-based line of its file (a table without lines by its 0-based row), JSON problems in words a
user can act on, and the rows a run sets aside (duplicates, empty responses, pairs that --max-length leaves
identical) counted and named on the console, in summary.json and in report.md."""

import gzip
import json

import pytest

from guard import models
from guard.adapters import DataFileError, load_preferences
from guard.adapters.files import csv_record_lines, read_json_rows
from guard.jsonfiles import read_json, write_jsonl
from guard.train.__main__ import main as train_main

ROW = {"prompt": "Question?", "chosen": "A good answer.", "rejected": "A bad one."}


def test_json_lines_keep_their_line_numbers_across_blank_lines_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n\n  \n" + json.dumps(ROW).encode() + b"\r\n")
    table = read_json_rows(path)
    assert table.row_lines == [1, 4] and len(table) == 2 and table.column_names == ["prompt", "chosen", "rejected"]
    zipped = tmp_path / "rows.jsonl.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    assert read_json_rows(zipped).row_lines == [1, 4]


def test_a_json_list_names_each_row_by_the_line_it_starts_on(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n\n  {"prompt": "d",\n   "chosen": "e", '
                    '"rejected": "f"}, {"prompt": "g", "chosen": "h", "rejected": "i"}\n]\n')
    assert read_json_rows(path).row_lines == [2, 4, 5]
    for text, message in [('[{"prompt": "a"}', "the list is not closed"), ('{"prompt": "a"}', "expected a JSON list"),
                          ('[{"prompt": "a"} {"prompt": "b"}]', "expected ',' or ']'"), ('[{"a": 1}] x', "extra data"),
                          ('[{"a": 1}, 3]', "expected a JSON object, got int")]:
        path.write_text(text)
        with pytest.raises(DataFileError, match=message):
            read_json_rows(path)


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "abc', "the text ends inside a value (unterminated string); is the line cut short? (column 12)"),
    ('{"prompt": "a", ', "the text ends inside a value"),
    ('{"prompt" "a"}', "not valid JSON: expecting ':' delimiter (column 11)"),
    ('["a", "b"]', "expected a JSON object, got list"),
])
def test_a_bad_json_line_is_named_with_its_line_column_and_reason(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROW) + "\n\n" + line + "\n")
    with pytest.raises(DataFileError) as err:
        read_json_rows(path)
    assert err.value.line == 3 and str(err.value).startswith(f"{path} line 3: ")
    assert message in str(err.value) and " at at" not in str(err.value) and "control character" not in str(err.value)


def test_invalid_utf8_names_the_line_and_the_byte(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(json.dumps(ROW).encode() + b'\n{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(DataFileError, match=r"line 2: invalid UTF-8 \(byte 0xe9 at byte 16 of the line\)"):
        read_json_rows(path)
    listed = tmp_path / "rows.json"
    listed.write_bytes(b'[\n{"prompt": "ok"},\n{"prompt": "caf\xe9"}]')
    with pytest.raises(DataFileError, match=r"line 3: invalid UTF-8 \(byte 0xe9 at byte 16 of the line\)"):
        read_json_rows(listed)


def test_csv_records_are_numbered_by_the_line_they_start_on_and_name_bad_rows(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('prompt,chosen,rejected,category\nq1,"two\nlines",no,x\n\nq2,yes,"",x\n')
    assert csv_record_lines(path) == [2, 5]
    pairs = load_preferences(str(path))
    assert pairs.dropped == {"empty response": 1} and pairs.where(pairs.dropped_rows["empty response"][0]) == "line 5"


def test_drops_keep_their_rows_and_a_table_without_lines_names_rows_from_zero(tmp_path):
    import datasets

    rows = [ROW, {**ROW, "chosen": " "}, ROW, {**ROW, "rejected": ROW["chosen"]}]
    pairs = load_preferences(str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert pairs.dropped_rows == {"empty response": [1], "identical responses": [3]}
    assert [pairs.where(r) for r in (1, 3)] == ["line 2", "line 4"]
    table = load_preferences(datasets.Dataset.from_list(rows))
    assert table.dropped_rows == pairs.dropped_rows and table.where(3) == "row 3"


def _run(tmp_path, data, *extra):
    out = tmp_path / "run"
    code = train_main(["rm", "--data", str(data), "--output-dir", str(out), "--model", "tiny", "--tokenizer",
                       str(models.TINY_TOKENIZER), "--max-steps", "1", "--batch-size", "4", "--lambda-adv", "0",
                       "--save-every", "0", "--eval-fraction", "0.25", *extra])
    return code, out


def test_a_run_prints_counts_and_names_every_row_it_sets_aside(tmp_path, capsys):
    rows = [{"prompt": f"Question {k}?", "chosen": f"Answer {k} is yes.", "rejected": f"Answer {k} is no."}
            for k in range(24)]
    rows[3] = dict(rows[2])  # a duplicate pair: line 4
    rows[5] = {**rows[5], "chosen": ""}  # an empty response: line 6
    # the same first words: at --max-length 8 the two sequences are the same tokens (lines 8 and 9)
    rows[7] = {"prompt": "Q?", "chosen": "one two three four five six seven eight nine", "rejected":
               "one two three four five six seven eight ten"}
    rows[8] = {"prompt": "R?", "chosen": "nine eight seven six five four three two one", "rejected":
               "nine eight seven six five four three two zero"}
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    code, out = _run(tmp_path, data, "--max-length", "8")
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "data: 24 rows read -> 15 training + 5 held-out pairs; set aside:" in printed
    assert "1  dropped by the generic adapter: empty response (line 6)" in printed
    assert "1  duplicate pairs removed (line 4)" in printed
    assert "2  chosen and rejected identical after truncation to --max-length (line 8, line 9)" in printed
    assert "pairs kept with a sequence cut at its end to --max-length" in printed

    data_summary = read_json(out / "summary.json")["data"]
    assert data_summary["set_aside"] == {"dropped by the generic adapter: empty response": 1,
                                         "duplicate pairs removed": 1,
                                         "chosen and rejected identical after truncation to --max-length": 2}
    assert data_summary["set_aside_rows"]["duplicate pairs removed"] == ["line 4"]
    assert data_summary["truncated_pairs"] > 0 and data_summary["train_pairs"] + data_summary["eval_pairs"] == 20
    report = (out / "report.md").read_text()
    assert "Nothing was set aside" not in report and "line 8, line 9" in report


def test_a_run_with_clean_data_says_nothing_was_set_aside(tmp_path, capsys):
    rows = [{"prompt": f"Question {k}?", "chosen": f"Answer {k} is yes.", "rejected": f"Answer {k} is no."}
            for k in range(16)]
    code, out = _run(tmp_path, write_jsonl(tmp_path / "pairs.jsonl", rows))
    assert code == 0
    assert "16 rows read -> 12 training + 4 held-out pairs; nothing set aside" in capsys.readouterr().out
    assert "Nothing was set aside." in (out / "report.md").read_text()
    assert read_json(out / "summary.json")["data"]["truncated_pairs"] == 0


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b', "line 2: not valid JSON: the text ends"),
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff"}\n', "line 2: invalid UTF-8"),
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": 3, "rejected": "c"}\n',
     "line 2: field chosen is not a string (got int)"),
    (b'{"prompt": "a", "answer": "b"}\n', "cannot tell the schema from the columns ['answer', 'prompt']"),
])
def test_bad_data_files_end_in_one_error_line_naming_the_line(tmp_path, capsys, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(content)
    code, out = _run(tmp_path, data)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert f"{data}" in err and message in err, err
    assert not (out / "config.yaml").exists()
