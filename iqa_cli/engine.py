"""The streaming scorer: the one place that decides devices, DataLoaders, workers, precision and
processes.

Data arrives as uint8 (N, H, W, 3) or (N, 3, H, W) tensors from CPU workers and crosses to the
device as uint8 (pinned + non_blocking on CUDA), so the host-to-device copy moves a quarter of the
bytes float32 would; the store scorer hands it to the metric still uint8, whose input scaling makes
it float. Batch buffers stay in the host heap between batches (see retain_freed_host_memory).

Processes (torchrun). Started by ``torchrun`` (its RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR
variables), iqa joins one torch.distributed process group: Gloo for CPU tensors, plus NCCL for
CUDA tensors when there are GPUs; each process uses GPU LOCAL_RANK. Work is shared out by
``shard_work``: every process plans the same global list of work units (the same batches one
process would run, in the same order), takes a contiguous block of them, and ``gather`` puts the
results back in global order on every process. Because the units themselves do not change, a
sharded run computes every batch exactly as one process would: scores are identical, not close.
Training (training/loop.py) uses ``gather_rows`` (autograd-aware) and ``data_parallel``. Only this
module and the training loop know about processes; without torchrun every function here is the
one-process identity and costs nothing.

Failures: each collective has the group's timeout (IQA_DIST_TIMEOUT seconds, default 1800);
``first_failure`` lets exactly one process report an error line (the first to fail, through the
launcher's key-value store) while the others exit quietly; torchrun stops every process once one
exits with an error, so none waits for a peer that is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import functools
import os
import platform
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import InvalidInputError, IQAError

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
Advance = Callable[[int], None]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """'auto' picks the first CUDA device when there is one, else the CPU. Under torchrun, 'auto'
    and 'cuda' mean this process's GPU, cuda:LOCAL_RANK."""
    if isinstance(spec, torch.device):
        return spec
    text = str(spec).strip().lower()
    if text == "auto":
        return _process_cuda_device(spec) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInputError(f"--device {spec}: no CUDA device is visible here (use --device cpu or auto)")
        if text == "cuda":
            return _process_cuda_device(spec)
        try:
            device = torch.device(text)
        except RuntimeError:
            raise InvalidInputError(f"--device {spec}: expected auto, cpu, cuda or cuda:K") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return device
    raise InvalidInputError(f"--device {spec}: expected auto, cpu, cuda or cuda:K")


def default_batch_size(net: str) -> int:
    """Patches per forward pass. On the 2-core CPU, alex at 64x64 scored about 1.3x faster per
    patch at 512 than at 32, and 3% faster than at 128 (benchmarks/mesh_db_throughput.py store);
    vgg's large feature maps need smaller batches."""
    return {"vgg": 128}.get(net, 512)


def default_num_workers(device: torch.device) -> int:
    """Loader processes: on CUDA, feed the GPU from several cores; on a small CPU box the
    cores are better spent on the forward pass, so read in the main process."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 4 else min(4, cpus // 4)


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
KEEP_HEAP_ENV = "IQA_MALLOC_DEFAULTS"  # set to 1 to leave glibc's malloc settings alone


@functools.cache
def retain_freed_host_memory() -> bool:
    """Let freed batch buffers stay in the process heap for the next batch (glibc only, once).

    By default glibc hands a large freed block back to the kernel as soon as the free space at
    the top of the heap passes its trim threshold, so every batch faults the same pages in again,
    zero-filled: about 45,000 page faults per 1,500 alex patches, ~8% of a CPU scoring run.
    Fixed thresholds (what MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ set at start-up) make
    the heap keep them; peak memory is unchanged, the heap just does not shrink between batches.
    Returns whether the settings were applied.
    """
    if os.environ.get(KEEP_HEAP_ENV) == "1" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):
        return False


def make_loader(dataset: Dataset, batch_size: int | None, device: torch.device, num_workers: int | None = None,
                batch_sampler: Iterable | None = None, shuffle: bool = False,
                collate_fn: Callable | None = None, generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader set up for ``device``: pinned memory and prefetching on CUDA. Every batch
    stream starts here, so this is also where the host heap is told to keep batch buffers."""
    retain_freed_host_memory()
    workers = default_num_workers(device) if num_workers is None else num_workers
    kwargs = dict(num_workers=workers, pin_memory=device.type == "cuda", collate_fn=collate_fn)
    if workers > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=4)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, **kwargs)


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N,H,W,3) or (N,3,H,W) images -> (N,3,H,W) on ``device``, dtype unchanged.

    (N,H,W,3) input comes back as a channels-last view of the same layout: no copy, and the
    layout the backbone runs fastest on. uint8 batches can go straight into ``metric.features``."""
    x = images.to(device, non_blocking=True)
    if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return x


def to_device_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N,H,W,3) or (N,3,H,W), or float in [0,1] -> float32 (N,3,H,W) in [0,1] on ``device``."""
    x = to_device(images, device)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)  # .float() keeps the (channels-last) strides
    return x


