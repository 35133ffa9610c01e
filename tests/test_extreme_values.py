"""Values at the edges of what the settings accept: each is either refused in one line before
any work, or decodes as asked, never a traceback (a hostile user's fourth pass on issue 16)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from seq2seqkit.cli import main
from seq2seqkit.config import SearchConfig
from seq2seqkit.data.dataset import pad_sources
from seq2seqkit.search import beam_search, gnmt_penalty, greedy_search, output_caps, sample_search, search
from seq2seqkit.serve.batcher import Batcher
from seq2seqkit.serve.limits import Limits

from test_models import make

SOURCES = [[5, 6, 7, 8, 9], [10, 11]]
HUGE = 10**23  # beyond int64


def test_output_caps_of_any_size_are_exact():
    """A limit beyond int64 (--max-output-tokens, --min-len, max_len_b) was an OverflowError from
    torch; a huge max_len_a wrapped round to a negative cap (empty outputs)."""
    model = make(cell="gru")
    _, lens = pad_sources(SOURCES)
    assert output_caps(model, lens, 1.0, 4, HUGE) == [9, 6]  # 5 and 2 tokens + EOS
    assert output_caps(model, lens, 1.0, 4, HUGE, min_len=HUGE - 1) == [HUGE - 1] * 2
    assert output_caps(model, lens, 1.0, HUGE, None) == [HUGE + 5, HUGE + 2]
    assert output_caps(model, lens, 1e300, 1, None)[1] > 10**299


def test_search_with_a_limit_beyond_int64_decodes_as_with_the_default():
    model = make(cell="gru")
    src, lens = pad_sources(SOURCES)
    usual = search(model, src, lens, SearchConfig())
    assert search(model, src, lens, SearchConfig(max_output_tokens=HUGE)) == usual
    assert search(model, src, lens, SearchConfig(max_output_tokens=HUGE, beam_size=3)) \
        == search(model, src, lens, SearchConfig(beam_size=3))


def test_a_tiny_temperature_samples_the_most_probable_token():
    """--temperature 1e-300 is 0 in float32: every probability was NaN (RuntimeError in multinomial)."""
    model = make(cell="gru")
    src, lens = pad_sources(SOURCES)
    greedy = [h.tokens for h in greedy_search(model, src, lens, 1.0, 4)]
    for temperature in (1e-300, 1e-40, 1e-3):
        gen = torch.Generator().manual_seed(0)
        sampled = sample_search(model, src, lens, 1.0, 4, temperature=temperature, top_k=3, top_p=0.5, generator=gen)
        assert [h.tokens for h in sampled] == greedy


def test_a_huge_length_penalty_ranks_without_overflow():
    """--length-penalty 1e308: ((5 + length) / 6) ** alpha raised OverflowError in Python floats."""
    assert gnmt_penalty(3, 1e308) == float("inf")
    assert gnmt_penalty(1, 1e308) == 1.0
    model = make(cell="gru")
    src, lens = pad_sources(SOURCES)
    out = beam_search(model, src, lens, 3, 1.0, 4, length_penalty=1e308, nbest=3)
    assert [len(hyps) for hyps in out] == [3, 3]


@pytest.mark.parametrize("flags, message", [
    (["--max-wait-ms", "inf"], "--max-wait-ms: Input should be a finite number"),
    (["--timeout-s", "inf"], "--timeout-s: Input should be a finite number"),
    (["--max-wait-ms", "30000"], "--max-wait-ms: 30000 ms is not shorter than --timeout-s 30 s"),
    (["--timeout-s", "2", "--max-wait-ms", "2000"], "--max-wait-ms: 2000 ms is not shorter than --timeout-s 2 s"),
])
def test_serve_refuses_an_endless_or_pointless_wait(tmp_path, capsys, flags, message):
    """--max-wait-ms 1e308 (or inf) killed the request-level batcher's thread (OverflowError in
    Condition.wait): every request then got 504. Refused before the models load."""
    assert main(["serve", "-m", str(tmp_path / "no-model"), "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"s2s: error: {message}") and err.count("\n") == 1, err
    assert Limits(timeout_s=2, max_wait_ms=1999).max_wait_ms == 1999


def test_a_wait_beyond_the_threads_limit_does_not_kill_the_batcher():
    """A request-level wait longer than threading.TIMEOUT_MAX is waited in pieces; closing ends it."""
    b = Batcher(lambda key, sources: [list(s) for s in sources], max_wait_ms=1e300)

    async def scenario():
        b.start()
        job = b.submit("k", [[1, 2]])
        await asyncio.sleep(0.2)
        assert b.running  # the worker thread is waiting, not dead
        await b.close()  # closing stops the wait: the queued job is decoded
        return await job.future

    assert asyncio.run(scenario()) == [[1, 2]]


def test_a_config_nested_too_deeply_is_one_line(tmp_path, capsys):
    """`a: [[[[...]]]]` 100,000 deep (or such an override) was PyYAML's RecursionError: 3,000
    lines of traceback. Now the file's invalid-YAML line, before any work."""
    deep = "[" * 100_000 + "]" * 100_000
    config = tmp_path / "deep.yaml"
    config.write_text(f"training: {{lr: {deep}}}\n", encoding="utf-8")
    assert main(["train", str(config)]) == 2
    assert capsys.readouterr().err == f"s2s: error: {config}: invalid YAML (nested too deeply)\n"
    config.write_text("name: x\n", encoding="utf-8")
    assert main(["train", str(config), f"training.lr={deep[49_000:151_000]}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith(": value is not valid YAML (nested too deeply)\n")


def test_a_model_larger_than_the_machine_is_refused_before_it_is_built(tmp_path, capsys):
    """model.hidden_size=1000000 built 32 TB of virtual memory and filled the RAM until the
    kernel's OOM killer ended the run (or, as likely, another process). The meta-device count
    refuses it in one line naming model.*; a model that fits passes the same check."""
    from conftest import tiny_config

    from seq2seqkit.config import from_dict
    from seq2seqkit.errors import ConfigError
    from seq2seqkit.training import check_model_fits

    cfg = tiny_config(tmp_path)
    check_model_fits(cfg, 20, 20)
    huge = from_dict({**cfg.model_dump(mode="json"), "model": {**cfg.model.model_dump(mode="json"), "hidden_size": 10**6}})
    with pytest.raises(ConfigError, match=r"^model: [\d,]+ parameters need at least [\d,.]+ GiB .* more than this machine's"):
        check_model_fits(huge, 20, 20)
    config = tmp_path / "huge.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\ndata: {{train: {{src: {tmp_path / 'train/src.txt'}, "
                      f"tgt: {tmp_path / 'train/tgt.txt'}}}, cache: false}}\n"
                      f"tokenizer: {{src: {{kind: word}}, tgt: {{kind: word}}}}\nmodel: {{family: rnn, hidden_size: 1000000}}\n",
                      encoding="utf-8")
    assert main(["train", str(config), "training.num_threads=1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("s2s: error: model: ")


def test_on_a_gpu_the_model_is_checked_against_the_gpus_memory(tmp_path, monkeypatch):
    """Training on a GPU, weights, gradients and optimizer state live in its memory, not in RAM:
    a model that fits the GPU trains on a machine with less RAM than that, and one that does not
    is refused naming the GPU (the devices' sizes are scripted: no GPU is needed)."""
    from types import SimpleNamespace

    from conftest import tiny_config

    import seq2seqkit.training as training
    from seq2seqkit.errors import ConfigError

    cfg = tiny_config(tmp_path)
    with torch.device("meta"):
        parameters = training.build_model(cfg.model, 20, 20).num_parameters()
    gib = {"gpu": parameters * 16 + 1, "ram": parameters * 16 - 1}  # fits the GPU, not RAM
    monkeypatch.setattr(training.torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=gib["gpu"]))
    monkeypatch.setattr(training.os, "sysconf", lambda name: 1 if name == "SC_PAGE_SIZE" else gib["ram"])
    cuda = torch.device("cuda", 0)
    training.check_model_fits(cfg, 20, 20, cuda)
    with pytest.raises(ConfigError, match=r"more than this machine's"):
        training.check_model_fits(cfg, 20, 20)  # the same model on the CPU
    gib["gpu"] = parameters * 16 - 1
    with pytest.raises(ConfigError, match=r"more than cuda:0's"):
        training.check_model_fits(cfg, 20, 20, cuda)
    gib.update(gpu=parameters * 16 + 1, ram=parameters * 4 - 1)  # RAM cannot even build it
    with pytest.raises(ConfigError, match=r"for the weights, built in RAM .* more than this machine's"):
        training.check_model_fits(cfg, 20, 20, cuda)


def test_a_model_directory_whose_config_was_edited_to_a_huge_size_is_refused_unbuilt(tmp_path, capsys, monkeypatch):
    """config.yaml edited to model.hidden_size: 1000000 built that model (12 TB of weights) before
    comparing it with the checkpoint: the OOM killer, or a MemoryError traceback under a limit.
    The comparison runs on the meta device first; the real model is never built."""
    from conftest import tiny_config

    from seq2seqkit import translate
    from seq2seqkit.training import Trainer

    cfg = tiny_config(tmp_path, max_steps=3, num_threads=1)
    Trainer(cfg).train()
    config = tmp_path / "model" / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("hidden_size: 96", "hidden_size: 1000000"),
                      encoding="utf-8")
    built = []
    real_build = translate.build_model
    monkeypatch.setattr(translate, "build_model", lambda mc, *a: built.append(torch.empty(0).device.type) or real_build(mc, *a))
    (tmp_path / "in.txt").write_text("a b\n", encoding="utf-8")
    assert main(["generate", "-m", str(tmp_path / "model"), "-i", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in the checkpoint but (3000000, " in err, err  # 3 GRU gates x 1000000
    assert built == ["meta"]  # only the weightless copy was built


@pytest.mark.parametrize("argv, message", [
    (["cache", "clear", "--older-than", "-5"], "--older-than: a number of days, at least 0, got -5"),  # cleared every entry
    (["cache", "clear", "--older-than", "nan"], "--older-than: a number of days, at least 0, got nan"),  # cleared none, exit 0
    (["evaluate", "--hyp", "h.txt", "--ref", "h.txt", "--examples", "-1"], "--examples: must be at least 0, got -1"),
])
def test_counts_below_zero_are_refused(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "h.txt").write_text("a b\n", encoding="utf-8")
    monkeypatch.setenv("S2S_CACHE_DIR", str(tmp_path / "cache"))
    assert main(argv) == 2
    assert capsys.readouterr().err == f"s2s: error: {message}\n"


def test_a_control_character_in_a_config_is_one_line_with_its_line(tmp_path, capsys):
    """PyYAML's ReaderError spans two lines ('... special characters are not allowed\\n  in
    "<unicode string>", position 20'): the error was two lines, with no line number."""
    config = tmp_path / "ctl.yaml"
    config.write_text("name: x\ntraining:\n  lr: 1\x07\n", encoding="utf-8")
    assert main(["train", str(config)]) == 2
    assert capsys.readouterr().err == (f"s2s: error: {config}:3: invalid YAML (character 0x07 is not allowed in YAML "
                                       f"(a control character, or a byte that is not UTF-8?))\n")
    config.write_text("name: x\n", encoding="utf-8")
    assert main(["train", str(config), "name=a\x01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "value is not valid YAML (character 0x01 is not allowed" in err


def test_max_batch_tokens_splits_batches_and_keeps_outputs(tmp_path, capsys):
    """--max-batch-tokens 1 decodes every input alone: the same outputs as the default batches;
    0 is refused in one line naming the flag."""
    from conftest import tiny_config

    from seq2seqkit.training import Trainer

    cfg = tiny_config(tmp_path, max_steps=20, num_threads=1)
    Trainer(cfg).train()
    inputs = tmp_path / "in.txt"
    inputs.write_text("a b c\nd e\nf a b c d e f a\nb\n", encoding="utf-8")
    outputs = []
    for extra in ([], ["--max-batch-tokens", "1"]):
        assert main(["-q", "generate", "-m", cfg.output_dir, "-i", str(inputs), "--beam", "3", *extra]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == 4
    assert main(["generate", "-m", cfg.output_dir, "-i", str(inputs), "--max-batch-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("s2s: error: --max-batch-tokens: ")
