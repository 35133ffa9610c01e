"""seq2seq-kit: sequence-to-sequence learning with RNN encoder-decoders, attention and the
Transformer behind one model interface.

    import seq2seqkit
    model = seq2seqkit.load("runs/demo")
    model.translate(["hello"])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from .config import Config, load_config
from .errors import ConfigError, DataError, UserError

__version__ = "0.1.0"


def load(model_dir: str | list[str], checkpoint: str = "best", device: str = "auto"):
    """Load a trained model directory, or a list of them as an ensemble (same tokenizers);
    returns a :class:`seq2seqkit.translate.Translator`."""
    from .translate import Translator

    if isinstance(model_dir, (list, tuple)):
        return Translator.ensemble(model_dir, checkpoint=checkpoint, device=device)
    return Translator.load(model_dir, checkpoint=checkpoint, device=device)


@contextlib.contextmanager
def _script_logging() -> Iterator[None]:
    """Show the ``seq2seqkit`` log (INFO) on stderr, as the CLI does, in a program that has not
    configured logging; a program that has (a root handler, or a handler or level on our logger)
    keeps exactly what it set up, so nothing is logged twice."""
    log = logging.getLogger("seq2seqkit")
    if logging.getLogger().handlers or log.handlers or log.level != logging.NOTSET:
        yield
        return
    handler = logging.StreamHandler()  # sys.stderr
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)


def train(config: str | Config, overrides: list[str] | None = None, resume: bool = False) -> dict:
    """Train from a YAML path (with dotted overrides) or a Config; returns the last validation.
    Progress is logged to the ``seq2seqkit`` logger, on stderr unless the program configured
    logging itself (``logging.basicConfig(...)``)."""
    from .training import Trainer

    with _script_logging():
        cfg = config if isinstance(config, Config) else load_config(config, overrides)
        return Trainer(cfg, resume=resume).train()


__all__ = ["Config", "ConfigError", "DataError", "UserError", "load", "load_config", "train", "__version__"]
