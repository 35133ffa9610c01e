"""The models ``s2s serve`` serves: each model directory under its own name, or all of them as
one ensemble, run by PyTorch or (exported directories) by CTranslate2."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from ..translate import Translator


def load_models(model_dirs: Sequence[str | Path], names: Sequence[str] | None = None, engine: str = "torch",
                ensemble: bool = False, checkpoint: str = "best", device: str = "auto",
                compute_type: str = "default") -> dict[str, Translator]:
    """name -> Translator, in the order given (the first is the default model). Names default
    to the directory names (an ensemble's: theirs joined by ``+``); they must be distinct."""
    dirs = [Path(d) for d in model_dirs]
    if ensemble and engine == "ctranslate2":
        raise UserError("--ensemble: ensembles run on the PyTorch engine, not --engine ctranslate2")
    served = 1 if ensemble else len(dirs)
    names = list(names or [])
    if names and len(names) != served:
        raise UserError(f"--name: {len(names)} name{'s' * (len(names) != 1)} for {served} served "
                        f"model{'s' * (served != 1)} (an ensemble is one)")
    if "" in names:
        raise UserError("--name: a model's name cannot be empty")
    if not names:
        names = ["+".join(d.resolve().name for d in dirs)] if ensemble else [d.resolve().name for d in dirs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"-m: two models would be served as {repeated[0]!r}: name them with --name NAME ...")
    if ensemble:
        return {names[0]: Translator.ensemble(dirs, checkpoint=checkpoint, device=device)}
    return {name: Translator.load(d, checkpoint=checkpoint, device=device, engine=engine, compute_type=compute_type)
            for name, d in zip(names, dirs)}
