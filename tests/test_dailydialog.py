"""Dialogue on DailyDialog-shaped data: `s2s prepare dailydialog`, the dialogue metrics
(BLEU-1/2, Distinct-1/2, length, perplexity), the recipe config and `s2s chat`.

The archives here are tiny stand-ins written in tmp_path with the published layout
(NAME.zip holding NAME/ and NAME/dialogues_{,act_,emotion_}NAME.txt, one dialogue a line,
utterances ended by ' __eou__'); the real corpus is never read by tests.
"""

from __future__ import annotations

import io
import json
import logging
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU

from seq2seqkit.cli import CONFIG_DIR, main
from seq2seqkit.config import from_dict, load_config
from seq2seqkit.errors import ConfigError
from seq2seqkit.metrics import distinct, score
from seq2seqkit.tasks import dailydialog

from conftest import one_line_error, read_jsonl, tiny_config

NAMES = {"train": "train", "val": "validation", "test": "test"}


def line(*utterances: str) -> str:
    return "".join(f"{u} __eou__ " for u in utterances).rstrip(" ")  # as published: ' __eou__' after each


def write_archives(folder: Path, splits: dict[str, list[str]], raw: dict[str, bytes] | None = None) -> Path:
    """train.zip, validation.zip, test.zip in ``folder`` with the published layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in NAMES.items():
        text = (raw or {}).get(split, "".join(d + "\n" for d in splits[split]).encode())
        with zipfile.ZipFile(folder / f"{name}.zip", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{name}/", "")
            z.writestr(f"{name}/dialogues_act_{name}.txt", "1 2\n")
            z.writestr(f"{name}/dialogues_emotion_{name}.txt", "0 0\n")
            z.writestr(f"{name}/dialogues_{name}.txt", text)
    return folder


def standard_splits() -> dict[str, list[str]]:
    return {
        "train": [line("Hi .", "Hello , Tom .", "How are you ?", "Fine , thanks .", "Good ."),
                  line("Lonely line ."),  # one utterance: no pair, skipped with a count
                  line("Where is the bank ?", "Over   there .")],  # blanks inside are collapsed
        "val": [line("Ready ?", "Yes .")],
        "test": [line("where is the BANK ?", "Next to the shop ."),  # its context is in train (up to case)
                 line("What a day !", "Indeed .", "Tea ?")],
    }


# --------------------------------------------------------------------------------- prepare
def test_pairs_history_skips_and_the_unseen_test_split(tmp_path, caplog, capsys):
    archives = write_archives(tmp_path / "dd", standard_splits())
    out = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="seq2seqkit"):
        assert main(["prepare", "dailydialog", str(archives), str(out)]) == 0
    assert "test-unseen: " + str(out / "test-unseen.jsonl") in capsys.readouterr().out
    rows = {s: read_jsonl(out / f"{s}.jsonl") for s in ("train", "val", "test", "test-unseen")}
    assert {s: len(r) for s, r in rows.items()} == {"train": 5, "val": 1, "test": 3, "test-unseen": 2}
    train = rows["train"]
    # every utterance after the first is a target; its source the (at most 3) turns before it, one a line
    assert [r["tgt"] for r in train] == ["Hello , Tom .", "How are you ?", "Fine , thanks .", "Good .", "Over there ."]
    assert train[0]["src"] == "Hi ."
    assert train[3]["src"] == "Hello , Tom .\nHow are you ?\nFine , thanks ."  # 3 turns, "Hi ." dropped
    assert [r["id"] for r in train] == ["train-1-2", "train-1-3", "train-1-4", "train-1-5", "train-3-2"]
    assert "skipped 1 dialogue(s) with a single utterance (line 2" in caplog.text
    # the first test pair's context is a training context up to case; the other two are new
    assert [r["context_in_train"] for r in rows["test"]] == [True, False, False]
    assert rows["test-unseen"] == [r for r in rows["test"] if not r["context_in_train"]]
    assert "1 of 3 pairs have a context that occurs in train" in caplog.text
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["turns"] == 3 and manifest["rows"] == {"train": 5, "val": 1, "test": 3, "test-unseen": 2}


def test_turns_option_and_redo_when_it_changes(tmp_path):
    archives = write_archives(tmp_path / "dd", standard_splits())
    out = tmp_path / "data"
    assert main(["prepare", "dailydialog", str(archives), str(out), "--turns", "1"]) == 0
    assert [r["src"] for r in read_jsonl(out / "train.jsonl")][:4] == ["Hi .", "Hello , Tom .", "How are you ?", "Fine , thanks ."]
    assert main(["prepare", "dailydialog", str(archives), str(out), "--turns", "2"]) == 0  # ours: rewritten
    assert read_jsonl(out / "train.jsonl")[3]["src"] == "How are you ?\nFine , thanks ."
    assert json.loads((out / "MANIFEST.json").read_text())["turns"] == 2


@pytest.mark.parametrize("case, expected", [
    ("missing", "validation.zip: no such file"),
    ("file", "train.zip: not a directory (give the folder holding"),
    ("corrupt", "validation.zip: not a readable zip archive"),
    ("no member", "validation.zip: has no validation/dialogues_validation.txt"),
    ("unterminated", "dialogues_validation.txt:2: the last utterance is not ended by '__eou__'"),
    ("empty utterance", "dialogues_validation.txt:1: an empty utterance"),
    ("not utf-8", "dialogues_validation.txt:2: not UTF-8 text (byte 4 of the line)"),
    ("turns", "--turns: must be at least 1, got 0"),
])
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, capsys, case, expected):
    splits = standard_splits()
    raw = {"unterminated": {"val": b"Ready ? __eou__ Yes . __eou__\nSo ? __eou__ Cut off\n"},
           "empty utterance": {"val": b"Ready ? __eou__ __eou__ Yes . __eou__\n"},
           "not utf-8": {"val": b"Ready ? __eou__ Yes . __eou__\nCaf\xe9 ? __eou__ Yes . __eou__\n"}}.get(case)
    archives = write_archives(tmp_path / "dd", splits, raw)
    if case == "missing":
        (archives / "validation.zip").unlink()
    elif case == "corrupt":
        (archives / "validation.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    elif case == "no member":
        with zipfile.ZipFile(archives / "validation.zip", "w") as z:
            z.writestr("validation/", "")
    out = tmp_path / "data"
    given = archives / "train.zip" if case == "file" else archives
    assert main(["prepare", "dailydialog", str(given), str(out), "--turns", "0" if case == "turns" else "3"]) == 2
    assert expected in one_line_error(capsys)
    assert not out.exists()


def test_refuses_files_it_did_not_write(tmp_path, capsys):
    archives = write_archives(tmp_path / "dd", standard_splits())
    out = tmp_path / "data"
    out.mkdir()
    (out / "train.jsonl").write_text("mine\n")
    assert main(["prepare", "dailydialog", str(archives), str(out)]) == 2
    assert "was not written by 's2s prepare'" in one_line_error(capsys)
    assert (out / "train.jsonl").read_text() == "mine\n"


# --------------------------------------------------------------------------------- metrics
def test_distinct_n_by_hand():
    hyps = ["i do not know", "i do not know", "yes i do"]
    # unigrams: 11 in all, distinct {i, do, not, know, yes}: 5; bigrams: 8 in all,
    # distinct {i do, do not, not know, yes i}: 4
    assert distinct(hyps, 1) == pytest.approx(100 * 5 / 11)
    assert distinct(hyps, 2) == pytest.approx(100 * 4 / 8)
    assert distinct(["one", ""], 2) == 0.0  # no bigram at all
    s = score(hyps, [["x"]] * 3, ["distinct1", "distinct2", "length"])
    assert s.values == pytest.approx({"distinct1": 500 / 11, "distinct2": 50.0, "length": 11 / 3})


def test_bleu1_bleu2_match_sacrebleu_and_hand_values():
    hyps = ["the cat sat on the mat", "hello there"]
    refs = [["the cat is on the mat"], ["hello there friend"]]
    s = score(hyps, refs, ["bleu1", "bleu2"])
    for name, order in (("bleu1", 1), ("bleu2", 2)):
        direct = BLEU(max_ngram_order=order).corpus_score(hyps, [[r[0] for r in refs]])
        assert s.values[name] == pytest.approx(direct.score)
        assert s.signatures[name].endswith(f"|max_ngram_order:{order}")
    # by hand: 7 of 8 unigrams match; 8 hypothesis tokens, 9 reference tokens: BP = exp(1 - 9/8)
    bp = math.exp(1 - 9 / 8)
    assert s.values["bleu1"] == pytest.approx(100 * bp * 7 / 8)
    # bigrams: "the cat", "on the", "the mat", "hello there" match: 4 of 6
    assert s.values["bleu2"] == pytest.approx(100 * bp * math.sqrt(7 / 8 * 4 / 6))
    assert "BLEU-1 " in s.format() and "BLEU-2 signature: " in s.format()


def test_recipe_config_and_dialogue_metrics_in_config(tmp_path):
    cfg = load_config(CONFIG_DIR / "dailydialog-transformer.yaml")
    assert cfg.data.train.path == f"{dailydialog.DEFAULT_DIR}/train.jsonl"
    assert cfg.data.test.path == f"{dailydialog.DEFAULT_DIR}/test.jsonl"
    assert cfg.data.context_turns == dailydialog.DEFAULT_TURNS
    assert set(cfg.evaluation.metrics) == {"bleu1", "bleu2", "distinct1", "distinct2", "length"}
    assert cfg.training.early_stopping.metric in cfg.validation_metrics()
    raw = {"evaluation": {"metrics": ["bleu2", "distinct2"]}, "training": {"early_stopping": {"metric": "distinct2"}}}
    assert from_dict(raw).training.early_stopping.metric == "distinct2"
    with pytest.raises(ConfigError, match="training.early_stopping.metric: 'length'"):
        from_dict({"evaluation": {"metrics": ["length"]}, "training": {"early_stopping": {"metric": "length"}}})
    with pytest.raises(ConfigError, match="data.context_turns"):
        from_dict({"data": {"context_turns": 0}})


# ------------------------------------------------------------------------ model: ppl, chat
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from seq2seqkit.training import Trainer

    tmp = tmp_path_factory.mktemp("dialogue")
    cfg = tiny_config(tmp, epochs=2, num_threads=1)  # validated at the end of each epoch
    Trainer(cfg).train()
    return Path(cfg.output_dir)


def test_evaluate_reports_perplexity_as_validation_does(tiny_model, capsys):
    log = [json.loads(x) for x in (tiny_model / "train_log.jsonl").read_text().splitlines()]
    valid = [e for e in log if e["kind"] == "valid"][-1]
    dev = tiny_model.parent / "dev"
    assert main(["evaluate", "-m", str(tiny_model), "--src", str(dev / "src.txt"), "--ref", str(dev / "tgt.txt"),
                 "--metrics", "exact", "ppl", "distinct1"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("exact ") and " | ppl " in first and " | Distinct-1 " in first
    ppl = float(first.split(" | ppl ")[1].split()[0])
    assert ppl == pytest.approx(valid["ppl"], rel=1e-3)  # the same number as validation's ppl on dev
    assert main(["evaluate", "--hyp", str(dev / "tgt.txt"), "--ref", str(dev / "tgt.txt"), "--metrics", "ppl"]) == 2
    assert "--metrics ppl: the perplexity is the model's" in one_line_error(capsys)


def test_chat_keeps_the_last_turns_and_reset_clears_them(tiny_model, monkeypatch, capsys):
    from seq2seqkit.translate import Translator

    seen: list[str] = []
    real = Translator.translate

    def recording(self, texts):
        seen.append(texts if isinstance(texts, str) else texts[0])
        return real(self, texts)

    monkeypatch.setattr(Translator, "translate", recording)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a b\nc d\n   \ne f\n/reset\nb a\n")))
    assert main(["chat", "-m", str(tiny_model), "--turns", "3"]) == 0
    out = capsys.readouterr()
    replies = out.out.splitlines()
    assert len(replies) == 4  # one reply per turn: not for the blank line nor /reset
    assert "empty line ignored" in out.err and "history cleared" in out.err
    r1, r2 = replies[0], replies[1]
    turns = lambda *t: "\n".join(x for x in t if x)  # noqa: E731  (an empty reply is not a turn)
    assert seen == [turns("a b"), turns("a b", r1, "c d"), turns("c d", r2, "e f"), turns("b a")]


def test_chat_with_piped_input_in_a_subprocess(tiny_model):
    run = subprocess.run([sys.executable, "-m", "seq2seqkit.cli", "-q", "chat", "-m", str(tiny_model), "--beam", "2"],
                         input="a b c\n\n/reset\nf e\n", capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 2  # end of input quits after the last reply
    assert "you>" not in run.stdout  # no prompt when stdin is not a terminal
    bad = subprocess.run([sys.executable, "-m", "seq2seqkit.cli", "chat", "-m", str(tiny_model), "--top-p", "2"],
                         input="a\n", capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("s2s: error: --top-p")


def test_chat_refuses_what_generate_refuses(tiny_model, monkeypatch, capsys):
    """A NUL (or another control character) is no turn: piped, one line naming <stdin> and the
    line, exit 2, as generate; typed at a terminal, that line is ignored and the chat goes on."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a b\nc\x00d\ne f\n")))
    assert main(["chat", "-m", str(tiny_model)]) == 2
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 1  # the first turn was answered before the bad line
    errors = [line for line in out.err.splitlines() if line.startswith("s2s: error: ")]
    assert len(errors) == 1 and errors[0].startswith("s2s: error: <stdin>:2: control character U+0000 (NUL)")
    assert "Traceback" not in out.err

    typed = iter(["a b", "c\x00d", "e f"])

    def fake_input(prompt):
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["chat", "-m", str(tiny_model)]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2  # "a b" and "e f" answered
    assert "<stdin>:2: control character U+0000 (NUL)" in out.err and "line ignored" in out.err


def test_prepared_pairs_train_with_sep_in_the_source(tmp_path):
    """The prepared JSONL is a training corpus as is: turns become the <sep> piece."""
    from seq2seqkit.config import TokenizerConfig
    from seq2seqkit.data.tokenizers import SEP, VocabTokenizer

    archives = write_archives(tmp_path / "dd", standard_splits())
    dailydialog.prepare(archives, tmp_path / "data")
    src = read_jsonl(tmp_path / "data" / "train.jsonl")[2]["src"]
    tok = VocabTokenizer.train(TokenizerConfig(kind="word"), [src])
    assert tok.pieces(src).count(SEP) == 2
