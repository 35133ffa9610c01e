"""Question answering data and metrics: `s2s prepare babi|tweetqa`, scores per bAbI task
(`s2s evaluate --by-field task --fail-above wer=5`), multi-reference TweetQA scoring, recipes.

The archives here are tiny stand-ins written in tmp_path with the published layouts (bAbI: a
tar.gz of babi/en/qaN_<name>_{train,test}.txt and babi/en-10k/ without qa3's train file;
TweetQA: train.json.gz as one object per field, dev.json.gz as a list of records with two
answers); the real corpora are never read by tests.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from pathlib import Path

import pytest

from seq2seqkit.cli import CONFIG_DIR, main
from seq2seqkit.config import load_config
from seq2seqkit.data.corpus import iter_examples
from seq2seqkit.data.tokenizers import train_tokenizers
from seq2seqkit.metrics import score, score_groups
from seq2seqkit.tasks import babi, tweetqa

from conftest import one_line_error, read_jsonl

PLACES = ["kitchen", "garden", "office", "hallway", "bedroom", "bathroom"]


def story(task: int, k: int, sentences: int = 3, questions: int = 2) -> str:
    """A story in the numbered-line format: ``sentences`` statements, then questions between them."""
    lines, n = [], 0
    for q in range(questions):
        for s in range(sentences):
            n += 1
            lines.append(f"{n} Person{k} went to the {PLACES[(k + s + q) % 6]}.")
        n += 1
        answer = "n,w" if task in (8, 19) else PLACES[(k + sentences - 1 + q) % 6]
        lines.append(f"{n} Where is Person{k}? \t{answer}\t{n - 1}")  # a blank before the tab, as in qa8
    return "\n".join(lines) + "\n"


def task_file(task: int, stories: int, offset: int = 0) -> str:
    return "".join(story(task, offset + k) for k in range(stories))


def write_babi(path: Path, files: dict[str, str] | None = None, stories: int = 10) -> Path:
    """A tar.gz with the published layout: directory entries, 20 tasks in en/, en-10k/ without qa3 train."""
    members = {}
    for task in babi.TASKS:
        for split in ("train", "test"):
            members[f"babi/en/qa{task}_some-name_{split}.txt"] = task_file(task, stories, 100 if split == "test" else 0)
            if not (task == 3 and split == "train"):
                members[f"babi/en-10k/qa{task}_some-name_{split}.txt"] = task_file(task, 2 * stories, 500)
    members.update(files or {})
    with tarfile.open(path, "w:gz") as tar:
        for d in ("babi", "babi/en", "babi/en-10k"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ------------------------------------------------------------------------------ bAbI pairs
def test_parse_builds_the_source_from_the_story_before_each_question():
    text = ("1 Mary went to the kitchen.\n2 John went to the garden.\n3 Where is Mary? \tkitchen\t1\n"
            "4 Mary went to the office.\n5 Where is Mary?\toffice\t4\n"
            "1 Sandra went to the hallway.\n2 Where is Sandra?\thallway\t1\n")
    stories = babi.parse("qa1_x_train.txt", text.encode(), 1)
    assert [[(q.story, q.src, q.tgt) for q in s] for s in stories] == [
        [(1, "task1\nMary went to the kitchen.\nJohn went to the garden.\nWhere is Mary?", "kitchen"),
         # the earlier question is not a story sentence
         (1, "task1\nMary went to the kitchen.\nJohn went to the garden.\nMary went to the office.\nWhere is Mary?",
          "office")],
        # line number 1 restarts the story: nothing of the first one is seen
        [(2, "task1\nSandra went to the hallway.\nWhere is Sandra?", "hallway")]]


def test_parse_keeps_the_last_50_sentences_and_multi_word_answers():
    lines = [f"{n} Fact number {n}." for n in range(1, 56)] + ["56 How do you go from A to B?\tn,w\t3 7"]
    [[q]] = babi.parse("qa19_x_train.txt", "\n".join(lines).encode(), 19)
    src = q.src.split("\n")
    assert len(src) == 1 + 50 + 1 and src[0] == "task19" and src[-1] == "How do you go from A to B?"
    assert src[1:-1] == [f"Fact number {n}." for n in range(6, 56)]  # the most recent 50, in order
    assert q.tgt == "n,w"  # kept as published: the tokenizer cuts it into n , w


def test_prepare_babi_writes_all_tasks_with_their_tag(tmp_path, capsys):
    archive = write_babi(tmp_path / "babi.tar.gz")
    out = tmp_path / "babi-1k"
    assert main(["prepare", "babi", str(archive), str(out)]) == 0
    assert "valid: " + str(out / "valid.jsonl") in capsys.readouterr().out
    rows = {s: read_jsonl(out / f"{s}.jsonl") for s in babi.SPLITS}
    assert {s: len(r) for s, r in rows.items()} == {"train": 20 * 9 * 2, "valid": 20 * 1 * 2, "test": 20 * 10 * 2}
    for split, rs in rows.items():
        assert sorted({r["task"] for r in rs}) == list(range(1, 21))
        assert all(r["src"].split("\n")[0] == f"task{r['task']}" for r in rs)
    assert {r["tgt"] for r in rows["test"] if r["task"] == 8} == {"n,w"}
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["size"] == "1k" and manifest["fallback"] == {} and manifest["rows"]["test"] == 400
    # the training reader takes the rows as they are (extra keys ignored)
    examples = list(iter_examples(out / "train.jsonl"))
    assert len(examples) == 360 and examples[0].src.startswith("task1\nPerson0 went to the kitchen.")


def test_by_field_with_grouped_sources_needs_one_value_per_source(tmp_path, capsys):
    src = tmp_path / "test.jsonl"
    src.write_text('{"task": 1, "src": "a", "tgt": "b"}\n{"task": 1, "src": "a", "tgt": "c"}\n'
                   '{"task": 2, "src": "d", "tgt": "e"}\n')
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("c\nx\n")  # one output per distinct source
    assert main(["evaluate", "--hyp", str(hyp), "--src", str(src), "--group-by-source", "--metrics", "exact",
                 "--by-field", "task"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["1", "1", "100.00%"] and out[2].split() == ["2", "1", "0.00%"]
    src.write_text('{"task": 1, "src": "a", "tgt": "b"}\n{"task": 2, "src": "a", "tgt": "c"}\n')
    hyp.write_text("c\n")
    assert main(["evaluate", "--hyp", str(hyp), "--src", str(src), "--group-by-source", "--metrics", "exact",
                 "--by-field", "task"]) == 2
    assert f"{src}:2: \"task\" is '2' but an earlier row with the same source has '1'" in one_line_error(capsys)


def test_valid_is_a_deterministic_tenth_of_each_tasks_stories(tmp_path):
    archive = write_babi(tmp_path / "babi.tar.gz", stories=40)
    a, b = tmp_path / "a", tmp_path / "b"
    babi.prepare(archive, a)
    babi.prepare(archive, b)
    for split in babi.SPLITS:
        assert (a / f"{split}.jsonl").read_bytes() == (b / f"{split}.jsonl").read_bytes()
    train, valid = read_jsonl(a / "train.jsonl"), read_jsonl(a / "valid.jsonl")
    held = {(r["task"], r["story"]) for r in valid}
    assert held.isdisjoint({(r["task"], r["story"]) for r in train})  # whole stories held out
    assert all(sum(t == task for t, _ in held) == 4 for task in babi.TASKS)  # 10% of 40 stories
    assert {s for t, s in held if t == 1} != {s for t, s in held if t == 2}  # not the same stories in every task


def test_10k_takes_task_3_training_file_from_1k(tmp_path, caplog):
    archive = write_babi(tmp_path / "babi.tar.gz")
    out = tmp_path / "babi-10k"
    with caplog.at_level(logging.INFO, logger="seq2seqkit"):
        assert main(["prepare", "babi", str(archive), str(out), "--size", "10k"]) == 0
    assert "task 3 has no training file in babi/en-10k; using the 1k one (babi/en/qa3_some-name_train.txt)" in caplog.text
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["size"] == "10k" and manifest["fallback"] == {"3": "babi/en/qa3_some-name_train.txt"}
    train = read_jsonl(out / "train.jsonl") + read_jsonl(out / "valid.jsonl")
    per_task = {t: sum(r["task"] == t for r in train) for t in babi.TASKS}
    assert per_task[3] == 10 * 2 and all(per_task[t] == 20 * 2 for t in babi.TASKS if t != 3)
    assert any("Person0 " in r["src"] for r in train if r["task"] == 3)  # the 1k file's stories (offset 0)
    assert not any("Person0 " in r["src"] for r in train if r["task"] == 4)  # 10k files start at 500


@pytest.mark.parametrize("bad, line, what", [
    ("1 Mary went home.\n2 Where is Mary?\thome\t1\nMary went out.\n", 3, "expected 'N sentence'"),
    ("1 Mary went home.\n3 John went home.\n", 2, "line number 3 neither follows 1"),
    ("1 Mary went home.\n2 Where is Mary?\t\t1\n", 2, "a question line needs 3 tab-separated fields"),
])
def test_a_malformed_line_is_refused_with_its_member_and_line_and_nothing_written(tmp_path, capsys, bad, line, what):
    archive = write_babi(tmp_path / "babi.tar.gz", {"babi/en/qa2_some-name_train.txt": bad})
    out = tmp_path / "out"
    assert main(["prepare", "babi", str(archive), str(out)]) == 2
    err = one_line_error(capsys)
    assert f"{archive}/babi/en/qa2_some-name_train.txt:{line}: {what}" in err
    assert not out.exists()


def test_the_extracted_folder_gives_the_same_files(tmp_path):
    archive = write_babi(tmp_path / "babi.tar.gz")
    folder = tmp_path / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    babi.prepare(archive, tmp_path / "a", size="10k")
    babi.prepare(folder, tmp_path / "b", size="10k")
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    manifest = json.loads((tmp_path / "b" / "MANIFEST.json").read_text())
    assert manifest["fallback"] == {"3": "babi/en/qa3_some-name_train.txt"}


def test_a_missing_or_damaged_archive_is_one_line(tmp_path, capsys):
    assert main(["prepare", "babi", str(tmp_path / "nope.tar.gz"), str(tmp_path / "o")]) == 2
    assert "nope.tar.gz: no such file" in one_line_error(capsys)
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(write_babi(tmp_path / "ok.tar.gz").read_bytes()[:2000])
    assert main(["prepare", "babi", str(damaged), str(tmp_path / "o")]) == 2
    assert "damaged.tar.gz: not a readable tar archive" in one_line_error(capsys)
    # Not an archive at all: tarfile's reason lists every compression it tried, a line each.
    other = tmp_path / "answers.json.gz"
    other.write_bytes(gzip.compress(b'[{"Question": "q"}]'))
    assert main(["prepare", "babi", str(other), str(tmp_path / "o")]) == 2
    assert "answers.json.gz: not a readable tar archive" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------- the bAbI results table
def test_error_table_gives_error_per_task_mean_and_failed_tasks():
    # task 1: 1 wrong of 4 (25%); task 2: 0 of 2 (0%); task 10: 1 wrong of 20 (5%: not failed)
    tasks = [1] * 4 + [2] * 2 + [10] * 20
    refs = [["a"]] * 26
    hyps = ["a", "b", "a", "a"] + ["a", " a "] + ["x"] + ["a"] * 19
    table = babi.error_table(tasks, hyps, refs).splitlines()
    assert table[1].split() == ["1", "4", "25.0%"]
    assert table[2].split() == ["2", "2", "0.0%"]
    assert table[3].split() == ["10", "20", "5.0%"]
    assert table[4] == "mean error over 3 tasks: 10.0%"  # (25 + 0 + 5) / 3, not the pooled 2/26
    assert table[5] == "failed tasks (error > 5%): 1 (1)"


def test_evaluate_by_field_scores_each_task(tmp_path, capsys):
    src = tmp_path / "test.jsonl"
    rows = [(1, "kitchen"), (1, "garden"), (2, "n,w"), (2, "office"), (2, "hallway")]
    src.write_text("".join(json.dumps({"task": t, "src": f"task{t}\nq{i}", "tgt": a}) + "\n"
                           for i, (t, a) in enumerate(rows)))
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("kitchen\nbedroom\nn,w\noffice\nhallway\n")
    assert main(["evaluate", "--hyp", str(hyp), "--src", str(src), "--metrics", "wer", "exact",
                 "--by-field", "task", "--fail-above", "wer=5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["task", "rows", "WER", "exact"]
    assert out[1].split() == ["1", "2", "50.00%", "50.00%"]
    assert out[2].split() == ["2", "3", "0.00%", "100.00%"]
    assert out[3].split() == ["mean", "25.00%", "75.00%"]
    assert out[4].split() == ["all", "5", "20.00%", "80.00%"]
    assert out[5] == "tasks with WER above 5: 1 of 2 (1)"


def test_by_field_refuses_a_missing_key_and_fail_above_without_by_field(tmp_path, capsys):
    src = tmp_path / "test.jsonl"
    src.write_text('{"task": 1, "src": "a", "tgt": "b"}\n{"src": "c", "tgt": "d"}\n')
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("b\nd\n")
    assert main(["evaluate", "--hyp", str(hyp), "--src", str(src), "--metrics", "exact", "--by-field", "task"]) == 2
    assert f'{src}:2: "task": expected a string or a number to group by (no such key)' in one_line_error(capsys)
    assert main(["evaluate", "--hyp", str(hyp), "--src", str(src), "--metrics", "exact", "--fail-above", "wer=5"]) == 2
    assert "--fail-above: counts the groups of --by-field KEY" in one_line_error(capsys)


# ---------------------------------------------------------------------------------- TweetQA
TWEETS = [f"Tweet number {i} says Team{i} won the cup in city{i}. Someone (@user{i}) May {i}, 2016" for i in range(30)]


def write_tweetqa(folder: Path) -> Path:
    """train.json.gz as published (one object per field, row number -> value), dev.json.gz a list."""
    folder.mkdir()
    train = [(f"who won in tweet {i}-{q}?", TWEETS[i], f"team{i}", f"t{i}q{q}") for i in range(20) for q in range(2)]
    columns = {f: {str(n): row[k] for n, row in enumerate(train)} for k, f in enumerate(("Question", "Tweet", "Answer", "qid"))}
    (folder / "train.json.gz").write_bytes(gzip.compress(json.dumps(columns).encode()))
    dev = [{"Question": f"where was tweet {i}?", "Answer": [f"city{i}", f"in city{i}" if i % 2 else f"city{i}"],
            "Tweet": TWEETS[i], "qid": f"d{i}"} for i in range(20, 30)]
    (folder / "dev.json.gz").write_bytes(gzip.compress(json.dumps(dev).encode()))
    return folder


def test_prepare_tweetqa_holds_out_tune_tweets_and_keeps_both_references(tmp_path, capsys):
    folder = write_tweetqa(tmp_path / "tweetqa")
    out = tmp_path / "data"
    assert main(["prepare", "tweetqa", str(folder), str(out)]) == 0
    assert "test: " + str(out / "test.jsonl") in capsys.readouterr().out
    rows = {s: read_jsonl(out / f"{s}.jsonl") for s in tweetqa.SPLITS}
    assert len(rows["train"]) == 36 and len(rows["tune"]) == 4  # 2 of 20 tweets, both their questions
    tweets = {s: {r["src"].split("\n")[1] for r in rs} for s, rs in rows.items()}
    assert tweets["train"].isdisjoint(tweets["tune"])
    first = next(r for r in rows["train"] + rows["tune"] if r["qid"] == "t0q0")
    assert first == {"qid": "t0q0", "src": f"who won in tweet 0-0?\n{TWEETS[0]}", "tgt": "team0"}
    # dev: a line per distinct reference (5 questions with two different answers, 5 with one)
    assert len(rows["test"]) == 15 and len({r["src"] for r in rows["test"]}) == 10
    again = tmp_path / "again"
    tweetqa.prepare(folder, again)
    assert (again / "tune.jsonl").read_bytes() == (out / "tune.jsonl").read_bytes()


def test_tweetqa_test_scores_each_question_against_its_best_reference(tmp_path, capsys):
    folder = write_tweetqa(tmp_path / "tweetqa")
    out = tmp_path / "data"
    tweetqa.prepare(folder, out)
    test = read_jsonl(out / "test.jsonl")
    questions: dict[str, list[str]] = {}
    for r in test:
        questions.setdefault(r["src"], []).append(r["tgt"])
    hyps = [f"in city{20 + i}" if i % 3 else f"city{20 + i} now" for i in range(len(questions))]
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("\n".join(hyps) + "\n")
    assert main(["evaluate", "--hyp", str(hyp), "--src", str(out / "test.jsonl"), "--group-by-source",
                 "--metrics", "rougeL"]) == 0
    multi = float(capsys.readouterr().out.split()[1])
    # each question scored alone against each of its references, the best one kept
    best = [max(score([h], [[r]], ["rougeL"]).values["rougeL"] for r in refs) for h, refs in zip(hyps, questions.values())]
    assert multi == pytest.approx(round(sum(best) / len(best), 2), abs=0.005)
    assert multi > score(hyps, [[refs[0]] for refs in questions.values()], ["rougeL"]).values["rougeL"]


def test_tweetqa_missing_folder_or_broken_file_is_one_line(tmp_path, capsys):
    assert main(["prepare", "tweetqa", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "nope: not a folder" in one_line_error(capsys)
    folder = write_tweetqa(tmp_path / "tweetqa")
    (folder / "dev.json.gz").write_bytes(gzip.compress(b"[{\"Question\": "))
    assert main(["prepare", "tweetqa", str(folder), str(tmp_path / "o")]) == 2
    assert "dev.json.gz:1: invalid JSON" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------- recipes
def test_recipes_read_where_prepare_writes_by_default():
    b = load_config(CONFIG_DIR / "babi-transformer.yaml")
    assert [b.data.train.path, b.data.dev.path, b.data.test.path] == \
        [f"{babi.DEFAULT_DIRS['1k']}/{s}.jsonl" for s in babi.SPLITS]
    assert b.model.family == "transformer"
    t = load_config(CONFIG_DIR / "tweetqa-attention.yaml")
    assert [t.data.train.path, t.data.dev.path, t.data.test.path] == \
        [f"{tweetqa.DEFAULT_DIR}/{s}.jsonl" for s in tweetqa.SPLITS]
    assert t.evaluation.group_by_source


@pytest.mark.parametrize("recipe", ["tweetqa-attention.yaml", "tweetqa-attention-copy.yaml", "tweetqa-attention-luong-copy.yaml"])
def test_tweetqa_recipes_cut_cased_tweets_as_lower_case_answers(recipe):
    """TweetQA's answers are all lower case: a word of a cased tweet must become the same pieces as
    in the answer, or a copy model can only copy "Andrew" where "andrew" is wanted."""
    cfg = load_config(CONFIG_DIR / recipe).tokenizer
    tweets = ["Andrew Garfield says he watches RuPaul's Drag Race.", "Marilyn Mosby is Baltimore's state attorney."] * 20
    answers = ["andrew garfield", "marilyn mosby"] * 20
    src, tgt = train_tokenizers(cfg, tweets, answers)
    assert src is tgt  # one joint vocabulary: source ids are target ids
    assert src.encode("Andrew Garfield") == tgt.encode("andrew garfield")
    assert src.encode("MARILYN Mosby") == tgt.encode("marilyn mosby")


def test_score_groups_mean_is_over_groups():
    g = score_groups(["a", "b", "a"], [["a"], ["a"], ["a"]], ["x", "x", "y"], ["exact"])
    assert g.mean["exact"] == pytest.approx(75.0) and g.overall.values["exact"] == pytest.approx(200 / 3)
    assert g.failed("exact", 60) == ["y"]
