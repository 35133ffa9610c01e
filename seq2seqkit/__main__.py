"""``python -m seq2seqkit ...``: the ``s2s`` command (what torchrun runs: ``torchrun ... -m seq2seqkit train CONFIG``)."""

import sys

from .cli import main

sys.exit(main())
