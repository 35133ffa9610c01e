"""seq2seq-kit: sequence-to-sequence learning with RNN encoder-decoders, attention and the
Transformer behind one model interface.

    import seq2seqkit
    model = seq2seqkit.load("runs/demo")
    model.translate(["hello"])
"""

from __future__ import annotations

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


def train(config: str | Config, overrides: list[str] | None = None, resume: bool = False) -> dict:
    """Train from a YAML path (with dotted overrides) or a Config; returns the last validation."""
    from .training import Trainer

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    return Trainer(cfg, resume=resume).train()


__all__ = ["Config", "ConfigError", "DataError", "UserError", "load", "load_config", "train", "__version__"]
