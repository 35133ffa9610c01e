"""Training: one loop for every model family, resumable to the exact batch.

The encoder and decoder are trained as one model on the cross-entropy of every output token
(padding masked), plus the auxiliary losses a model reports per output token (the coverage loss
of ``model.coverage``, weighted by ``training.coverage_weight``), each logged on its own. A run lives in its model directory::

    MODEL_DIR/config.yaml           the resolved config (what ``--resume`` re-reads)
    MODEL_DIR/tokenizers.json ...   tokenizers and vocabularies
    MODEL_DIR/checkpoints/last.pt   model, optimizer, scheduler, RNG states, data position
    MODEL_DIR/checkpoints/best.pt   the best validation so far
    MODEL_DIR/train_log.jsonl       every logged number; also in MODEL_DIR/tensorboard/
    MODEL_DIR/.seq2seqkit.lock      locked while a run trains in it (see rundir.py)

Resuming restores the RNG states and skips the batches of the current epoch that were
already done (batch order depends on (seed, epoch) only), so a resumed run logs the same
losses as one that was never interrupted.

Under torchrun the same loop runs in every process, each on its share of every update's
batches (distributed.py); rank 0 alone validates (validation.py) and writes the model directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import distributed
from .checkpoint import (atomic_write_text, epoch_checkpoints, load_checkpoint, load_weights, save_checkpoint,
                         tokenizer_stamp)
from .config import Config, TrainingConfig, dump_config, from_dict, read_saved_config
from .data.dataset import Batch, EncodedCorpus, collate, token_batches
from .data.shards import ShardCorpus, training_data
from .data.tokenizers import PAD, Tokenizer, load_tokenizers, save_tokenizers
from .errors import ConfigError, UserError
from .models import Seq2SeqModel, build_model
from .tasks import resolve_dataset
from .rundir import open_run
from .runtime import CoreWatch, HeapBound, allocator, capped_threads, peak_resident_mib
from .teacher_forcing import decode_with_teacher_forcing, teacher_forcing_ratio, token_loss
from .validation import early_stopping, load_dev, lower_is_better, validate

log = logging.getLogger("seq2seqkit")

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # training.precision -> autocast dtype
MIN_LOSS_SCALE = 1e-4  # fp16: a loss scale below this means the loss itself overflows (fairseq's default floor)


@dataclass
class Progress:
    """Everything about where training stands that is not a tensor; saved in checkpoints."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    best: float | None = None
    best_step: int = 0
    bad_validations: int = 0  # validations since the last improvement (early stopping)
    window_loss: float = 0.0  # sums since the last log line, so a resumed log matches
    window_tokens: int = 0
    window_steps: int = 0
    window_aux: dict[str, float] = field(default_factory=dict)  # auxiliary losses (e.g. coverage) since the last log line
    done: bool = False
    train_seconds: float = 0.0  # wall-clock time spent in train(), summed over resumes
    batches_per_update: int = 1  # processes x training.accumulate_steps when saved


def aux_weights(cfg: TrainingConfig) -> dict[str, float]:
    """The weight in the training loss of each auxiliary loss a model may report (by name)."""
    return {"coverage": cfg.coverage_weight}


