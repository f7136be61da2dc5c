"""One reader for the JSON-lines files users hand to radgpt (datasets, predictions, study cases).

A line that is not UTF-8, not JSON, or not a JSON object is a FatalError naming `file:line`, so the
user can fix exactly that line. Blank lines are skipped. (`impress` reads its inputs differently: a
batch job reports a bad line and goes on, see radgpt/impress.py.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from radgpt.common.errors import FatalError


def json_objects(lines: Iterable[bytes | str], name: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line."""
    for lineno, raw in enumerate(lines, 1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise FatalError(f"{name}:{lineno}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") \
                    from None
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise FatalError(f"{name}:{lineno}: not valid JSON ({e.msg}); expected one JSON object per line") \
                from None
        if not isinstance(obj, dict):
            raise FatalError(f"{name}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def read_json_objects(path: str | Path, what: str = "file") -> Iterator[tuple[int, dict]]:
    path = Path(path)
    if not path.is_file():
        raise FatalError(f"{path}: {what} not found")
    with open(path, "rb") as fh:
        yield from json_objects(fh, str(path))
