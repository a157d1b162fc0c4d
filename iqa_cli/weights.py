"""Where weights come from: bundled LPIPS heads, torchvision's cache, and checkpoint files.

Everything is loaded with ``weights_only=True`` and checked key by key: a file that does not fit
is an error naming the missing, unexpected and mis-shaped keys, never a silent partial load.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import WeightsError
from .models.backbones import BACKBONES, BackboneSpec

if TYPE_CHECKING:
    from .models.graphiqa import GraphIQA, GraphIQAConfig

CHECKPOINT_FORMAT = "iqa-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
OFFLINE_ENV = "IQA_OFFLINE"  # set to 1 to never attempt a download


# -- strict loading ----------------------------------------------------------------------------
def _short(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                key_names: Callable[[str], str] | None = None, assign: bool = False) -> None:
    """Load ``state`` into ``module`` or raise WeightsError listing every mismatch.

    key_names maps a key to the name the file uses, for the message (files with foreign key names).
    ``assign`` puts the given tensors in place of the module's own (for a module built on the meta
    device, so a large model is never randomly initialised only to be overwritten)."""
    name = key_names or (lambda key: key)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short([name(k) for k in missing])}")
        if unexpected:
            parts.append(f"unexpected keys: {_short([name(k) for k in unexpected])}")
        if misshaped:
            parts.append("wrong shapes: " + _short(
                [f"{name(k)} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in misshaped]))
        raise WeightsError(f"{source} does not fit this model; " + "; ".join(parts))
    module.load_state_dict(state, strict=True, assign=assign)


def read_state_file(path: str | Path) -> Any:
    """torch.load with weights_only=True, turning every failure into one clear WeightsError."""
    from .io.files import require_regular_file

    path = require_regular_file(path, "a weights file (the path of the .pth file)", error=WeightsError)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the library never prints
            warnings.simplefilter("ignore")
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
    code = _code_in_pickle(path)
    if code:
        return (f"{path}: not a PyTorch checkpoint that can be loaded safely: it contains code ({_short(code, 3)}) "
                f"that loading would run, so it was refused for safety (if you trust the file, load it in Python and "
                f"re-save its state_dict() with torch.save)")
    text = str(exc)
    unsafe = re.search(r"Unsupported global: (?:GLOBAL )?(\S+)", text)
    if unsafe:
        return (f"{path}: not a PyTorch checkpoint that can be loaded safely: it holds Python objects ({unsafe.group(1)}), "
                f"not only tensors (re-save its state_dict() with torch.save)")
    first_line = text.strip().splitlines()[0].split(". ")[0][:120] if text.strip() else type(exc).__name__
    return f"{path}: not a PyTorch checkpoint that can be loaded safely (damaged: {first_line}); copy the file again"


# What torch.save's pickles name besides tensors: rebuilding storages and tensors, and plain containers.
_SAFE_GLOBAL_MODULES = ("torch", "collections", "_codecs", "numpy")


def _pickled_globals(data: bytes) -> list[str]:
    """Every ``module.name`` the pickles in ``data`` (one or several, back to back) would import,
    read with pickletools: nothing is executed. STACK_GLOBAL takes its names from the two strings
    pushed just before it."""
    names: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data) and data[stream.tell():stream.tell() + 1] == b"\x80":
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):  # stops after the pickle's STOP opcode
                if isinstance(arg, str) and "UNICODE" in op.name:
                    strings.append(arg)
                elif op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
        except Exception:  # noqa: BLE001 - damaged bytes: report what was read so far
            break
    return names


def _code_in_pickle(path: Path) -> list[str]:
    """The imports a weights file's pickles would run that are not torch's own (none for a plain
    state dict): a pickle naming os.system, builtins.eval or a user's class carries code."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                found = [name for member in archive.namelist() if member.endswith(".pkl")
                         for name in _pickled_globals(archive.read(member))]
        else:
            with open(path, "rb") as fh:
                found = _pickled_globals(fh.read(64 << 20))
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []
    return list(dict.fromkeys(name for name in found if name.split(".")[0] not in _SAFE_GLOBAL_MODULES))