def check_precision(precision: str) -> str:
    """The --precision value, checked before any work starts."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str = "fp32", metric: Any = None):
    """The arithmetic of one metric's forward pass on ``device``.

    fp32 is full fp32 on CUDA as on the CPU: cuDNN's TF32 convolutions (torch's default) are
    switched off for the block, so CUDA and CPU scores agree to ~1e-5. tf32, fp16 and bf16 apply
    only to metrics that declare ``half_precision`` (the deep networks, whose convolutions and
    matrix products are what they speed up); the others (PSNR, SSIM, NIQE, ...) compute variances
    that lose their digits in 16 or 19 bits, so they run in fp32 whatever is asked. On the CPU
    fp16/bf16 run too (torch's CPU autocast; bf16 pays on CPUs with AMX, see docs/gpu.md), and
    tf32 is fp32.
    """
    check_precision(precision)
    if metric is not None and not getattr(metric, "half_precision", False):
        precision = "fp32"
    stack = contextlib.ExitStack()
    if device.type == "cuda":
        # TF32 only where asked; what autocast leaves in fp32 (heads, norms) stays exact
        stack.enter_context(_cuda_fp32_mode("tf32" if precision == "tf32" else "ieee"))
    if precision in ("fp16", "bf16"):
        stack.enter_context(torch.autocast(device_type=device.type, dtype=_HALF[precision]))
    elif _autocast_enabled(device.type):  # a caller's own autocast: fp32 means fp32
        stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
    return stack


_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


@contextlib.contextmanager
def _cuda_fp32_mode(mode: str) -> Iterator[None]:
    """cuDNN convolutions and CUDA matrix products on fp32 tensors in full fp32 ("ieee") or TF32
    ("tf32") inside the block; the process's settings come back afterwards."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):  # torch >= 2.9's settings
        knobs = (cudnn_conv, torch.backends.cuda.matmul)
        before = [k.fp32_precision for k in knobs]
        for knob in knobs:
            knob.fp32_precision = mode
        try:
            yield
        finally:
            for knob, value in zip(knobs, before):
                knob.fp32_precision = value
        return
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def worker_message(exc: BaseException) -> str | None:
    """The original one-line message of an exception re-raised from a DataLoader worker (torch
    re-raises it with the worker's whole traceback as its message); None for any other exception."""
    text = str(exc)
    if "Traceback" not in text:
        return None
    marker = f"{type(exc).__name__}: "
    for line in reversed(text.strip().splitlines()):
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return None


def batches(loader: DataLoader) -> Iterator:
    """The loader's batches; an IQAError raised in a worker process (a store replaced on disk, a
    damaged image) comes back as the same error with its own one-line message."""
    from .errors import IQAError

    try:
        yield from loader
    except IQAError as exc:
        message = worker_message(exc)
        if message is None:
            raise
        raise type(exc)(message) from None


def iterate_batches(loader: DataLoader, advance: Advance | None = None, count: Callable | None = None
                    ) -> Iterator:
    """Yield the loader's batches, advancing a progress callback by ``count(batch)`` after each."""
    for batch in batches(loader):
        yield batch
        if advance is not None:
            advance(count(batch) if count else 1)


# -- processes (torchrun) ----------------------------------------------------------------------
TIMEOUT_ENV = "IQA_DIST_TIMEOUT"  # seconds a collective may wait for the other processes
DEFAULT_TIMEOUT_S = 1800
_FAILURE_KEY = "iqa/failures"


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launched() -> bool:
    """True when a launcher (torchrun, or anything setting its WORLD_SIZE / RANK variables) started
    this process as one of several. Reads the environment only: cheap, no process group needed."""
    return _env_int("WORLD_SIZE", 1) > 1


def launcher_rank() -> int:
    """This process's rank as the launcher set it (RANK), before or without a process group."""
    return _env_int("RANK", 0)


def _process_cuda_device(spec) -> torch.device:
    if not launched():
        return torch.device("cuda")
    local, visible = _env_int("LOCAL_RANK", 0), torch.cuda.device_count()
    if local >= visible:
        raise InvalidInputError(f"--device {spec}: this is process {local} of its node, but only {visible} CUDA "
                                f"device(s) are visible (start at most {visible} per node: torchrun --nproc_per_node "
                                f"{visible}, or use --device cpu)")
    return torch.device("cuda", local)


def _timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise InvalidInputError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds") from None
    if not value > 0:
        raise InvalidInputError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return value


def ensure_process_group() -> bool:
    """Join the launcher's process group (once; the group lives as long as the process). Gloo
    carries CPU tensors and, when this process has a GPU, NCCL carries CUDA tensors. Returns
    whether this process is one of several; without a launcher it does nothing."""
    if not launched():
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    if not dist.is_available():
        raise InvalidInputError("this PyTorch build has no torch.distributed, so it cannot run under torchrun "
                                "(install a standard PyTorch build, or run one process)")
    backend = "gloo"
    local = _env_int("LOCAL_RANK", 0)
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        torch.cuda.set_device(local)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=_timeout_s()))
    return True


