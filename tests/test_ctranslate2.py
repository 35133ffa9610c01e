"""Export to CTranslate2: the converted Transformer decodes exactly as our own search does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ctranslate2")

from seq2seqkit.cli import main  # noqa: E402
from seq2seqkit.ct2 import CTranslate2Translator, export_ctranslate2  # noqa: E402
from seq2seqkit.training import Trainer  # noqa: E402
from seq2seqkit.translate import Translator  # noqa: E402

from conftest import tiny_config, tiny_model, write_reverse_task  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small pre-norm Transformer, partly trained on the reverse task (so its outputs vary)."""
    tmp = tmp_path_factory.mktemp("ct2")
    cfg = tiny_config(tmp, max_steps=300, validate_every=300, num_threads=1)
    cfg.model = tiny_model("transformer", embed_dim=64, heads=4, ff_dim=128, encoder_layers=2, decoder_layers=2)
    cfg.training.lr, cfg.training.lr_schedule, cfg.training.warmup_steps = 2e-3, "inverse_sqrt", 50
    Trainer(cfg).train()
    return Path(cfg.output_dir)


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> list[str]:
    src, _ = write_reverse_task(tmp_path_factory.mktemp("ct2-test"), 120, seed=5)
    return src.read_text().splitlines()


def both(model_dir: Path, out: Path, **search) -> tuple[Translator, CTranslate2Translator]:
    ours, ct = Translator.load(model_dir), CTranslate2Translator.load(out)
    for tr in (ours, ct):
        tr.cfg.search = tr.cfg.search.model_copy(update=search)
    return ours, ct


@pytest.mark.parametrize("beam", [1, 5])
def test_ctranslate2_decodes_like_our_search(trained, lines, tmp_path, beam):
    out = export_ctranslate2(trained, tmp_path / "ct2")
    ours, ct = both(trained, out, beam_size=beam, length_penalty=0.0)
    a, b = ours.hypotheses(lines), ct.hypotheses(lines)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    assert len({tuple(h.tokens) for h in a}) > 50  # a model that outputs varied strings, not one
    for x, y in zip(a, b):
        assert y.score == pytest.approx(x.score, abs=2e-3)


def repeats(hyps) -> int:
    return sum(len(h.tokens) - len(set(h.tokens)) for h in hyps)


@pytest.mark.parametrize("beam", [1, 5])
def test_ctranslate2_honours_the_generation_controls(trained, lines, tmp_path, beam):
    """Both engines ban alike: greedy outputs agree exactly. CTranslate2 bans (and penalises)
    on the logits before its softmax, so its log-probs are renormalised where ours are not (as
    in HF's beam search and fairseq): beam outputs and scores may differ, the rules hold in both."""
    out = export_ctranslate2(trained, tmp_path / "ct2")
    free = both(trained, out, beam_size=beam, length_penalty=0.0)[1].hypotheses(lines)
    assert repeats(free) > 0 and min(len(h.tokens) for h in free) < 7
    for controls in (dict(no_repeat_ngram_size=1), dict(min_len=7)):
        ours, ct = both(trained, out, beam_size=beam, length_penalty=0.0, **controls)
        a, b = ours.hypotheses(lines), ct.hypotheses(lines)
        if beam == 1:
            assert [h.tokens for h in a] == [h.tokens for h in b]
        for hyps in (a, b):
            assert repeats(hyps) == 0 if "no_repeat_ngram_size" in controls else min(len(h.tokens) for h in hyps) >= 7
    _, ct = both(trained, out, beam_size=beam, length_penalty=0.0, repetition_penalty=3.0)
    assert repeats(ct.hypotheses(lines)) < repeats(free)


def test_length_penalty_scores_convert_back_to_log_probabilities(trained, lines, tmp_path):
    out = export_ctranslate2(trained, tmp_path / "ct2")
    ours, ct = both(trained, out, beam_size=5, length_penalty=1.0)
    pairs = [(x, y) for x, y in zip(ours.hypotheses(lines), ct.hypotheses(lines)) if x.tokens == y.tokens]
    assert len(pairs) > 100  # GNMT vs length**alpha: short outputs rank alike here
    for x, y in pairs:
        assert y.score == pytest.approx(x.score, abs=2e-3)
        assert y.norm_score == pytest.approx(x.score / (len(x.tokens) + 1), abs=2e-3)


def test_ctranslate2_takes_what_our_search_takes(trained, lines, tmp_path):
    """Inputs and settings the PyTorch engine takes were CTranslate2 tracebacks that lost the
    whole output: an input beyond the exported position table (1,024 rows for a sinusoid:
    RuntimeError), top-k beyond the vocabulary (ValueError), and a floor, cap or n-gram size
    beyond int64 (TypeError). The first is cut to the table; the others mean what they do in
    our search (all tokens; the cap; off)."""
    out = export_ctranslate2(trained, tmp_path / "ct2")
    ct = CTranslate2Translator.load(out)
    long = " ".join(["a"] * 1100)
    warned = []
    (hyps,) = ct.nbest_hypotheses([long], on_long_input=lambda i, n, limit: warned.append((n, limit)))
    assert warned == [(1100, 1023)] and hyps[0].tokens  # the table's 1,024 rows, EOS included
    huge = 10**20
    for search in (dict(sample=True, top_k=50), dict(no_repeat_ngram_size=huge), dict(beam_size=2, length_penalty=1e308),
                   dict(min_len=huge, max_output_tokens=huge)):
        ct.cfg.search = ct.cfg.search.model_copy(update=search)
        assert len(ct.hypotheses(lines[:3])) == 3, search
    assert [len(h.tokens) for h in ct.hypotheses(lines[:2])] == [1024, 1024]  # the floor stops at the table


def test_cli_export_and_translate_with_the_ctranslate2_engine(trained, lines, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["-q", "export", "--format", "ctranslate2", str(trained), str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.bin", "config.json", "config.yaml", "tokenizers.json"} <= names
    before = (out / "model.bin").read_bytes()
    capsys.readouterr()
    assert main(["-q", "export", "--format", "ctranslate2", str(trained), str(out)]) == 2
    assert "already exists (pass --force" in capsys.readouterr().err
    assert (out / "model.bin").read_bytes() == before  # untouched

    proc = subprocess.run([sys.executable, "-m", "seq2seqkit.cli", "-q", "translate", "-m", str(out),
                           "--engine", "ctranslate2", "--beam", "5"],
                          input="\n".join(lines[:20]) + "\n", capture_output=True, text=True, check=True)
    tr = CTranslate2Translator.load(out)
    tr.cfg.search = tr.cfg.search.model_copy(update={"beam_size": 5})
    assert proc.stdout.splitlines() == tr.translate(lines[:20])

    assert main(["-q", "translate", "-m", str(trained), "--engine", "ctranslate2"]) == 2
    assert "not a CTranslate2 model directory" in capsys.readouterr().err


def test_int8_export_translates(trained, lines, tmp_path):
    out = export_ctranslate2(trained, tmp_path / "int8", quantization="int8")
    ours, ct = both(trained, out, beam_size=1)
    a, b = ours.translate(lines), ct.translate(lines)
    assert sum(x == y for x, y in zip(a, b)) >= 0.9 * len(lines)  # int8 weights: nearly the same outputs


def test_rnn_models_are_refused(tmp_path, capsys):
    cfg = tiny_config(tmp_path, max_steps=2)
    Trainer(cfg).train()
    assert main(["-q", "export", "--format", "ctranslate2", cfg.output_dir, str(tmp_path / "x")]) == 2
    assert "CTranslate2 runs Transformers only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
