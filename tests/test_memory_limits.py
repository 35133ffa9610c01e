"""Memory is bounded in inference: search keeps attention weights only when asked for (and then
for every family that has them), ``--attention-layer`` names a layer that exists, an input over
the length limit is truncated or refused for that line alone, and outputs have a hard cap; in
training, the heap kept for speed is given back around validation."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seqkit.cli import main
from seq2seqkit.config import CorpusConfig, SearchConfig, dump_config, load_config
from seq2seqkit.data.dataset import pad_sources
from seq2seqkit.errors import ConfigError
from seq2seqkit.models import build_model
from seq2seqkit.models.base import Seq2SeqModel, StepOutput
from seq2seqkit.models.ensemble import Ensemble
from seq2seqkit.runtime import HeapBound
from seq2seqkit.search import search
from seq2seqkit.training import Trainer, load_for_resume
from seq2seqkit.translate import Translator

from conftest import small_model, tiny_config
from test_search import random_sources

SEARCHES = {"greedy": SearchConfig(), "beam": SearchConfig(beam_size=3, nbest=2),
            "sample": SearchConfig(sample=True, nbest=2)}


def family(name: str, seed: int = 0, **kw) -> Seq2SeqModel:
    torch.manual_seed(seed)
    return build_model(small_model(name, **{"decoder_layers": 2, **kw}), src_vocab=20, tgt_vocab=15).eval()


class Spy(Seq2SeqModel):
    """Wraps a model; records what each step was asked for and hands back attention weights
    (uniform, if the model has none) whether asked or not, as a careless family might."""

    def __init__(self, inner: Seq2SeqModel) -> None:
        super().__init__()
        self.inner, self.src_vocab, self.tgt_vocab = inner, inner.src_vocab, inner.tgt_vocab
        self.asked: list[int | None] = []

    @property
    def attention_layers(self) -> int:
        return self.inner.attention_layers

    def encode(self, src, src_lens):
        return {"inner": self.inner.encode(src, src_lens), "width": torch.zeros(src.size(0), src.size(1))}

    def init_state(self, enc):
        return self.inner.init_state(enc["inner"])

    def decode_step(self, prev, enc, state, attention_layer=None):
        self.asked.append(attention_layer)
        out = self.inner.decode_step(prev, enc["inner"], state, attention_layer)
        weights = out.attention if out.attention is not None else enc["width"].softmax(-1)
        return StepOutput(out.logits, out.state, weights)

    def forward(self, src, src_lens, tgt_in):
        return self.inner(src, src_lens, tgt_in)


# ------------------------------------------------------------------------ attention on request
@pytest.mark.parametrize("name", ["rnn", "attention", "transformer"])
@pytest.mark.parametrize("how", SEARCHES)
def test_search_keeps_no_attention_unless_asked(name, how):
    spy = Spy(family(name))
    src, lens = pad_sources(random_sources(5, seed=1))
    results = search(spy, src, lens, SEARCHES[how])
    assert spy.asked and set(spy.asked) == {None}  # no step was asked for weights ...
    assert all(h.attention is None for hyps in results for h in hyps)  # ... and none were kept


@pytest.mark.parametrize("name", ["attention", "transformer"])
def test_families_compute_attention_only_when_asked(name):
    model = family(name)
    src, lens = pad_sources(random_sources(3, seed=2))
    with torch.no_grad():
        enc = model.encode(src, lens)
        state = model.init_state(enc)
        prev = torch.full((3,), 1)
        assert model.decode_step(prev, enc, state).attention is None
        assert model.decode_step(prev, enc, state, 0).attention.shape == (3, src.size(1))


MODELS = {
    "attention": lambda: family("attention"),
    "transformer": lambda: family("transformer"),
    "ensemble": lambda: Ensemble([family("rnn", 1), family("attention", 2), family("transformer", 3)]).eval(),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("how", SEARCHES)
def test_attention_is_returned_when_asked_by_every_family_that_has_it(name, how):
    model = MODELS[name]()
    sources = random_sources(4, seed=3)
    src, lens = pad_sources(sources)
    for layer in range(-model.attention_layers, model.attention_layers):
        for source, hyps in zip(sources, search(model, src, lens, SEARCHES[how], attention_layer=layer)):
            for h in hyps:
                assert h.attention is not None
                assert h.attention.shape[1] == len(source) + 1  # its own source with EOS, not the padding
                assert h.attention.shape[0] in (len(h.tokens), len(h.tokens) + 1)  # +1: the step of EOS
                torch.testing.assert_close(h.attention.sum(-1), torch.ones(h.attention.size(0)))


def test_attention_layers_of_each_family():
    assert family("rnn").attention_layers == 0
    assert family("attention").attention_layers == 1
    assert family("transformer", decoder_layers=3).attention_layers == 3
    mixed = Ensemble([family("rnn"), family("transformer", decoder_layers=3), family("transformer", decoder_layers=2)])
    assert mixed.attention_layers == 2  # an index must be valid for every member that has attention
    assert Ensemble([family("rnn"), family("rnn", 1)]).attention_layers == 0


@pytest.mark.parametrize("name, layer", [("transformer", 2), ("transformer", -3), ("attention", 1), ("rnn", 0)])
def test_search_refuses_an_attention_the_model_lacks(name, layer):
    src, lens = pad_sources(random_sources(2, seed=4))
    with pytest.raises(ValueError, match="out of range|no attention"):
        search(family(name), src, lens, SearchConfig(), attention_layer=layer)


# -------------------------------------------------------------------------------- the CLI
def trained(tmp_path: Path, name: str, **model) -> Path:
    cfg = tiny_config(tmp_path, max_steps=2, num_threads=1)
    if "max_positions" in model:  # training data must fit learned positions (checked at load)
        cfg.data.max_src_len = cfg.data.max_tgt_len = model["max_positions"] - 1
    cfg.model = small_model(name, **{"decoder_layers": 2, **model})
    cfg.data.dev = CorpusConfig()  # no validation: only the weights' shapes matter here
    Trainer(cfg).train()
    return Path(cfg.output_dir)


@pytest.fixture(scope="module")
def transformer_dir(tmp_path_factory) -> Path:
    """A learned-position Transformer whose positions stop at 8 (7 source tokens and EOS)."""
    return trained(tmp_path_factory.mktemp("learned"), "transformer", positions="learned", max_positions=8)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["-q", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("layer, ok", [("1", True), ("-2", True), ("2", False), ("-3", False), ("7", False)])
def test_attention_layer_out_of_range_is_refused(transformer_dir, tmp_path, capsys, layer, ok):
    src = tmp_path / "in.txt"
    src.write_text("a b c\n")
    plots = tmp_path / "plots"
    rc, out, err = run(capsys, "translate", "-m", str(transformer_dir), "-i", str(src), "--plot-attention", str(plots),
                       "--attention-layer", layer)
    if ok:
        assert rc == 0 and len(out.splitlines()) == 1 and (plots / "0001.png").is_file()
    else:
        assert rc == 2 and out == "" and not plots.exists()
        assert err.splitlines() == [f"s2s: error: --attention-layer: {layer} is out of range: this model has 2 "
                                    f"attention layers (0..1, or -2..-1 counting from the last)"]


def test_attention_layer_needs_plot_attention(transformer_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a b c\n")
    rc, out, err = run(capsys, "translate", "-m", str(transformer_dir), "-i", str(src), "--attention-layer", "0")
    assert rc == 2 and out == "" and err == "s2s: error: --attention-layer: only used with --plot-attention DIR\n"


LINES = ["a b", "a b c d e f a b c d e f", "c d e"]  # the second is over the 7 tokens the positions allow


@pytest.mark.parametrize("policy", ["truncate", "refuse"])
def test_an_over_long_line_is_handled_alone_and_the_file_is_translated(transformer_dir, tmp_path, capsys, policy):
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("\n".join(LINES) + "\n")
    rc, stdout, err = run(capsys, "translate", "-m", str(transformer_dir), "-i", str(src), "-o", str(out),
                          "--on-long-input", policy)
    assert rc == 0 and stdout == ""
    hyps = out.read_text().split("\n")
    assert len(hyps) == 4 and hyps[3] == ""  # three lines, each ended by a newline
    (warning,) = err.splitlines()
    assert warning.startswith(f"s2s: warning: {src}:2: 12 tokens, over the limit of 7 ")
    assert ("truncated to its first 7 tokens" if policy == "truncate" else "refused: its output line is empty") in warning
    tr = Translator.load(transformer_dir)
    tr.cfg.search.on_long_input = policy
    assert tr.translate(LINES)[0::2] == [hyps[0], hyps[2]]  # the other lines, as if translated alone
    (long,) = tr.nbest_hypotheses([LINES[1]])
    if policy == "truncate":  # decoded: the line's first 7 tokens
        assert tr.translate(["a b c d e f a"]) == [hyps[1]] and math.isfinite(long[0].score)
    else:  # not decoded: an empty line
        assert hyps[1] == "" and long[0].score == -math.inf


def test_max_input_tokens_applies_to_any_family(tmp_path, capsys):
    model_dir = trained(tmp_path, "attention")
    src = tmp_path / "in.txt"
    src.write_text("a b c d\na\n")
    rc, out, err = run(capsys, "translate", "-m", str(model_dir), "-i", str(src), "--max-input-tokens", "3",
                       "--on-long-input", "refuse", "--nbest", "2", "--beam", "2")
    assert rc == 0
    rows = out.splitlines()
    assert rows[0] == "\t-inf" and len(rows) == 3  # the refused line: one empty output, no probability
    assert "in.txt:1: 4 tokens, over the limit of 3" in err and len(err.splitlines()) == 1
    tr = Translator.load(model_dir)
    tr.cfg.search.max_input_tokens, tr.cfg.search.on_long_input = 3, "refuse"
    assert tr.translate(["a b c d", "a"])[0] == ""
    assert tr.nbest_hypotheses(["a b c d"])[0][0].score == -math.inf


def test_long_inputs_are_logged_by_the_python_api(tmp_path, caplog):
    tr = Translator.load(trained(tmp_path, "rnn"))
    tr.cfg.search.max_input_tokens = 2
    tr.translate(["a", "a b c"])
    assert [r.getMessage() for r in caplog.records if "over the limit" in r.getMessage()] == [
        "input 2: 3 tokens, over the limit of 2 (search.max_input_tokens, or the model's max_positions): truncated to 2"]


# ---------------------------------------------------------------------------- output caps
@pytest.mark.parametrize("name", ["rnn", "attention", "transformer"])
@pytest.mark.parametrize("how", SEARCHES)
def test_hard_output_cap_holds(name, how):
    model = family(name)
    src, lens = pad_sources(random_sources(6, seed=5))
    cfg = SEARCHES[how].model_copy(update={"max_len_a": 50.0, "max_len_b": 50, "max_output_tokens": 4})
    results = search(model, src, lens, cfg)
    lengths = [len(h.tokens) for hyps in results for h in hyps]
    assert max(lengths) == 4  # binds: an untrained model rarely says EOS


def test_learned_positions_cap_the_output_instead_of_crashing():
    model = family("transformer", positions="learned", max_positions=6)
    src, lens = pad_sources(random_sources(4, seed=6, max_len=5))
    for how, cfg in SEARCHES.items():
        cfg = cfg.model_copy(update={"max_len_a": 50.0, "max_len_b": 50})
        lengths = [len(h.tokens) for hyps in search(model, src, lens, cfg) for h in hyps]
        assert max(lengths) <= 6, how


def test_output_and_beam_limits_are_checked_flags(tmp_path, capsys):
    model_dir = trained(tmp_path, "rnn")
    src = tmp_path / "in.txt"
    src.write_text("a b c\n")
    for flags, message in [(["--beam", "1000"], "--beam: Input should be less than or equal to 256"),
                           (["--max-output-tokens", "0"], "--max-output-tokens: Input should be greater than or equal to 1"),
                           (["--max-input-tokens", "-1"], "--max-input-tokens: Input should be greater than or equal to 1")]:
        rc, out, err = run(capsys, "translate", "-m", str(model_dir), "-i", str(src), *flags)
        assert rc == 2 and out == "" and err == f"s2s: error: {message}\n"
    rc, out, _ = run(capsys, "translate", "-m", str(model_dir), "-i", str(src), "--max-output-tokens", "1")
    assert rc == 0 and len(out.split()) <= 1


# ------------------------------------------------------------------------------- training
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_release_freed_memory_gives_the_kept_heap_back():
    """Under keep_freed_memory freed tensors stay resident; release_freed_memory (called around
    validation) returns them. In a fresh process, so that no other test's heap is measured."""
    code = (
        "import torch\n"
        "from seq2seqkit.runtime import keep_freed_memory, release_freed_memory\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20\n"
        "keep_freed_memory()\n"
        "start = rss()\n"
        "blocks = [torch.ones(16 << 20) for _ in range(4)]\n"  # 4 x 64 MiB, touched
        "del blocks\n"
        "kept = rss()\n"
        "assert release_freed_memory()\n"
        "print(kept - start, rss() - start)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    kept, released = (int(x) for x in out.split())
    assert kept >= 250 and released < 20, (kept, released)  # MiB above the start


def test_heap_bound_releases_only_above_its_limit():
    generous, tight = HeapBound(warmup=2, ceiling=1e6), HeapBound(warmup=2, ceiling=1e-6)
    for _ in range(5):
        generous.after_update()
        tight.after_update()
    assert generous.limit is not None and generous.releases == 0
    assert tight.releases == (3 if sys.platform.startswith("linux") else 0)  # every update after the warm-up
    off = HeapBound(warmup=2, ceiling=1e-6, enabled=False)  # training.release_memory: false
    for _ in range(5):
        off.after_update()
    assert off.limit is None and off.releases == 0


def test_heap_bound_limit_is_the_ceiling_times_the_first_updates_peak(monkeypatch, tmp_path):
    """training.release_memory_above sets the limit: ceiling x the peak of the first updates;
    after the warm-up, an update that ends above it releases the freed heap, one at or under it
    does not, and validation's releases are not counted. Resident memory, the peak and the
    release are scripted (MiB), so the test does not depend on the allocator."""
    import seq2seqkit.runtime as runtime

    rss, released = [0], []
    monkeypatch.setattr(runtime, "resident_bytes", lambda: rss[0] << 20)
    monkeypatch.setattr(runtime, "release_freed_memory", lambda: released.append(rss[0]) or True)
    monkeypatch.setattr(runtime.resource, "getrusage", lambda who: type("Usage", (), {"ru_maxrss": 1000 << 10}))
    trainer = Trainer(tiny_config(tmp_path, release_memory_above=1.2))
    assert trainer.heap.ceiling == 1.2 and trainer.heap.enabled
    bound = HeapBound(warmup=2, ceiling=1.2)
    for mib in (5000, 900):  # the warm-up: nothing is compared, whatever resident memory is
        rss[0] = mib
        bound.after_update()
    assert released == [] and bound.peak == 1000 << 20 and bound.limit == 1200 << 20
    for mib in (1100, 1200, 1201, 1150, 1900):
        rss[0] = mib
        bound.after_update()
    bound.release()  # around validation
    assert released == [1201, 1900, 1900] and bound.releases == 2


@pytest.mark.parametrize("value", ["1", "0.5", "true"])
def test_release_memory_above_must_be_a_factor_over_one(tmp_path, value):
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(tiny_config(tmp_path)))
    with pytest.raises(ConfigError, match=r"training\.release_memory_above"):
        load_config(path, [f"training.release_memory_above={value}"])


