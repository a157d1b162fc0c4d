"""The perceptual distance shared by LPIPS, its baseline and Graphics-LPIPS.

d(x0, x1) = sum_l mean_hw head_l((n(f_l(x0)) - n(f_l(x1)))^2), with n() the unit-normalisation
along channels. Splitting ``features`` from ``distance_from_features`` lets the engine compute
a reference patch's features once and reuse them for every distorted version of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .backbones import BACKBONES, Backbone, BackboneSpec
from .base import QualityMetric
from .heads import make_head

VERSIONS = ("0.1", "0.0")
EPS = 1e-10
# Per-channel input scaling of LPIPS v0.1 (applied to inputs already mapped to [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def unit_normalize(feature: torch.Tensor) -> torch.Tensor:
    if feature.dtype in (torch.float16, torch.bfloat16):
        # 16-bit taps (autocast) are normalised and differenced in fp32: squares of differences of
        # unit vectors underflow fp16 and keep only 3 digits in bf16. Costs one copy per tap.
        feature = feature.float()
    # vector_norm is one fused kernel: ~1.5x faster than sqrt(sum(f*f)) on CPU, same values to 1e-7.
    norm = torch.linalg.vector_norm(feature, dim=1, keepdim=True)
    if torch.is_grad_enabled():
        return feature / (norm + EPS)
    return feature.div_(norm.add_(EPS))  # no autograd: reuse the tap's memory


def squared_difference(f0: torch.Tensor, f1: torch.Tensor, reuse_f1: bool = False) -> torch.Tensor:
    """(f0 - f1)^2; with reuse_f1 (and no autograd) written into f1's memory instead of a new tensor."""
    if torch.is_grad_enabled():
        diff = f0 - f1
        return diff * diff
    diff = f1.sub_(f0) if reuse_f1 else torch.sub(f0, f1)  # the sign vanishes in the square
    return diff.pow_(2)


def averaged_sum(maps: list[torch.Tensor]) -> torch.Tensor:
    """(N,) distance: each layer's map averaged over its own grid, summed over layers."""
    return sum(m.mean(dim=(2, 3)) for m in maps).flatten()


