"""What a Python caller may hand a metric, turned into the one batch type metrics compute on.

Metrics compute on float (N, 3, H, W) tensors in [0, 1]. Callers hold tensors, numpy arrays, PIL
images, file paths, or lists of them; this module is the one place that converts, so every metric
accepts the same things and refuses the same mistakes with the same message:

- torch tensors are channels-first: (3, H, W), (N, 3, H, W), or one channel (grey, repeated);
- numpy arrays and PIL images are channels-last, as image libraries give them: (H, W),
  (H, W, 3|4), (N, H, W, 3|4) (alpha is dropped);
- paths (str / Path) are read exactly as the CLI reads them (io/images.load_image);
- integer arrays are counts: uint8 / 8-bit values on 0..255, uint16 on 0..65535;
- floats must lie in the metric's declared input range, [0, 1] by default; values outside it are an
  error that names the range found (a 0-255 float image is the classic mistake), unless the metric
  was created with ``input_range="[-1,1]"`` or ``"[0,255]"``, which converts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError

INPUT_RANGES = {"[0,1]": (0.0, 1.0), "[-1,1]": (-1.0, 1.0), "[0,255]": (0.0, 255.0)}
RANGE_SLACK = 1e-4  # float rounding of resampled or converted images may step just outside the range


def parse_input_range(value: str | tuple[float, float] | None) -> tuple[float, float]:
    """'[0,1]' (default), '[-1,1]' or '[0,255]' (spaces and the brackets optional), or a (lo, hi) pair."""
    if value is None:
        return INPUT_RANGES["[0,1]"]
    if isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
        if (lo, hi) in INPUT_RANGES.values():
            return lo, hi
    if isinstance(value, str):
        key = "[" + value.replace(" ", "").strip("[]()") + "]"
        if key in INPUT_RANGES:
            return INPUT_RANGES[key]
    raise InvalidInputError(f"input_range {value!r}: choose one of {', '.join(INPUT_RANGES)}")


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    return f"{type(x).__name__}{tuple(shape) if shape is not None else ''}"


def _from_numpy_channels_last(arr: np.ndarray, what: str):
    import torch

    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(f"{what}: numpy images are channels-last (H, W), (H, W, 3) or (N, H, W, 3); "
                                f"found shape {arr.shape}")
    arr = arr[..., :3] if arr.shape[-1] == 4 else arr
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


def _as_tensor(x: Any, what: str):
    """Any accepted input as a (N, C, H, W) tensor of its own dtype, or an InvalidInputError."""
    import torch

    if isinstance(x, torch.Tensor):
        t = x
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] not in (1, 3):
            raise InvalidInputError(f"{what}: tensors are channels-first (3, H, W) or (N, 3, H, W); found shape "
                                    f"{tuple(x.shape)}")
        return t
    if isinstance(x, (str, Path)):
        from .images import load_image

        return torch.from_numpy(load_image(x))[None]
    if isinstance(x, np.ndarray):
        return _from_numpy_channels_last(x, what)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(x, Image.Image):
        from .images import _to_float_rgba

        return torch.from_numpy(np.ascontiguousarray(_to_float_rgba(x)[..., :3].transpose(2, 0, 1)))[None]
    if isinstance(x, (list, tuple)) and x:
        parts = [_as_tensor(item, f"{what}[{i}]") for i, item in enumerate(x)]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise InvalidInputError(f"{what}: the images of one batch must share a size; found "
                                    f"{', '.join(f'{s[2]}x{s[1]}' for s in sorted(shapes))}")
        dtypes = {p.dtype for p in parts}
        return torch.cat(parts if len(dtypes) == 1 else [_unit_float(p, (0.0, 1.0), what) for p in parts])
    raise InvalidInputError(f"{what}: expected an image (torch tensor, numpy array, PIL image or file path), "
                            f"found {_describe(x)}")


def _unit_float(t, input_range: tuple[float, float], what: str):
    """A tensor of counts or of floats in ``input_range`` as float32 in [0, 1]."""
    import torch

    if not t.is_floating_point():
        if t.dtype == torch.bool or t.is_complex():
            raise InvalidInputError(f"{what}: unsupported image dtype {t.dtype} (use float in [0, 1] or uint8)")
        # integer images are counts: 8-bit unless values show 16-bit
        peak = 255.0 if t.dtype == torch.uint8 or not t.numel() or int(t.max()) <= 255 else 65535.0
        return t.float().div_(peak)
    lo, hi = input_range
    if t.numel():
        found_lo, found_hi = float(t.detach().min()), float(t.detach().max())
        if found_lo != found_lo or found_hi != found_hi:
            raise InvalidInputError(f"{what}: the image holds NaN values")
        slack = RANGE_SLACK * (hi - lo)
        if found_lo < lo - slack or found_hi > hi + slack:
            hint = ""
            if (lo, hi) == (0.0, 1.0) and found_hi > 1.5:
                hint = " (0-255 values? divide by 255, or create the metric with input_range='[0,255]')"
            elif (lo, hi) == (0.0, 1.0) and found_lo < -slack:
                hint = " ([-1, 1] values? create the metric with input_range='[-1,1]')"
            raise InvalidInputError(f"{what}: values run from {found_lo:.4g} to {found_hi:.4g}, but this metric "
                                    f"takes images in [{lo:g}, {hi:g}]{hint}")
    if (lo, hi) != (0.0, 1.0):
        t = (t - lo) / (hi - lo)
    return t.clamp(0.0, 1.0)  # only the slack is cut: values inside keep their gradient


def to_image_batch(x: Any, input_range: tuple[float, float] = (0.0, 1.0), device=None, what: str = "image"):
    """(N, 3, H, W) float tensor in [0, 1] on ``device`` from any accepted input (see module docs).

    Floats keep their dtype (float64 stays float64, so gradients and precision pass through);
    grey inputs are repeated to three channels."""
    t = _as_tensor(x, what)
    if device is not None:
        t = t.to(device, non_blocking=True)
    t = _unit_float(t, input_range, what)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t
