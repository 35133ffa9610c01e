"""bAbI: the 20 question-answering tasks of Weston et al. (2015), for one model trained on all.

The corpus is read at run time from the archive as published (``babi-tasks-1-20-v1-2.tar.gz``
holding ``babi/en/qaN_<name>_{train,test}.txt``, 1,000 questions per task and split, and
``babi/en-10k/`` with 10,000) or from the folder it extracts to. Each file is in the original
numbered-line format: ``N sentence`` or ``N question<TAB>answer<TAB>supporting ids``; a story
restarts where the line number goes back to 1.

``s2s prepare babi ARCHIVE [OUT_DIR] [--size 1k|10k]`` writes ``OUT_DIR/{train,valid,test}.jsonl``,
one question a line, ``{"task": N, "story": K, "src": ..., "tgt": answer}``:

- ``src`` is one line ``taskN`` (the task tag: one model learns all 20 tasks jointly and knows
  which one it is asked), then the story sentences before the question, one a line, at most the
  last 50 (the cap of Sukhbaatar et al. 2015; earlier questions of the story are not sentences),
  then the question. The tokenizers read each line break as the reserved piece ``<sep>``.
- ``tgt`` is the answer as published: a single word, or for tasks 8 (lists) and 19 (path
  finding) a comma-separated sequence such as ``n,w`` or ``apple,football``. It is kept as one
  string; the recipe's SentencePiece tokenizer cuts it into ``▁n`` ``,`` ``w``, so the model
  generates the items one by one (and can produce a combination it never saw), and decoding
  gives back ``n,w`` exactly, which exact match compares with the reference.
- ``valid`` is held out from the training file: 10% of each task's stories (all questions of a
  story stay together, so no validation story shares its sentences with a training one),
  chosen by a generator seeded with the task number: the same stories on every run. ``test`` is
  the official test file; tune on ``valid`` only.
- The 10k set has no training file for task 3: there its 1k training file is used (logged, and
  recorded in ``MANIFEST.json`` under ``fallback``).

A line of another form (no number, a number that neither continues the story nor restarts it,
a question line without its three tab-separated fields or with an empty answer) stops the
command with the member's name inside the archive and the line number, before anything is
written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .prepared import write_splits

log = logging.getLogger("seq2seqkit")

TASKS = range(1, 21)
SIZES = {"1k": "en", "10k": "en-10k"}
SPLITS = ("train", "valid", "test")
DEFAULT_DIRS = {"1k": "data/babi-1k", "10k": "data/babi-10k"}  # where configs/babi-transformer.yaml reads (1k)
MAX_STORY = 50  # sentences before a question, the most recent kept
VALID_SHARE = 0.1  # of each task's training stories
FORMAT = 1  # of the conversion; prepared files of another format are redone
FAILED_ABOVE = 5.0  # a task with a higher test error (%) counts as failed, as in every bAbI paper
_MEMBER = re.compile(r"(?:^|/)(en|en-10k)/qa(\d+)_[a-z-]+_(train|test)\.txt$")
_LINE = re.compile(r"(\d+) (.*)")


@dataclass(frozen=True)
class Question:
    task: int
    story: int  # the story's number within its file, from 1
    src: str
    tgt: str


def read_archive(archive: str | Path) -> dict[tuple[str, int, str], tuple[str, bytes]]:
    """``{(folder, task, split): (where, bytes)}`` of every task file (``en/`` or ``en-10k/`` ``qaN_*``)
    in the tar.gz or the folder it extracts to, ``where`` being ``ARCHIVE/member``; a missing or
    damaged archive is a DataError."""
    path = Path(archive)
    found: dict[tuple[str, int, str], tuple[str, bytes]] = {}
    if path.is_dir():
        for f in sorted(path.rglob("qa*_*.txt")):
            m = _MEMBER.search(f.relative_to(path).as_posix())
            if m:
                found[(m[1], int(m[2]), m[3])] = (f"{path}/{f.relative_to(path).as_posix()}", f.read_bytes())
    elif not path.exists():
        raise DataError(path, None, "no such file (the bAbI archive, babi-tasks-1-20-v1-2.tar.gz)")
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    m = _MEMBER.search(member.name)
                    if m and member.isfile():
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        found[(m[1], int(m[2]), m[3])] = (f"{path}/{member.name}", data)
        except (tarfile.TarError, zlib.error, EOFError, OSError) as e:  # not a tar, truncated, bad gzip
            raise DataError(path, None, f"not a readable tar archive ({e})") from None
    if not found:
        raise DataError(path, None, "holds no en/qaN_*_{train,test}.txt files: is it the bAbI archive?")
    return found


def parse(where: str, data: bytes, task: int) -> list[list[Question]]:
    """The questions of one task file, grouped by story, each with its source built (see above)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(where, line, f"not UTF-8 text (byte {e.start})") from None
    stories: list[list[Question]] = []
    sentences: list[str] = []
    previous = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line.rstrip("\r "))
        if m is None:
            raise DataError(where, lineno, "expected 'N sentence' or 'N question<TAB>answer<TAB>supporting ids'")
        number, rest = int(m[1]), m[2]
        if number == 1:
            stories.append([])
            sentences = []
        elif number != previous + 1:
            raise DataError(where, lineno, f"line number {number} neither follows {previous} nor restarts a story at 1")
        previous = number
        fields = rest.split("\t")
        if len(fields) == 1:
            if not rest.strip():
                raise DataError(where, lineno, "empty sentence")
            sentences.append(rest.strip())
            continue
        if len(fields) != 3 or not fields[0].strip() or not fields[1].strip():
            raise DataError(where, lineno, f"a question line needs 3 tab-separated fields (question, answer, "
                                           f"supporting ids), non-empty question and answer; found {len(fields)}")
        question, answer = fields[0].strip(), fields[1].strip()
        src = "\n".join([f"task{task}", *sentences[-MAX_STORY:], question])
        stories[-1].append(Question(task, len(stories), src, answer))
    return [s for s in stories if s]