_alone = False  # see single_process()


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Inside this block this process works alone, as if no launcher had started it (world_size() is
    1): for work that is not shared out, run by the main process while the others skip it."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def world_size() -> int:
    """Processes working together (1 without a launcher)."""
    if _alone or not ensure_process_group():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def process_rank() -> int:
    """This process's place among them, 0 (the main process) to world_size() - 1."""
    if _alone or not ensure_process_group():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def is_main_process() -> bool:
    """The process that writes files, prints results and shows progress."""
    return process_rank() == 0


def barrier() -> None:
    """Wait until every process gets here (bounded by the group's timeout)."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def shard_bounds(n_units: int, weights: Sequence[float] | None = None, rank: int | None = None,
                 world: int | None = None) -> range:
    """The contiguous block of ``n_units`` ordered units that process ``rank`` of ``world`` works on:
    equal counts (the first blocks one longer), or about equal total ``weights`` (each unit goes to
    the process whose share of the total its start falls in). One process: all of them."""
    rank = process_rank() if rank is None else rank
    world = world_size() if world is None else world
    if world == 1:
        return range(n_units)
    w = None if weights is None else np.asarray(weights, dtype=float)
    if w is None or len(w) == 0 or not w.sum() > 0:
        base, extra = divmod(n_units, world)
        start = rank * base + min(rank, extra)
        return range(start, start + base + (rank < extra))
    if len(w) != n_units:
        raise ValueError(f"{len(w)} weights for {n_units} units")
    starts = np.cumsum(w) - w
    owner = np.minimum((starts * world / w.sum()).astype(np.int64), world - 1)
    return range(int(np.searchsorted(owner, rank, "left")), int(np.searchsorted(owner, rank, "right")))


@dataclass(frozen=True)
class WorkShard:
    """This process's part of a global, ordered list of work units; see ``shard_work``."""

    n_units: int
    mine: range  # the units this process works on, a contiguous block
    share: float  # its fraction of the total weight (1.0 in one process)
    rank: int
    world: int

    def progress(self, advance: Advance | None) -> Advance | None:
        """The callback this process should advance: the main process's own work, scaled to the
        whole job (one bar that fills as the main process finishes its share, every process working
        at about the same rate); no callback on the others. Unchanged in one process."""
        if self.world == 1 or advance is None:
            return advance
        if self.rank != 0:
            return None
        scale = 1.0 / self.share if self.share > 0 else 0.0
        return lambda n=1, **kw: advance(n * scale, **kw)

    def gather(self, results: Sequence) -> list:
        """Every process's ``results`` (one per unit of ``mine``, in that order) as one list over all
        units in global order, on every process. Collective: every process must call it."""
        results = list(results)
        if len(results) != len(self.mine):
            raise ValueError(f"{len(results)} results for {len(self.mine)} units")
        if self.world == 1:
            return results
        return [r for part in all_gather_objects(results) for r in part]


