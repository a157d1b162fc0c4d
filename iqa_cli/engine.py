"""The streaming scorer: the one place that decides devices, DataLoaders, workers and precision.

Data arrives as uint8 (N, H, W, 3) or (N, 3, H, W) tensors from CPU workers, crosses to the
device (pinned + non_blocking on CUDA) and becomes float in [0, 1] there, so the host-to-device
copy moves a quarter of the bytes float32 would.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterable, Iterator

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


def default_num_workers(device: torch.device) -> int:
    """Loader processes: on CUDA, feed the GPU from several cores; on a small CPU box the
    cores are better spent on the forward pass, so read in the main process."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 4 else min(4, cpus // 4)


def make_loader(dataset: Dataset, batch_size: int | None, device: torch.device, num_workers: int | None = None,
                batch_sampler: Iterable | None = None, shuffle: bool = False,
                collate_fn: Callable | None = None, generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader set up for ``device``: pinned memory and prefetching on CUDA."""
    workers = default_num_workers(device) if num_workers is None else num_workers
    kwargs = dict(num_workers=workers, pin_memory=device.type == "cuda", collate_fn=collate_fn)
    if workers > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=4)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, **kwargs)


def to_device_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N,H,W,3) or (N,3,H,W), or float in [0,1] -> float32 (N,3,H,W) in [0,1] on ``device``."""
    x = images.to(device, non_blocking=True)
    if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return x.contiguous()


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


def iterate_batches(loader: DataLoader, advance: Advance | None = None, count: Callable | None = None
                    ) -> Iterator:
    """Yield the loader's batches, advancing a progress callback by ``count(batch)`` after each."""
    for batch in loader:
        yield batch
        if advance is not None:
            advance(count(batch) if count else 1)
