"""The one training loop of both CLEF stages.

AdamW with a linear warm-up and cosine decay to ``min_lr``; optional gradient clipping; bf16
autocast (``amp``); ``torchrun`` data parallelism with gradients averaged over ranks; seeded,
exactly resumable runs; the progress bar of :func:`clefctl.ui.progress_bar`; ``metrics.jsonl``;
atomic checkpoints every epoch and on SIGINT/SIGTERM (which then raise
:class:`clefctl.errors.Interrupted` naming the checkpoint and the resume command); a NaN/inf loss
stops the run and keeps the last good checkpoint. On resume, ``metrics.jsonl`` is cut back to the
checkpoint's step, so it ends equal to an uninterrupted run's. Unreadable training images are
skipped and counted, also when DataLoader workers load them.

A stage supplies a :class:`Task`: which modules train, and ``loss(batch, step_rng)`` returning
the loss and the numbers to log. Everything random in a step is a pure function of
(seed, epoch, sample index) or (seed, global step), which is what makes ``--resume`` exact.

The data path: one DataLoader per run, its workers kept across epochs (the sampler hands out
``(epoch, index)`` keys), pinned memory and prefetching on CUDA (:func:`clefctl.distributed.loader_options`),
per-sample seeding of ~2 us (:class:`SeededDataset`), and a note once at the start when the model
waits for its batches (:class:`LoaderProbe`). Under torchrun the BatchNorm of the small models' stem
becomes :class:`clefctl.distributed.SyncBatchNorm2d`, and the loss and the task's logged numbers are
the global batch's (means over ranks).

Per-step cost on small CPUs is kept down by AdamW's fused kernel (:func:`_adamw`: one pass over
all parameters, which matters for the large token embedding), decoded images held in memory for
small data sets (:func:`clefctl.data.records.cache_images`) and text towers run only up to the
longest prompt in the batch (:func:`clefctl.model.encode_text_trimmed`); docs/performance.md has
the measurements.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clefctl import distributed as dist
from clefctl.engine.data import EpochSampler, LoaderProbe, SeededDataset
from clefctl.errors import ClefError, Interrupted
from clefctl.model import ClefModel
from clefctl.paths import atomic_path
from clefctl.ui import progress_bar
from clefctl.workspace import Run


@dataclass
class TrainConfig:
    epochs: float | None = 5     # None: the stage chooses (the paper's 5, or more for small models)
    batch_size: int | None = 64  # None: the stage chooses (fine-tuning: smaller for small models)
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_epochs: float | None = 1.0  # None: the stage chooses (1.0 if it does not)
    min_lr: float = 1e-6
    grad_clip: float | None = None
    amp: str = "auto"            # auto | bf16 | off
    seed: int = 0
    num_workers: int | None = None  # None: 0 on small CPUs, more on GPU machines
    max_steps: int | None = None    # stop after this many optimizer steps in total (resumable)
    log_every: int = 10
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "TrainConfig":
        """Raise ClefError naming the option (as the CLI spells it) for a value no run can use;
        None (the stage chooses) passes. Returns self."""
        checks = [  # (field, value may be None, integer, rule, test)
            ("epochs", True, False, "> 0", lambda v: v > 0),
            ("batch_size", True, True, ">= 1", lambda v: v >= 1),
            ("lr", True, False, "> 0", lambda v: v > 0),
            ("weight_decay", False, False, ">= 0", lambda v: v >= 0),
            ("warmup_epochs", True, False, ">= 0", lambda v: v >= 0),
            ("min_lr", False, False, ">= 0", lambda v: v >= 0),
            ("grad_clip", True, False, "> 0", lambda v: v > 0),
            ("seed", False, True, "an integer", lambda v: True),
            ("num_workers", True, True, ">= 0", lambda v: v >= 0),
            ("max_steps", True, True, ">= 1", lambda v: v >= 1),
            ("log_every", False, True, ">= 1", lambda v: v >= 1),
        ]
        for name, nullable, integer, rule, ok in checks:
            v = getattr(self, name)
            if v is None and nullable:
                continue
            number = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not number or not math.isfinite(v) or not ok(v):
                flag = "--" + {"num_workers": "workers"}.get(name, name).replace("_", "-")
                kind = "an integer" if integer else "a finite number"
                raise ClefError(f"{flag} must be {kind} {rule}, got {v!r}" if rule != kind else
                                f"{flag} must be {kind}, got {v!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ClefError(f"unknown --amp {self.amp!r}", hint="use auto, bf16 or off")
        return self


def check_batches(n: int, batch_size: int, world: int = 1) -> int:
    """Steps per epoch for ``n`` training images; ClefError when there is not one whole batch."""
    steps = n // (batch_size * world)
    if steps == 0:
        raise ClefError(f"the training set has {n} images, fewer than one batch of {batch_size * world}",
                        hint="use a smaller --batch-size")
    return steps


class Task(Protocol):
    def modules(self) -> dict[str, torch.nn.Module]: ...
    def loss(self, batch: dict, rng: random.Random) -> tuple[torch.Tensor, dict]: ...


def choose_amp(amp: str, device: torch.device, model: ClefModel) -> torch.dtype | None:
    """bf16 autocast or None. ``auto``: bf16 on CUDA; on CPU only for wide models (on a CPU with
    bf16 instructions autocast speeds up a ViT-B-16 step but slows down a narrow clef-tiny one)."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp != "auto":
        raise ClefError(f"unknown --amp {amp!r}", hint="use auto, bf16 or off")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    width = getattr(model.clip.visual, "transformer", None)
    width = getattr(width, "width", 0) or 0
    return torch.bfloat16 if width >= 512 else None


