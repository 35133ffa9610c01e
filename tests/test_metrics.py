"""Metrics on hand-made G2P examples whose answers were worked out by hand."""

from __future__ import annotations

import pytest

from seq2seqkit.metrics import METRICS, Scores, group_references, score

# "read" has two pronunciations; "cat" and "dog" one each.
HYPS = ["R EH D", "R IY D X", "K AE T", "  D  AO G "]
REFS = [["R IY D", "R EH D"], ["R IY D", "R EH D"], ["K AA T"], ["D AO G"]]


def test_exact_and_wer_use_any_reference_and_normalise_whitespace() -> None:
    s = score(HYPS, REFS, metrics=["exact", "wer"])
    # hyp 0 matches its 2nd reference, hyp 3 matches after whitespace normalisation.
    assert s.values == {"exact": 50.0, "wer": 50.0}
    assert s.signatures == {}


def test_per_by_hand() -> None:
    # Distances to the closest reference: 0 (R EH D), 1 (R IY D + insertion X),
    # 1 (AE -> AA), 0. Chosen reference lengths: 3 + 3 + 3 + 3 = 12.
    assert score(HYPS, REFS, metrics=["per"]).values["per"] == pytest.approx(100 * 2 / 12)


def test_per_tie_prefers_longer_reference() -> None:
    # "A B" is 1 edit from both "A" and "A B C"; the longer one gives 1/3, not 1/1.
    assert score(["A B"], [["A", "A B C"]], metrics=["per"]).values["per"] == pytest.approx(100 / 3)


def test_per_is_corpus_level_not_mean_of_segments() -> None:
    # 1 error over 1 token + 0 over 9 tokens = 10%, whereas the mean of rates would be 50%.
    s = score(["X", "A B C D E F G H I"], [["A"], ["A B C D E F G H I"]], metrics=["per"])
    assert s.values["per"] == pytest.approx(10.0)


def test_identical_hyps_give_bleu_and_chrf_100_with_variable_references() -> None:
    # BLEU-4 needs 4-grams: with only 3-token segments sacrebleu would return 0.
    hyps = ["T AH M EY T OW", "AE B S T R AE K T"]
    refs = [["T AH M AA T OW", "T AH M EY T OW"], ["AE B S T R AE K T"]]
    s = score(hyps, refs, metrics=["bleu", "chrf"])
    assert s.values["bleu"] == pytest.approx(100.0)
    assert s.values["chrf"] == pytest.approx(100.0)
    assert "nrefs:var" in s.signatures["bleu"] and "tok:13a" in s.signatures["bleu"]
    assert "nrefs:var" in s.signatures["chrf"]


def test_bleu_signature_single_reference_and_tokenizer() -> None:
    s = score(["a b c d"], [["a b c d"]], metrics=["bleu"], tokenize="none")
    assert "nrefs:1" in s.signatures["bleu"] and "tok:none" in s.signatures["bleu"]


def test_wrong_hyps_score_below_100() -> None:
    s = score(["x y z w"], [["a b c d"]], metrics=["bleu", "exact", "wer", "per"])
    assert s.values == {"bleu": 0.0, "exact": 0.0, "wer": 100.0, "per": 100.0}


def test_default_metrics_and_order() -> None:
    s = score(HYPS, REFS)
    assert tuple(s.values) == METRICS
    assert set(s.signatures) == {"bleu", "chrf", "rouge", "bleu1", "bleu2"}


def test_empty_hypotheses_give_zeros() -> None:
    s = score([], [])
    assert s.values == {m: 0.0 for m in METRICS}
    assert s.signatures == {}


def test_unknown_metric_names_it_and_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'ter'.*valid: bleu, chrf, wer, per, exact"):
        score(HYPS, REFS, metrics=["bleu", "ter"])


def test_bad_reference_shapes_raise() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference lists"):
        score(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"refs\[0\] must be a non-empty list"):
        score(["a"], [[]])
    with pytest.raises(ValueError, match=r"refs\[0\] must be a non-empty list"):
        score(["a"], ["a"])  # a bare string, not a list of references


def test_format() -> None:
    s = Scores({"bleu": 31.2, "chrf": 55.0, "wer": 23.1, "per": 5.2, "exact": 76.9}, {"bleu": "nrefs:1|tok:13a"})
    assert s.format() == (
        "BLEU 31.20 | chrF 55.00 | WER 23.10% | PER 5.20% | exact 76.90%\nBLEU signature: nrefs:1|tok:13a"
    )


def test_group_references() -> None:
    sources = ["read", "cat", "read", "read", "live"]
    targets = ["R IY D", "K AE T", "R EH D", "R IY D", "L IH V"]
    assert group_references(sources, targets) == (
        ["read", "cat", "live"],
        [["R IY D", "R EH D"], ["K AE T"], ["L IH V"]],
    )
    with pytest.raises(ValueError):
        group_references(["a"], [])


def test_grouped_references_feed_score() -> None:
    srcs, refs = group_references(["read", "read", "cat"], ["R IY D", "R EH D", "K AE T"])
    assert score(["R EH D", "K AA T"], refs, metrics=["exact"]).values["exact"] == 50.0
