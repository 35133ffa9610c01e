"""Built-in tasks: data sets the toolkit can lay out by itself, offline."""

from __future__ import annotations

from ..config import CorpusConfig, DataConfig


def resolve_dataset(data: DataConfig) -> DataConfig:
    """Fill train/dev/test from ``data.dataset`` where the config does not name files."""
    if data.dataset is None:
        return data
    from . import cmudict

    paths = cmudict.prepare_cached()
    update = {
        split: CorpusConfig(path=str(paths[split]), format="tsv")
        for split in ("train", "dev", "test")
        if not getattr(data, split).is_set
    }
    return data.model_copy(update=update)
