"""DailyDialog: open-domain dialogues (Li et al. 2017), for response generation.

The corpus is read at run time from the archives as published (``train.zip``,
``validation.zip``, ``test.zip`` holding ``SPLIT/dialogues_SPLIT.txt``: one dialogue a line,
each utterance ended by `` __eou__``; the act and emotion files beside it are not used); its
licence (CC BY-NC-SA 4.0) keeps it out of the toolkit. ``s2s prepare dailydialog ARCHIVE_DIR
[OUT_DIR]`` writes ``OUT_DIR/{train,val,test}.jsonl``, one (context, next utterance) pair a line,
``{"id", "src", "tgt"}``:

- Every utterance after the first of a dialogue is a target; its source is the ``turns``
  utterances before it (fewer at the start of a dialogue), one a line. The tokenizers read each
  line break as the reserved piece ``<sep>`` (see :mod:`seq2seqkit.data.tokenizers`), so the turn
  boundaries survive tokenization. Default: 3 turns, the context window most DailyDialog
  response-generation setups use (a few turns): the median dialogue has 7 utterances, so 3
  keeps most of the conversation while sources stay short (~45 words) for an RNN or a small
  Transformer. ``s2s chat`` keeps the same number (``data.context_turns`` in the recipe).
- Blanks inside an utterance are collapsed to one space; control characters (one DEL in the
  published train file) are dropped.
- A dialogue with a single utterance has no pair: it is skipped and counted (the published
  files have none).
- ``id`` is ``SPLIT-DIALOGUE-TURN`` (1-based line of the dialogue in its file, 1-based index
  of the target utterance).
- The test split is also written as ``test-unseen.jsonl``: the test pairs whose context does
  not occur as a training context. Contexts are compared case-insensitively with blanks
  collapsed, the comparison under which 106 of the 1,000 test dialogues occur in train (the
  corpus has copies that differ in case only). Each test row carries ``"context_in_train"``.

Counts with the published archives and 3 turns: train 76,053, val 7,069, test 6,740 pairs, of
which 1,356 have their context in train, leaving 5,384 in test-unseen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
import zlib
from pathlib import Path

from ..errors import DataError
from .prepared import write_splits

log = logging.getLogger("seq2seqkit")

SPLITS = {"train": "train", "val": "validation", "test": "test"}  # our name -> the archive's
DEFAULT_DIR = "data/dailydialog"  # where configs/dailydialog-transformer.yaml reads (relative to where s2s runs)
DEFAULT_TURNS = 3
FORMAT = 2  # of the conversion; prepared files of another format are redone
EOU = "__eou__"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # not text (tabs, line ends are blanks)


def read_archives(archive_dir: str | Path) -> dict[str, tuple[str, bytes]]:
    """``{split: (where, bytes of dialogues_NAME.txt)}`` from ``ARCHIVE_DIR/NAME.zip``; a
    missing or damaged archive, or one without its dialogue file, is a DataError."""
    folder = Path(archive_dir)
    if not folder.is_dir():
        what = "not a directory" if folder.exists() else "no such directory"
        raise DataError(folder, None, f"{what} (give the folder holding DailyDialog's train.zip, validation.zip, test.zip)")
    out = {}
    for split, name in SPLITS.items():
        path, member = folder / f"{name}.zip", f"{name}/dialogues_{name}.txt"
        if not path.is_file():
            raise DataError(path, None, "no such file (DailyDialog's archives are train.zip, validation.zip, test.zip)")
        try:
            with zipfile.ZipFile(path) as z:
                if member not in z.namelist():
                    raise DataError(path, None, f"has no {member}: is it DailyDialog's {name}.zip?")
                out[split] = (f"{path}/{member}", z.read(member))
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # not a zip, truncated, a bad CRC
            raise DataError(path, None, f"not a readable zip archive ({e})") from None
    return out


def dialogues(where: str, data: bytes) -> list[tuple[int, list[str]]]:
    """(line number, utterances) of each non-blank line; a line not ended by ``__eou__`` or
    holding an empty utterance is a DataError naming it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        n, column = data.count(b"\n", 0, e.start) + 1, e.start - data.rfind(b"\n", 0, e.start)
        raise DataError(where, n, f"not UTF-8 text (byte {column} of the line)") from None
    out, controls = [], 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        line, k = _CONTROL.subn("", line)
        controls += k
        parts = [" ".join(u.split()) for u in line.split(EOU)]
        if parts[-1]:
            raise DataError(where, n, f"the last utterance is not ended by '{EOU}' (a truncated line?)")
        if not all(parts[:-1]):
            raise DataError(where, n, f"an empty utterance (two '{EOU}' with nothing between)")
        out.append((n, parts[:-1]))
    if controls:  # the published train file has one DEL (U+007F) after an utterance
        log.info("%s: dropped %d control character(s)", where, controls)
    return out


def context_key(src: str) -> str:
    """What two contexts are compared by: case-insensitive, blanks collapsed."""
    return " ".join(src.lower().split())


def pairs(split: str, where: str, data: bytes, turns: int) -> list[dict]:
    """The (context, response) rows of one split; one-utterance dialogues are skipped and logged."""
    rows, skipped = [], []
    for n, utts in dialogues(where, data):
        if len(utts) < 2:
            skipped.append(n)
            continue
        for i in range(1, len(utts)):
            rows.append({"id": f"{split}-{n}-{i + 1}", "src": "\n".join(utts[max(0, i - turns):i]), "tgt": utts[i]})
    if skipped:
        log.info("dailydialog %s: skipped %d dialogue(s) with a single utterance (line %s of %s)", split, len(skipped),
                 ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else ""), where)
    return rows


def convert(raw: dict[str, tuple[str, bytes]], turns: int) -> dict[str, list[str]]:
    """The JSONL lines of train, val, test and test-unseen."""
    rows = {split: pairs(split, where, data, turns) for split, (where, data) in raw.items()}
    seen = {context_key(r["src"]) for r in rows["train"]}
    for r in rows["test"]:
        r["context_in_train"] = context_key(r["src"]) in seen
    rows["test-unseen"] = [r for r in rows["test"] if not r["context_in_train"]]
    for split, rs in rows.items():
        log.info("dailydialog %s: %d pairs", split, len(rs))
    log.info("dailydialog test: %d of %d pairs have a context that occurs in train (compared case-insensitively)",
             len(rows["test"]) - len(rows["test-unseen"]), len(rows["test"]))
    return {split: [json.dumps(r, ensure_ascii=False) + "\n" for r in rs] for split, rs in rows.items()}


def prepare(archive_dir: str | Path, out_dir: str | Path = DEFAULT_DIR, turns: int = DEFAULT_TURNS,
            overwrite: bool = False) -> dict[str, Path]:
    """Write ``out_dir/{train,val,test,test-unseen}.jsonl`` from the archives in ``archive_dir``
    and return their paths (nothing is written when they are already there from the same
    archives and turns; see :mod:`.prepared`)."""
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    raw = read_archives(archive_dir)
    digest = hashlib.sha256(b"".join(raw[s][1] for s in SPLITS)).hexdigest()
    paths = {s: Path(out_dir) / f"{s}.jsonl" for s in (*SPLITS, "test-unseen")}
    wanted = {"dataset": "dailydialog", "format": FORMAT, "turns": turns, "source_sha256": digest}
    if write_splits(paths, wanted, lambda: convert(raw, turns), overwrite) is None:
        log.info("%s: already prepared from these archives", out_dir)
    return paths