def shard_work(n_units: int, weights: Sequence[float] | None = None) -> WorkShard:
    """Share ``n_units`` ordered work units (batches, chunks of rows, pairs ...) among the processes.

    Every process must plan the same units in the same order (deterministic planning from the same
    inputs); each takes a contiguous block (``mine``), balanced by ``weights`` (e.g. rows per unit),
    and ``gather`` returns the results in global order. Plan the units exactly as one process would
    batch its work, so every unit is computed as in a one-process run and the results are
    identical. In one process: ``mine`` is everything, ``gather`` and ``progress`` change nothing.

        work = shard_work(len(batches), weights=[len(b) for b in batches])
        advance = work.progress(advance)
        mine = [score(batches[i], advance) for i in work.mine]
        scores = work.gather(mine)          # same list, same order as one process
    """
    world = world_size()
    rank = process_rank() if world > 1 else 0
    mine = shard_bounds(n_units, weights, rank, world)
    if weights is not None and len(weights) and float(np.sum(weights)) > 0:
        share = float(np.sum(np.asarray(weights, dtype=float)[mine.start:mine.stop]) / np.sum(weights))
    else:
        share = len(mine) / n_units if n_units else 1.0
    return WorkShard(n_units, mine, share, rank, world)


def all_gather_objects(obj: Any) -> list:
    """Each process's picklable ``obj``, in rank order, on every process."""
    if world_size() == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def share_from_main(compute: Callable[[], Any]) -> Any:
    """Run ``compute`` on the main process only and hand its result to every process; an IQAError
    or OSError it raises is raised on every process (so all stop with the same one-line message)."""
    if world_size() == 1:
        return compute()
    import torch.distributed as dist

    box: list = [None]
    if is_main_process():
        try:
            box[0] = (True, compute())
        except (IQAError, OSError) as exc:
            box[0] = (False, exc)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    import torch.distributed as dist

    mine = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return [int(s.item()) for s in sizes]


def _all_gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    import torch.distributed as dist

    longest = max(sizes)
    if longest == 0:
        return x.new_empty((0, *x.shape[1:]))
    if x.shape[0] < longest:  # all_gather needs equal shapes
        x = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """Rows of every process concatenated in rank order; the gradient of this process's rows is
    the sum of every process's gradient for them (what torch.distributed.nn's all_gather does,
    but for blocks of different lengths and on every backend)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather_rows(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def gather_rows(x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """The rows (first dimension) of ``x`` from every process, concatenated in rank order, on every
    process; autograd flows back to each process's own rows. ``sizes``: every process's row count
    when the caller knows them (saves one small collective). Collective; identity in one process.

    With the training loop's convention (the loss of the gathered global batch is computed alike on
    every process, and DDP averages gradients), the gradients equal one process's on the whole batch.
    """
    if world_size() == 1:
        return x
    import torch.distributed as dist

    sizes = list(sizes) if sizes is not None else _gather_sizes(x.shape[0], x.device)
    if x.requires_grad:
        return _GatherRows.apply(x, sizes, dist.get_rank())
    return _all_gather_rows(x, sizes)


class _AllReduceSum(torch.autograd.Function):
    """The sum over processes, on every process; its gradient is the sum of every process's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across processes, for
    CPU tensors over Gloo (torch.nn.SyncBatchNorm runs on GPUs only). Same parameters, buffers and
    state-dict keys as BatchNorm; in eval mode it is plain BatchNorm on the running statistics."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        self._check_input_dim(x)
        if not self.training and self.track_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = x.new_full((1,), x.numel() // c if c else 0)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))  # over the global batch
        n = totals[-1].detach()
        mean = totals[:c] / n
        var = totals[c:2 * c] / n - mean * mean
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach() * n / max(float(n) - 1, 1.0), alpha=momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm of ``module`` computing its training statistics over the global batch:
    torch.nn.SyncBatchNorm on GPUs, CPUSyncBatchNorm on the CPU (same state, converted in place)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)

    def convert(m: torch.nn.Module) -> torch.nn.Module:
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, CPUSyncBatchNorm):
            # The module's own parameters and buffers, as convert_sync_batchnorm does: their dtype
            # (a float64 or bfloat16 model stays so), device and requires_grad are kept.
            new = CPUSyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            if m.affine:
                new.weight, new.bias = m.weight, m.bias
            new.running_mean, new.running_var = m.running_mean, m.running_var
            new.num_batches_tracked = m.num_batches_tracked
            new.train(m.training)
            new.to(device)
            return new
        for name, child in m.named_children():
            m.add_module(name, convert(child))
        return m

    return convert(module)


