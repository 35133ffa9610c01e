"""Ensembles: the mean of the members' probabilities, behind the same model interface, so every
search runs on an ensemble of any families; loading checks that the members share vocabularies."""

from __future__ import annotations

import math

import pytest
import torch

from seq2seqkit.cli import main
from seq2seqkit.config import from_dict
from seq2seqkit.data.dataset import pad_sources
from seq2seqkit.errors import UserError
from seq2seqkit.models import build_model
from seq2seqkit.models.ensemble import Ensemble
from seq2seqkit.search import beam_search, greedy_search
from seq2seqkit.training import Trainer
from seq2seqkit.translate import Translator

from conftest import batch, small_model, step_by_step, tiny_config, write_reverse_task
from test_search import random_sources, same

def member(family: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(small_model(family), src_vocab=20, tgt_vocab=15).eval()


def three_families() -> Ensemble:
    return Ensemble([member("rnn", 1), member("attention", 2), member("transformer", 3)]).eval()


def test_ensemble_is_the_mean_of_the_members_probabilities_step_by_step_and_at_once():
    ens = three_families()
    src, lens, tin, _ = batch([[5, 6, 7, 8, 9], [10, 11]], [[4, 5, 6], [7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        full = ens(src, lens, tin)
        by_hand = torch.stack([m(src, lens, tin).softmax(-1) for m in ens.members]).mean(0).log()
        steps, attention = step_by_step(ens, src, lens, tin)
    torch.testing.assert_close(full, by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(full.shape[:2]))
    assert attention is not None and attention.shape == (2, tin.size(1), src.size(1))  # the attention member's


def test_ensemble_of_one_decodes_as_the_model_itself():
    model = member("attention", 0)
    src, lens = pad_sources(random_sources(6, seed=4))
    for a, b in zip(greedy_search(model, src, lens), greedy_search(Ensemble([model]).eval(), src, lens)):
        same(a, b)
    for a, b in zip(beam_search(model, src, lens, 3), beam_search(Ensemble([model]).eval(), src, lens, 3)):
        for x, y in zip(a, b):
            same(x, y)


def test_beam_search_on_a_mixed_ensemble_is_batch_independent_and_size_1_is_greedy():
    """Members' states (RNN hidden states, Transformer key/value caches) are reordered together."""
    ens = three_families()
    sources = random_sources(5, seed=7)
    src, lens = pad_sources(sources)
    batched = beam_search(ens, src, lens, 3)
    for s, nbest in zip(sources, batched):
        alone = beam_search(ens, *pad_sources([s]), 3)[0]
        for x, y in zip(nbest, alone):
            same(x, y)
    for g, (b,) in zip(greedy_search(ens, src, lens), beam_search(ens, src, lens, 1)):
        same(g, b)
    assert all(math.isfinite(h.score) for nbest in batched for h in nbest)


def test_members_must_agree_on_vocabulary_sizes():
    other = build_model(small_model("rnn"), src_vocab=20, tgt_vocab=16)
    with pytest.raises(ValueError, match="vocabulary sizes"):
        Ensemble([member("rnn", 0), other])


def trained(tmp_path, name: str, family: str, alphabet: str = "abcdef") -> str:
    cfg = tiny_config(tmp_path / name, max_steps=6, checkpoint_every=6)
    if alphabet != "abcdef":
        write_reverse_task(tmp_path / name / "train", 2000, seed=1, alphabet=alphabet)
    raw = cfg.model_dump()
    sizes = {"heads": 2, "ff_dim": 64} if family == "transformer" else {"hidden_size": raw["model"]["hidden_size"]}
    raw["model"] = {"family": family, "embed_dim": raw["model"]["embed_dim"], "dropout": 0.0, **sizes}
    cfg = from_dict(raw)
    Trainer(cfg).train()
    return cfg.output_dir


def test_cli_and_api_decode_an_ensemble_of_model_directories(tmp_path, capsys):
    a, b = trained(tmp_path, "a", "rnn"), trained(tmp_path, "b", "transformer")
    inp = tmp_path / "in.txt"
    inp.write_text("a b c\nf e\n", encoding="utf-8")
    assert main(["-q", "translate", "-m", a, b, "-i", str(inp), "--beam", "3"]) == 0
    cli_out = capsys.readouterr().out.splitlines()
    tr = Translator.ensemble([a, b])
    assert isinstance(tr.model, Ensemble) and len(tr.model.members) == 2
    tr.cfg.search = tr.cfg.search.model_copy(update={"beam_size": 3})
    assert cli_out == tr.translate(["a b c", "f e"])
    assert main(["-q", "translate", "-m", a, "-m", b, "-i", str(inp), "--beam", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == cli_out

    c = trained(tmp_path, "c", "rnn", alphabet="uvwxyz")
    with pytest.raises(UserError, match=r"c/model: its source vocabulary differs"):
        Translator.ensemble([a, c])
    assert main(["translate", "-m", a, "--engine", "ctranslate2", "-m", b, "-i", str(inp)]) == 2
    assert "ensembles need the PyTorch engine" in capsys.readouterr().err
