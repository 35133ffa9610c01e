"""TweetQA: questions about tweets with free-form answers written by people (Xiong et al. 2019).

Read at run time from the files as published, ``train.json.gz`` and ``dev.json.gz``: JSON with
the fields ``Question``, ``Answer``, ``Tweet`` and ``qid``, either a list of records or (the
published train file) one object per field mapping a row number to its value; ``Answer`` is a
string or a list of strings (dev: two references per question, written by two annotators).
The official test answers are not public, so the official dev set is the test set here.

``s2s prepare tweetqa DATA_DIR [OUT_DIR]`` writes, one ``{"qid", "src", "tgt"}`` a line:

- ``src`` is the question, a line break (the reserved piece ``<sep>`` to the tokenizers), then
  the tweet; ``tgt`` the answer. Blanks at the ends are dropped; nothing else is changed.
- ``train.jsonl`` and ``tune.jsonl``: the official training set, 10% of its tweets (with all
  their questions, so no tuning tweet was seen in training) held out for tuning, chosen by a
  generator with a fixed seed (the same on every run).
- ``test.jsonl``: the official dev set, one line per distinct reference of a question (so a
  question whose two annotators agree has one line); scored with ``group_by_source`` (the
  recipe sets it), each question is one item with its references as alternatives. Four
  published dev records have an empty question (kept: the source is then the tweet alone),
  and three pairs of records share both question and tweet (repeated qids): each pair is one
  item, so the 1,086 records score as 1,083 items.

Metrics (TweetQA paper): BLEU-1 and ROUGE-L, multi-reference; METEOR (needs Java) is not
computed. The official script (tweetqa_eval.py) first normalises answers SQuAD-style (lower
case, no punctuation, no articles), then averages NLTK's sentence-level BLEU-1 and the COCO
caption ROUGE-L (LCS F-measure with beta 1.2) over questions; this toolkit's ``bleu1``
(sacreBLEU, corpus-level) and ``rougeL`` (rouge-score F1, stemmed) do neither, so their numbers
are close to the paper's but not the same measure. A record without a tweet or an answer is skipped, logged and counted.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
import zlib
from pathlib import Path
from typing import Any

from ..errors import DataError
from .prepared import write_splits

log = logging.getLogger("seq2seqkit")

SPLITS = ("train", "tune", "test")
DEFAULT_DIR = "data/tweetqa"  # where configs/tweetqa-attention.yaml reads
TUNE_SHARE = 0.1  # of the training tweets
SEED = 13
FORMAT = 1
FIELDS = ("Question", "Answer", "Tweet", "qid")


def _load(path: Path) -> Any:
    if not path.is_file():
        raise DataError(path, None, "no such file (TweetQA's train.json.gz / dev.json.gz)")
    data = path.read_bytes()
    try:
        text = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        return json.loads(text.decode("utf-8"))
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(path, None, f"not a readable gzip file ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None


def records(path: str | Path) -> list[dict[str, Any]]:
    """The records of one file, whichever of the two published layouts it has."""
    path = Path(path)
    data = _load(path)
    if isinstance(data, dict) and all(isinstance(data.get(f), dict) for f in FIELDS):
        rows = sorted(data["qid"], key=lambda k: (len(k), k))  # "0", "1", ..., "10", ...
        return [{f: data[f].get(r) for f in FIELDS} for r in rows]
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    raise DataError(path, None, f"expected a JSON list of {{{', '.join(FIELDS)}}} records, or an object of "
                                f"those fields mapping row numbers to values")


def _answers(value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    out: list[str] = []
    for a in values:
        if isinstance(a, str) and a.strip() and a.strip() not in out:
            out.append(a.strip())
    return out


def pairs(path: str | Path) -> list[tuple[str, str, str, list[str]]]:
    """``(qid, tweet, src, answers)`` of each usable record; the others are logged and counted."""
    out, skipped = [], []
    for n, r in enumerate(records(path), 1):
        question, tweet, answers = r.get("Question"), r.get("Tweet"), _answers(r.get("Answer"))
        qid = str(r.get("qid", n))
        if not (isinstance(question, str) and isinstance(tweet, str) and tweet.strip() and answers):
            skipped.append(qid)
            continue
        out.append((qid, tweet.strip(), f"{question.strip()}\n{tweet.strip()}", answers))
    if skipped:
        log.info("tweetqa %s: skipped %d record(s) without a tweet or an answer (qid %s)", Path(path).name,
                 len(skipped), ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""))
    return out


def split_tune(rows: list[tuple[str, str, str, list[str]]]) -> tuple[list, list]:
    """(train, tune): ``TUNE_SHARE`` of the distinct tweets and all their questions held out,
    the same on every run; both keep the file's order."""
    tweets = sorted({tweet for _, tweet, _, _ in rows})
    held = set(random.Random(SEED).sample(tweets, round(TUNE_SHARE * len(tweets))))
    return [r for r in rows if r[1] not in held], [r for r in rows if r[1] in held]


def _line(qid: str, src: str, tgt: str) -> str:
    return json.dumps({"qid": qid, "src": src, "tgt": tgt}, ensure_ascii=False) + "\n"


def convert(train_path: Path, dev_path: Path) -> dict[str, list[str]]:
    train, tune = split_tune(pairs(train_path))
    test = pairs(dev_path)
    rows = {"train": [_line(q, s, a[0]) for q, _, s, a in train],
            "tune": [_line(q, s, a[0]) for q, _, s, a in tune],
            "test": [_line(q, s, ref) for q, _, s, a in test for ref in a]}
    log.info("tweetqa: %d train, %d tune questions (%d tweets held out); test: %d questions, %d lines "
             "(a line per distinct reference)", len(train), len(tune), len({t for _, t, _, _ in tune}),
             len(test), len(rows["test"]))
    return rows


def prepare(data_dir: str | Path, out_dir: str | Path = DEFAULT_DIR, overwrite: bool = False) -> dict[str, Path]:
    """Write ``out_dir/{train,tune,test}.jsonl`` from ``data_dir/{train,dev}.json.gz`` and return
    their paths (nothing is written when they are there from the same files; see :mod:`.prepared`)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(folder, None, "not a folder (the TweetQA folder holding train.json.gz and dev.json.gz)")
    train_path, dev_path = folder / "train.json.gz", folder / "dev.json.gz"
    digest = hashlib.sha256(b"".join(p.read_bytes() if p.is_file() else b"" for p in (train_path, dev_path)))
    paths = {s: Path(out_dir) / f"{s}.jsonl" for s in SPLITS}
    wanted = {"dataset": "tweetqa", "format": FORMAT, "source_sha256": digest.hexdigest(),
              "tune": f"{TUNE_SHARE:.0%} of the training tweets, random.Random({SEED}).sample",
              "test": "official dev (the test answers are not public)"}
    if write_splits(paths, wanted, lambda: convert(train_path, dev_path), overwrite) is None:
        log.info("%s: already prepared from these files", out_dir)
    return paths