def build_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainingConfig) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
    """constant / inverse_sqrt step per update (with linear warm-up); plateau steps per validation."""
    if cfg.lr_schedule == "plateau":  # warmup_steps is refused with it when the config loads
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
        )
    w = cfg.warmup_steps
    if cfg.lr_schedule == "inverse_sqrt":
        fn = (lambda s: min((s + 1) / w, math.sqrt(w / (s + 1)))) if w else (lambda s: 1 / math.sqrt(s + 1))
    else:
        fn = (lambda s: min(1.0, (s + 1) / w)) if w else (lambda s: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(opt, fn)


def build_scaler(cfg: TrainingConfig, device: torch.device) -> torch.amp.GradScaler:
    """fp16 loss scaling (a no-op object for fp32 and bf16, whose range needs none)."""
    if cfg.precision == "fp16" and device.type == "cpu":
        log.warning("training.precision=fp16 on a CPU: most CPUs have no float16 matrix units and run it far "
                    "slower than fp32; bf16 is the fast choice on a CPU, fp16 is meant for GPUs without bf16")
    return torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")


def check_run_dir(out: Path, resume: bool) -> None:
    """A resumed run needs checkpoints/last.pt in ``out``; a new one must not find one there."""
    last = out / "checkpoints" / "last.pt"
    if resume and not last.exists():
        raise UserError(f"{out}: nothing to resume (no checkpoints/last.pt)")
    if not resume and last.exists():
        raise UserError(f"{out} already holds a trained model: resume it with "
                        f"'s2s train --resume {out}' or choose another output_dir")


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# -- what a checkpoint of a run holds (last.pt, best.pt) -----------------------------------------
def rng_states() -> dict[str, Any]:
    """This process's random number generators' states: Python's, torch's and every GPU's."""
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_states(rng: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (GPU states only where both sides have them)."""
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"].cpu())
    if torch.cuda.is_available() and rng.get("cuda"):
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def run_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
              scaler: torch.amp.GradScaler, progress: Progress, rng: dict[str, Any],
              rng_ranks: list[dict[str, Any]] | None = None, tokenizers: dict[str, str] | None = None) -> dict[str, Any]:
    """The checkpoint of a run: weights, optimizer, scheduler, loss scaler, progress and RNG
    states; under torchrun with several processes, also every process's RNG states; and the
    fingerprints of the tokenizers its ids belong to (:func:`checkpoint.tokenizer_stamp`)."""
    return {
        **({"tokenizers": tokenizers} if tokenizers else {}),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),  # empty unless training.precision=fp16
        "progress": asdict(progress),
        "rng": rng,
        **({"rng_ranks": rng_ranks} if rng_ranks is not None and len(rng_ranks) > 1 else {}),
    }


BYTES_PER_PARAMETER = 16  # float32 weights, their gradients and Adam's two moments


def check_model_fits(cfg: Config, src_vocab: int, tgt_vocab: int, device: torch.device | None = None) -> None:
    """Refuse, before the model is built, one whose weights, gradients and optimizer state alone
    exceed the memory they will live in (``model.hidden_size=1000000`` built 32 TB of virtual
    memory and filled the RAM until the kernel's OOM killer ended it, or another process): this
    machine's RAM, or on a GPU that GPU's memory (the model is built in RAM first, so RAM must
    hold its weights then). The count comes from the model built on PyTorch's meta device, which
    allocates nothing."""
    with torch.device("meta"):
        parameters = build_model(cfg.model, src_vocab, tgt_vocab).num_parameters()
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # not known on this system: no RAM check
        ram = None
    state = (parameters * BYTES_PER_PARAMETER, f"weights, gradients and {cfg.training.optimizer} state")
    places = [(*state, ram, "this machine's")]
    if device is not None and device.type == "cuda":
        places = [(*state, torch.cuda.get_device_properties(device).total_memory, f"{device}'s"),
                  (parameters * 4, "the weights, built in RAM before they move to the GPU", ram, "this machine's")]
    for need, what, have, whose in places:
        if have is not None and need > have:
            raise ConfigError(f"model: {parameters:,} parameters need at least {need / 2**30:,.1f} GiB for {what}, "
                              f"more than {whose} {have / 2**30:,.1f} GiB of memory: a smaller model.* size (e.g. "
                              f"hidden_size, embed_dim, layers)?")


def load_run_state(ckpt: dict[str, Any], path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: Any, scaler: torch.amp.GradScaler, tokenizers: dict[str, str] | None = None) -> Progress:
    """Load a checkpoint of :func:`run_state` into the run's objects (refused in one line where
    it is not one, or does not fit the model or ``tokenizers``); returns its progress. RNG states
    are the caller's.

    The weights are copied into the model's own tensors, and the optimizer's state (which
    ``load_state_dict`` would keep as the checkpoint's tensors) is copied into tensors of its own,
    so nothing of ``ckpt`` outlives it: read with ``mmap`` (as a resume reads it), the checkpoint
    never reaches the heap."""
    load_weights(model, ckpt, path, needs=("optimizer", "scheduler", "progress", "rng"), tokenizers=tokenizers)
    optimizer.load_state_dict(ckpt["optimizer"])
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.clone()
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler.is_enabled() and ckpt.get("scaler"):  # a run saved with fp16 keeps its loss scale
        scaler.load_state_dict(ckpt["scaler"])
    return Progress(**ckpt["progress"])


def truncate_log(path: Path, step: int) -> None:
    """Drop the lines of the log at ``path`` written after ``step`` (the checkpoint a run
    (re)starts from): they will be redone."""
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_file():  # a device such as /dev/zero would be read without end
        raise UserError(f"{path}: not a regular file (the run's log); will not read or replace it")
    keep = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line torn by the crash we resume from
                continue
            at = entry.get("step", 0) if isinstance(entry, dict) else None  # another value: not an entry of ours
            if isinstance(at, (int, float)) and not isinstance(at, bool) and at <= step:
                keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))


class StopRequest:
    """While active, SIGINT/SIGTERM only record a request (``requested`` = the signal's name) that
    the training loop honours between updates; a second signal raises KeyboardInterrupt as usual.
    Handlers are installed only in the main thread (signals cannot be caught elsewhere).

    ``repeat_s``: a second signal within that many seconds of the first is the same request
    delivered twice (torchrun passes the terminal's Ctrl-C on to processes that got it already)."""

    def __init__(self, repeat_s: float = 0.0) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}
        self.repeat_s, self._at = repeat_s, 0.0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if time.monotonic() - self._at < self.repeat_s:
                return
            raise KeyboardInterrupt
        self.requested, self._at = signal.Signals(signum).name, time.monotonic()
        log.warning("%s: finishing the current update, then saving a checkpoint (again to abort now)", self.requested)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def heap_policy(release: bool | None, above: float | None, allocator: str, resumed: bool) -> tuple[float, bool]:
    """(ceiling, enabled) of a training process's :class:`HeapBound` from ``training.release_memory``
    and ``release_memory_above``, where those are null (config.py says why): release above 1.5x,
    and above 1.2x in a resumed process under jemalloc."""
    jemalloc_resume = allocator != "system" and resumed
    enabled = release is not False
    return (above if above is not None else 1.2 if jemalloc_resume else 1.5), enabled


class Trainer:
    """Sets up a run in ``cfg.output_dir`` (new, or resumed from it) and trains it."""

    def __init__(self, cfg: Config, resume: bool = False) -> None:
        self.out = Path(cfg.output_dir)
        # Under torchrun: this process's place among the others (distributed.py); rank 0 alone
        # holds the model directory (run_lock is None on the others).
        self.dist, self.device = distributed.setup(cfg.training, self.out)
        self.run_lock = self.dist.on_main(lambda: open_run(self.out, resume), "claiming the model directory")
        try:
            self._setup(cfg, resume)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the model directory (train() does this when it ends)."""
        if self.run_lock is not None:
            self.run_lock.release()

    def _setup(self, cfg: Config, resume: bool) -> None:
        self.cfg, tc = cfg, cfg.training
        self.ckpt_dir = self.out / "checkpoints"
        check_run_dir(self.out, resume)
        if tc.num_threads:
            torch.set_num_threads(capped_threads(tc.num_threads))
        self.cores = CoreWatch("training.num_threads", enabled=self.device.type == "cpu", adapt=not tc.num_threads)
        seed_all(tc.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        self.src_tok, self.tgt_tok, self.train_data = self._training_data(resume)
        self.stamp = tokenizer_stamp(self.src_tok, self.tgt_tok)  # recorded in every checkpoint, checked on resume
        log.info("vocabulary: %d source, %d target", self.src_tok.vocab_size, self.tgt_tok.vocab_size)
        self.dev = load_dev(cfg, self.src_tok, self.tgt_tok)
        log.info("data: %d training pairs, %d dev pairs", len(self.train_data), len(self.dev.pairs) if self.dev else 0)
        check_model_fits(cfg, self.src_tok.vocab_size, self.tgt_tok.vocab_size, self.device)
        self.model: Seq2SeqModel = build_model(cfg.model, self.src_tok.vocab_size, self.tgt_tok.vocab_size).to(self.device)
        log.info("model: %s, %s parameters", cfg.model.family, f"{self.model.num_parameters():,}")
        self.optimizer = build_optimizer(self.model, tc)
        self.scheduler = build_scheduler(self.optimizer, tc)
        self.scaler = build_scaler(tc, self.device)
        self.progress = Progress()
        self.dist.seed(tc.seed, 0)  # processes other than rank 0 draw their own dropout masks
        if resume:
            self._resume()
            if self.dist.is_main:  # the overrides given at --resume belong to the run from now on
                self._record_config()
        # The training computation, through DistributedDataParallel under torchrun.
        self.forward = self.dist.wrap(self.model, decode_with_teacher_forcing, self.device)
        self.log_file = self.out / "train_log.jsonl"
        if self.dist.is_main:
            truncate_log(self.log_file, self.progress.step)
        self.tb = None
        self._signatures_shown = False
        self._clock = time.perf_counter()  # train_seconds counts from here (and from each train())
        self.stopped: str | None = None  # "SIGINT"/"SIGTERM" if train() stopped early on it (checkpoint saved)
        # resident memory near release_memory_above x the first updates' peak (runtime.py)
        ceiling, enabled = heap_policy(tc.release_memory, tc.release_memory_above, allocator(), resume)
        self.heap = HeapBound(ceiling=ceiling, enabled=enabled)

    # -- setup helpers -------------------------------------------------------------------------
    def _training_data(self, resume: bool) -> tuple[Tokenizer, Tokenizer, EncodedCorpus | ShardCorpus]:
        """Tokenizers and the training split, from data.preprocessed, the cache or memory
        (data/shards.py training_data). A resumed run keeps its own tokenizers; under torchrun
        rank 0 alone trains and writes them, and the other processes read what it wrote."""
        if resume:
            return training_data(self.cfg, load_tokenizers(self.out))
        made = self.dist.on_main(self._new_run, "the tokenizers' training on rank 0")
        if made is not None:
            return made
        self.cfg.data = resolve_dataset(self.cfg.data)
        return training_data(self.cfg, distributed.shared_tokenizers(self.out, self.dist))

    def _new_run(self) -> tuple[Tokenizer, Tokenizer, EncodedCorpus | ShardCorpus]:
        """A new run's data set, tokenizers (trained on its training data, or those of its
        shards), encoded training split, and config.yaml."""
        cfg = self.cfg
        cfg.data = resolve_dataset(cfg.data)
        if not cfg.data.train.is_set and not cfg.data.preprocessed:
            raise ConfigError("data.train: no training data (set data.train.src and data.train.tgt, "
                              "data.train.path, data.dataset or data.preprocessed)")
        src_tok, tgt_tok, train_data = training_data(cfg)
        save_tokenizers(self.out, src_tok, tgt_tok)
        atomic_write_text(self.out / "config.yaml", dump_config(cfg))
        return src_tok, tgt_tok, train_data

    def _record_config(self) -> None:
        """config.yaml as this resumed run trains: with ``--resume DIR training.max_steps=N`` it
        said the old limit, so a later ``--resume`` (after a crash) stopped there, and the model
        directory described a run it no longer was."""
        path, text = self.out / "config.yaml", dump_config(self.cfg)
        try:  # the saved config as this version writes it: a change of layout alone is no change
            saved = dump_config(load_for_resume(self.out, []))
        except UserError:
            saved = None
        if saved != text:
            atomic_write_text(path, text)
            log.info("%s: updated with the settings this resumed run trains with", path)

    def _resume(self) -> None:
        """Continue from checkpoints/last.pt: the run's state, this process's RNG states, and
        ``done`` again where the limits were raised by overrides."""
        path = self.ckpt_dir / "last.pt"
        # Mapped, not read onto the heap: loading needs no heap copy of the checkpoint, and leaves
        # no freed blocks between the tensors that stay (load_run_state copies what it keeps).
        ckpt = load_checkpoint(path, map_location=self.device, mmap=True)
        self.progress = load_run_state(ckpt, path, self.model, self.optimizer, self.scheduler, self.scaler,
                                       self.stamp)
        rng = self.dist.own_rng(ckpt["rng"], ckpt.get("rng_ranks"))
        if rng is None:  # a process the saved run did not have
            self.dist.seed(self.cfg.training.seed, self.progress.step)
        else:
            set_rng_states(rng)
        log.info("resumed at %s", self.where())
        per_update = self.dist.world_size * self.cfg.training.accumulate_steps
        if self.progress.batches_per_update != per_update:
            log.warning("resumed with %d batches per update (processes x training.accumulate_steps) where the run "
                        "saved had %d: the remaining batches are trained in the same order, but each update averages "
                        "over %s batches than before", per_update, self.progress.batches_per_update,
                        "more" if per_update > self.progress.batches_per_update else "fewer")
        self.progress.done = self._finished()  # limits may have been raised by overrides

    def where(self) -> str:
        """Where training stands, counted as a person counts: ``step 1800, 3/3 epochs done`` or
        ``step 700, epoch 2/3 (batch 100)``."""
        p, epochs = self.progress, self.cfg.training.epochs
        if p.batch_in_epoch:
            return f"step {p.step}, epoch {p.epoch + 1}/{epochs} (batch {p.batch_in_epoch})"
        return f"step {p.step}, {p.epoch}/{epochs} epochs done"

    def planned_steps(self) -> int:
        """The updates training will make in all if early stopping does not end it sooner:
        every epoch's batches (the same number each epoch), or ``training.max_steps`` if fewer."""
        tc = self.cfg.training
        batches = len(token_batches(self.train_data.src_lens, self.train_data.tgt_lens, tc.batch_tokens, tc.seed))
        total = tc.epochs * self.dist.updates_per_epoch(batches, tc.accumulate_steps)
        return min(total, tc.max_steps) if tc.max_steps else total

    def _finished(self) -> bool:
        tc, p = self.cfg.training, self.progress
        patience = tc.early_stopping.patience
        return (p.epoch >= tc.epochs or (tc.max_steps is not None and p.step >= tc.max_steps)
                or (patience is not None and p.bad_validations >= patience))

    # -- logging -------------------------------------------------------------------------------
    def _record(self, kind: str, values: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        p = self.progress  # "epoch": the (1-based) epoch of the latest update, also right after its last batch
        # time_s: wall-clock seconds spent in train() so far, summed over resumes (validations included)
        entry = {"kind": kind, "step": p.step, "epoch": p.epoch + (1 if p.batch_in_epoch else 0),
                 "time_s": round(p.train_seconds + time.perf_counter() - self._clock, 3), **values}
        with self.log_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, self.progress.step)

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but stay usable without it
            log.warning("tensorboard is not installed: curves go to train_log.jsonl only")
            return
        self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.progress.step + 1)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, name: str) -> None:
        """Write checkpoints/NAME.pt: weights, optimizer, scheduler, progress and RNG states.
        Under torchrun every process saves ``last`` at the same updates (rank 0 writes it, with
        every process's RNG states); ``best`` is rank 0's alone, during its validation."""
        now = time.perf_counter()
        self.progress.train_seconds += now - self._clock
        self._clock = now
        self._check_weights()
        rng = rng_states()
        ranks = self.dist.gather(rng, "the checkpoint") if name == "last" else None
        if self.dist.is_main:
            state = run_state(self.model, self.optimizer, self.scheduler, self.scaler, self.progress, rng, ranks,
                              self.stamp)
            save_checkpoint(state, self.ckpt_dir / f"{name}.pt")

    def _save_epoch_weights(self) -> None:
        """Weights only, as ``epoch-N.pt``; the oldest beyond ``keep_epoch_checkpoints`` are removed."""
        if not self.dist.is_main:
            return
        self._check_weights()
        save_checkpoint({"model": self.model.state_dict(), "progress": asdict(self.progress),
                         "tokenizers": self.stamp},
                        self.ckpt_dir / f"epoch-{self.progress.epoch}.pt")
        for old in epoch_checkpoints(self.ckpt_dir)[:-self.cfg.training.keep_epoch_checkpoints]:
            old.unlink(missing_ok=True)

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train until epochs/max_steps/early stopping; returns the final validation numbers.
        The model directory's lock is held throughout and released when it ends, however it ends.

        SIGINT (Ctrl-C) or SIGTERM stop it at the end of the current update with a checkpoint
        of exactly that step (``stopped`` becomes True), so ``--resume`` continues as if never
        stopped; a second signal interrupts at once (the last periodic checkpoint remains)."""
        if self.run_lock is not None:
            self.run_lock.acquire()  # again, if an earlier train() or close() released it
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> dict[str, Any]:
        tc, p = self.cfg.training, self.progress
        self._clock = time.perf_counter()
        if self.dist.is_main:
            self._open_tensorboard()
        p.batches_per_update = self.dist.world_size * tc.accumulate_steps
        last_val: dict[str, float] = {}
        self._total_steps = self.planned_steps()
        self._session = (time.perf_counter(), p.step)  # for the ETA: this session's pace
        if not p.done:
            log.info("training: %d steps planned (%d epoch%s%s)%s; memory allocator: %s", self._total_steps, tc.epochs,
                     "s" if tc.epochs != 1 else "", f", max_steps {tc.max_steps}" if tc.max_steps else "",
                     f", from {self.where()}" if p.step else "", allocator())
        # Log lines go through tqdm.write so they do not tear the bar: the root logger's console
        # handler (the CLI's), or ours where the Python API set one up (seq2seqkit.train in a script).
        consoles = [lg for lg in (logging.getLogger(), log) if lg.handlers] or [logging.getLogger()]
        # One bar for the whole run: its total is the planned steps, so its ETA stops at max_steps.
        bar = tqdm(total=self._total_steps, initial=p.step, desc=f"epoch {p.epoch + 1}/{tc.epochs}", unit="step",
                   dynamic_ncols=True, leave=False, disable=True if p.done or not self.dist.is_main else None)
        # Under torchrun the processes agree, after each update, on whether any was asked to stop
        # (stopping: the signal's name), so that all of them stop after the same update.
        stopping = None
        with bar, logging_redirect_tqdm(consoles), StopRequest(2.0 if self.dist.enabled else 0.0) as stop:
            while not p.done and p.epoch < tc.epochs and not (stopping := self.dist.agreed_signal(stop.requested)):
                batches = token_batches(self.train_data.src_lens, self.train_data.tgt_lens,
                                        tc.batch_tokens, tc.seed, p.epoch)
                bar.set_description(f"epoch {p.epoch + 1}/{tc.epochs}")
                t0, tokens0 = time.perf_counter(), 0
                tgt_lens = self.train_data.tgt_lens
                while p.batch_in_epoch < len(batches):
                    # An update: the next processes x accumulate_steps batches of the epoch's order.
                    mine, taken = self.dist.share(len(batches), p.batch_in_epoch, tc.accumulate_steps)
                    update = batches[p.batch_in_epoch:p.batch_in_epoch + taken]
                    tokens = sum(int(tgt_lens[idx].sum()) + len(idx) for idx in update)  # + EOS
                    # A process left without a batch in an epoch's last update runs one with weight 0.
                    micro = [collate(self.train_data, batches[i]).to(self.device) for i in mine or [p.batch_in_epoch]]
                    before = p.step
                    loss = self.train_step(micro, tokens, weight=1.0 if mine else 0.0)
                    self.cores.check(torch.get_num_threads())
                    self.heap.after_update()
                    tokens0 += tokens
                    p.batch_in_epoch += taken
                    # every-N-steps actions count applied updates (an fp16 overflow skips one)
                    stepped = p.step > before
                    bar.update(int(stepped))
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self._lr():.2e}", refresh=False)
                    end_of_epoch = p.batch_in_epoch == len(batches)
                    if end_of_epoch:
                        p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                    if stepped and p.step % tc.log_every == 0:
                        self._log_train(tokens0 / max(time.perf_counter() - t0, 1e-9))
                    validate = (stepped and tc.validate_every and p.step % tc.validate_every == 0) or (not tc.validate_every and end_of_epoch)
                    if tc.max_steps and p.step >= tc.max_steps:
                        p.done, validate = True, True
                    if validate and self.dev is not None:
                        last_val = self._validate_on_main()
                    if end_of_epoch and tc.keep_epoch_checkpoints:
                        self._save_epoch_weights()
                    if validate or (stepped and p.step % tc.checkpoint_every == 0) or end_of_epoch:
                        self.save("last")
                    stopping = self.dist.agreed_signal(stop.requested)
                    if p.done or end_of_epoch or stopping:
                        break  # a stop request is saved by the save("last") after the loop
            if p.epoch >= tc.epochs:
                p.done = True
            self.save("last")
            self.dist.barrier("the final checkpoint")  # the others return once rank 0 has written it
        self.stopped = None if p.done else stopping
        if self.heap.releases:
            log.info("memory: freed heap given back %d times in this process (resident memory above %d MiB)",
                     self.heap.releases, (self.heap.limit or 0) >> 20)
        if self.stopped:
            log.info("stopped by %s at step %d; checkpoint saved: continue with 's2s train --resume %s'",
                     self.stopped, p.step, self.out)
        if self.tb is not None:
            self.tb.close()
        return last_val

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, batch: Batch | list[Batch], tokens: int | None = None, weight: float = 1.0) -> float:
        """One optimizer update on ``batch`` (already on the device), or on the micro-batches of
        a list, whose gradients accumulate; returns the update's per-token loss. Public so that
        benchmarks time exactly what training runs.

        ``tokens``: the target tokens of the whole update, over every process under torchrun
        (default: those given here). Each micro-batch's summed token loss is divided by it, and
        DistributedDataParallel averages the processes' gradients, so the loss is scaled by
        processes / tokens here: the update's gradient is the sum over all its tokens, wherever
        they were, divided by their number. N processes x batch B and one process accumulating
        N batches B make the same update. ``weight`` 0: this process has no batch in the update
        and only joins the gradient exchange."""
        tc, p = self.cfg.training, self.progress
        micro = [batch] if isinstance(batch, Batch) else batch
        n = tokens if tokens is not None else sum(b.n_tokens for b in micro)
        self.model.train()
        ratio = teacher_forcing_ratio(tc.teacher_forcing, p.step)
        weights = aux_weights(tc)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        aux_sums: dict[str, torch.Tensor] = {}
        for k, b in enumerate(micro):
            with self.dist.synced(self.forward, sync=k == len(micro) - 1), self.dist.talking(f"update {p.step + 1}"):
                with torch.autocast(self.device.type, dtype=AUTOCAST.get(tc.precision), enabled=tc.precision in AUTOCAST):
                    logits, aux = self.forward(b.src, b.src_lens, b.tgt_in, ratio, tc.teacher_forcing.mode)
                real = b.tgt_out != PAD
                micro_loss = weight * token_loss(logits, b.tgt_out, tc.label_smoothing)  # in fp32
                micro_aux = {name: weight * v.float().masked_fill(~real, 0.0).sum() for name, v in aux.items()}
                total = sum((weights[name] * v for name, v in micro_aux.items()), micro_loss)
                self.scaler.scale(total / (n / self.dist.world_size)).backward()
            loss_sum += micro_loss.detach()
            for name, v in micro_aux.items():
                aux_sums[name] = aux_sums.get(name, 0.0) + v.detach()
        # the update's sums over every process, and the gradient norm: one host sync for all
        # numbers (the losses are needed anyway, for the log)
        summed = self.dist.sum(torch.stack([loss_sum, *aux_sums.values()]), f"update {p.step + 1}")
        self.scaler.unscale_(self.optimizer)  # fp16: true gradients before clipping (else a no-op)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad_norm) if tc.clip_grad_norm else None
        numbers = torch.cat([summed, (norm.float() if norm is not None else torch.zeros((), device=summed.device))[None]]).tolist()
        value, aux_values, norm_value = numbers[0], numbers[1:-1], numbers[-1]
        total_value = value + sum(weights[name] * v for name, v in zip(aux_sums, aux_values))
        finite = math.isfinite(total_value) and math.isfinite(norm_value)
        if not finite and not self.scaler.is_enabled():
            raise self._diverged(p.step + 1, f"the loss is {total_value / n:.4g}" if not math.isfinite(total_value) else
                                 f"the gradient norm is {norm_value:.4g}")  # before the update: weights stay good
        if self._scaled_step(finite):
            return value / n
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        p.step += 1
        p.window_loss += value
        p.window_tokens += n
        p.window_steps += 1
        for k, v in zip(aux_sums, aux_values):
            p.window_aux[k] = p.window_aux.get(k, 0.0) + v
        return value / n

    def _scaled_step(self, finite: bool) -> bool:
        """The optimizer step through the loss scaler (a plain ``optimizer.step()`` unless fp16).
        fp16: an update whose loss or gradients overflowed is skipped (no weight, schedule or
        step change) and the scale halved, as torch.amp.GradScaler does; returns True then. A
        scale below MIN_LOSS_SCALE means the loss overflows unscaled: training has diverged."""
        scale = self.scaler.get_scale()
        if finite:
            self.scaler.step(self.optimizer)  # skips by itself when unscale_ found inf/NaN gradients
            self.scaler.update()  # halves the scale after such a skip, else may grow it
            if self.scaler.get_scale() >= scale:
                return False
        else:
            self.scaler.update(scale * self.scaler.get_backoff_factor())
        step = self.progress.step + 1
        log.warning("update %d: fp16 overflow, update skipped; loss scale now %g", step, self.scaler.get_scale())
        if self.scaler.get_scale() < MIN_LOSS_SCALE:
            raise self._diverged(step, f"the fp16 loss scale fell below {MIN_LOSS_SCALE:g}")
        return True

    def _check_weights(self) -> None:
        """Refuse to save weights that are no longer finite: a good checkpoint is never overwritten by them."""
        if not torch.stack([torch.isfinite(w).all() for w in self.model.parameters()]).all():
            raise self._diverged(self.progress.step, "the weights are no longer finite")

    def _diverged(self, step: int, what: str) -> UserError:
        """Training produced a non-finite number: stop with what to change (the checkpoints on
        disk are the last good ones: nothing non-finite is saved)."""
        tc = self.cfg.training
        hints = [f"a lower training.lr (now {tc.lr:g})"]
        if not tc.clip_grad_norm:
            hints.append("training.clip_grad_norm=1.0 (now off)")
        if tc.precision != "fp32":
            hints.append("training.precision=fp32")
        last = self.ckpt_dir / "last.pt"
        kept = f"{last} is kept as it was" if last.exists() else "no checkpoint was written"
        return UserError(f"step {step}: training diverged, {what}; {kept}. Try {' or '.join(hints)}")

    def _log_train(self, tokens_per_s: float) -> None:
        p = self.progress
        loss = p.window_loss / max(p.window_tokens, 1)
        values = {
            "loss": loss, "ppl": math.exp(min(loss, 50.0)), "lr": self._lr(),
            "teacher_forcing": teacher_forcing_ratio(self.cfg.training.teacher_forcing, p.step - 1),
            "tokens_per_s": tokens_per_s,
            **({"loss_scale": self.scaler.get_scale()} if self.scaler.is_enabled() else {}),
            # the process's peak resident memory so far (all phases: set-up, training, validation), MiB
            **({"rss_peak_mib": rss} if (rss := peak_resident_mib()) is not None else {}),
            # on a GPU: the most memory PyTorch's allocator has held for tensors so far, MiB
            **({"gpu_peak_mib": torch.cuda.max_memory_allocated(self.device) / 2**20} if self.device.type == "cuda" else {}),
            # auxiliary losses per output token, unweighted (loss and ppl are the token cross-entropy alone)
            **{k: v / max(p.window_tokens, 1) for k, v in p.window_aux.items()},
        }
        self._record("train", values)
        aux = "".join(f" | {k} {values[k]:.4f}" for k in p.window_aux)
        log.info("step %d/%d (epoch %d/%d) | loss %.4f | ppl %.2f%s | lr %.2e | teacher forcing %.3f | %.0f tok/s | ETA %s",
                 p.step, self._total_steps, p.epoch + (1 if p.batch_in_epoch else 0), self.cfg.training.epochs,
                 values["loss"], values["ppl"], aux, values["lr"], values["teacher_forcing"], tokens_per_s, self._eta())
        p.window_loss, p.window_tokens, p.window_steps, p.window_aux = 0.0, 0, 0, {}

    def _eta(self) -> str:
        """Time to the planned last step at this session's pace so far (validations included)."""
        start, first_step = self._session
        done = self.progress.step - first_step
        if done <= 0:
            return "?"
        left = max(self._total_steps - self.progress.step, 0)
        return tqdm.format_interval(left * (time.perf_counter() - start) / done)

    def _validate_on_main(self) -> dict[str, float]:
        """Validation: on rank 0 alone under torchrun, while the others wait; they then take its
        progress (best score, early stopping) and learning rate (the plateau schedule)."""
        values = self._validate() if self.dist.is_main else {}
        if self.dist.enabled:
            values, progress, scheduler, lrs = self.dist.broadcast(
                (values, asdict(self.progress), self.scheduler.state_dict(),
                 [g["lr"] for g in self.optimizer.param_groups]), "the validation on rank 0")
            self.progress.__dict__.update(progress)
            self.scheduler.load_state_dict(scheduler)
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
        return values

    def _validate(self) -> dict[str, float]:
        # Validation allocates tensors of other shapes than the training step (decoding steps,
        # fp32 dev batches): the freed heap of each phase is returned before the other runs, so
        # that neither phase's memory stays resident on top of the other's (runtime.py).
        self.heap.release()
        try:
            return self._validate_and_record()
        finally:
            self.heap.release()

    def _validate_and_record(self) -> dict[str, float]:
        assert self.dev is not None
        tc, p = self.cfg.training, self.progress
        values, signatures = validate(self.model, self.dev, self.tgt_tok, self.cfg, self.device)
        improved = early_stopping(p, values, tc.early_stopping)
        if improved:
            self.save("best")
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            current = values[tc.early_stopping.metric]
            self.scheduler.step(current if lower_is_better(tc.early_stopping.metric) else -current)
        self._record("valid", {**values, "best": p.best})
        shown = " | ".join(f"{k} {v:.4g}" for k, v in values.items())
        log.info("validation at step %d: %s%s", p.step, shown, " (new best)" if improved else "")
        if not self._signatures_shown:
            for k, v in signatures.items():
                log.info("%s signature: %s", k, v)
            self._signatures_shown = True
        return values


def load_for_resume(model_dir: str | Path, overrides: list[str]) -> Config:
    """The config saved in a model directory, with command-line overrides applied."""
    path = Path(model_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{model_dir}: not a model directory (no config.yaml)")
    for item in overrides:
        if "=" not in item and item.endswith((".yaml", ".yml")):  # `s2s train CONFIG --resume DIR`
            raise UserError(f"{item}: a resumed run trains with its own {path}; give a CONFIG.yaml or --resume "
                            f"MODEL_DIR, not both (overrides of the saved config are key=value)")
        if item.split("=", 1)[0].strip() == "output_dir":
            raise UserError(f"override {item!r}: a resumed run stays in its model directory ({model_dir}); "
                            f"to continue it elsewhere, copy the directory and resume the copy")
    raw = read_saved_config(path)
    raw["output_dir"] = str(model_dir)
    teacher = (raw.get("training") or {}).get("teacher_forcing")
    if isinstance(teacher, dict):  # saved before teacher_forcing.mode existed: it decoded step by step
        teacher.setdefault("mode", "sequential")
    return from_dict(raw, str(path), overrides)
