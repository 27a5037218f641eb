"""Multi-process (torchrun / DDP) helpers: rank and world queries, process-group setup from
torchrun's environment, the feature gather for the contrastive losses, small-object collectives
(:func:`all_gather_object`, :func:`broadcast_object`), contiguous shards (:func:`shard_range`),
BatchNorm over the global batch (:class:`SyncBatchNorm2d`, :func:`sync_batchnorm`) and the one
worker policy (:func:`worker_count`).

Every helper is a harmless identity / no-op in a single process, so training code calls
them unconditionally.

Exact equivalence with single-process training (DDP averages parameter gradients over
ranks; each rank holds an equal shard of m samples of the global batch of N = R * m):

* Eq. 3-6 (fine-tuning) need no gathering. Rank r computes
  ``finetune_loss(fer_loss|au_loss(own images, ...), name_description_loss(...))``; the
  Eq. 4/5 term is a mean over its own B = m images and ``L_DN`` is identical on every rank,
  so the mean over ranks of the losses *and* of the gradients is the single-process one.
  Call ``backward()`` on the local loss unchanged.

* Eq. 1-2 (pre-training) couple samples across ranks. Two exact recipes:

  1. Sharded (recommended): ``gather_features(x, with_grad=True)`` for the view, view and
     activity-text features (labels with ``gather_features(labels)``), then
     ``pretrain_loss(..., anchor_rows=local_slice(m))`` and ``backward()`` unchanged. The
     local loss is the mean over this rank's anchors against the global contrast set, so
     the mean over ranks is the global loss; the gather's backward sums, over ranks, the
     gradient every rank computed for each row, so rank r's features receive the gradient
     of *all* ranks' anchor losses, and DDP's mean gives exactly the global gradient.
  2. Replicated: ``gather_features(x)`` (other ranks' rows carry no gradient), the *full*
     loss on every rank (``anchor_rows=None``), and ``scale_for_ddp(loss).backward()``.
     Every rank's gradient w.r.t. its own rows is then the exact global one; DDP would
     average the R per-rank contributions, which really must be *summed*, hence the
     factor R. Costs R times the loss compute.

  Not exact: the detached gather with ``anchor_rows`` (with or without scaling) - rank r's
  anchors depend on the other ranks' contrast rows, whose gradient is then never formed.

For logging, ``reduce_mean(loss)`` is the mean over ranks (the single-process value in
recipe 1 and for Eq. 3-6; recipe 2's unscaled loss is already global).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor

from clefctl.errors import ClefError

__all__ = [
    "is_distributed",
    "rank",
    "local_rank",
    "world_size",
    "is_main",
    "setup_from_env",
    "cleanup",
    "barrier",
    "gather_features",
    "local_slice",
    "scale_for_ddp",
    "reduce_mean",
    "local_world_size",
    "all_gather_object",
    "broadcast_object",
    "shard_range",
    "SyncBatchNorm2d",
    "sync_batchnorm",
    "worker_count",
    "loader_options",
]

_REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """``$LOCAL_RANK`` set by torchrun (the GPU index on this node); 0 when unset."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def local_world_size() -> int:
    """Processes on this node: ``$LOCAL_WORLD_SIZE`` set by torchrun, else the world size (one node)."""
    try:
        return max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    except (KeyError, ValueError):
        return world_size()


def is_main() -> bool:
    """True on rank 0: the process that logs, writes checkpoints and reports."""
    return rank() == 0