def test_perplexity_refuses_references_beyond_learned_positions(transformer_dir, tmp_path, capsys):
    """A reference longer than the model's positions cannot be scored teacher-forced: `evaluate
    --metrics ppl` says so in one line instead of a traceback (or a perplexity without it)."""
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("a b\nc d\n")
    ref.write_text("b a\n" + " ".join("abcdef" * 2) + "\n")  # 12 tokens + BOS: over 8 positions
    rc, out, err = run(capsys, "evaluate", "-m", str(transformer_dir), "--src", str(src), "--ref", str(ref),
                       "--metrics", "ppl", "--no-group-by-source")
    assert rc == 2 and out == ""
    assert err.splitlines() == ["s2s: error: --metrics ppl: 1 reference(s) need more than the model's 8 learned "
                                "positions; a perplexity without them would not be the model's on these references"]
    ref.write_text("b a\nd c\n")
    rc, out, err = run(capsys, "evaluate", "-m", str(transformer_dir), "--src", str(src), "--ref", str(ref),
                       "--metrics", "ppl", "--no-group-by-source")
    assert rc == 0 and out.startswith("ppl ")


@pytest.mark.parametrize("allocator, setting, enabled", [("system", None, True), ("jemalloc", None, True),
                                                         ("jemalloc", False, False), ("system", False, False)])
