"""Summarization on SAMSum-shaped data: `s2s prepare samsum`, the <sep> turn separator in every
tokenizer, source truncation, `s2s generate` on JSONL, ROUGE, and the recipe config.

The archive here is a tiny stand-in written in tmp_path with the published layout
(samsum/{train,val,test}.json lists of {id, summary, dialogue}, plus the licence and README);
the real corpus is never read by tests.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import zipfile
from pathlib import Path

import pytest

import seq2seqkit
from seq2seqkit.cli import CONFIG_DIR, main, one_line
from seq2seqkit.config import CorpusConfig, DataConfig, TokenizerConfig, from_dict, load_config
from seq2seqkit.data.dataset import encode_corpus
from seq2seqkit.data.tokenizers import SEP, SPECIALS, SentencePieceTokenizer, VocabTokenizer, load_tokenizers, save_tokenizers
from seq2seqkit.errors import ConfigError
from seq2seqkit.metrics import Scores, score, summary_sentences
from seq2seqkit.tasks import samsum

from conftest import one_line_error, read_jsonl

NAMES = ["Anna", "Ben", "Carla", "Dmitri", "Ewa", "Femi", "Gus", "Hana"]


def dialogue(i: int, turns: int = 4) -> str:
    a, b = NAMES[i % len(NAMES)], NAMES[(i + 3) % len(NAMES)]
    lines = [f"{a if t % 2 == 0 else b}: message {t} about plan {i} " for t in range(turns)]
    return "\r\n".join(lines) if i % 3 else "\n".join(lines)  # \r\n in most, as in the corpus


def record(i: int, **override: object) -> dict:
    a, b = NAMES[i % len(NAMES)], NAMES[(i + 3) % len(NAMES)]
    return {"id": str(13800000 + i), "summary": f"{a} and {b} talk about plan {i}. ", "dialogue": dialogue(i), **override}


def write_archive(path: Path, splits: dict[str, list]) -> Path:
    """A zip with the published layout: a samsum/ folder entry, the licence, README and JSON splits."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("samsum/", "")
        z.writestr("samsum/licence.txt", "stand-in licence\n")
        z.writestr("samsum/README.txt", "stand-in readme\n")
        for split, records in splits.items():
            z.writestr(f"samsum/{split}.json", json.dumps(records, indent=1))
    return path


def standard_splits() -> dict[str, list]:
    train = [record(i) for i in range(12)]
    train[5] = record(5, dialogue="")  # the corpus has one empty training dialogue
    return {"train": train, "val": [record(i) for i in range(20, 23)], "test": [record(i) for i in range(30, 34)]}


# --------------------------------------------------------------------------------- prepare
def test_prepare_writes_the_splits_and_skips_the_empty_dialogue(tmp_path, caplog, capsys):
    archive = write_archive(tmp_path / "samsum.zip", standard_splits())
    out = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="seq2seqkit"):
        assert main(["prepare", "samsum", str(archive), str(out)]) == 0
    assert "train: " + str(out / "train.jsonl") in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [".seq2seqkit.lock", "MANIFEST.json", "test.jsonl", "train.jsonl",
                                                     "val.jsonl"]  # the lock: empty once prepare ended
    rows = {s: read_jsonl(out / f"{s}.jsonl") for s in samsum.SPLITS}
    assert {s: len(r) for s, r in rows.items()} == {"train": 11, "val": 3, "test": 4}
    assert json.loads((out / "MANIFEST.json").read_text())["rows"] == {"train": 11, "val": 3, "test": 4}
    assert "samsum train: skipped 1 record(s) with an empty dialogue or summary (id 13800005)" in caplog.text
    first = rows["train"][0]
    assert first == {"id": "13800000", "tgt": "Anna and Dmitri talk about plan 0.",
                     "src": "Anna: message 0 about plan 0\nDmitri: message 1 about plan 0\n"
                            "Anna: message 2 about plan 0\nDmitri: message 3 about plan 0"}
    assert all("\r" not in r["src"] and r["src"].count("\n") == 3 for split in rows.values() for r in split)
    assert [r["id"] for r in rows["test"]] == [str(13800000 + i) for i in range(30, 34)]
    # the toolkit's own JSONL reader takes the extra "id" key
    assert main(["check-data", str(out / "train.jsonl")]) == 0