def setup_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Returns False (and does
    nothing) when WORLD_SIZE is unset or 1, True once distributed (also when a group was
    already initialised). ``backend`` defaults to ``nccl`` when CUDA is available (the
    current device is then set to LOCAL_RANK) and ``gloo`` otherwise.

    Example: ``torchrun --nproc_per_node 2 -m clefctl finetune ...`` (the stage runner and
    ``run_embed`` call this; docs/scale.md).
    """
    if is_distributed():
        return True
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ClefError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer",
                        hint="launch multi-process jobs with torchrun") from None
    if size <= 1:
        return False
    missing = [k for k in _REQUIRED_ENV if not os.environ.get(k)]
    if missing:
        raise ClefError(f"WORLD_SIZE={size} but {', '.join(missing)} not set",
                        hint="launch multi-process jobs with torchrun, which sets them")
    if not dist.is_available():
        raise ClefError("this torch build has no torch.distributed support",
                        hint="run in a single process (unset WORLD_SIZE)")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method="env://",
                            rank=int(os.environ["RANK"]), world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return True


def cleanup() -> None:
    """Wait for every rank, then destroy the process group (no-op when not distributed).

    Without the barrier a rank that finishes first tears its gloo connections down while another is
    still tearing its own down; once, in a fresh-clone CI run of the two-process test, that aborted
    rank 0 ("terminate called without an active exception"). 30 loaded reruns with it passed.
    """
    if is_distributed():
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a peer that already failed must not hide the real error
            pass
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def local_slice(n_local: int) -> slice:
    """This rank's rows in a tensor gathered by :func:`gather_features` from equal shards."""
    r = rank()
    return slice(r * n_local, (r + 1) * n_local)


def _check_equal_shards(x: Tensor) -> None:
    shape = torch.tensor(list(x.shape), device=x.device, dtype=torch.long)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shape) for s in shapes):
        seen = [tuple(s.tolist()) for s in shapes]
        raise ValueError(f"gather_features needs the same shape on every rank, got {seen}; "
                         "use DistributedSampler(drop_last=True) and a drop_last DataLoader")


class _AllGatherSumGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks (local rows)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.n_local = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[local_slice(ctx.n_local)]


def gather_features(x: Tensor, *, with_grad: bool = False) -> Tensor:
    """All-gather ``x`` along dim 0 from every rank, in rank order (identity when single).

    Default (``with_grad=False``, open_clip's ``gather_with_grad=False``): this rank's chunk
    in the result *is* ``x`` (keeps its gradient); the other ranks' rows are constants.
    ``with_grad=True``: every row is differentiable, and the backward pass sums over ranks
    the gradient each rank computed for this rank's rows (needed for ``anchor_rows``
    losses; see the module docstring). Every rank must pass the same shape.

    Example (on each of R ranks, m samples each):
        >>> z = encoder(images)                    # (m, d)
        >>> z_all = gather_features(z)             # (R * m, d); rows local_slice(m) are z
        >>> labels_all = gather_features(labels)   # (R * m,)
    """
    if not is_distributed() or world_size() == 1:
        return x
    x = x.contiguous()
    _check_equal_shards(x)
    if with_grad:
        return _AllGatherSumGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach())
    parts[rank()] = x
    return torch.cat(parts, dim=0)