def test_freed_heap_is_released_by_default_above_1_5_and_in_resumed_jemalloc_processes_above_1_2(
        tmp_path, monkeypatch, allocator, setting, enabled):
    """training.release_memory null (the default) releases above 1.5x of the first updates' peak
    on either allocator (a fresh jemalloc process's heap levelled off by itself on one task and
    grew without end on another), and a resumed jemalloc process above 1.2x; true or false decide
    on either, and release_memory_above, where given, is the limit in every case."""
    import seq2seqkit.training as training

    monkeypatch.setattr(training, "allocator", lambda: allocator)
    cfg = tiny_config(tmp_path, max_steps=3, **({} if setting is None else {"release_memory": setting}))
    trainer = Trainer(cfg)
    assert trainer.heap.enabled is enabled and trainer.heap.ceiling == 1.5
    trainer.train()
    resumed = Trainer(load_for_resume(tmp_path / "model", ["training.max_steps=4"]), resume=True)
    assert resumed.heap.enabled is (setting if setting is not None else True)
    assert resumed.heap.ceiling == (1.2 if allocator == "jemalloc" else 1.5)
    resumed.close()
    given = Trainer(load_for_resume(tmp_path / "model", ["training.release_memory_above=1.3"]), resume=True)
    assert given.heap.ceiling == 1.3
    given.close()


def test_the_log_says_how_often_freed_heap_was_given_back(tmp_path, monkeypatch, caplog):
    """A run that released freed heap says so once at its end, with the count and the limit;
    resident memory and the release are scripted, so the test does not depend on the allocator."""
    import logging

    import seq2seqkit.runtime as runtime

    monkeypatch.setattr(runtime, "resident_bytes", lambda: 3000 << 20)
    monkeypatch.setattr(runtime, "release_freed_memory", lambda: True)
    monkeypatch.setattr(runtime.resource, "getrusage", lambda who: type("Usage", (), {"ru_maxrss": 1000 << 10}))
    trainer = Trainer(tiny_config(tmp_path, max_steps=14, release_memory=True, release_memory_above=1.5, num_threads=1))
    with caplog.at_level(logging.INFO, logger="seq2seqkit"):
        trainer.train()
    said = [r.getMessage() for r in caplog.records if "freed heap given back" in r.getMessage()]
    assert said == ["memory: freed heap given back 4 times in this process (resident memory above 1500 MiB)"]