def test_prepare_reads_the_extracted_folder_and_does_not_redo_work(tmp_path):
    splits = standard_splits()
    folder = tmp_path / "extracted" / "samsum"
    folder.mkdir(parents=True)
    for split, records in splits.items():
        (folder / f"{split}.json").write_text(json.dumps(records))
    from_zip = samsum.prepare(write_archive(tmp_path / "samsum.zip", splits), tmp_path / "a")
    from_dir = samsum.prepare(tmp_path / "extracted", tmp_path / "b")
    for split in samsum.SPLITS:
        assert from_zip[split].read_bytes() == from_dir[split].read_bytes()
    os.utime(from_dir["train"], ns=(10**9, 10**9))
    samsum.prepare(tmp_path / "extracted", tmp_path / "b")  # same content: nothing rewritten
    assert from_dir["train"].stat().st_mtime_ns == 10**9
    samsum.prepare(tmp_path / "extracted", tmp_path / "b", overwrite=True)
    assert from_dir["train"].stat().st_mtime_ns != 10**9


def test_prepare_never_replaces_files_it_did_not_write(tmp_path, capsys):
    archive = write_archive(tmp_path / "samsum.zip", standard_splits())
    out = tmp_path / "data"
    out.mkdir()
    (out / "val.jsonl").write_text("my own\n")
    assert main(["prepare", "samsum", str(archive), str(out)]) == 2
    assert "val.jsonl: exists and was not written by 's2s prepare'" in one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["val.jsonl"]
    assert (out / "val.jsonl").read_text() == "my own\n"


def bad_archives(tmp_path: Path) -> list[tuple[Path, str]]:
    """(archive, what its one-line error must say)."""
    no_summary = standard_splits()
    del no_summary["val"][1]["summary"]
    not_str = standard_splits()
    not_str["test"][2]["dialogue"] = ["a", "b"]
    bad_json = tmp_path / "bad_json.zip"
    with zipfile.ZipFile(bad_json, "w") as z:
        for split in samsum.SPLITS:
            z.writestr(f"samsum/{split}.json", "[{\"id\": 1,]" if split == "train" else "[]")
    good = write_archive(tmp_path / "good.zip", standard_splits()).read_bytes()
    (tmp_path / "truncated.zip").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.zip").write_text("not a zip\n")
    no_test = tmp_path / "no_test.zip"
    write_archive(no_test, {k: v for k, v in standard_splits().items() if k != "test"})
    return [
        (tmp_path / "missing.zip", "missing.zip: no such file"),
        (tmp_path / "truncated.zip", "truncated.zip: not a readable zip archive"),
        (tmp_path / "text.zip", "text.zip: not a readable zip archive"),
        (no_test, "no_test.zip: has no samsum/test.json"),
        (bad_json, "bad_json.zip/samsum/train.json:1: invalid JSON"),
        (write_archive(tmp_path / "no_summary.zip", no_summary),
         'no_summary.zip/samsum/val.json: record 2 (id 13800021): missing key "summary"'),
        (write_archive(tmp_path / "not_str.zip", not_str),
         'not_str.zip/samsum/test.json: record 3 (id 13800032): "dialogue" must be a string'),
    ]


def test_bad_archives_are_one_line_and_write_nothing(tmp_path, capsys):
    for archive, message in bad_archives(tmp_path):
        out = tmp_path / f"out-{archive.stem}"
        assert main(["prepare", "samsum", str(archive), str(out)]) == 2, archive
        assert message in one_line_error(capsys)
        assert not out.exists()


# ------------------------------------------------------------------------------ separators
DIALOGUES = [dialogue(i, turns=3 + i % 3) for i in range(40)]


def trained_tokenizers() -> dict[str, object]:
    return {"char": VocabTokenizer.train(TokenizerConfig(kind="char"), DIALOGUES),
            "word": VocabTokenizer.train(TokenizerConfig(kind="word"), DIALOGUES),
            "sentencepiece": SentencePieceTokenizer.train(TokenizerConfig(vocab_size=60), DIALOGUES)}