def upsampled_sum(maps: list[torch.Tensor], out_hw: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) spatial distance: layer maps upsampled to the input size, then summed."""
    return sum(F.interpolate(m, size=tuple(out_hw), mode="bilinear", align_corners=False) for m in maps)


def nets_accepting(side: int) -> list[str]:
    """The nets whose deepest tap is still at least 1x1 for images of this (smallest) side."""
    return [name for name, spec in BACKBONES.items() if spec.min_size <= side]


def check_input_size(spec: BackboneSpec, hw: tuple[int, int], name: str = "images") -> None:
    if min(hw) < spec.min_size:
        fits = nets_accepting(min(hw))
        hint = "use larger images" + (f", or --net {' / '.join(fits)}" if fits else "")
        raise InvalidInputError(f"{name}: {hw[1]}x{hw[0]} pixels, but net '{spec.name}' needs at least "
                                f"{spec.min_size}x{spec.min_size} pixels ({hint})")


class PerceptualDistance(QualityMetric):
    """LPIPS-family distance on images in [0, 1]: ``metric(ref, dist)`` (symmetric), 0 = identical.

    head_type: "lpips" (linear heads), "graphics" (MLP heads) or "none" (the paper's baseline:
    squared normalised differences summed over channels). With ``spatial`` a call returns
    (N, 1, H, W) distance maps instead of (N,) distances.
    """

    kind = "fr"
    lower_better = True
    makes_maps = True  # score_with_maps gives per-pixel maps (score-pair --spatial-map)
    patch_score_cap = 1.0  # Graphics-LPIPS: a stimulus scores the mean of min(d, 1) over its patches
    half_precision = True

    def __init__(self, spec: BackboneSpec, version: str = "0.1", head_type: str = "lpips", spatial: bool = False,
                 backbone: Backbone | None = None):
        super().__init__()
        if version not in VERSIONS:
            raise ValueError(f"unknown LPIPS version {version!r}")
        self.spec = spec
        self.version = version
        self.head_type = head_type
        self.spatial = spatial
        self.name = {"lpips": "lpips", "graphics": "graphics-lpips", "none": "baseline"}[head_type]
        self.net = backbone if backbone is not None else Backbone(spec)
        if head_type != "none":
            for k, channels in enumerate(spec.channels):
                setattr(self, f"lin{k}", make_head(head_type, channels))
        # Input scaling as one multiply-add, x * gain + offset: [0,1] -> [-1,1], then for v0.1 the
        # per-channel (x - shift) / scale. Non-persistent: constants of the method, not learned state.
        if version == "0.0":
            gain, offset = torch.full((1, 3, 1, 1), 2.0), torch.full((1, 3, 1, 1), -1.0)
        else:
            shift, scale = torch.tensor(SHIFT).view(1, 3, 1, 1), torch.tensor(SCALE).view(1, 3, 1, 1)
            gain, offset = 2 / scale, (-1 - shift) / scale
        self.register_buffer("gain", gain, persistent=False)
        self.register_buffer("gain_uint8", gain / 255, persistent=False)  # folds in uint8's /255
        self.register_buffer("offset", offset, persistent=False)
        self.net.to(memory_format=torch.channels_last)  # matches backbone_input(); loading weights keeps it
        self.freeze_backbone()

    # -- parts ---------------------------------------------------------------------------------
    def heads_module(self) -> nn.Module:
        """A view holding only the heads, with the released files' key names (``lin{k}.model.*``)."""
        view = nn.Module()
        if self.head_type != "none":
            for k in range(len(self.spec.channels)):
                view.add_module(f"lin{k}", getattr(self, f"lin{k}"))
        return view

    def freeze_backbone(self, frozen: bool = True) -> None:
        for p in self.net.parameters():
            p.requires_grad_(not frozen)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Floats in [0,1], or uint8 in 0..255, -> the backbone's input scale, in one multiply-add
        (for uint8 it also does the cast and the /255: no float copy of the batch is made first)."""
        return torch.addcmul(self.offset, images, self.gain_uint8 if images.dtype == torch.uint8 else self.gain)

    def backbone_input(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled input in channels-last layout: oneDNN and cuDNN convolutions run 1.1-1.5x faster
        on it (measured on alex/vgg/squeeze at 64x64, see benchmarks/)."""
        return self.preprocess(images).contiguous(memory_format=torch.channels_last)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised feature taps of (N, 3, H, W) images: floats in [0, 1] or uint8."""
        return [unit_normalize(t) for t in self.net(self.backbone_input(images))]

    def layer_maps(self, feats0: list[torch.Tensor], feats1: list[torch.Tensor], reuse_feats1: bool = False
                   ) -> list[torch.Tensor]:
        """One (N, 1, h_l, w_l) distance map per tap."""
        maps = []
        for k, (f0, f1) in enumerate(zip(feats0, feats1)):
            diff = squared_difference(f0, f1, reuse_feats1)
            if self.head_type == "none":
                maps.append(diff.sum(dim=1, keepdim=True))
            else:
                maps.append(getattr(self, f"lin{k}")(diff))
        return maps

    def distance_from_features(self, feats0: list[torch.Tensor], feats1: list[torch.Tensor],
                               out_hw: tuple[int, int] | None = None, reuse_feats1: bool = False) -> torch.Tensor:
        """(N,) distances, or (N, 1, H, W) maps when the metric is spatial (needs out_hw).

        reuse_feats1: feats1 is scratch the caller is done with; without autograd the differences
        are written into it, which saves a large allocation per layer.

        Runs in fp32 under autocast too: the heads are tiny next to the backbone, and 16-bit sums of
        small squared differences would cost the distance its digits."""
        with torch.autocast(feats0[0].device.type, enabled=False):
            return self._distance(feats0, feats1, out_hw, reuse_feats1)

    def _distance(self, feats0, feats1, out_hw, reuse_feats1) -> torch.Tensor:
        if self.spatial:
            if out_hw is None:
                raise ValueError("spatial distances need the input size")
            return upsampled_sum(self.layer_maps(feats0, feats1, reuse_feats1), out_hw)
        if self.head_type == "lpips" and not self.training:
            # A linear head commutes with the spatial mean: w . mean_hw(diff) == mean_hw(w . diff),
            # so reduce first and skip a full-resolution 1x1 convolution per layer.
            total = 0
            for k, (f0, f1) in enumerate(zip(feats0, feats1)):
                diff = squared_difference(f0, f1, reuse_feats1)
                weight = getattr(self, f"lin{k}").model[1].weight.flatten()
                total = total + diff.mean(dim=(2, 3)) @ weight
            return total
        return averaged_sum(self.layer_maps(feats0, feats1, reuse_feats1))

    @property
    def metric_name(self) -> str:  # the name outputs used before the registry had one for every metric
        return self.name

    def meta(self) -> dict:
        return {"metric": self.name, "net": self.spec.name, "version": None if self.head_type == "none" else self.version}

    def describe(self) -> str:
        return f"{self.name} ({self.spec.name}{'' if self.head_type == 'none' else ', v' + self.version})"

    def check_size(self, hw: tuple[int, int], name: str = "images") -> None:
        check_input_size(self.spec, hw, name)

    def score(self, ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        check_input_size(self.spec, tuple(ref.shape[2:]))
        if ref.shape[0] == 0:
            return ref.new_zeros((0, 1, *ref.shape[2:]) if self.spatial else (0,))
        # One backbone pass over both images: fewer, larger kernels than two passes.
        feats = self.features(torch.cat([ref, dist]))
        n = ref.shape[0]
        return self.distance_from_features([f[:n] for f in feats], [f[n:] for f in feats],
                                           out_hw=tuple(ref.shape[2:]), reuse_feats1=True)

    def score_with_maps(self, ref: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) distances and their (N, H, W) per-pixel maps from one backbone pass."""
        check_input_size(self.spec, tuple(ref.shape[2:]))
        feats = self.features(torch.cat([ref, dist]))
        n = ref.shape[0]
        with torch.autocast(ref.device.type, enabled=False):  # the heads in fp32, as distance_from_features
            maps = self.layer_maps([f[:n] for f in feats], [f[n:] for f in feats])
        return averaged_sum(maps), upsampled_sum(maps, tuple(ref.shape[2:])).squeeze(1)