def split_valid(task: int, stories: list[list[Question]]) -> tuple[list[list[Question]], list[list[Question]]]:
    """(train, valid): ``VALID_SHARE`` of the stories held out, chosen by a generator seeded
    with the task number (the same on every run), both kept in file order."""
    n_valid = round(VALID_SHARE * len(stories))
    held = set(random.Random(task).sample(range(len(stories)), n_valid))
    return ([s for i, s in enumerate(stories) if i not in held], [s for i, s in enumerate(stories) if i in held])


def _lines(stories: list[list[Question]]) -> list[str]:
    return [json.dumps({"task": q.task, "story": q.story, "src": q.src, "tgt": q.tgt}, ensure_ascii=False) + "\n"
            for story in stories for q in story]


def files_for(raw: dict[tuple[str, int, str], tuple[str, bytes]], size: str,
              where: str) -> tuple[dict[tuple[int, str], tuple[str, bytes]], dict[str, str]]:
    """``{(task, split): (where, bytes)}`` for ``size``, and the fallbacks used (task -> member):
    a training file missing from en-10k is taken from en (1k), which the 10k set needs for task 3."""
    folder = SIZES[size]
    chosen, fallback = {}, {}
    for task in TASKS:
        for split in ("train", "test"):
            key = (folder, task, split)
            if key not in raw and folder != "en" and split == "train" and ("en", task, split) in raw:
                key = ("en", task, split)
                fallback[str(task)] = raw[key][0].removeprefix(f"{where}/")
                log.info("babi %s: task %d has no training file in babi/%s; using the 1k one (%s)",
                         size, task, folder, fallback[str(task)])
            if key not in raw:
                raise DataError(where, None, f"has no {folder}/qa{task}_*_{split}.txt: is it the bAbI archive?")
            chosen[(task, split)] = raw[key]
    return chosen, fallback


def convert(files: dict[tuple[int, str], tuple[str, bytes]]) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {s: [] for s in SPLITS}
    for task in TASKS:
        train, valid = split_valid(task, parse(*files[(task, "train")], task))
        test = parse(*files[(task, "test")], task)
        for split, stories in (("train", train), ("valid", valid), ("test", test)):
            rows[split] += _lines(stories)
        log.info("babi task %d: %d train, %d valid, %d test questions", task,
                 *(sum(map(len, s)) for s in (train, valid, test)))
    return rows


def prepare(archive: str | Path, out_dir: str | Path | None = None, size: str = "1k",
            overwrite: bool = False) -> dict[str, Path]:
    """Write ``out_dir/{train,valid,test}.jsonl`` from ``archive`` and return their paths (nothing
    is written when they are already there from the same archive; see :mod:`.prepared`)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    raw = read_archive(archive)
    files, fallback = files_for(raw, size, str(Path(archive)))
    digest = hashlib.sha256(b"".join(files[k][1] for k in sorted(files))).hexdigest()
    out = Path(out_dir if out_dir is not None else DEFAULT_DIRS[size])
    paths = {s: out / f"{s}.jsonl" for s in SPLITS}
    wanted = {"dataset": "babi", "size": size, "format": FORMAT, "source_sha256": digest,
              "max_story": MAX_STORY, "valid": f"{VALID_SHARE:.0%} of each task's training stories, "
                                               f"random.Random(task).sample", "fallback": fallback}
    if write_splits(paths, wanted, lambda: convert(files), overwrite) is None:
        log.info("%s: already prepared from this archive", out)
    return paths


# ------------------------------------------------------------------------- the results table
def error_table(tasks: list[int], hyps: list[str], refs: list[list[str]]) -> str:
    """The table of bAbI papers: test error (%) per task (exact match against the answer), the
    mean over the tasks present and the number of failed tasks (error > 5%). ``tasks[i]`` is
    the task of ``hyps[i]``. For bench/qa.py and the README's recipe."""
    from ..metrics import score_groups

    grouped = score_groups(hyps, refs, [str(t) for t in tasks], ["wer"])
    errors = {int(k): s.values["wer"] for k, s in grouped.groups.items()}
    failed = [t for t, e in errors.items() if e > FAILED_ABOVE]
    lines = [f"{'task':>4}  {'questions':>9}  {'error':>7}"]
    lines += [f"{t:>4}  {grouped.counts[str(t)]:>9,}  {errors[t]:>6.1f}%" for t in sorted(errors)]
    lines.append(f"mean error over {len(errors)} tasks: {grouped.mean['wer']:.1f}%")
    lines.append(f"failed tasks (error > {FAILED_ABOVE:g}%): {len(failed)}"
                 + (f" ({', '.join(map(str, sorted(failed)))})" if failed else ""))
    return "\n".join(lines)