def scale_for_ddp(loss: Tensor) -> Tensor:
    """``loss * world_size()``: undo DDP's gradient averaging for a loss whose per-rank
    gradients must be summed (recipe 2 in the module docstring). Log the unscaled loss."""
    return loss * world_size()


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of a detached floating-point tensor over ranks, for logging (a copy when single)."""
    value = value.detach().clone()
    if is_distributed() and world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world_size()
    return value


def all_gather_object(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` when single): small picklable things such as
    counts, timings or one shard's scores. Every rank must call it."""
    if not is_distributed() or world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when single); e.g. the run folder rank 0
    created. Every rank must call it."""
    if not is_distributed() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, stop)`` of ``n`` items (sizes differ by <= 1):
    concatenating the shards in rank order gives the items in their order."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce sum whose backward is the all-reduce sum of the gradients: every rank's output is
    the same sum, so each rank's input receives the gradient of every rank's loss."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch under torchrun.

    The mean and the (biased) variance that normalise the batch, and the running statistics, are
    computed over every rank's rows (two all-reduces of C + 1 and C numbers), with gradients flowing
    across ranks, so R processes of m images compute what one process computes on R * m. Outside
    training, or in a single process, it is a plain BatchNorm2d; its state_dict is a BatchNorm2d's.
    ``torch.nn.SyncBatchNorm`` does the same but refuses CPU tensors (gloo), hence this one, used
    on every device. Statistics are accumulated in float32 (or float64) whatever the autocast dtype.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed() and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()  # bf16/fp16 -> fp32
        c = xf.shape[1]
        local = torch.cat([xf.sum(dim=(0, 2, 3)), xf.new_tensor([xf.numel() / c])])
        total = _SumOverRanks.apply(local)
        count = total[c].detach()
        mean = total[:c] / count
        centred = xf - mean.view(1, c, 1, 1)
        var = _SumOverRanks.apply((centred * centred).sum(dim=(0, 2, 3))) / count
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var.detach() * (count / max(1.0, float(count) - 1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y.to(x.dtype)


def sync_batchnorm(module: torch.nn.Module) -> int:
    """Turn every ``BatchNorm2d`` inside ``module`` into a :class:`SyncBatchNorm2d` in place, keeping
    its parameters, buffers and settings (the same tensors, so an optimizer built before or after
    sees them). Returns how many were converted. The engine calls it under torchrun: the small
    models' convolutional stem is the only BatchNorm in clefctl's architectures."""
    converted = 0
    for m in module.modules():
        if type(m) is torch.nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm2d
            converted += 1
    return converted


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def worker_count(purpose: str, device: torch.device | str | None = None, items: int | None = None,
                 requested: int | None = None) -> int:
    """The one worker policy: how many processes a job uses when the user did not say.

    The cores counted are this process's share of the node (:func:`usable_cpus` over the ranks on
    it, :func:`local_world_size`). ``train`` and ``embed`` on CUDA: DataLoader workers on every core
    of the share but one (the rank's own process), at most 32: decoding images is what limits a GPU
    (docs/scale.md has the figures). ``train`` on CPU: none on small machines, where the training
    step itself needs every core (at most 4 on large ones); ``embed`` on CPU: none on 2 cores, else
    half the share, at most 8. ``generate``: a process pool for CPU-bound file work (one process
    for fewer than 300 items, else up to 4). ``prepare`` (face detection, ``clefctl data prepare``):
    every usable core, one process for fewer than 64 items. ``requested`` (the user's ``--workers``)
    wins when given.
    """
    if requested is not None:
        return max(0 if purpose not in ("generate", "prepare") else 1, int(requested))
    cpus = usable_cpus()
    share = max(1, cpus // local_world_size())
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if purpose in ("train", "embed") and dev.type == "cuda":
        return min(32, max(1, share - 1))
    if purpose == "train":
        return 0 if share <= 4 else min(4, share // 4)
    if purpose == "embed":
        return 0 if share <= 2 else min(8, share // 2)
    if purpose == "generate":
        return 1 if items is not None and items < 300 else max(1, min(4, cpus))
    if purpose == "prepare":
        return 1 if items is not None and items < 64 else cpus
    raise ValueError(f"unknown worker purpose {purpose!r}")


def loader_options(purpose: str, device: torch.device | str | None = None,
                   requested: int | None = None) -> dict:
    """DataLoader settings for ``purpose`` (``train`` or ``embed``) on ``device``: ``num_workers``
    from :func:`worker_count`; ``pin_memory`` on CUDA (host-to-GPU copies then overlap the step);
    with workers, ``persistent_workers`` (one set of workers for the whole job instead of new ones,
    and a new copy of the data set, every epoch) and ``prefetch_factor`` batches ready per worker
    (4 when there are at most 4 workers, to ride out slow images; torch's 2 with more)."""
    workers = worker_count(purpose, device, requested=requested)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    opts: dict = {"num_workers": workers, "pin_memory": dev.type == "cuda"}
    if workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=4 if workers <= 4 else 2)
    return opts