def lr_lambda(total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> Callable[[int], float]:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``."""
    floor = min_lr / lr if lr > 0 else 0.0

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def _adamw(groups: list[dict], lr: float, device: torch.device) -> torch.optim.AdamW:
    """CLIP's AdamW (betas 0.9/0.98, eps 1e-6), fused where torch has the kernel for the device.

    The fused kernel does the same update in one pass over all parameters, much faster on CPU for
    small models, whose parameters are mostly the token embedding.
    """
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": list(map(int, random.getstate()[1]))}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


@dataclass(frozen=True)
class _Schedule:
    """How long a run is, from the configuration and the training set's size."""

    steps_per_epoch: int
    total_epochs: int   # epochs begun (a fractional last epoch counts)
    total_steps: int    # optimizer steps to run (``max_steps`` applied)
    decay_steps: int    # the warm-up + cosine schedule's length (``max_steps`` not applied)
    warmup_steps: int

    @classmethod
    def of(cls, cfg: TrainConfig, n: int) -> "_Schedule":
        steps_per_epoch = check_batches(n, cfg.batch_size, dist.world_size())
        epochs = 5.0 if cfg.epochs is None else float(cfg.epochs)
        planned = int(round(epochs * steps_per_epoch))
        total_steps = max(1, planned) if cfg.max_steps is None else min(max(1, planned), cfg.max_steps)
        warmup = int(round((1.0 if cfg.warmup_epochs is None else cfg.warmup_epochs) * steps_per_epoch))
        return cls(steps_per_epoch, max(1, math.ceil(epochs)), total_steps, planned, warmup)


@dataclass
class _LoopState:
    """Where the loop is: what a checkpoint stores, and the unreadable sample indices met so far."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    epoch_losses: list = field(default_factory=list)
    bad: set = field(default_factory=set)
    tracked: bool = False  # the items said which sample they served (SampleDataset's ``index``)
    last_loss: float = float("nan")


@dataclass
class FitResult:
    epochs_done: int
    global_step: int
    last_loss: float
    seconds: float
    skipped_images: int
    history: list[dict] = field(default_factory=list)


_BAR_FIELDS = "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[speed]:.0f} img/s"


class Trainer:
    """Runs ``task`` over ``dataset`` with the settings of ``cfg``, writing into ``run``.

    ``resume_flags``: what the resume command printed on SIGINT/SIGTERM needs besides ``--resume RUN
    --workspace DIR`` (e.g. ``--trust-checkpoint``, which is never taken from the run's config)."""

    def __init__(self, model: ClefModel, task: Task, cfg: TrainConfig, run: Run, meta: dict,
                 resume_flags: str = ""):
        cfg.validate()
        self.model, self.task, self.cfg, self.run, self.meta = model, task, cfg, run, dict(meta)
        self.resume_flags = resume_flags
        self.device = model.device
        if dist.world_size() > 1:  # BatchNorm (the small models' stem) over the global batch
            for m in task.modules().values():
                dist.sync_batchnorm(m)
        self.params = [p for m in task.modules().values() for p in m.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]  # biases, norms, logit scale, embeddings' 1-d
        self.optimizer = _adamw(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            cfg.lr, self.device)
        self.amp_dtype = choose_amp(cfg.amp, self.device, model)
        self._stop_signal: int | None = None

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.run.checkpoints / "last.pt"

    def save_state(self, st: _LoopState, scheduler) -> None:
        if not dist.is_main():
            return
        meta = dict(self.meta, arch=self.model.arch, quick_gelu=self.model.quick_gelu, format=1)
        payload = {
            "clefctl": json.loads(json.dumps(meta, default=str)),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.clip.state_dict().items()},
            "modules": {name: m.state_dict() for name, m in self.task.modules().items() if name != "clip"},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "progress": {"epoch": st.epoch, "step_in_epoch": st.step_in_epoch, "global_step": st.global_step},
            "epoch_losses": [float(x) for x in st.epoch_losses],  # the epoch record's mean stays exact
            "skipped": sorted(int(i) for i in st.bad),
        }
        with atomic_path(self.last_path) as tmp:
            torch.save(payload, tmp)

    def load_state(self, path: Path, scheduler) -> _LoopState:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ClefError(f"cannot read the training checkpoint ({exc})", path=path) from None
        self.model.clip.load_state_dict(ck["state_dict"])
        for name, m in self.task.modules().items():
            if name != "clip" and name in ck.get("modules", {}):
                m.load_state_dict(ck["modules"][name])
        self.optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        prog = ck["progress"]
        return _LoopState(prog["epoch"], prog["step_in_epoch"], prog["global_step"],
                          list(ck.get("epoch_losses", [])), set(ck.get("skipped", [])))

    # -- the loop ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def fit(self, dataset: Dataset, resume_from: Path | None = None) -> FitResult:
        """Train to the configured epochs / max steps, from ``resume_from`` (a ``last.pt``) when given."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % (2 ** 32))
        plan = _Schedule.of(cfg, len(dataset))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(plan.decay_steps, plan.warmup_steps, cfg.lr, cfg.min_lr))
        st = self._start(resume_from, scheduler, plan)
        seeded = SeededDataset(dataset, cfg.seed)
        loader, sampler, probe = self._loader(seeded)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        history: list[dict] = []
        t_start = time.time()
        try:
            with progress_bar(self.meta.get("stage", "train"), total=plan.total_steps,
                              enabled=cfg.progress and dist.is_main(), completed=st.global_step,
                              fields=_BAR_FIELDS, loss=float("nan"), lr=0.0, speed=0.0) as bar:
                while st.epoch < plan.total_epochs and st.global_step < plan.total_steps:
                    sampler.epoch, sampler.skip = st.epoch, st.step_in_epoch
                    history.append(self._epoch(loader, probe, st, plan, scheduler, bar.advance))
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            del loader  # ends its workers now rather than at garbage collection
        return FitResult(st.epoch, st.global_step, st.last_loss, time.time() - t_start,
                         self._skipped_count(st, dataset), history)

    def _start(self, resume_from: Path | None, scheduler, plan: _Schedule) -> _LoopState:
        """A fresh loop state, or the checkpoint's (past its epoch when that epoch was complete);
        ``metrics.jsonl`` cut back to its step, since what was logged after it is logged again."""
        st = _LoopState()
        if resume_from is not None:
            st = self.load_state(resume_from, scheduler)
            if st.step_in_epoch >= plan.steps_per_epoch:
                st.epoch, st.step_in_epoch, st.epoch_losses = st.epoch + 1, 0, []
        if dist.is_main():
            self.run.truncate_log(st.global_step)
        return st

    def _loader(self, seeded: SeededDataset) -> tuple[DataLoader, EpochSampler, LoaderProbe | None]:
        """The run's one DataLoader (its workers live for the whole run), its sampler (set to an
        epoch and a skipped prefix before each epoch: the seeded permutation, sharded over ranks),
        and the probe that says once whether the loader keeps the model busy (on rank 0, when
        workers load batches or the device is a GPU; None otherwise)."""
        from clefctl.data.dataset import collate

        cfg = self.cfg
        sampler = EpochSampler(len(seeded), cfg.batch_size, cfg.seed, 0, 0, dist.rank(), dist.world_size())
        opts = dist.loader_options("train", self.device, requested=cfg.num_workers)
        loader = DataLoader(seeded, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            collate_fn=collate, **opts)
        workers = opts["num_workers"]
        probe = None
        if dist.is_main() and (workers > 0 or self.device.type == "cuda"):
            probe = LoaderProbe(workers, cfg.batch_size, dist.usable_cpus(), dist.local_world_size())
        return loader, sampler, probe

    def _epoch(self, loader: DataLoader, probe: LoaderProbe | None, st: _LoopState, plan: _Schedule,
               scheduler, advance: Callable) -> dict:
        """The rest of epoch ``st.epoch`` (up to ``plan.total_steps``), then :meth:`_end_epoch`."""
        t_epoch = time.time()
        for m in self.task.modules().values():
            m.train()
        batches = iter(loader)
        n = len(loader.dataset)
        while True:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            waited = time.perf_counter() - t_wait
            self._note_skipped(batch, st, n)
            seconds = self._step(batch, st, scheduler, advance)
            note = probe.add(waited, seconds) if probe is not None else None
            if note:
                warnings.warn(note, RuntimeWarning, stacklevel=2)
            if st.global_step >= plan.total_steps:
                break
            if self._stop_signal is not None and st.step_in_epoch < plan.steps_per_epoch:
                self.save_state(st, scheduler)  # mid-epoch; at an epoch's end the epoch is logged first
                self._interrupted(st)
        return self._end_epoch(st, plan, scheduler, t_epoch)

    def _end_epoch(self, st: _LoopState, plan: _Schedule, scheduler, t_epoch: float) -> dict:
        """Log the epoch record, move past a complete epoch, save a checkpoint; stop after a signal."""
        record = {"kind": "epoch", "epoch": st.epoch, "step": st.global_step,
                  "loss": float(np.mean(st.epoch_losses)) if st.epoch_losses else float("nan"),
                  "seconds": time.time() - t_epoch}
        if dist.is_main():
            self.run.log(record)
        if st.step_in_epoch >= plan.steps_per_epoch:
            st.epoch, st.step_in_epoch, st.epoch_losses = st.epoch + 1, 0, []
        self.save_state(st, scheduler)
        if self._stop_signal is not None and st.global_step < plan.total_steps:
            self._interrupted(st)
        return record

    def _step(self, batch: dict, st: _LoopState, scheduler, advance: Callable) -> float:
        """One optimizer step on ``batch`` (its seconds); a non-finite loss stops the run with ClefError.
        The loss and the task's numbers logged are their means over ranks: the global batch's."""
        t0 = time.time()
        batch = {k: (tuple(x.to(self.device, non_blocking=True) for x in v) if isinstance(v, tuple)
                     else v.to(self.device, non_blocking=True)) for k, v in batch.items()}
        step_rng = random.Random(self.cfg.seed * 1_000_003 + st.global_step)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            loss, logs = self.task.loss(batch, step_rng)
        values = [loss.detach().float().reshape(())] + [
            v.detach().float().reshape(()) if torch.is_tensor(v) else torch.tensor(float(v), device=loss.device)
            for v in logs.values()]
        means = dist.reduce_mean(torch.stack(values)).tolist()  # one collective for all of them
        loss_value, logs = means[0], dict(zip(logs, means[1:]))
        self._check_finite(loss_value, st)
        self._update(loss, scheduler)
        st.global_step += 1
        st.step_in_epoch += 1
        seconds = time.time() - t0
        speed = self.cfg.batch_size * dist.world_size() / max(1e-9, seconds)
        st.last_loss = loss_value
        st.epoch_losses.append(loss_value)
        self._log_step(st, loss_value, logs, speed, advance)
        return seconds

    def _check_finite(self, loss_value: float, st: _LoopState) -> None:
        if math.isfinite(loss_value):
            return
        where = (f"the last good checkpoint is {self.last_path}" if self.last_path.exists()
                 else "no checkpoint was written yet")
        raise ClefError(f"loss became {loss_value} at epoch {st.epoch + 1}, step {st.global_step + 1}; "
                        f"training stopped and {where}",
                        hint="lower --lr, set --grad-clip 1.0 or --amp off, then --resume")

    def _update(self, loss: torch.Tensor, scheduler) -> None:
        """Backward, rank-averaged gradients, optional clipping, the optimizer and schedule steps."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients(self.params)
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        scheduler.step()
        with torch.no_grad():  # CLIP's clamp: the logit scale stays <= 100
            self.model.clip.logit_scale.clamp_(0, math.log(100))

    def _log_step(self, st: _LoopState, loss_value: float, logs: dict, speed: float, advance: Callable) -> None:
        """The progress bar, and a ``step`` record every ``log_every`` steps (and the first)."""
        lr_now = self.optimizer.param_groups[0]["lr"]
        advance(1, loss=loss_value, lr=lr_now, speed=speed)
        if dist.is_main() and (st.global_step % self.cfg.log_every == 0 or st.global_step == 1):
            self.run.log({"kind": "step", "epoch": st.epoch, "step": st.global_step, "loss": loss_value,
                          "lr": lr_now, "samples_per_s": speed, **{k: float(v) for k, v in logs.items()}})

    def _interrupted(self, st: _LoopState) -> None:
        """After SIGINT/SIGTERM, once the state is saved: raise Interrupted with the way to continue."""
        name = signal.Signals(self._stop_signal).name
        command = self.run.resume_command(self.resume_flags)
        raise Interrupted(f"{name}: training stopped at step {st.global_step}; checkpoint saved at "
                          f"{self.last_path}; continue with: {command}")

    @staticmethod
    def _note_skipped(batch: dict, st: _LoopState, n: int) -> None:
        """Record the unreadable samples behind ``batch``: SampleDataset serves the next readable
        sample in place of an unreadable one, so every index from the requested one up to (not
        including) the served one is unreadable. Works in the main process whatever loaded the batch
        (each DataLoader worker keeps its own ``dataset.skipped``)."""
        requested = batch.pop("requested", None)
        served = batch.get("index")
        if requested is None or not torch.is_tensor(served):
            return
        st.tracked = True
        for r, s in zip(requested.tolist(), served.tolist()):
            if r != s:
                st.bad.update((r + k) % n for k in range((s - r) % n))

    def _skipped_count(self, st: _LoopState, dataset: Dataset) -> int:
        """Distinct unreadable images met by every rank (``dataset.skipped`` when items carry no index)."""
        if not st.tracked:
            return int(getattr(dataset, "skipped", 0))
        if not dist.is_distributed():
            return len(st.bad)
        import torch.distributed as tdist

        mask = torch.zeros(len(dataset), device=self.device)
        if st.bad:
            mask[torch.tensor(sorted(st.bad), device=self.device)] = 1
        tdist.all_reduce(mask, op=tdist.ReduceOp.MAX)
        return int(mask.sum().item())


def _average_gradients(params: list[torch.Tensor]) -> None:
    """All-reduce mean of gradients over ranks (what DDP does; our steps call encode_image and
    encode_text directly, so the DDP wrapper's forward hooks would not fire)."""
    if not dist.is_distributed():
        return
    import torch.distributed as tdist

    world = dist.world_size()
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
