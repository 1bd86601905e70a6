"""Local data files read by guard itself, so every row keeps the line it came from: JSON lines (.jsonl,
.jsonl.gz) and JSON lists of rows (.json, .json.gz), plus the line of each record of a CSV file (which
datasets reads, for its typed columns).

    table = read_json_rows("pairs.jsonl")      # JsonRows: rows as dicts, table.row_lines[k] = line of row k
    lines = csv_record_lines("pairs.csv")      # 1-based line where each record starts (quoted newlines allowed)

A problem in the file is a DataFileError naming the file, the 1-based line (and column) and what is wrong:
invalid UTF-8, a line that is not JSON (a line cut short is called that), a row that is not an object.
Reading the rows here, not through pyarrow, also keeps each value's own type, so a row whose field has the
wrong type is reported by the adapters by its line instead of failing the whole file.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import json
import os
from collections.abc import Iterator
from typing import Any

#: File names read by read_json_rows: one JSON object per line, or one JSON list of objects.
JSON_LINES_SUFFIXES = (".jsonl", ".jsonl.gz")
JSON_LIST_SUFFIXES = (".json", ".json.gz")


class DataFileError(ValueError):
    """A local data file that cannot be read, with the 1-based line (and column) of the problem."""

    def __init__(self, path: str, line: int | None, reason: str, column: int | None = None):
        self.path, self.line, self.column, self.reason = path, line, column, reason
        where = "" if line is None else f" line {line}"
        super().__init__(f"{path}{where}: {reason}" + ("" if column is None else f" (column {column})"))


class JsonRows:
    """Rows of a JSON file as dicts, with the little of datasets.Dataset's interface the adapters use
    (`column_names`, `features`, `iter(batch_size)`, iteration, len) and the line each row starts on."""

    features = None  # no declared types: the adapters check each value as it is

    def __init__(self, rows: list[dict[str, Any]], row_lines: list[int]):
        self.rows, self.row_lines = rows, row_lines
        self.column_names = list(dict.fromkeys(key for row in rows for key in row))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def iter(self, batch_size: int) -> Iterator[dict[str, list]]:
        """Column-major batches, a missing key read as None (as datasets fills it)."""
        for start in range(0, len(self.rows), batch_size):
            chunk = self.rows[start:start + batch_size]
            yield {key: [row.get(key) for row in chunk] for key in self.column_names}


def is_json_file(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(JSON_LINES_SUFFIXES + JSON_LIST_SUFFIXES)


def _read_bytes(path: str) -> bytes:
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def _decode(raw: bytes, path: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFileError(path, line, f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the "
                                        "line)") from None


def _json_problem(err: json.JSONDecodeError, text: str) -> str:
    """json's message in words a reader can act on; a value the text ends inside is called cut short."""
    msg = err.msg.removesuffix(" starting at").removesuffix(" at")  # json's own messages end in "at"
    cut_short = err.msg.startswith("Unterminated") or err.pos >= len(text.rstrip())
    detail = f"{msg[0].lower()}{msg[1:]}"
    if cut_short:
        return f"not valid JSON: the text ends inside a value ({detail}); is the line cut short?"
    return f"not valid JSON: {detail}"


def read_json_rows(path: str | os.PathLike) -> JsonRows:
    """The rows of a .jsonl (one object per line, blank lines skipped) or .json (a list of objects) file."""
    path = os.fspath(path)
    raw = _read_bytes(path)
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not part of the first row
        raw = raw[3:]
    if path.lower().endswith(JSON_LIST_SUFFIXES):
        return _read_json_list(path, raw)
    rows, row_lines = [], []
    for number, line in enumerate(raw.split(b"\n"), 1):
        text = _decode(line, path, number).rstrip("\r")
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFileError(path, number, _json_problem(err, text), column=err.colno) from None
        if not isinstance(row, dict):
            raise DataFileError(path, number, f"expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        row_lines.append(number)
    return JsonRows(rows, row_lines)


def _read_json_list(path: str, raw: bytes) -> JsonRows:
    line_starts = [0] + [k + 1 for k, b in enumerate(raw) if b == 0x0A]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = bisect.bisect_right(line_starts, err.start)
        raise DataFileError(path, line, f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at byte "
                                        f"{err.start - line_starts[line - 1] + 1} of the line)") from None
    decoder = json.JSONDecoder()
    newlines = [k for k, ch in enumerate(text) if ch == "\n"]

    def line_of(pos: int) -> int:
        return bisect.bisect_right(newlines, pos - 1) + 1

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(0)
    if pos >= len(text) or text[pos] != "[":
        raise DataFileError(path, line_of(pos), "expected a JSON list of row objects ([{...}, {...}])")
    rows, row_lines = [], []
    pos = skip(pos + 1)
    while pos < len(text) and text[pos] != "]":
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataFileError(path, err.lineno, _json_problem(err, text), column=err.colno) from None
        if not isinstance(row, dict):
            raise DataFileError(path, line_of(pos), f"expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        row_lines.append(line_of(pos))
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < len(text) and text[pos] != "]":
            raise DataFileError(path, line_of(pos), "not valid JSON: expected ',' or ']' after a row")
    if pos >= len(text):
        raise DataFileError(path, line_of(len(text)), "not valid JSON: the list is not closed (is the file cut short?)")
    if text[skip(pos + 1):].strip():
        raise DataFileError(path, line_of(skip(pos + 1)), "not valid JSON: extra data after the list")
    return JsonRows(rows, row_lines)


def csv_record_lines(path: str | os.PathLike) -> list[int]:
    """The 1-based line each data record of a CSV file starts on (the header is line 1; a quoted field may
    hold newlines, so a record can span lines)."""
    path = os.fspath(path)
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        starts, previous_end = [], 0
        for record in reader:
            if record:  # csv skips nothing; datasets skips empty records too
                starts.append(previous_end + 1)
            previous_end = reader.line_num
    return starts[1:]  # the header is not a row
