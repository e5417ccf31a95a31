"""Rows of local data files: CSV, TSV, JSON lines, and CoNLL entity files (as sentences with the
entity types they mention), decoded as UTF-8 with invalid bytes replaced or refused."""

from __future__ import annotations

import csv
import io
import json
import os
import sys

from tfpretrain.data.conll import entity_type_rows
from tfpretrain.data.tfds import DataError

INVALID_UTF8 = ("replace", "error")


def decode(data: bytes, path: str, invalid_utf8: str) -> str:
    """UTF-8 text of ``data``; invalid byte sequences become U+FFFD and are counted, or are an
    error naming the line (``invalid_utf8="error"``)."""
    if invalid_utf8 not in INVALID_UTF8:
        raise DataError(f"data.invalid_utf8 must be one of {INVALID_UTF8}, got {invalid_utf8!r}")
    pieces, start, replaced = [], 0, 0
    while True:
        try:
            pieces.append(data[start:].decode("utf-8"))
            break
        except UnicodeDecodeError as error:
            bad = start + error.start
            if invalid_utf8 == "error":
                line = data[:bad].count(b"\n") + 1
                raise DataError(f"{path}, line {line}: invalid UTF-8 (byte {bad}); fix the file or "
                                "set data.invalid_utf8=replace") from None
            pieces += [data[start:bad].decode("utf-8"), "\ufffd"]
            replaced += 1
            start += error.end
    if replaced:
        print(f"warning: {path}: replaced {replaced} invalid UTF-8 sequence(s) with U+FFFD "
              "(data.invalid_utf8=error stops instead)", file=sys.stderr, flush=True)
    return "".join(pieces)


def file_format(path: str, fmt: str = "auto") -> str:
    """``fmt``, or for ``auto`` the format the extension says (``.jsonl``/``.json``, ``.tsv``,
    ``.conll``; anything else is CSV)."""
    if fmt != "auto":
        return fmt
    for ending, name in ((".jsonl", "jsonl"), (".json", "jsonl"), (".tsv", "tsv"),
                         (".conll", "conll")):
        if path.endswith(ending):
            return name
    return "csv"


def read_rows(path: str, invalid_utf8: str = "replace", fmt: str = "auto") -> list[dict]:
    """The rows of a data file as dicts (column → value), in the format ``fmt`` (see
    ``file_format``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    with open(path, "rb") as f:
        text = decode(f.read(), path, invalid_utf8)
    fmt = file_format(path, fmt)
    if fmt == "conll":
        return entity_type_rows(text, path)
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DataError(f"{path}, line {number}: not valid JSON") from None
        return rows
    return list(csv.DictReader(io.StringIO(text, newline=""),
                               delimiter="\t" if fmt == "tsv" else ","))


def row_name(path: str, fmt: str, index: int) -> str:
    """How an error names example ``index`` of a file (CSV rows count the header)."""
    fmt = file_format(path, fmt)
    return {"conll": f"{path}, sentence {index + 1}", "jsonl": f"{path}, record {index + 1}"}.get(
        fmt, f"{path}, row {index + 2}")
