"""Where weights come from: bundled LPIPS heads, torchvision's cache, and checkpoint files.

Everything is loaded with ``weights_only=True`` and checked key by key: a file that does not fit
is an error naming the missing, unexpected and mis-shaped keys, never a silent partial load.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import WeightsError
from .models.backbones import BACKBONES, BackboneSpec

CHECKPOINT_FORMAT = "iqa-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
OFFLINE_ENV = "IQA_OFFLINE"  # set to 1 to never attempt a download


# -- strict loading ----------------------------------------------------------------------------
def _short(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` or raise WeightsError listing every mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if misshaped:
            parts.append("wrong shapes: " + _short(
                [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in misshaped]))
        raise WeightsError(f"{source} does not fit this model; " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def read_state_file(path: str | Path) -> Any:
    """torch.load with weights_only=True, turning every failure into one clear WeightsError."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, expected a weights file (give the path of the .pth file)")
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (check the path)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on foreign bytes (KeyError, EOFError, ...)
        raise WeightsError(_unloadable(path, exc)) from None


def _unloadable(path: Path, exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused ``path``, in one line with the fix."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        return f"{path}: empty file, not a PyTorch checkpoint (copy the file again)"
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # neither torch.save's zip nor a pickle
        return (f"{path}: not a PyTorch checkpoint (no torch.save data in it; expected a .pth/.pt weights file, "
                f"check the path)")
    text = str(exc)
    unsafe = re.search(r"Unsupported global: (?:GLOBAL )?(\S+)", text)
    if unsafe:
        return (f"{path}: not a PyTorch checkpoint that can be loaded safely: it holds Python objects ({unsafe.group(1)}), "
                f"not only tensors (re-save its state_dict() with torch.save)")
    first_line = text.strip().splitlines()[0].split(". ")[0][:120] if text.strip() else type(exc).__name__
    return f"{path}: not a PyTorch checkpoint that can be loaded safely (damaged: {first_line}); copy the file again"


# -- backbones ---------------------------------------------------------------------------------
def torchvision_weights_enum(spec: BackboneSpec):
    import torchvision.models as tvm

    return getattr(tvm, spec.weights_enum).IMAGENET1K_V1


def torchvision_cache_dir() -> Path:
    """The folder torchvision's weights API reads from and downloads to."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_cache_file(spec: BackboneSpec) -> Path:
    url = torchvision_weights_enum(spec).url
    return torchvision_cache_dir() / Path(urlparse(url).path).name


def imagenet_backbone_state(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """The torchvision ImageNet state dict, through its weights API and cache."""
    weights = torchvision_weights_enum(spec)
    cached = torchvision_cache_file(spec)
    offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    hint = (f"ImageNet weights for '{spec.name}' not found: expected {cached.name} in {cached.parent} "
            f"(copy the file there, set TORCH_HOME to a folder whose hub/checkpoints holds it, "
            f"or pass --backbone-weights PATH)")
    if not cached.is_file() and offline:
        raise WeightsError(hint + f"; {OFFLINE_ENV} is set, so no download was tried")
    # torch.hub announces a download on stdout, which would corrupt a --json document; the library
    # never prints, so its chatter is swallowed on both streams.
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            return weights.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:  # URLError is an OSError; torch.load fails on damaged bytes in many ways
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        if cached.is_file():
            raise WeightsError(f"{cached}: cached backbone weights are unreadable ({reason}); delete the file "
                               f"and copy a good one there") from None
        raise WeightsError(hint + f"; the download failed ({reason})") from None


def backbone_state_from_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Backbone weights from a local file, as Backbone keys (``slice{n}.{i}.*``) or torchvision keys."""
    state = read_state_file(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors (torchvision 'features.*' or 'slice*' keys)")
    return state


def load_backbone_weights(model_backbone: nn.Module, spec: BackboneSpec, source: str | Path) -> None:
    """source: 'imagenet' (torchvision cache), 'random' (keep the fresh init) or a file path."""
    if source == "random":
        return
    if source == "imagenet":
        model_backbone.load_torchvision_state_dict(imagenet_backbone_state(spec))
        return
    state = backbone_state_from_file(source)
    state = {k.removeprefix("module.").removeprefix("net."): v for k, v in state.items()}
    if any(k.startswith("features.") for k in state):
        try:
            model_backbone.load_torchvision_state_dict(state)
        except WeightsError as exc:
            raise WeightsError(f"{source}: {exc}") from None
    else:
        load_strict(model_backbone, state, source=str(source))


# -- heads -------------------------------------------------------------------------------------
def bundled_head_state(net: str, version: str) -> dict[str, torch.Tensor]:
    """The released LPIPS linear heads, shipped inside the package."""
    ref = resources.files("iqa_cli") / "heads" / f"v{version}" / f"{net}.pth"
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise WeightsError(f"bundled LPIPS head {path} is missing: reinstall iqa-cli")
        return read_state_file(path)


# -- checkpoints -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file, understood: which heads it holds and for which network."""

    path: Path
    kind: str  # "lpips-heads" | "graphics-lpips" | "iqa"
    head_type: str  # "lpips" | "graphics"
    net: str
    version: str
    head_state: dict[str, torch.Tensor]
    backbone_state: dict[str, torch.Tensor] | None  # Backbone keys ('slice*'), when the file has them
    config: dict[str, Any] = field(default_factory=dict)


def infer_net(head_state: dict[str, torch.Tensor], head_type: str) -> str | None:
    """The network whose channel counts match the heads' input widths, if any."""
    k = 0
    widths = []
    while f"lin{k}.model.1.weight" in head_state:
        widths.append(int(head_state[f"lin{k}.model.1.weight"].shape[1]))
        k += 1
    for name, spec in BACKBONES.items():
        if tuple(widths) == spec.channels:
            return name
    return None


def read_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    raw = read_state_file(path)
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a dict of weights, found {type(raw).__name__}")
    if raw.get("format") == CHECKPOINT_FORMAT and raw.get("family", "lpips") != "lpips":
        raise WeightsError(f"{path}: an {raw['family']} checkpoint, not an LPIPS / Graphics-LPIPS one "
                           f"(use it with --metric {raw['family']})")
    if raw.get("format") == CHECKPOINT_FORMAT:
        state = raw["state_dict"]
        head_state = {k: v for k, v in state.items() if k.startswith("lin")}
        backbone = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")} or None
        return Checkpoint(path, "iqa", raw["head_type"], raw["net"], raw["version"], head_state, backbone,
                          dict(raw.get("config", {})))
    if not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{path}: not a weights file (expected tensors under keys like 'lin0.model.1.weight')")
    state = {k.removeprefix("module."): v for k, v in raw.items()}
    head_state = {k: v for k, v in state.items() if k.startswith("lin")}
    backbone = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")} or None
    other = sorted(k for k in state if not (k.startswith("lin") or k.startswith("net.") or k.startswith("scaling_layer.")))
    if not head_state or other:
        found = _short(other or sorted(state))
        raise WeightsError(f"{path}: not an LPIPS / Graphics-LPIPS checkpoint (expected 'lin{{k}}.model.*' keys, "
                           f"found {found})")
    head_type = "graphics" if "lin0.model.4.weight" in head_state else "lpips"
    net = infer_net(head_state, head_type) or "unknown"
    kind = "graphics-lpips" if head_type == "graphics" else "lpips-heads"
    return Checkpoint(path, kind, head_type, net, "0.1", head_state, backbone)


def save_checkpoint(path: str | Path, model: nn.Module, net: str, version: str, head_type: str,
                    config: dict[str, Any] | None = None, include_backbone: bool = False,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint this project (and score-pair / score-mesh-db) loads; atomic rename."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if k.startswith("lin") or (include_backbone and k.startswith("net."))}
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "net": net,
               "version": version, "head_type": head_type, "state_dict": state, "config": dict(config or {})}
    payload.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


# -- other families' checkpoints (ASNA, the learned sorter, ...) ------------------------------------
def save_family_checkpoint(path: str | Path, family: str, model: nn.Module, config: dict[str, Any],
                           extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s whole state dict with its family and config (atomic rename), so that
    :func:`read_family_checkpoint` can rebuild the network before loading it strictly."""
    from .io.files import atomic_path

    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "family": family,
               "config": dict(config), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    payload.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_family_checkpoint(path: str | Path, family: str, hint: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, config) of a checkpoint :func:`save_family_checkpoint` wrote for ``family``."""
    raw = read_state_file(path)
    found = raw.get("family", "lpips") if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT else None
    if found != family:
        what = f"an {found} checkpoint" if found else "not an iqa checkpoint"
        raise WeightsError(f"{path}: {what}, expected an {family} checkpoint" + (f" ({hint})" if hint else ""))
    state, config = raw.get("state_dict"), raw.get("config")
    if not isinstance(state, dict) or not isinstance(config, dict):
        raise WeightsError(f"{path}: damaged {family} checkpoint (no state_dict or config); write it again")
    return state, config


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def _load_family(path: Path, family: str, build, import_hdf5, hint: str):
    """A native checkpoint rebuilt with ``build(config dict)`` and loaded strictly, or a Keras
    .hdf5 converted by ``import_hdf5(path)``; eval mode."""
    if path.is_file() and _is_hdf5(path):
        return import_hdf5(path)
    state, config = read_family_checkpoint(path, family, hint)
    try:
        model = build(config)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: its {family} config does not make a network ({exc})") from None
    load_strict(model, state, source=str(path))
    return model.eval()


def load_asna(path: str | Path):
    """An ASNA network (eval mode) from a native checkpoint or, directly, a released Keras .hdf5."""
    from .io.keras import import_asna
    from .models.asna import AsnaConfig, AsnaNet

    return _load_family(Path(path), "asna", lambda c: AsnaNet(AsnaConfig.from_dict(c)), import_asna,
                        "convert a Keras .hdf5 with iqa_cli.io.keras.convert_keras")


BUNDLED_SORTER = "sorter16.pth"


def bundled_sorter_path() -> Path:
    ref = resources.files("iqa_cli") / "heads" / "sorter" / BUNDLED_SORTER
    with resources.as_file(ref) as path:
        return Path(path)


def load_sorter(path: str | Path | None = None):
    """A learned sorter (eval mode): the bundled one (None), a native checkpoint, or a Keras .hdf5."""
    from .io.keras import import_sorter
    from .models.sorter import Sorter, SorterConfig

    if path is None:
        path = bundled_sorter_path()
        if not path.is_file():
            raise WeightsError(f"bundled sorter {path} is missing: reinstall iqa-cli")
    return _load_family(Path(path), "sorter", lambda c: Sorter(SorterConfig.from_dict(c)), import_sorter,
                        "train one with iqa_cli.models.sorter.train_sorter")