# -- backbones ---------------------------------------------------------------------------------
class TorchvisionNet(Protocol):
    """What the torchvision-cache helpers need: a name for messages and the WeightsEnum class name
    (BackboneSpec for the LPIPS taps, models.graphiqa.ResNetSpec for ResNet-50)."""

    name: str
    weights_enum: str


def torchvision_weights_enum(spec: TorchvisionNet):
    import torchvision.models as tvm

    return getattr(tvm, spec.weights_enum).IMAGENET1K_V1


def torchvision_cache_dir() -> Path:
    """The folder torchvision's weights API reads from and downloads to."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_cache_file(spec: TorchvisionNet) -> Path:
    url = torchvision_weights_enum(spec).url
    return torchvision_cache_dir() / Path(urlparse(url).path).name


def imagenet_backbone_state(spec: TorchvisionNet) -> dict[str, torch.Tensor]:
    """The torchvision ImageNet state dict, through its weights API and cache."""
    weights = torchvision_weights_enum(spec)
    cached = torchvision_cache_file(spec)
    offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    hint = (f"ImageNet weights for '{spec.name}' not found: expected {cached.name} in {cached.parent} "
            f"(download {weights.url} and copy it there, set TORCH_HOME to a folder whose hub/checkpoints holds it, "
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


def backbone_state_from_file(path: str | Path, expected: str = "torchvision 'features.*' or 'slice*' keys"
                             ) -> dict[str, torch.Tensor]:
    """Backbone weights from a local file, as Backbone keys (``slice{n}.{i}.*``) or torchvision keys."""
    state = read_state_file(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors ({expected})")
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


def read_checkpoint_payload(path: Path, family: str, label: str) -> tuple[dict[str, Any], bool]:
    """A checkpoint file as a dict, and whether it is in this project's format; a file of this
    project's format written for another model family is an error (label: 'an LPIPS', ...)."""
    raw = read_state_file(path)
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a dict of weights, found {type(raw).__name__}")
    native = raw.get("format") == CHECKPOINT_FORMAT
    found = raw.get("family", "lpips")  # files from before the family field are LPIPS ones
    if native and found != family:
        raise WeightsError(f"{path}: a {found} checkpoint, not {label} one (use --metric {found})")
    return raw, native


# The original networks (the lpips package, and Graphics-LPIPS built on it) hold each head both as an
# attribute lin{k} and in a ModuleList lins, so their trainers' state dicts name every head twice.
_HEAD_LIST_KEY = re.compile(r"^lins\.(\d+)\.(.+)$")


