"""SAMSum: chat dialogues with human-written summaries (Gliwa et al. 2019), for summarization.

The corpus is read at run time from the archive as published (``samsum.zip`` holding
``samsum/{train,val,test}.json``, each a JSON list of ``{"id", "dialogue", "summary"}``) or
from the folder it extracts to; its licence (CC BY-NC-ND 4.0) forbids derivatives, so nothing of
it ships with the toolkit. ``s2s prepare samsum ARCHIVE [OUT_DIR]`` writes the official splits
as ``OUT_DIR/{train,val,test}.jsonl``, one ``{"id", "src": dialogue, "tgt": summary}`` a line:

- Turns stay one a line: line endings (``\\r\\n`` in most dialogues) become ``\\n``, blanks at
  the ends of each turn and of the summary are dropped, speaker names are kept. The tokenizers
  read every line break as the reserved piece ``<sep>`` (see :mod:`seq2seqkit.data.tokenizers`),
  at training and whenever the model is applied to a multi-line dialogue, so the mapping lives
  in one place and the prepared text stays the dialogue itself.
- A record whose dialogue or summary is empty is skipped, logged with its id and counted.

Counts with the published archive: train 14,731 (14,732 records, one empty dialogue,
id 13828807, skipped), val 818, test 819.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ..errors import DataError
from .prepared import write_splits

log = logging.getLogger("seq2seqkit")

SPLITS = ("train", "val", "test")
DEFAULT_DIR = "data/samsum"  # where configs/samsum-attention.yaml reads (relative to where s2s runs)
FORMAT = 1  # of the conversion; prepared files of another format are redone
_LINE_END = re.compile(r"\r\n|\r|\n")


def read_archive(archive: str | Path) -> dict[str, tuple[str, bytes]]:
    """``{split: (where, bytes of split.json)}`` from the zip or its extracted folder (the JSON
    files directly in it or in ``samsum/``); a missing or damaged archive is a DataError."""
    path = Path(archive)
    if path.is_dir():
        folder = path / "samsum" if (path / "samsum" / "train.json").is_file() else path
        out = {}
        for split in SPLITS:
            f = folder / f"{split}.json"
            if not f.is_file():
                raise DataError(path, None, f"has no {split}.json (nor samsum/{split}.json): is it the SAMSum folder?")
            out[split] = (str(f), f.read_bytes())
        return out
    if not path.exists():
        raise DataError(path, None, "no such file (the SAMSum archive, samsum.zip)")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            out = {}
            for split in SPLITS:
                member = next((m for m in (f"samsum/{split}.json", f"{split}.json") if m in names), None)
                if member is None:
                    raise DataError(path, None, f"has no samsum/{split}.json: is it the SAMSum archive?")
                out[split] = (f"{path}/{member}", z.read(member))
            return out
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # not a zip, truncated, a bad CRC
        raise DataError(path, None, f"not a readable zip archive ({e})") from None


def _records(where: str, data: bytes) -> list[Any]:
    try:
        records = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(where, None, f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(where, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(records, list):
        raise DataError(where, None, "expected a JSON list of {\"id\", \"dialogue\", \"summary\"} records")
    return records


def _field(where: str, n: int, record: Any, key: str) -> str:
    """``record[key]`` as a string; anything else is a DataError naming the record."""
    rid = record.get("id") if isinstance(record, dict) else None
    name = f"record {n}" + (f" (id {rid})" if isinstance(rid, (str, int)) else "")
    if not isinstance(record, dict):
        raise DataError(where, None, f"{name}: expected a JSON object, found {type(record).__name__}")
    if key not in record:
        raise DataError(where, None, f'{name}: missing key "{key}"')
    if not isinstance(record[key], str):
        raise DataError(where, None, f'{name}: "{key}" must be a string')
    return record[key]


def turns(dialogue: str) -> str:
    """The dialogue with one turn a line: ``\\n`` line endings, no blanks around a turn, no empty turns."""
    return "\n".join(t.strip() for t in _LINE_END.split(dialogue) if t.strip())


def convert(raw: dict[str, tuple[str, bytes]]) -> dict[str, list[str]]:
    """The JSONL lines of each split; empty dialogues or summaries are skipped and logged."""
    rows: dict[str, list[str]] = {}
    for split, (where, data) in raw.items():
        rows[split], skipped = [], []
        for n, record in enumerate(_records(where, data), 1):
            src, tgt = turns(_field(where, n, record, "dialogue")), _field(where, n, record, "summary").strip()
            rid = str(record.get("id", n))
            if not src or not tgt:
                skipped.append(rid)
                continue
            rows[split].append(json.dumps({"id": rid, "src": src, "tgt": tgt}, ensure_ascii=False) + "\n")
        if skipped:
            log.info("samsum %s: skipped %d record(s) with an empty dialogue or summary (id %s)",
                     split, len(skipped), ", ".join(skipped[:10]) + (", ..." if len(skipped) > 10 else ""))
        log.info("samsum %s: %d dialogues", split, len(rows[split]))
    return rows


def prepare(archive: str | Path, out_dir: str | Path = DEFAULT_DIR, overwrite: bool = False) -> dict[str, Path]:
    """Write ``out_dir/{train,val,test}.jsonl`` from ``archive`` and return their paths (nothing
    is written when they are already there from the same archive; see :mod:`.prepared`)."""
    raw = read_archive(archive)
    digest = hashlib.sha256(b"".join(raw[s][1] for s in SPLITS)).hexdigest()
    paths = {s: Path(out_dir) / f"{s}.jsonl" for s in SPLITS}
    wanted = {"dataset": "samsum", "format": FORMAT, "source_sha256": digest}
    if write_splits(paths, wanted, lambda: convert(raw), overwrite) is None:
        log.info("%s: already prepared from this archive", out_dir)
    return paths
