"""The streaming scorer: the one place that decides devices, DataLoaders, workers and precision.

Data arrives as uint8 (N, H, W, 3) or (N, 3, H, W) tensors from CPU workers and crosses to the
device as uint8 (pinned + non_blocking on CUDA), so the host-to-device copy moves a quarter of the
bytes float32 would; the store scorer hands it to the metric still uint8, whose input scaling makes
it float. Batch buffers stay in the host heap between batches (see retain_freed_host_memory).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import InvalidInputError

PRECISIONS = ("fp32", "fp16", "bf16")
Advance = Callable[[int], None]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """'auto' picks the first CUDA device when there is one, else the CPU."""
    if isinstance(spec, torch.device):
        return spec
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInputError(f"--device {spec}: no CUDA device is visible here (use --device cpu or auto)")
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


def autocast(device: torch.device, precision: str = "fp32"):
    """Mixed precision for the forward pass; fp32 everywhere on the CPU."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise InvalidInputError(f"--precision {precision} needs a CUDA device (the CPU path runs in fp32)")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


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

    def _fill(self, model: int) -> None:
        budget = self._budget_patches()
        if self.ref_count[model] > budget:
            self.cache[model] = None
            return
        last, total = model, int(self.ref_count[model])
        while (last + 1 < len(self.ref_count) and total + self.ref_count[last + 1] <= self.batch_size
               and total + self.ref_count[last + 1] <= budget):
            last += 1
            total += int(self.ref_count[last])
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


def score_store_patches(store, metric, stimulus_rows=None, batch_size: int | None = None, device="auto",
                        precision: str = "fp32", num_workers: int | None = None,
                        advance: Advance | None = None) -> np.ndarray:
    """Distance of every distorted patch of the given stimuli (all by default) to its reference patch.

    Returns a float64 array over the store's distorted rows; rows not scored are NaN.
    """
    check_store_patch_size(store, metric.spec)
    dev = resolve_device(device)
    batch_size = batch_size or default_batch_size(metric.spec.name)
    rows = range(len(store.stimuli)) if stimulus_rows is None else stimulus_rows
    chunks = plan_store_chunks(store, rows, batch_size)
    distances = np.full(store.n_patches, np.nan)
    metric = metric.to(dev).eval()
    references = _ReferenceFeatures(store, metric, dev, batch_size)
    loader = make_loader(_StoreChunks(store, chunks), None, dev, num_workers=num_workers)
    with torch.inference_mode(), autocast(dev, precision):
        for i, patches, refs in batches(loader):
            start, stop = chunks[i]
            feats = metric.features(to_device(patches, dev))
            # The batch's features are scratch from here on: each run's differences are written into them.
            d = torch.cat([metric.distance_from_features(ref_feats, [f[rows] for f in feats], reuse_feats1=True)
                           for rows, ref_feats in references.gather(refs.numpy())])
            distances[start:stop] = d.double().cpu().numpy()
            if advance is not None:
                advance(stop - start)
    return distances
