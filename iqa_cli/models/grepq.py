"""GRepQ (Srinath et al., WACV 2024): a low-level and a high-level encoder, and the zero-shot score.

Two encoders give the perceptual representations (../shared/reference/grepq.md):

* ``LowLevelEncoder`` (LLM): torchvision ResNet-18 (random init, ``fc`` removed, 512-d after global
  average pooling) + head Linear(512,512)-ReLU-Linear(512,128). Input RGB in [0, 1], no
  normalisation. The 128-d head output is *the* feature, in the zero-shot score and in ridge mode.
* ``HighLevelEncoder`` (HLM): CLIP RN50's image tower (open_clip, an optional extra), CLIP-normalised
  input, attention pooling run without its positional embedding so any input size works (the
  original edits CLIP's source for this; here ``attention_pool_without_position`` is a separate
  forward of open_clip's own ``AttentionPool2d``, the library stays untouched). The prompt
  embeddings are computed once through the text tower when the weights are loaded and kept as a
  buffer, so scoring never needs the text tower again.

Zero-shot score, GRepQ_Z = Q_L + Q_H:

* Q_L: 96x96 patches at stride 48 of the test image (remainder dropped), their LLM features fitted
  with a Gaussian and compared with the pristine Gaussian (fitted once from pristine patches, kept
  as buffers): D = sqrt(dmu^T ((S_p + S_t)/2 + 0.001 I)^-1 dmu), Q_L = 1 - sigmoid(D / 100).
* Q_H = sigmoid(10 (cos(g, t_good) - cos(g, t_bad))) on the full image, prompts "A good photo." /
  "A bad photo.". Without CLIP weights the score is Q_L alone and says so (``mode``).

Data-efficient mode: ``GRepQFeatures`` gives concat(attention-pool output 1024-d, LLM head 128-d)
per whole image; the ridge regression on them lives in stats/ridge.py.

Weights are read only from local files, strictly (weights.load_strict) and CPU-safe; see
``load_low_level_encoder`` and ``load_high_level_encoder`` for the layouts each accepts.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError, IQAError, WeightsError
from ..weights import load_strict, read_state_file
from .base import QualityMetric
from .mvg import MVG, fit_mvg, mvg_distance

LOW_LEVEL_DIM = 128
CLIP_DIM = 1024
FEATURE_DIM = CLIP_DIM + LOW_LEVEL_DIM  # the data-efficient feature: 1152
PATCH_SIZE = 96
PATCH_STRIDE = 48
DISTANCE_RIDGE = 0.001  # added to the pooled covariance before the inverse
DISTANCE_SCALE = 100.0  # Q_L = 1 - sigmoid(D / 100)
PROMPT_SCALE = 10.0  # sigmoid((cos_good - cos_bad) / 0.1)
ZERO_SHOT_PROMPTS = ("A good photo.", "A bad photo.")
PSEUDO_LABEL_PROMPTS = ("a Good photo.", "a Bad photo.")
CLIP_MODEL = "RN50-quickgelu"  # every published RN50 (OpenAI's included) has QuickGELU in its text tower
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODE_BOTH = "low+high"
MODE_LOW_ONLY = "low-level only (no CLIP weights)"
CLIP_OPTION = "clip_weights (--clip-weights)"
CLIP_VISUAL_OPTION = "clip_visual_weights (--clip-visual-weights)"
# keys a TorchScript CLIP archive (OpenAI's RN50.pt) carries beyond the model's state dict
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
# torchvision resnet18's children in order; nn.Sequential(*children[:-1]) numbers them 0..8
_RESNET18_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) floats in [0, 1] or uint8 -> float32 RGB; one grey channel is repeated to three."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InvalidInputError(f"expected images (N, 3, H, W) (or (N, 1, H, W) grey), got {tuple(images.shape)}")
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()  # the encoders are float32
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# -- low-level encoder -------------------------------------------------------------------------
class LowLevelEncoder(nn.Module):
    """ResNet-18 trunk (random init, no ``fc``) -> 512-d GAP -> Linear-ReLU-Linear head -> 128-d.

    State dict keys: ``backbone.*`` (torchvision's resnet18 names without ``fc``) and
    ``head.{0,2}.{weight,bias}``. ``forward`` takes RGB in [0, 1] (or uint8), unnormalised.
    """

    def __init__(self) -> None:
        super().__init__()
        import torchvision.models as tvm

        self.backbone = tvm.resnet18(weights=None)
        self.backbone.fc = nn.Identity()
        self.head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Linear(512, LOW_LEVEL_DIM))

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The 512-d pooled ResNet-18 output."""
        return self.backbone(_as_float(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 128) head features."""
        return self.head(self.trunk(images))


def low_level_state(raw: Any, source: str) -> dict[str, torch.Tensor]:
    """The LowLevelEncoder state dict inside a checkpoint, whatever layout it was saved in.

    Accepted containers: the authors' ``.tar`` (``raw['model']['state_dict']``), ``{'state_dict': ...}``
    or a bare state dict; a ``module.`` prefix (DataParallel) is dropped. Accepted key layouts:
    this class's own, and the authors' (a resnet18 kept whole under ``encoder.base_model.*`` -- its
    unused ``fc`` included -- and again as ``encoder.resnet18.{i}.*``, an nn.Sequential of its
    children sharing the same tensors, plus ``head.*``). Keys that fit neither are passed through
    so the strict load names them.
    """
    state = raw
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "state_dict" in state["model"]:
        state = state["model"]["state_dict"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = ", ".join(sorted(map(str, raw))[:6]) if isinstance(raw, dict) else type(raw).__name__
        raise WeightsError(f"{source}: not a GRepQ low-level checkpoint (expected a state dict of tensors, or "
                           f"['model']['state_dict'] as the authors' .tar; found {found})")
    out: dict[str, torch.Tensor] = {}
    sequential: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("encoder.base_model."):
            rest = key.removeprefix("encoder.base_model.")
            if not rest.startswith("fc."):  # the authors keep resnet18's ImageNet classifier, never used
                out["backbone." + rest] = value
        elif key.startswith("encoder.resnet18."):
            index, _, rest = key.removeprefix("encoder.resnet18.").partition(".")
            name = _RESNET18_CHILDREN[int(index)] if index.isdigit() and int(index) < len(_RESNET18_CHILDREN) else None
            sequential[f"backbone.{name}.{rest}" if name else key] = value
        else:
            out[key] = value
    for key, value in sequential.items():  # the same tensors as base_model's when both are present
        out.setdefault(key, value)
    return out


def load_low_level_encoder(path: str | Path) -> LowLevelEncoder:
    """A LowLevelEncoder with the weights of ``path`` (strict, CPU-safe), in eval mode."""
    encoder = LowLevelEncoder()
    load_strict(encoder, low_level_state(read_state_file(path), str(path)), source=str(path))
    return encoder.eval()


# -- patches and the low-level Gaussian --------------------------------------------------------
def patch_grid(height: int, width: int, size: int = PATCH_SIZE, stride: int = PATCH_STRIDE) -> tuple[int, int]:
    """Rows and columns of size x size patches at ``stride`` that fit (the remainder is dropped)."""
    if height < size or width < size:
        return 0, 0
    return (height - size) // stride + 1, (width - size) // stride + 1


def check_patch_count(height: int, width: int, size: int = PATCH_SIZE, stride: int = PATCH_STRIDE) -> None:
    """A covariance needs two patches: refuse smaller images in one line."""
    rows, cols = patch_grid(height, width, size, stride)
    if rows * cols < 2:
        raise InvalidInputError(
            f"image is {height}x{width}: GRepQ cuts {size}x{size} patches at stride {stride} and needs at least two, "
            f"so images must be at least {size}x{size + stride} (or {size + stride}x{size}); use a larger image")


def iterate_patches(images: torch.Tensor, size: int = PATCH_SIZE, stride: int = PATCH_STRIDE,
                    batch: int = 256):
    """Yield (k, 3, size, size) chunks of every patch of every image, image by image, row-major.

    The patches are a strided view of the batch (``unfold``) and each chunk is gathered from it on
    the images' device, so the full patch tensor (overlapping, 4x the image at stride 48) is never
    materialised at once.
    """
    n, c = images.shape[:2]
    rows, cols = patch_grid(images.shape[2], images.shape[3], size, stride)
    view = images.unfold(2, size, stride).unfold(3, size, stride)  # (N, C, rows, cols, s, s)
    view = view.permute(0, 2, 3, 1, 4, 5)  # (N, rows, cols, C, s, s), still a view
    total = n * rows * cols
    for start in range(0, total, batch):
        flat = torch.arange(start, min(start + batch, total), device=images.device)
        yield view[flat // (rows * cols), (flat // cols) % rows, flat % cols]


def patch_features(encoder: LowLevelEncoder, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """LLM features of every 96x96 stride-48 patch: (N, 3, H, W) -> (N, n_patches, 128)."""
    images = _as_float(images).to(_device_of(encoder))
    check_patch_count(images.shape[2], images.shape[3])
    rows, cols = patch_grid(images.shape[2], images.shape[3])
    feats = torch.cat([encoder(chunk) for chunk in iterate_patches(images, batch=batch)])
    return feats.reshape(images.shape[0], rows * cols, -1)


def as_patch_batch(patches: torch.Tensor | np.ndarray, size: int = PATCH_SIZE) -> torch.Tensor:
    """Pristine patches as a (N, 3, size, size) tensor, float in [0, 1] or uint8, not yet converted
    (a large set is converted batch by batch).

    Accepts channels first (N, 3, s, s) -- the authors' HDF5 file -- or channels last (N, s, s, 3),
    the patch store's layout.
    """
    patches = torch.as_tensor(np.asarray(patches)) if isinstance(patches, np.ndarray) else patches
    if patches.ndim == 4 and patches.shape[-1] == 3 and patches.shape[1] != 3:
        patches = patches.permute(0, 3, 1, 2)
    if patches.ndim != 4 or patches.shape[1] != 3 or tuple(patches.shape[2:]) != (size, size):
        raise InvalidInputError(f"expected pristine patches (N, 3, {size}, {size}) or (N, {size}, {size}, 3), "
                                f"got {tuple(patches.shape)} (make the pristine store with --patch-size {size})")
    if patches.shape[0] < 2:
        raise InvalidInputError(f"the pristine Gaussian needs at least two patches, got {patches.shape[0]} "
                                "(add pristine images or lower the selection thresholds)")
    return patches


@torch.no_grad()
def pristine_mvg(encoder: LowLevelEncoder, patches: torch.Tensor | np.ndarray, batch: int = 256) -> MVG:
    """The pristine Gaussian of the LLM features of ``patches`` (float in [0, 1] or uint8), with the
    encoder as it is (put it in eval mode first). Computed once; the caller caches it."""
    patches = as_patch_batch(patches)
    device = _device_of(encoder)
    feats = torch.cat([encoder(_as_float(patches[i:i + batch]).to(device)) for i in range(0, len(patches), batch)])
    return fit_mvg(feats)


def low_level_quality(pristine: MVG, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q_L, D) float64 (N,) from patch features (N, n, 128): Q_L = 1 - sigmoid(D / 100)."""
    distance = mvg_distance(pristine, fit_mvg(features), ridge=DISTANCE_RIDGE, pseudo_inverse=False)
    return 1 - torch.sigmoid(distance / DISTANCE_SCALE), distance


# -- high-level encoder ------------------------------------------------------------------------
def require_open_clip():
    """open_clip, imported on first use: it is an optional extra."""
    try:
        return importlib.import_module("open_clip")
    except ImportError:
        raise IQAError("GRepQ's high-level encoder needs open_clip, which is not installed: "
                       "pip install 'iqa-cli[clip]' (or give no CLIP weights for the low-level score only)") from None


def attention_pool_without_position(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIP's attention pooling (open_clip ``AttentionPool2d``) without the positional embedding.

    The query is the mean token, keys and values are the mean token and the h*w feature tokens; at
    any h, w. The pool's own forward adds a positional embedding sized for 7x7 (224x224 input),
    which is what ties CLIP to that size. Only the mean token's output is used, so only its query
    is computed. (N, C, h, w) -> (N, output_dim).
    """
    n, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # (N, hw, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (N, hw + 1, C)
    heads = pool.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, heads, L, C / heads)
        return t.reshape(n, t.shape[1], heads, c // heads).transpose(1, 2)

    q = split(pool.q_proj(tokens[:, :1]))
    k, v = split(pool.k_proj(tokens)), split(pool.v_proj(tokens))
    out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_head)) v
    return pool.c_proj(out.transpose(1, 2).reshape(n, c))


def new_clip_image_tower() -> nn.Module:
    """open_clip's RN50 image tower (ModifiedResNet), randomly initialised (on the current default device)."""
    require_open_clip()
    resnets = importlib.import_module("open_clip.modified_resnet")
    # open_clip's RN50 vision config: layers (3, 4, 6, 3), width 64, 64-wide heads -> 32 heads
    return resnets.ModifiedResNet(layers=[3, 4, 6, 3], output_dim=CLIP_DIM, heads=32, image_size=224, width=64)


class HighLevelEncoder(nn.Module):
    """CLIP RN50's image tower with position-free attention pooling and stored prompt embeddings.

    State dict: ``visual.*`` (open_clip's ModifiedResNet names, as CLIP's ``visual`` submodule) and
    ``prompt_embeddings`` (4, 1024): unit text embeddings of the zero-shot prompts (good, bad) and of
    the pseudo-label prompts (good, bad); NaN when unknown (an image tower loaded on its own).
    CLIP's tokenizer lower-cases its input, so both pairs embed to the same vectors; both are kept
    so each use names its own prompts.

    The positional embedding is dropped at every size, 224x224 training crops included -- an
    assumption: the original edits CLIP's installed source, which its training code shares with
    its evaluation. It stays in the state dict, unused, so released files load strictly.
    """

    def __init__(self, visual: nn.Module | None = None) -> None:
        super().__init__()
        self.visual = visual if visual is not None else new_clip_image_tower()
        self.register_buffer("prompt_embeddings", torch.full((4, CLIP_DIM), float("nan")))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def has_prompts(self) -> bool:
        return not bool(torch.isnan(self.prompt_embeddings).any())

    def set_prompts(self, zero_shot: torch.Tensor, pseudo_label: torch.Tensor) -> None:
        """Store (2, 1024) text embeddings (good, bad) of each prompt pair, unit-normalised."""
        emb = torch.cat([zero_shot, pseudo_label]).to(self.prompt_embeddings)
        self.prompt_embeddings.copy_(F.normalize(emb, dim=-1))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (_as_float(images) - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1], any size >= 32 -> (N, 1024) attention-pool output (not normalised)."""
        v = self.visual
        x = v.stem(self.normalise(images))
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))
        return attention_pool_without_position(v.attnpool, x)

    def require_prompts(self) -> None:
        if not self.has_prompts:
            raise WeightsError("the high-level encoder has no prompt embeddings (it was loaded from an image tower "
                               f"alone): give the full CLIP RN50 file as {CLIP_OPTION} and the fine-tuned image tower "
                               f"as {CLIP_VISUAL_OPTION}")

    def _prompt_score(self, features: torch.Tensor, rows: slice) -> torch.Tensor:
        self.require_prompts()
        cos = F.normalize(features, dim=-1) @ self.prompt_embeddings[rows].to(features.dtype).T  # (N, 2)
        return torch.sigmoid(PROMPT_SCALE * (cos[:, 0] - cos[:, 1]))

    def zero_shot_quality(self, features: torch.Tensor) -> torch.Tensor:
        """Q_H = sigmoid(10 (cos(g, t_good) - cos(g, t_bad))), prompts "A good photo." / "A bad photo."."""
        return self._prompt_score(features, slice(0, 2))

    def pseudo_labels(self, features: torch.Tensor) -> torch.Tensor:
        """q = sigmoid((cos(v, t_good) - cos(v, t_bad)) / 0.1), prompts "a Good photo." / "a Bad photo."
        (detached: the labels only order the batch)."""
        return self._prompt_score(features.detach(), slice(2, 4))


class ProjectionHead(nn.Module):
    """The group contrastive loss's head: ReLU(Linear(1024, 128)); used in training only."""

    def __init__(self, in_features: int = CLIP_DIM, out_features: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(x))


def _is_torchscript(path: Path) -> bool:
    """OpenAI's RN50.pt is a TorchScript archive, which torch.load(weights_only=True) refuses."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _read_clip_file(path: str | Path, option: str) -> dict[str, torch.Tensor]:
    """A CLIP weights file as a flat state dict (``module.`` dropped), or one WeightsError naming ``option``."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "no such file"
        raise WeightsError(f"{path}: {what} for {option}: give a local CLIP RN50 weights file (open_clip's RN50 "
                           f"state dict or OpenAI's RN50.pt); nothing is downloaded")
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated, and the only reader of this format
                warnings.simplefilter("ignore", FutureWarning)
                raw = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:  # damaged archives fail in many ways
            raise WeightsError(f"{path}: unreadable TorchScript archive for {option} ({str(exc).strip()[:100]}); "
                               "copy the file again") from None
    else:
        raw = read_state_file(path)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{path}: not a CLIP weights file for {option} (expected a state dict of tensors)")
    return {k.removeprefix("module."): v for k, v in raw.items() if k not in _OPENAI_EXTRA_KEYS}


def _float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as float32 (the authors' image tower was saved in fp16 from a CUDA model)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _image_tower_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An image tower's keys as ModifiedResNet names, whether saved bare or as CLIP's ``visual.*``
    (a HighLevelEncoder saved by this project, e.g. by ``iqa train --method grepq-high``, is its
    ``visual.*`` keys beside ``prompt_embeddings``: the tower is those keys)."""
    if "prompt_embeddings" in state and any(k.startswith("visual.") for k in state):
        state = {k: v for k, v in state.items() if k != "prompt_embeddings"}
    if all(k.startswith("visual.") for k in state):
        return {k.removeprefix("visual."): v for k, v in state.items()}
    return state


def _load_image_tower(state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """An RN50 image tower holding ``state``: built on the meta device and the tensors put in place,
    so 38 M parameters are never randomly initialised only to be overwritten."""
    with torch.device("meta"):
        visual = new_clip_image_tower()
    load_strict(visual, _float32(_image_tower_state(state)), source=source, assign=True)
    return visual


def _load_clip_model(open_clip, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The full CLIP RN50 (both towers) holding ``state``, in eval mode.

    Built on the meta device like the image tower. The one tensor a state dict does not carry, the
    text tower's causal attention mask (a non-persistent buffer), is rebuilt as CLIP defines it
    (-inf above the diagonal); should a future open_clip keep anything else off the state dict, the
    model is built the slow way instead (random init, then load).
    """
    with _quiet_logging(), torch.device("meta"):
        model = open_clip.create_model(CLIP_MODEL, pretrained=None, device="meta")
    load_strict(model, _float32(state), source=source, assign=True)
    mask = getattr(model, "attn_mask", None)
    if isinstance(mask, torch.Tensor) and mask.is_meta and mask.is_floating_point():
        model.attn_mask = torch.full(tuple(mask.shape), float("-inf"), dtype=mask.dtype).triu_(1)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        with _quiet_logging():
            model = open_clip.create_model(CLIP_MODEL, pretrained=None)
        load_strict(model, state, source=source)
    return model.eval()


@contextlib.contextmanager
def _quiet_logging():
    """open_clip logs a root-logger warning for every model built without its own weights (we load
    them ourselves right after); the library never prints, so that one is silenced."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _text_embeddings(open_clip, model: nn.Module, prompts: tuple[str, ...]) -> torch.Tensor:
    """Text-tower embeddings of ``prompts`` (one batch), (len(prompts), 1024)."""
    tokenizer = open_clip.get_tokenizer(CLIP_MODEL)
    with torch.no_grad():
        return model.encode_text(tokenizer(list(prompts)))


def load_high_level_encoder(clip_weights: str | Path, clip_visual_weights: str | Path | None = None
                            ) -> HighLevelEncoder:
    """A HighLevelEncoder from local files only, in eval mode.

    ``clip_weights`` is one of: a full CLIP RN50 state dict (open_clip's ``RN50`` / OpenAI key names,
    text tower included: the prompts are embedded now and the text tower dropped), OpenAI's
    TorchScript ``RN50.pt`` (read with torch.jit.load), a HighLevelEncoder state dict saved by this
    project (image tower + prompt embeddings), or an image tower alone (the authors' fine-tuned
    ``high_level_model_weights.pth``: keys ``conv1.weight`` ... ``attnpool.c_proj.bias``), which has
    no prompts and so serves the data-efficient features only. ``clip_visual_weights``, an image
    tower alone, replaces the image tower afterwards: the authors' release is used as
    ``clip_weights=<CLIP RN50>, clip_visual_weights=<their file>``. Every load is strict.
    """
    open_clip = require_open_clip()
    state = _read_clip_file(clip_weights, CLIP_OPTION)
    source = str(clip_weights)
    if "token_embedding.weight" in state and "visual.conv1.weight" in state:  # a full CLIP model
        model = _load_clip_model(open_clip, state, source)
        encoder = HighLevelEncoder(visual=model.visual)
        text = _text_embeddings(open_clip, model, ZERO_SHOT_PROMPTS + PSEUDO_LABEL_PROMPTS)
        encoder.set_prompts(text[:2], text[2:])
    elif "prompt_embeddings" in state:  # saved by this project: image tower + prompts
        tower = {k: v for k, v in state.items() if k.startswith("visual.")}
        encoder = HighLevelEncoder(visual=_load_image_tower(tower, source))
        load_strict(encoder, _float32(state), source=source)  # the whole file, strictly
    else:  # an image tower alone
        encoder = HighLevelEncoder(visual=_load_image_tower(state, source))
    if clip_visual_weights is not None:
        tower = _image_tower_state(_read_clip_file(clip_visual_weights, CLIP_VISUAL_OPTION))
        load_strict(encoder.visual, tower, source=str(clip_visual_weights))
    return encoder.eval()


# -- the metric and the data-efficient features ------------------------------------------------
@dataclass(frozen=True)
class ZeroShotScores:
    """GRepQ_Z's parts for a batch: Q_L and its distance D (float64), Q_H (None in low-level mode)."""

    q_low: torch.Tensor
    distance: torch.Tensor
    q_high: torch.Tensor | None

    @property
    def mode(self) -> str:
        return MODE_BOTH if self.q_high is not None else MODE_LOW_ONLY

    @property
    def total(self) -> torch.Tensor:
        return self.q_low if self.q_high is None else self.q_low + self.q_high.to(self.q_low)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "score": self.total.tolist(), "q_low": self.q_low.tolist(),
                "q_high": None if self.q_high is None else self.q_high.tolist(), "distance": self.distance.tolist()}


class GRepQZeroShot(QualityMetric):
    """GRepQ_Z, a no-reference metric: ``metric(img)`` (N, 3, H, W) in [0, 1] -> (N,) scores, higher = better.

    ``pristine`` is the pristine Gaussian of the LLM features (an MVG, e.g. from the patch store's
    cache) or the pristine patches to fit it from, once, here. It is kept as float64 buffers
    (``pristine_mean``, ``pristine_cov``). Without ``high_level`` the score is Q_L alone (``mode``).
    Images of one batch share a size; patches are cut on the metric's device, ``patch_batch`` at a
    time through the LLM. Scoring runs without autograd and always in eval mode (see ``train``).
    """

    name = "grepq"
    kind = "nr"
    lower_better = False
    half_precision = True  # the encoders; the Gaussian distance is float64 (low_level_quality)

    def __init__(self, low_level: LowLevelEncoder, pristine: MVG | torch.Tensor | np.ndarray,
                 high_level: HighLevelEncoder | None = None, patch_batch: int = 256) -> None:
        super().__init__()
        self.low_level = low_level
        self.high_level = high_level
        if high_level is not None:
            high_level.require_prompts()
        self.patch_batch = int(patch_batch)
        self.eval()
        fitted = pristine if isinstance(pristine, MVG) else pristine_mvg(low_level, pristine, self.patch_batch)
        if tuple(fitted.mean.shape) != (LOW_LEVEL_DIM,):
            raise InvalidInputError(f"the pristine Gaussian has {tuple(fitted.mean.shape)} means, expected "
                                    f"({LOW_LEVEL_DIM},): it was fitted for another feature extractor")
        self.register_buffer("pristine_mean", fitted.mean.to(torch.float64).cpu())
        self.register_buffer("pristine_cov", fitted.cov.to(torch.float64).cpu())

    def train(self, mode: bool = True) -> "GRepQZeroShot":
        """A metric always scores in eval mode (BatchNorm running statistics), whatever ``mode`` says.
        The encoders are the caller's modules: a recipe that scores while training sets its model
        back with ``model.train()`` afterwards."""
        return super().train(False)

    @property
    def mode(self) -> str:
        return MODE_BOTH if self.high_level is not None else MODE_LOW_ONLY

    @property
    def pristine(self) -> MVG:
        return MVG(self.pristine_mean, self.pristine_cov)

    @torch.no_grad()
    def components(self, img: torch.Tensor) -> ZeroShotScores:
        img = _as_float(img).to(self.pristine_mean.device)
        feats = patch_features(self.low_level, img, batch=self.patch_batch)
        q_low, distance = low_level_quality(self.pristine, feats)
        q_high = None
        if self.high_level is not None:
            q_high = self.high_level.zero_shot_quality(self.high_level(img))
        return ZeroShotScores(q_low, distance, q_high)

    def check_size(self, hw: tuple[int, int], name: str = "images") -> None:
        """Refuse, before any scoring, images too small for two 96x96 patches."""
        check_patch_count(int(hw[0]), int(hw[1]))

    def meta(self) -> dict[str, Any]:
        return {"metric": self.name, "mode": self.mode}

    def score(self, img: torch.Tensor) -> torch.Tensor:
        """(N,) float32 GRepQ_Z (or Q_L alone, see ``mode``) of (N, 3, H, W) images in [0, 1]."""
        return self.components(img).total.to(torch.float32)


class GRepQFeatures(nn.Module):
    """The data-efficient features: concat(CLIP attention pool 1024-d, LLM head 128-d) of whole images."""

    def __init__(self, low_level: LowLevelEncoder, high_level: HighLevelEncoder) -> None:
        super().__init__()
        self.low_level = low_level
        self.high_level = high_level
        self.eval()

    def train(self, mode: bool = True) -> "GRepQFeatures":
        """Always eval mode, as GRepQZeroShot."""
        return super().train(False)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] at full resolution -> (N, 1152) float32."""
        images = _as_float(images).to(_device_of(self.low_level))
        return torch.cat([self.high_level(images), self.low_level(images)], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)