def test_turn_boundaries_survive_every_tokenizer(tmp_path):
    text = "Anna: message 1 about plan 7 \r\nBen: message 2\n\n  Anna: plan 3 "
    for kind, tok in trained_tokenizers().items():
        assert tok.id_to_piece(4) == SEP and tok.sep_id == 4, kind
        ids = tok.encode(text)
        assert ids.count(4) == 2, kind  # two boundaries (the blank line is not a turn), each one piece
        assert tok.decode(ids) == "Anna: message 1 about plan 7\nBen: message 2\nAnna: plan 3", kind
        assert tok.encode(tok.decode(ids)) == ids, kind
        assert tok.encode("Anna: plan 3<sep>Ben: message 2") == tok.encode("Anna: plan 3\nBen: message 2"), kind
        assert tok.encode("\nBen: message 2\n") == tok.encode("Ben: message 2"), kind  # no turn at the ends
        # a turn's first word is cut as it is elsewhere (SentencePiece: the same word-initial piece)
        assert tok.pieces("x\nBen")[-len(tok.pieces("Ben")):] == tok.pieces("Ben"), kind
        save_tokenizers(tmp_path / kind, tok, tok)
        assert load_tokenizers(tmp_path / kind)[0].encode(text) == ids, kind


def test_a_vocabulary_without_sep_reads_line_breaks_as_spaces():
    old = VocabTokenizer("word", [*SPECIALS, "a", "b"])  # as saved before <sep> existed
    assert old.sep_id is None
    assert old.encode("a\nb") == old.encode("a b") == [4, 5]


def test_one_line_output_writes_a_generated_line_break_as_sep():
    assert one_line("Anna comes.\nBen stays.") == "Anna comes. <sep> Ben stays."
    assert one_line("no break") == "no break"
    tok = trained_tokenizers()["word"]
    assert tok.encode(one_line("Anna: plan 3\nBen: plan 4")) == tok.encode("Anna: plan 3\nBen: plan 4")


# ------------------------------------------------------------------------------ truncation
def test_long_sources_are_cut_or_skipped_and_counted(tmp_path, caplog):
    path = tmp_path / "pairs.jsonl"
    lengths = [3, 8, 12, 5, 9]
    path.write_text("".join(json.dumps({"src": " ".join(["a"] * n), "tgt": "b"}) + "\n" for n in lengths))
    tok = VocabTokenizer.train(TokenizerConfig(kind="word"), ["a b"])
    corpus = CorpusConfig(path=str(path))
    with caplog.at_level(logging.INFO):
        cut = encode_corpus(corpus, DataConfig(max_src_len=6, truncate_src=True), tok, tok, "train")
    assert list(cut.src_lens) == [3, 6, 6, 5, 6]
    assert "train: cut 3 of 5 sources to data.max_src_len=6 tokens (data.truncate_src)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        skipped = encode_corpus(corpus, DataConfig(max_src_len=6), tok, tok, "train")
    assert list(skipped.src_lens) == [3, 5]
    assert "skipped 0 empty and 3 too long" in caplog.text and "cut" not in caplog.text