def fold_head_duplicates(state: dict[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """``lins.{k}.*`` keys as ``lin{k}.*``: a twin must hold exactly the same values as its
    ``lin{k}`` key (an error naming both keys if not); a ``lins`` key alone stands for its head."""
    folded = {k: v for k, v in state.items() if not _HEAD_LIST_KEY.match(k)}
    for key, value in state.items():
        match = _HEAD_LIST_KEY.match(key)
        if match is None:
            continue
        twin = f"lin{match.group(1)}.{match.group(2)}"
        if twin not in state:
            folded[twin] = value
        elif state[twin].shape != value.shape or not torch.equal(state[twin], value):
            raise WeightsError(f"{source}: {key} and {twin} differ, but they are the same head saved twice by the "
                               "original network (lins.{k} is lin{k}); the file was damaged or edited: copy it again")
    return folded


def check_scaling_layer(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``scaling_layer.shift/scale`` are constants of LPIPS v0.1, saved only because the original
    code keeps them as buffers: iqa applies them itself, so they must be exactly those constants."""
    from .models.lpips import SCALE, SHIFT

    for name, expected in (("shift", SHIFT), ("scale", SCALE)):
        key = f"scaling_layer.{name}"
        if key not in state:
            continue
        value = state[key]
        if value.numel() != 3 or not torch.allclose(value.detach().reshape(3).double(),
                                                    torch.tensor(expected, dtype=torch.float64), atol=1e-6):
            found = tuple(round(float(v), 4) for v in value.reshape(-1)[:6])
            raise WeightsError(f"{source}: {key} is {found}, but LPIPS v0.1 scales its input by the fixed shift "
                               f"{SHIFT} and scale {SCALE} (ImageNet's statistics in [-1, 1]); this checkpoint "
                               "comes from a network with another input scaling, which iqa does not run")


def _split_state(state: dict[str, torch.Tensor], source: Path
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, list[str]]:
    """(head keys, backbone keys without 'net.', keys that are neither) of an LPIPS-shaped state dict."""
    state = fold_head_duplicates({k.removeprefix("module."): v for k, v in state.items()}, source)
    check_scaling_layer(state, source)
    heads = {k: v for k, v in state.items() if k.startswith("lin")}
    backbone = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")} or None
    other = sorted(k for k in state if not (k.startswith("lin") or k.startswith("net.")
                                            or k.startswith("scaling_layer.")))
    return heads, backbone, other


def _tensor_dict_problem(state: Any) -> str | None:
    """Why ``state`` is not a {name: tensor} dict (None when it is)."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__} where a dict of weights belongs"
    bad_key = next((k for k in state if not isinstance(k, str)), None)
    if bad_key is not None:
        return f"a {type(bad_key).__name__} key {bad_key!r} where parameter names belong"
    bad_value = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad_value is not None:
        return f"a {type(state[bad_value]).__name__} under {bad_value!r} where a tensor belongs"
    return None


def _read_iqa_checkpoint(path: Path, raw: dict) -> "Checkpoint":
    from .models.heads import HEAD_TYPES
    from .models.lpips import VERSIONS

    def damaged(problem: str) -> WeightsError:
        return WeightsError(f"{path}: damaged iqa checkpoint ({problem}); copy the file again, or train again")

    if "state_dict" not in raw:
        raise damaged("no state_dict in it")
    problem = _tensor_dict_problem(raw["state_dict"])
    if problem:
        raise damaged(f"its state_dict holds {problem}")
    for key, allowed in (("head_type", HEAD_TYPES), ("net", tuple(BACKBONES)), ("version", VERSIONS)):
        if raw.get(key) not in allowed:
            raise damaged(f"{key} is {raw.get(key)!r}, expected one of {', '.join(allowed)}")
    config = raw.get("config", {})
    if not isinstance(config, dict):
        raise damaged(f"config is a {type(config).__name__}, expected a dict")
    heads, backbone, other = _split_state(raw["state_dict"], path)
    if other:
        raise damaged(f"unexpected keys {_short(other)}")
    return Checkpoint(path, "iqa", raw["head_type"], raw["net"], raw["version"], heads, backbone, dict(config))


def read_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint written by 'iqa train', an LPIPS head file, or a state dict saved by the original
    LPIPS / Graphics-LPIPS code (heads twice as lin{k} and lins.{k}, 'module.' prefixes of
    DataParallel, the scaling layer's constants), checked so that it loads whole or not at all."""
    path = Path(path)
    raw = read_state_file(path)
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a dict of weights, found {type(raw).__name__}")
    if raw.get("format") == CHECKPOINT_FORMAT:
        found = raw.get("family", "lpips")  # files from before the family field are LPIPS ones
        if found != "lpips":
            raise WeightsError(f"{path}: a {found} checkpoint, not an LPIPS one (use --metric {found})")
        return _read_iqa_checkpoint(path, raw)
    problem = _tensor_dict_problem(raw)
    if problem:
        raise WeightsError(f"{path}: not a weights file: it holds {problem} (expected tensors under keys like "
                           "'lin0.model.1.weight')")
    head_state, backbone, other = _split_state(raw, path)
    if not head_state or other:
        found = _short(other or sorted(raw))
        raise WeightsError(f"{path}: not an LPIPS / Graphics-LPIPS checkpoint (expected 'lin{{k}}.model.*' keys, "
                           f"found {found})")
    head_type = "graphics" if "lin0.model.4.weight" in head_state else "lpips"
    net = infer_net(head_state, head_type) or "unknown"
    kind = "graphics-lpips" if head_type == "graphics" else "lpips-heads"
    return Checkpoint(path, kind, head_type, net, "0.1", head_state, backbone)


def checkpoint_payload(model: nn.Module, net: str, version: str, head_type: str, config: dict[str, Any] | None = None,
                       include_backbone: bool = False) -> dict[str, Any]:
    """What a checkpoint file holds (the training loop writes it, save_checkpoint below too)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if k.startswith("lin") or (include_backbone and k.startswith("net."))}
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "net": net,
            "version": version, "head_type": head_type, "state_dict": state, "config": dict(config or {})}


def save_checkpoint(path: str | Path, model: nn.Module, net: str, version: str, head_type: str,
                    config: dict[str, Any] | None = None, include_backbone: bool = False,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint this project (and score-pair / score-mesh-db) loads; atomic rename."""
    from .io.files import atomic_path

    path = Path(path)
    payload = checkpoint_payload(model, net, version, head_type, config, include_backbone)
    payload.update(extra or {})
    with atomic_path(path, "the checkpoint") as tmp:  # disk full: one line naming path, no temporary file left
        torch.save(payload, tmp)
    return path


# -- GraphIQA ----------------------------------------------------------------------------------
GRAPHIQA_FAMILY = "graphiqa"
_PAYLOAD_KEYS = ("format", "format_version", "family", "config", "backbone", "state_dict")


def resnet_backbone_state(source: str | Path) -> dict[str, torch.Tensor]:
    """ResNet-50 trunk weights in torchvision's keys (the classifier ``fc.*`` dropped), from
    'imagenet' (torchvision's weights API and cache) or a local file (``module.`` prefix allowed)."""
    from .models.graphiqa import RESNET50

    if source == "imagenet":
        state = imagenet_backbone_state(RESNET50)
    else:
        state = backbone_state_from_file(source, expected="torchvision ResNet-50 keys such as 'conv1.weight'")
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_graphiqa_backbone(model: GraphIQA, source: str | Path = "imagenet",
                           state: dict[str, torch.Tensor] | None = None) -> None:
    """source: 'imagenet', 'random' (keep the fresh init) or a file; strict, one-line errors.
    ``state``: resnet_backbone_state(source), when the caller already read it."""
    if source == "random":
        model.backbone_source = "random"
        return
    state = dict(state if state is not None else resnet_backbone_state(source))
    # torchvision's ImageNet files predate BatchNorm's num_batches_tracked counter, which a frozen
    # BatchNorm in eval mode never reads.
    for key, value in model.backbone.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    label = "torchvision ImageNet ResNet-50 weights" if source == "imagenet" else str(source)
    load_strict(model.backbone, state, source=label)
    model.backbone_source = "imagenet" if source == "imagenet" else "file"


@dataclass(frozen=True)
class GraphIQACheckpoint:
    """A GraphIQA checkpoint, understood. ``state`` uses this project's keys whatever the file used."""

    path: Path
    kind: str  # "iqa" (written by save_graphiqa_checkpoint) | "original" (a Reg_Domain state dict)
    embed_size: int | None  # K, from the edge GCN's shapes
    config: dict[str, Any]  # GraphIQAConfig fields the file records ({} for original files)
    state: dict[str, torch.Tensor]
    has_backbone: bool
    dropped: tuple[str, ...] = ()  # original keys known to be unused (classifier.*, predictor.*)
    extra: dict[str, Any] = field(default_factory=dict)  # whatever else a native file carries (epoch, ...)


def read_graphiqa_checkpoint(path: str | Path) -> GraphIQACheckpoint:
    from .models.graphiqa import embed_size_of, original_to_native

    path = Path(path)
    raw, native = read_checkpoint_payload(path, GRAPHIQA_FAMILY, "a GraphIQA")
    if native:
        if not isinstance(raw.get("state_dict"), dict):
            raise WeightsError(f"{path}: damaged GraphIQA checkpoint (no state_dict in it); save it again")
        state = dict(raw["state_dict"])
        extra = {k: v for k, v in raw.items() if k not in _PAYLOAD_KEYS}
        return GraphIQACheckpoint(path, "iqa", embed_size_of(state), dict(raw.get("config", {})), state,
                                  any(k.startswith("backbone.") for k in state), (), extra)
    if not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{path}: not a GraphIQA checkpoint (expected a Reg_Domain state dict of tensors or a "
                           f"file written by 'iqa train --method graphiqa')")
    state, dropped = original_to_native(raw)
    if not any(k.startswith(("node_mlp.", "edge_gcn.")) for k in state):
        found = _short(sorted(k.removeprefix("module.") for k in raw))
        raise WeightsError(f"{path}: not a GraphIQA checkpoint (expected Reg_Domain keys such as 'node_fc.0.weight' "
                           f"and 'edge_gc1.weight', found {found})")
    return GraphIQACheckpoint(path, "original", embed_size_of(state), {}, state, True, tuple(dropped))


def load_graphiqa(checkpoint: str | Path | None = None, *, backbone_weights: str | Path = "imagenet",
                  embed_size: int | None = None, summary: str | None = None,
                  config: GraphIQAConfig | None = None) -> GraphIQA:
    """A GraphIQA model (CPU, train mode untouched) from a checkpoint, or freshly initialised.

    K comes from the checkpoint; an ``embed_size`` that disagrees is an error naming both. An
    original Reg_Domain file carries its own backbone (with whatever BatchNorm statistics its run
    left) and must hold every weight; a native file without a backbone gets ``backbone_weights``
    ('imagenet', 'random' or a file), ignored when the file carries one. ``config`` (no checkpoint)
    sets every field at once; ``summary`` overrides the recorded edge summary.
    """
    from .models.graphiqa import GraphIQA, GraphIQAConfig, native_to_original_key

    ckpt = read_graphiqa_checkpoint(checkpoint) if checkpoint is not None else None
    values = dict(config.to_dict()) if config is not None else {}
    if ckpt is not None:
        values.update(ckpt.config)
        if ckpt.embed_size is not None:
            if embed_size is not None and int(embed_size) != ckpt.embed_size:
                raise WeightsError(f"{ckpt.path} holds GraphIQA with embedding size K={ckpt.embed_size} but "
                                   f"K={embed_size} was asked for: one K serves pretraining and fine-tuning "
                                   f"(pass --embed-size {ckpt.embed_size} or drop it)")
            values["embed_size"] = ckpt.embed_size
    if embed_size is not None and "embed_size" not in values:
        values["embed_size"] = int(embed_size)
    if summary is not None:
        values["summary"] = summary
    config = GraphIQAConfig.from_dict(values)
    backbone_state = None  # read before building the model, so a missing file fails at once
    if (ckpt is None or not ckpt.has_backbone) and backbone_weights != "random":
        backbone_state = resnet_backbone_state(backbone_weights)
    backbone_loaded = backbone_state is not None or (ckpt is not None and ckpt.has_backbone)
    # Random initialisation only for what no file will overwrite (it costs seconds on a CPU).
    model = GraphIQA.uninitialised(config) if backbone_loaded else GraphIQA(config)
    if ckpt is None:
        if backbone_loaded:
            model.reset_graph_parameters()
        load_graphiqa_backbone(model, backbone_weights, backbone_state)
        return model
    if ckpt.kind == "original":  # name keys in messages as the file does
        source, key_names = f"{ckpt.path} (original Reg_Domain state dict)", native_to_original_key
    else:
        source, key_names = str(ckpt.path), None
    if ckpt.has_backbone:
        load_strict(model, ckpt.state, source=source, key_names=key_names)
        model.backbone_source = "checkpoint"
    else:
        load_graphiqa_backbone(model, backbone_weights, backbone_state)
        load_strict(model.graph_modules(), ckpt.state, source=source, key_names=key_names)
    return model


def save_graphiqa_checkpoint(path: str | Path, model: GraphIQA, extra: dict[str, Any] | None = None) -> Path:
    """Write the model (and ``extra``: epoch, optimiser state, ...) atomically. The frozen backbone is
    left out when it is torchvision's ImageNet ResNet-50 (reloaded from the cache, ~100 MB saved) and
    kept otherwise (a local file, random, or one an original checkpoint brought)."""
    from .io.files import atomic_path

    payload = graphiqa_checkpoint_payload(model, extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def graphiqa_checkpoint_payload(model: GraphIQA, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What save_graphiqa_checkpoint writes (for a training loop that writes files its own way)."""
    clash = sorted(set(extra or {}) & set(_PAYLOAD_KEYS))
    if clash:
        raise ValueError(f"save_graphiqa_checkpoint: extra may not set {clash}")
    keep_backbone = model.backbone_source != "imagenet"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if keep_backbone or not k.startswith("backbone.")}
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "family": GRAPHIQA_FAMILY,
            "config": model.config.to_dict(), "backbone": "included" if keep_backbone else "imagenet",
            "state_dict": state, **(extra or {})}


# -- which metric a checkpoint is for -----------------------------------------------------------
def checkpoint_metric_name(path: str | Path) -> str:
    """The registry name of the metric a checkpoint file holds weights for: this project's files
    say it (their ``family``); original files are recognised by their keys (LPIPS / Graphics-LPIPS
    heads, GraphIQA's Reg_Domain). Anything else is read as an LPIPS file, whose loader then says
    precisely what does not fit."""
    raw = read_state_file(path)
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        family = str(raw.get("family", "lpips"))
        if family == "lpips":
            return "graphics-lpips" if raw.get("head_type") == "graphics" else "lpips"
        return family
    keys = [str(k).removeprefix("module.") for k in raw] if isinstance(raw, dict) else []
    from .models.graphiqa import ORIGINAL_KEY_PREFIXES

    if any(k.startswith(prefix) for k in keys for prefix, _ in ORIGINAL_KEY_PREFIXES if "features." not in prefix):
        return "graphiqa"
    return "graphics-lpips" if any(k.endswith("lin0.model.4.weight") for k in keys) else "lpips"


# -- other families' checkpoints (ASNA, the learned sorter, ...) ------------------------------------
def save_family_checkpoint(path: str | Path, family: str, model: nn.Module, config: dict[str, Any],
                           extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s whole state dict with its family and config (atomic rename), so that
    :func:`read_family_checkpoint` can rebuild the network before loading it strictly."""
    from .io.files import atomic_path

    payload = family_checkpoint_payload(family, model, config, extra=extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def family_checkpoint_payload(family: str, model: nn.Module, model_config: dict[str, Any],
                              run_config: dict[str, Any] | None = None,
                              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a family checkpoint holds: ``model``'s whole state dict (on the CPU) and its network
    config; with ``run_config`` (a training run's options) the network config moves to
    ``model_config`` and ``config`` holds the run's options (see :func:`read_family_checkpoint`)."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "family": family,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if run_config is None:
        payload["config"] = dict(model_config)
    else:
        payload.update(config=dict(run_config), model_config=dict(model_config))
    payload.update(extra or {})
    return payload


def read_family_checkpoint(path: str | Path, family: str, hint: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, network config) of a checkpoint :func:`save_family_checkpoint` wrote for
    ``family``. Checkpoints written by ``iqa train`` keep the run's options under ``config`` (what
    --resume checks) and the network's under ``model_config``, which is then the one returned."""
    raw = read_state_file(path)
    found = raw.get("family", "lpips") if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT else None
    if found != family:
        what = f"an {found} checkpoint" if found else "not an iqa checkpoint"
        raise WeightsError(f"{path}: {what}, expected an {family} checkpoint" + (f" ({hint})" if hint else ""))
    state, config = raw.get("state_dict"), raw.get("model_config", raw.get("config"))
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