def data_parallel(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` (already on ``device``) ready to train on every process: BatchNorm synchronised
    and gradients averaged by DistributedDataParallel after each backward. One process: unchanged."""
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # device_ids=None: the module lives on one device and DDP must not move the inputs itself.
    return DistributedDataParallel(sync_batchnorm(module, device), device_ids=None)


def first_failure() -> bool:
    """Whether this process is the first of its group to fail, and so the one to print the error
    (counted in the launcher's key-value store, which outlives the processes). True in one process."""
    if not launched():
        return True
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            return int(dist.distributed_c10d._get_default_store().add(_FAILURE_KEY, 1)) == 1
    except Exception:  # the store is gone too: let the main process speak
        pass
    return launcher_rank() == 0


def is_process_group_failure(exc: BaseException) -> bool:
    """An error raised by a collective because another process failed or vanished."""
    import torch.distributed as dist

    return isinstance(exc, getattr(dist, "DistError", ())) or (
        isinstance(exc, RuntimeError) and any(k in str(exc) for k in ("Gloo", "gloo", "NCCL", "Connection closed")))


# -- the patch-store scorer --------------------------------------------------------------------
REF_FEATURE_BUDGET_BYTES = 768 * 2**20  # above this a model's reference features are not cached whole
MAX_VIEW_RUNS = 64  # a batch split into more runs than this gathers reference features per model instead


class _StoreChunks(Dataset):
    """Contiguous runs of distorted patches, each read with one HDF5 slice."""

    def __init__(self, store, chunks: list[tuple[int, int]]):
        self.store, self.chunks = store, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        start, stop = self.chunks[i]
        return (i, torch.from_numpy(self.store.read_distorted(start, stop)),
                torch.from_numpy(self.store.patch_refs(start, stop)))


def plan_store_chunks(store, stimulus_rows, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) runs of at most batch_size distorted rows covering the given stimuli.
    Runs may span models and stimuli: full batches matter more for speed than tidy boundaries."""
    table = store.stimuli.iloc[sorted(stimulus_rows)]
    runs: list[list[int]] = []
    for first, count in zip(table["first"], table["count"]):
        if count == 0:
            continue
        if runs and runs[-1][1] == first:
            runs[-1][1] += int(count)
        else:
            runs.append([int(first), int(first + count)])
    return [(s, min(s + batch_size, stop)) for start, stop in runs for s in range(start, stop, batch_size)]


class _ReferenceFeatures:
    """Features of each model's reference patches, computed once and reused by all its stimuli.

    Models are filled in look-ahead groups of about one batch, so that a database of small models
    still runs full batches; a model too large for the memory budget has its reference patches
    recomputed for each batch instead.
    """

    def __init__(self, store, metric, device, batch_size: int):
        self.store, self.metric, self.device, self.batch_size = store, metric, device, batch_size
        self.ref_first = store.models["ref_first"].to_numpy()
        self.ref_count = store.models["ref_count"].to_numpy()
        self.cache: dict[int, list[torch.Tensor] | None] = {}  # model -> features (None: over budget)
        self._patch_bytes: int | None = None
        self._group_end: np.ndarray | None = None  # model -> one past the last model of its fill group

    def _features(self, patches: np.ndarray) -> list[torch.Tensor]:
        out = [self.metric.features(to_device(torch.from_numpy(patches[s:s + self.batch_size]), self.device))
               for s in range(0, len(patches), self.batch_size)]
        return out[0] if len(out) == 1 else [torch.cat(parts) for parts in zip(*out)]

    def _budget_patches(self) -> int:
        if self._patch_bytes is None:
            s = self.store.patch_size
            probe = self.metric.features(torch.zeros(1, 3, s, s, device=self.device))
            self._patch_bytes = sum(t.numel() * t.element_size() for t in probe)
        return REF_FEATURE_BUDGET_BYTES // self._patch_bytes

    def _groups(self) -> np.ndarray:
        """Fill groups, planned once over all models from the first: a model starts a group, and
        the next ones join while the group stays within a batch and the budget. Fixed groups mean
        every reference patch goes through the backbone in the same batch whichever stimuli a
        process scores, so a sharded run's features are exactly one process's."""
        if self._group_end is None:
            budget = self._budget_patches()
            ends = np.zeros(len(self.ref_count), dtype=np.int64)
            model = 0
            while model < len(self.ref_count):
                last, total = model, int(self.ref_count[model])
                while (total <= budget and last + 1 < len(self.ref_count)
                       and total + self.ref_count[last + 1] <= min(self.batch_size, budget)):
                    last += 1
                    total += int(self.ref_count[last])
                ends[model:last + 1] = last + 1
                model = last + 1
            self._group_end = ends
        return self._group_end

    def _fill(self, model: int) -> None:
        budget = self._budget_patches()
        if self.ref_count[model] > budget:
            self.cache[model] = None
            return
        end = int(self._groups()[model])
        model = int(np.searchsorted(self._groups(), end, "left"))  # the group's first model
        last = end - 1
        total = int(self.ref_count[model:end].sum())
        first_row = int(self.ref_first[model])
        feats = self._features(self.store.read_reference(first_row, first_row + total))
        for m in range(model, last + 1):
            a = int(self.ref_first[m]) - first_row
            self.cache[m] = [t[a:a + int(self.ref_count[m])] for t in feats]

    def gather(self, ref_rows: np.ndarray) -> list[tuple[slice, list[torch.Tensor]]]:
        """For runs of a batch's rows: (slice of the batch, reference features of those rows).
        A run whose reference rows are consecutive gets a view, not a copy."""
        models = np.searchsorted(self.ref_first, ref_rows, side="right") - 1
        for stale in [m for m in self.cache if m < models[0]]:
            del self.cache[stale]  # stores are model-ordered: earlier models are done
        # Break the batch where the model changes or the reference rows stop being consecutive.
        breaks = np.flatnonzero((np.diff(models) != 0) | (np.diff(ref_rows) != 1)) + 1
        bounds = [0, *breaks.tolist(), len(ref_rows)]
        if len(bounds) - 1 > MAX_VIEW_RUNS:  # scattered rows: one gather per model beats many tiny runs
            bounds = [0, *(np.flatnonzero(np.diff(models) != 0) + 1).tolist(), len(ref_rows)]
        runs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            model, rows = int(models[a]), ref_rows[a:b]
            if model not in self.cache:
                self._fill(model)
            cached = self.cache[model]
            if cached is None:
                unique, inverse = np.unique(rows, return_inverse=True)
                feats = self._features(self.store.read_reference_rows(unique))
                index = torch.from_numpy(inverse).to(self.device)
                runs.append((slice(a, b), [t.index_select(0, index) for t in feats]))
                continue
            local = rows - self.ref_first[model]
            if len(local) == 1 or np.all(np.diff(local) == 1):
                runs.append((slice(a, b), [t[local[0]:local[0] + len(local)] for t in cached]))
            else:
                index = torch.from_numpy(local).to(self.device)
                runs.append((slice(a, b), [t.index_select(0, index) for t in cached]))
        return runs


def check_store_patch_size(store, spec) -> None:
    """The store's patches must be large enough for the net (before any patch is read)."""
    from .models.lpips import nets_accepting

    s, m = int(store.patch_size), spec.min_size
    if s < m:
        fits = nets_accepting(s)
        raise InvalidInputError(f"{store.path}: patches are {s}x{s} pixels, but net '{spec.name}' needs at least "
                                f"{m}x{m} (rebuild the store with iqa patchify --patch-size {m} or more"
                                + (f", or use --net {' / '.join(fits)})" if fits else ")"))


def _has_feature_path(metric) -> bool:
    """LPIPS-family metrics split into features + distance, so reference features can be reused."""
    return hasattr(metric, "features") and hasattr(metric, "distance_from_features")


def _score_store_pairs(store, metric, chunks, dev, precision, num_workers, distances, advance) -> None:
    """Any full-reference metric on the store: each batch's reference patches are read by row and
    the pairs scored as images (no features to reuse)."""
    loader = make_loader(_StoreChunks(store, chunks), None, dev, num_workers=num_workers)
    with torch.inference_mode(), autocast(dev, precision, metric):
        for i, patches, refs in batches(loader):
            start, stop = chunks[i]
            unique, inverse = np.unique(refs.numpy(), return_inverse=True)
            ref = to_device_float(torch.from_numpy(store.read_reference_rows(unique)), dev)
            ref = ref[torch.from_numpy(inverse.reshape(-1)).to(dev)]
            d = metric.score(ref, to_device_float(patches, dev))
            distances[start:stop] = d.double().cpu().numpy()
            if advance is not None:
                advance(stop - start)


def score_store_patches(store, metric, stimulus_rows=None, batch_size: int | None = None, device="auto",
                        precision: str = "fp32", num_workers: int | None = None,
                        advance: Advance | None = None) -> np.ndarray:
    """Score of every distorted patch of the given stimuli (all by default) against its reference patch.

    LPIPS-family metrics reuse each reference patch's features for all its stimuli; any other
    full-reference metric scores the patch pairs as images. Returns a float64 array over the
    store's distorted rows; rows not scored are NaN.
    """
    if _has_feature_path(metric):
        check_store_patch_size(store, metric.spec)
    else:
        metric.check_size((int(store.patch_size),) * 2, name=f"{store.path} patches")
    dev = resolve_device(device)
    batch_size = batch_size or default_batch_size(getattr(getattr(metric, "spec", None), "name", ""))
    rows = range(len(store.stimuli)) if stimulus_rows is None else stimulus_rows
    chunks = plan_store_chunks(store, rows, batch_size)
    # Under torchrun each process scores a contiguous block of the one-process plan's chunks.
    work = shard_work(len(chunks), weights=[stop - start for start, stop in chunks])
    advance = work.progress(advance)
    mine = chunks[work.mine.start:work.mine.stop]
    distances = np.full(store.n_patches, np.nan)
    metric = metric.to(dev).eval()
    if not _has_feature_path(metric):
        _score_store_pairs(store, metric, chunks, dev, precision, num_workers, distances, advance)
        return distances
    references = _ReferenceFeatures(store, metric, dev, batch_size)
    loader = make_loader(_StoreChunks(store, mine), None, dev, num_workers=num_workers)
    with torch.inference_mode(), autocast(dev, precision, metric):
        for i, patches, refs in loader:
            start, stop = mine[i]
            feats = metric.features(to_device(patches, dev))
            # The batch's features are scratch from here on: each run's differences are written into them.
            d = torch.cat([metric.distance_from_features(ref_feats, [f[rows] for f in feats], reuse_feats1=True)
                           for rows, ref_feats in references.gather(refs.numpy())])
            distances[start:stop] = d.double().cpu().numpy()
            if advance is not None:
                advance(stop - start)
    if work.world > 1:
        for (start, stop), values in zip(chunks, work.gather([distances[a:b] for a, b in mine])):
            distances[start:stop] = values
    return distances