# -------------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny attention model trained for a few steps on prepared stand-in data (the outputs
    are not good; the tests check how inputs and outputs travel)."""
    tmp = tmp_path_factory.mktemp("samsum")
    splits = {"train": [record(i) for i in range(60)], "val": [record(i) for i in range(60, 66)],
              "test": [record(i) for i in range(66, 70)]}
    paths = samsum.prepare(write_archive(tmp / "samsum.zip", splits), tmp / "data")
    cfg = {"output_dir": str(tmp / "model"),
           "data": {"train": {"path": str(paths["train"])}, "dev": {"path": str(paths["val"])},
                    "max_src_len": 20, "truncate_src": True},
           "tokenizer": {"joint": True, "src": {"kind": "word"}, "tgt": {"kind": "word"}},
           "model": {"family": "attention", "embed_dim": 16, "hidden_size": 16, "dropout": 0.0},
           "training": {"max_steps": 4, "batch_tokens": 2000, "num_threads": 1, "log_every": 2,
                        "early_stopping": {"metric": "rougeL"}},
           "search": {"max_len_a": 0.0, "max_len_b": 12},
           "evaluation": {"metrics": ["rouge1", "rougeL"]}}
    seq2seqkit.train(from_dict(cfg))
    return tmp / "model"


def write_inputs(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_generate_reads_jsonl_sources_and_translate_is_an_alias(model_dir, tmp_path, capsys):
    dialogues = [dialogue(i, turns=2 + i) for i in range(4)]  # 13, 20, 27, 34 words: two are cut
    jsonl = write_inputs(tmp_path / "in.jsonl", [json.dumps({"id": i, "src": d}) for i, d in enumerate(dialogues)]
                         + [""])  # a blank line is skipped, as in a JSONL corpus
    assert main(["-q", "generate", "-m", str(model_dir), "-i", str(jsonl), "-o", str(tmp_path / "a.txt")]) == 0
    # trained with data.truncate_src: inputs are cut to data.max_src_len, as in training
    assert capsys.readouterr().err.count("over the limit of 20 (") == 2
    expected = seq2seqkit.load(str(model_dir)).translate(dialogues)
    assert (tmp_path / "a.txt").read_text().splitlines() == [one_line(e) for e in expected]
    # the format flag (here a name without .jsonl), and the old verb
    other = write_inputs(tmp_path / "dialogues.txt", jsonl.read_text().splitlines())
    assert main(["-q", "translate", "-m", str(model_dir), "-i", str(other), "--input-format", "jsonl",
                 "-o", str(tmp_path / "b.txt")]) == 0
    assert (tmp_path / "b.txt").read_text() == (tmp_path / "a.txt").read_text()
    # plain lines still work, through both verbs
    plain = write_inputs(tmp_path / "plain.txt", ["Anna: hi", "Ben: plan 3"])
    for verb in ("generate", "translate"):
        assert main(["-q", verb, "-m", str(model_dir), "-i", str(plain), "-o", str(tmp_path / f"{verb}.txt")]) == 0
    assert (tmp_path / "generate.txt").read_text() == (tmp_path / "translate.txt").read_text()
    assert len((tmp_path / "generate.txt").read_text().splitlines()) == 2


def test_generate_reads_jsonl_from_stdin(model_dir, monkeypatch, capsys):
    data = json.dumps({"src": dialogue(1)}) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    assert main(["-q", "generate", "-m", str(model_dir), "--input-format", "jsonl"]) == 0
    assert capsys.readouterr().out.splitlines() == [one_line(seq2seqkit.load(str(model_dir)).translate(dialogue(1))[0])]


def test_generate_refuses_a_jsonl_line_without_src_and_writes_nothing(model_dir, tmp_path, capsys):
    jsonl = write_inputs(tmp_path / "in.jsonl", [json.dumps({"src": "Anna: hi"}), json.dumps({"text": "Ben: yo"})])
    out = tmp_path / "out.txt"
    assert main(["generate", "-m", str(model_dir), "-i", str(jsonl), "-o", str(out)]) == 2
    assert one_line_error(capsys) == f's2s: error: {jsonl}:2: missing key "src"'
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    assert main(["generate", "-m", str(model_dir), "-i", str(jsonl)]) == 2  # to stdout: no line printed
    assert capsys.readouterr().out == ""


def test_evaluate_with_rouge_prints_the_signature(model_dir, capsys):
    test = model_dir.parent / "data" / "test.jsonl"
    assert main(["-q", "evaluate", "-m", str(model_dir), "--src", str(test), "--metrics", "rouge1", "rouge2",
                 "rougeL", "rougeLsum"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ROUGE-1 ") and " | ROUGE-2 " in out[0] and " | ROUGE-Lsum " in out[0]
    assert out[1].startswith("ROUGE signature: nrefs:1|") and "stem:porter" in out[1]
    log = [json.loads(line) for line in (model_dir / "train_log.jsonl").read_text().splitlines()]
    assert any("rougeL" in entry and "rouge1" in entry for entry in log)  # computed at validation


# ----------------------------------------------------------------------------------- ROUGE
def test_rouge_matches_rouge_score_computed_directly():
    from rouge_score.rouge_scorer import RougeScorer

    hyps = ["Anna and Ben are going to the cinema tonight.", "Carla will bring the cakes",
            "Femi is running late. He missed the bus."]
    refs = ["Anna and Ben will go to the cinema tonight.", "Carla is bringing cakes to the party.",
            "Femi missed the bus. He is running late!"]
    names = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = RougeScorer(names, use_stemmer=True)
    # rougeLsum reads sentences as lines: the third pair has two sentences on each side
    direct = [scorer.score(r, h) for r, h in zip(refs[:2], hyps[:2])]
    direct.append(scorer.score("Femi missed the bus.\nHe is running late!", "Femi is running late.\nHe missed the bus."))
    s = score(hyps, [[r] for r in refs], names)
    for name in names:
        assert s.values[name] == pytest.approx(100 * sum(d[name].fmeasure for d in direct) / 3), name
    assert s.values["rougeLsum"] != pytest.approx(s.values["rougeL"])  # the split matters on pair 3
    assert 0 < s.values["rouge2"] < s.values["rouge1"] < 100


def test_rouge_multi_reference_takes_the_best_reference_per_type():
    from rouge_score.rouge_scorer import RougeScorer

    hyp = "Gus will buy the tickets for the concert."
    refs = ["Gus buys concert tickets.", "Hana asked Gus to buy the tickets for Friday's concert."]
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    each = [scorer.score(r, hyp) for r in refs]
    s = score([hyp, hyp], [refs, refs[:1]], ["rouge1", "rouge2", "rougeL"])
    for name in ("rouge1", "rouge2", "rougeL"):
        best = max(e[name].fmeasure for e in each)
        assert s.values[name] == pytest.approx(100 * (best + each[0][name].fmeasure) / 2), name
    assert s.signatures["rouge"].startswith("nrefs:var|multiref:max-f1|stem:porter|")
    assert score([hyp], [refs], ["rouge1"]).signatures["rouge"].startswith("nrefs:2|")
    # stemming is on: "buys" and "buy" match
    assert score(["Gus buys"], [["Gus buy"]], ["rouge1"]).values["rouge1"] == pytest.approx(100.0)


def test_rouge_scores_format_with_the_signature():
    text = Scores({"rouge1": 40.0, "rougeL": 30.5}, {"rouge": "nrefs:1|stem:porter"}).format()
    assert text == "ROUGE-1 40.00 | ROUGE-L 30.50\nROUGE signature: nrefs:1|stem:porter"


def test_summary_sentences_for_rouge_lsum():
    assert summary_sentences("Anna is late. Ben waits at 5 p.m. at home! \"Why?\" (Nobody knows.)") == \
        "Anna is late.\nBen waits at 5 p.m. at home!\n\"Why?\"\n(Nobody knows.)"
    assert summary_sentences("Anna comes <sep> Ben stays\r\n\r\nCarla too ") == "Anna comes\nBen stays\nCarla too"


# ---------------------------------------------------------------------------------- config
def test_early_stopping_on_rouge_needs_it_at_validation():
    cfg = from_dict({"evaluation": {"metrics": ["rouge1", "rougeL"]}, "data": {"dev": {"path": "d.jsonl"}},
                     "training": {"early_stopping": {"metric": "rougeL", "patience": 2}}})
    assert cfg.training.early_stopping.metric == "rougeL"
    with pytest.raises(ConfigError, match=r"training.early_stopping.metric: 'rougeL' is not computed at validation"):
        from_dict({"training": {"early_stopping": {"metric": "rougeL"}}})
    with pytest.raises(ConfigError, match=r"evaluation.metrics.0: "):
        from_dict({"evaluation": {"metrics": ["rouge"]}})


def test_recipe_config_reads_where_prepare_writes():
    cfg = load_config(CONFIG_DIR / "samsum-attention.yaml")
    assert cfg.model.family == "attention" and cfg.tokenizer.src.kind == "sentencepiece"
    for split, name in (("train", "train"), ("dev", "val"), ("test", "test")):
        assert getattr(cfg.data, split).path == f"{samsum.DEFAULT_DIR}/{name}.jsonl"
    assert cfg.training.early_stopping.metric in cfg.evaluation.metrics
    assert cfg.data.truncate_src
