"""Reading a job's input: one trackId or URL a line, CSV / TSV with a `trackId`, `id` or `url`
column, or JSON Lines with those keys. Bad input names its line."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..headers import is_ascii_number

KEYS = ("trackId", "id", "url")


@dataclass(frozen=True)
class Item:
    line: int  # 1-based line of the input it came from
    value: str  # a track id (digits) or a URL

    @property
    def is_url(self) -> bool:
        return "://" in self.value


def _item(line: int, value: object, where: str) -> Item:
    text = str(value).strip() if value is not None else ""
    if not text:
        raise UsageError(f"{where}:{line}: no id or URL on this line")
    if not (is_ascii_number(text) or "://" in text):
        raise UsageError(f"{where}:{line}: {text[:60]!r} is neither a track id nor a URL")
    return Item(line, text)


def read_items(path: Path) -> list[Item]:
    """Every item of the input, in order; raises UsageError (exit 2) naming the bad line."""
    where = str(path)
    if path.suffix.lower() == ".parquet":
        return _parquet(path, where)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"input file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read input file {path}: {exc}") from exc
    suffix = path.suffix.lower()
    lines = text.splitlines()
    if suffix in (".jsonl", ".ndjson") or (lines and lines[0].lstrip().startswith("{")):
        return _json_lines(lines, where)
    if suffix in (".csv", ".tsv") or (
        lines and any(k in lines[0] for k in KEYS) and ("," in lines[0] or "\t" in lines[0])
    ):
        return _table(lines, where, "\t" if suffix == ".tsv" or "\t" in lines[0] else ",")
    return [
        _item(n, line, where)
        for n, line in enumerate(lines, 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _json_lines(lines: list[str], where: str) -> list[Item]:
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise UsageError(f"{where}:{n}: not a JSON object") from None
        if not isinstance(obj, dict) or not any(k in obj for k in KEYS):
            raise UsageError(f"{where}:{n}: no trackId, id or url key")
        key = next(k for k in KEYS if k in obj)
        out.append(_item(n, obj[key], where))
    return out


def _table(lines: list[str], where: str, delimiter: str) -> list[Item]:
    rows = list(csv.reader(lines, delimiter=delimiter))
    if not rows:
        return []
    header = [h.strip() for h in rows[0]]
    column = next((header.index(k) for k in KEYS if k in header), None)
    if column is None:
        raise UsageError(f"{where}:1: no trackId, id or url column (columns: {', '.join(header)})")
    out = []
    for n, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= column:
            raise UsageError(
                f"{where}:{n}: has {len(row)} columns, the id is in column {column + 1}"
            )
        out.append(_item(n, row[column], where))
    return out


def _parquet(path: Path, where: str) -> list[Item]:
    """A Parquet file with a trackId, id or url column; "line" is the row number (from 1)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(
            "Parquet input needs pyarrow", "pip install 'halftunes[parquet]'"
        ) from None
    if not path.exists():
        raise UsageError(f"input file {path} does not exist")
    try:
        names = pq.read_schema(path).names
        column = next((k for k in KEYS if k in names), None)
        if column is None:
            raise UsageError(f"{where}: no trackId, id or url column (columns: {', '.join(names)})")
        values = pq.read_table(path, columns=[column]).column(0).to_pylist()
    except UsageError:
        raise
    except Exception as exc:  # pyarrow's errors: a file that is not Parquet
        raise UsageError(f"{where}: not a readable Parquet file ({exc})") from exc
    return [_item(n, value, where) for n, value in enumerate(values, 1)]
