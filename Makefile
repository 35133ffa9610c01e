# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench-g2p bench-multi30k bench-samsum bench-dialogue bench-qa bench-speed bench-busy bench-scale bench-exposure bench-serve bench-ttq clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is installed first, pinned, so nothing after it can pull another build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[serve,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/s2s demo

test: $(STAMP)
	$(PY) -m pytest

# Benchmarks (long; not part of `make test`): train what is missing, evaluate, print tables.
bench-g2p: $(STAMP)
	$(PY) bench/g2p.py configs/g2p-rnn.yaml configs/g2p-attention.yaml configs/g2p-attention-large.yaml configs/g2p-transformer.yaml --ensemble

bench-multi30k: $(STAMP)
	$(PY) bench/multi30k.py

# Issues 12 and 13 (data first: `s2s prepare samsum|dailydialog|babi|tweetqa ...`, see README).
bench-samsum: $(STAMP)
	$(PY) bench/samsum.py

bench-dialogue: $(STAMP)
	$(PY) bench/dialogue.py

bench-qa: $(STAMP)
	$(PY) bench/qa.py

# Training/decoding speed beside JoeyNMT 2.3.0 (own venv under ~/.cache/seq2seqkit/bench) and CTranslate2.
bench-speed: $(STAMP)
	$(PY) bench/speed.py

# `s2s serve` under 1/8/32/128 concurrent clients, batching across requests vs one at a time.
bench-serve: $(STAMP)
	$(PY) bench/serve.py

# Time to quality: our Multi30k Transformer for 32 minutes against JoeyNMT 2.3.0 (8 epochs, ~95
# minutes), dev BLEU against wall-clock minutes in one plot (bench/ttq-curves.png); a quiet machine.
bench-ttq: $(STAMP)
	$(PY) bench/time_to_quality.py

# Demo training speed on a busy machine: idle, beside one and two CPU-bound programs.
bench-busy: $(STAMP)
	$(PY) bench/busy.py

# Peak RSS and start-up time as the corpus grows: Multi30k's training set repeated 1x, 10x, 100x,
# tokenized at start vs preprocessed (repeated files under ~/.cache/seq2seqkit/bench/corpus-scale).
bench-scale: $(STAMP)
	$(PY) bench/corpus_scale.py

# Teacher forcing vs scheduled sampling, and the exposure-bias measure, on G2P and Multi30k:
# the 12 runs of BENCHMARKS.md (one thread each; about 8 hours on a CPU one after another, so
# half that in two terminals, one per line; resumable: run it again after an interruption).
bench-exposure: $(STAMP)
	$(PY) bench/exposure.py --tasks g2p --max-steps 800 --validate-every 100 --threads 1
	$(PY) bench/exposure.py --tasks multi30k --max-steps 1000 --validate-every 125 --threads 1 \
	    --config multi30k-transformer=configs/multi30k-transformer-32min.yaml

clean:
	rm -rf $(VENV) runs build *.egg-info
