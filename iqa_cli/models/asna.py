"""ASNA: the NTIRE 2021 MACS team's attention-based Siamese-difference full-reference network.

Released as Keras models; rebuilt here so those weights (imported by :mod:`iqa_cli.io.keras`) give
the same numbers. The layers that carry Keras semantics live in :mod:`.keras_layers`.

Network (:class:`AsnaNet`): two images of ``input_size`` (288) squared, BGR, values 0..255 (what
the original fed, scaled inside by (x - 127.5) / 127.5). A shared encoder (a 1x1 colour
convolution, then four Conv+LeakyReLU levels separated by 2x2 max pooling: y1..y4 at 288..36)
runs on each input; the decoder starts from input 2's deepest features (max pool, Conv), and at
each level upsamples (nearest) and concatenates |y_k(1) - y_k(2)| before the next Conv; two strided
convolutions (4, then 2) bring 288 down to 36; Flatten (channels-last), Dense(ReLU), Dropout,
Dense(1, sigmoid or tanh), Dense(1): a *standardised* quality score.

Variants (``AsnaConfig.variant``):
- ``simple``: as above.
- ``bn``: BatchNorm after every LeakyReLU (the original's "bn" runs actually trained ``simple``).
- ``attention``: BatchNorm throughout, then an attention block (Conv3-ReLU, BN, Conv3 -> x3; a
  channel gate sigmoid(Conv1(ReLU(Conv1(GAP x3)))) * x3 and a pixel gate sigmoid(Conv1(ReLU(Conv1
  x3)))) * x3; Conv1x1 over [input, channel-gated, pixel-gated]), residual blocks
  (Conv3-ReLU-Conv3 + skip) and a tanh instead of the sigmoid.
- ``tiled``: each image cut into tiles x tiles tiles (16 of 72x72), fed row by row as a sequence
  to a ConvLSTM2D whose last hidden state goes through the encoder and decoder (72 -> 9). Our
  reading where the reference is silent: the bottleneck max pool rounds up (9 -> 5, Keras
  padding='same') and each upsampled map is cropped at the bottom/right to its skip's size.

Scorer (:class:`AsnaMetric`, the project's calling convention): ``metric(ref, dist)`` on RGB
images in [0, 1] (N, 3, H, W) -> (N,) scores, higher = better (the standardised PIPAL Elo / MOS
the networks regress; ``lower_better`` is False). Which image feeds which network input is the
``order`` option: "ref-dist" (default) puts the reference on input 1 and the distorted image on
input 2, as the original's pretraining and released evaluation scripts do; "dist-ref" is the
PIPAL fine-tuning order (and the paper's figures). Images are scored through ``input_size`` crops:
``crop="grid"`` (default) covers the image with the fewest crops per axis, ceil(L / 288), spread
evenly from the first to the last pixel (overlapping where L is not a multiple of 288), and
averages their scores; ``crop="center"`` scores the one central crop (the TID protocol). An
image smaller than 288 on a side is an error unless ``small`` says how to grow it: "pad" zero-pads
it (black, centred; the original's PieAPP rule) and "resize" scales it (bilinear, antialiased) so
its short side is 288. ``destandardise`` maps scores back to a training set's scale
(:data:`STANDARDISATION`), ``tta`` averages the original's 22 test-time views.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import IDENTITY, tta_augmentations
from ..errors import InvalidInputError
from .base import QualityMetric
from .keras_layers import ConvLSTM2d, SameConv2d, flatten_channels_last, keras_batch_norm2d

VARIANTS = ("simple", "bn", "attention", "tiled")
INPUT_ORDERS = ("ref-dist", "dist-ref")
CROP_RULES = ("grid", "center")
SMALL_RULES = ("error", "pad", "resize")
HEAD_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}


@dataclass(frozen=True)
class Standardisation:
    """How a training set's scores were standardised: z = (y - mean) / std; higher = better for all."""

    mean: float
    std: float
    description: str

    def standardise(self, y):
        return (y - self.mean) / self.std

    def destandardise(self, z):
        return z * self.std + self.mean


# The original's constants, in one place for the training recipe and the scorer.
STANDARDISATION: dict[str, Standardisation] = {
    "pipal": Standardisation(1449.05, 121.35, "PIPAL Elo (fine-tuning; the released models)"),
    "tid": Standardisation(4.47, 1.30, "TID2008/2013 MOS (pretraining)"),
    "pieapp": Standardisation(0.47, 0.26, "PieAPP pairwise preference, used by the original as an absolute score"),
}


@dataclass(frozen=True)
class AsnaConfig:
    """Sizes of one ASNA network. ``filters`` are nf1..nf4 (encoder) then nfs4..nfs9 (decoder:
    bottleneck, three merges, the stride-4 and the stride-2 convolutions)."""

    variant: str = "simple"
    filters: tuple[int, ...] = (8, 16, 32, 64, 64, 64, 32, 16, 8, 16)
    encoder_kernels: tuple[int, ...] = (5, 5, 3, 3)
    colour_kernel: int = 1
    decoder_kernels: tuple[int, ...] = (3, 3, 3, 3)
    strided_kernels: tuple[int, ...] = (3, 3)
    strides: tuple[int, ...] = (4, 2)
    alpha: float = 0.7
    dense: int = 32
    dropout: float = 0.5
    head_activation: str = "sigmoid"
    input_size: int = 288
    # attention variant (widths the reference does not give; an import reads them from the file)
    attention_widths: tuple[int, ...] = (16, 16)
    gate_widths: tuple[int, ...] = (4, 4)
    attention_kernel: int = 3
    residual_channels: int = 8
    residual_blocks: int = 3
    residual_kernel: int = 3
    # tiled variant
    tiles: int = 4
    lstm_filters: int = 32
    lstm_kernel: int = 5
    lstm_recurrent_activation: str = "hard_sigmoid"

    def __post_init__(self):
        lengths = {"filters": 10, "encoder_kernels": 4, "decoder_kernels": 4, "strided_kernels": 2, "strides": 2,
                   "attention_widths": 2, "gate_widths": 2}
        for name, n in lengths.items():
            value = tuple(int(v) for v in getattr(self, name))
            object.__setattr__(self, name, value)
            if len(value) != n or min(value) < 1:
                raise ValueError(f"AsnaConfig.{name} needs {n} positive integers, got {value}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown ASNA variant {self.variant!r}: choose one of {', '.join(VARIANTS)}")
        if self.head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"head_activation must be one of {', '.join(HEAD_ACTIVATIONS)}, "
                             f"got {self.head_activation!r}")
        tiles = self.tiles if self.variant == "tiled" else 1
        if self.input_size % tiles or self.encoder_size % 8:
            raise ValueError(f"input_size {self.input_size} must split into {tiles} tile(s) per side of a multiple "
                             f"of 8 pixels")

    @property
    def batch_norm(self) -> bool:
        return self.variant in ("bn", "attention")

    @property
    def encoder_size(self) -> int:
        """Side of the encoder's input (a tile for the tiled variant)."""
        return self.input_size // self.tiles if self.variant == "tiled" else self.input_size

    @property
    def final_size(self) -> int:
        """Side of the map that is flattened (36 at 288, 9 for the tiled variant)."""
        return math.ceil(math.ceil(self.encoder_size / self.strides[0]) / self.strides[1])

    @property
    def final_channels(self) -> int:
        return self.residual_channels if self.variant == "attention" else self.filters[9]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AsnaConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ASNA config keys: {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# The published configurations: nfs [8,16,32,64, 64,64,32,16, 8, 16 or 32], kernels [5,5,3,3],
# dense 32, LeakyReLU 0.7 or 0.5. Which runs paired which nfs9 with which alpha is not in the
# reference: these pairings are ours, and an import always takes the file's own sizes.
PRESETS: dict[str, AsnaConfig] = {
    "simple": AsnaConfig(variant="simple"),
    "bn": AsnaConfig(variant="bn"),
    "attention": AsnaConfig(variant="attention", filters=(8, 16, 32, 64, 64, 64, 32, 16, 32, 32), alpha=0.5,
                            head_activation="tanh", attention_widths=(32, 32), gate_widths=(8, 8)),
    "tiled": AsnaConfig(variant="tiled"),
}


def asna_config(preset: str = "simple", **overrides) -> AsnaConfig:
    """A published configuration by name, with any field overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown ASNA preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return AsnaConfig(**{**PRESETS[preset].to_dict(), **overrides})


# -- network -------------------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """Conv ('same') -> LeakyReLU(alpha) [-> BatchNorm]: the unit of the encoder and decoder."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, alpha: float, batch_norm: bool,
                 stride: int = 1):
        super().__init__()
        self.alpha = alpha
        self.conv = SameConv2d(in_channels, out_channels, kernel, stride=stride)
        self.norm = keras_batch_norm2d(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv(x), self.alpha)
        return self.norm(x) if self.norm is not None else x


def to_tile_sequence(x: torch.Tensor, tiles: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, tiles*tiles, C, H/tiles, W/tiles), tiles in row-major order."""
    n, c, h, w = x.shape
    return (x.reshape(n, c, tiles, h // tiles, tiles, w // tiles).permute(0, 2, 4, 1, 3, 5)
            .reshape(n, tiles * tiles, c, h // tiles, w // tiles))


class AsnaEncoder(nn.Module):
    """The shared Siamese encoder: scaled image -> [y1, y2, y3, y4]."""

    def __init__(self, config: AsnaConfig):
        super().__init__()
        self.tiles = config.tiles if config.variant == "tiled" else 1
        self.lstm = (ConvLSTM2d(3, config.lstm_filters, config.lstm_kernel, config.lstm_recurrent_activation)
                     if config.variant == "tiled" else None)
        self.colour = SameConv2d(config.lstm_filters if self.lstm is not None else 3, 3, config.colour_kernel)
        widths = config.filters[:4]
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, k, config.alpha, config.batch_norm)
            for c_in, c_out, k in zip((3, *widths[:3]), widths, config.encoder_kernels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.lstm is not None:
            x = self.lstm(to_tile_sequence(x, self.tiles))
        x = self.colour(x)
        features = []
        for level, block in enumerate(self.blocks):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            features.append(x)
        return features


class AttentionBlock(nn.Module):
    """Channel and pixel attention over x3 = Conv3(BN(ReLU(Conv3(x)))), fused by a 1x1 convolution
    over [x, channel-gated x3, pixel-gated x3] (in that channel order)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], gate_widths: tuple[int, ...], kernel: int,
                 out_channels: int):
        super().__init__()
        hidden, channels = widths
        self.conv_a = SameConv2d(in_channels, hidden, kernel)
        self.norm = keras_batch_norm2d(hidden)
        self.conv_b = SameConv2d(hidden, channels, kernel)
        self.channel_gate = nn.ModuleList([nn.Conv2d(channels, gate_widths[0], 1),
                                           nn.Conv2d(gate_widths[0], channels, 1)])
        self.pixel_gate = nn.ModuleList([nn.Conv2d(channels, gate_widths[1], 1),
                                         nn.Conv2d(gate_widths[1], channels, 1)])
        self.fuse = nn.Conv2d(in_channels + 2 * channels, out_channels, 1)

    @staticmethod
    def _gate(convs: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(convs[1](F.relu(convs[0](x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x3 = self.conv_b(self.norm(F.relu(self.conv_a(x))))
        channel = self._gate(self.channel_gate, x3.mean(dim=(2, 3), keepdim=True)) * x3
        pixel = self._gate(self.pixel_gate, x3) * x3
        return self.fuse(torch.cat((x, channel, pixel), dim=1))


class ResidualBlock(nn.Module):
    """x + Conv(ReLU(Conv(x)))."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv_a = SameConv2d(channels, channels, kernel)
        self.conv_b = SameConv2d(channels, channels, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_b(F.relu(self.conv_a(x)))


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest x2 upsampling, cropped at the bottom/right to ``like``'s size (only odd sizes crop)."""
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    return x[..., :like.shape[-2], :like.shape[-1]]


class AsnaDecoder(nn.Module):
    """The Siamese-difference decoder and the regression head: (features 1, features 2) -> (N,)."""

    def __init__(self, config: AsnaConfig):
        super().__init__()
        f, enc, bn, a = config.filters, config.filters[:4], config.batch_norm, config.alpha
        self.head_activation = config.head_activation
        dk, sk = config.decoder_kernels, config.strided_kernels
        self.bottleneck = ConvBlock(enc[3], f[4], dk[0], a, bn)
        self.merges = nn.ModuleList([ConvBlock(f[4] + enc[3], f[5], dk[1], a, bn),
                                     ConvBlock(f[5] + enc[2], f[6], dk[2], a, bn),
                                     ConvBlock(f[6] + enc[1], f[7], dk[3], a, bn)])
        self.strided = nn.ModuleList([ConvBlock(f[7] + enc[0], f[8], sk[0], a, bn, stride=config.strides[0]),
                                      ConvBlock(f[8], f[9], sk[1], a, bn, stride=config.strides[1])])
        if config.variant == "attention":
            self.attention = AttentionBlock(f[9], config.attention_widths, config.gate_widths, config.attention_kernel,
                                            config.residual_channels)
            self.residual = nn.ModuleList(ResidualBlock(config.residual_channels, config.residual_kernel)
                                          for _ in range(config.residual_blocks))
        else:
            self.attention, self.residual = None, nn.ModuleList()
        self.hidden = nn.Linear(config.final_size ** 2 * config.final_channels, config.dense)
        self.dropout = nn.Dropout(config.dropout)
        self.squash = nn.Linear(config.dense, 1)
        self.affine = nn.Linear(1, 1)

    def forward(self, first: list[torch.Tensor], second: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottleneck(F.max_pool2d(second[3], 2, ceil_mode=True))
        for block, level in zip(self.merges, (3, 2, 1)):
            x = block(torch.cat((upsample_to(x, first[level]), (first[level] - second[level]).abs()), dim=1))
        x = torch.cat((upsample_to(x, first[0]), (first[0] - second[0]).abs()), dim=1)
        for block in self.strided:
            x = block(x)
        if self.attention is not None:
            x = self.attention(x)
        for block in self.residual:
            x = block(x)
        x = self.dropout(F.relu(self.hidden(flatten_channels_last(x))))
        x = HEAD_ACTIVATIONS[self.head_activation](self.squash(x))
        return self.affine(x).squeeze(1)


def rgb_to_network(rgb: torch.Tensor) -> torch.Tensor:
    """RGB images in [0, 1] (N, 3, H, W) -> what the network takes: BGR with values 0..255 (not rounded)."""
    return rgb.flip(1) * 255.0


def scale_input(bgr255: torch.Tensor) -> torch.Tensor:
    """The original's in-model scaling of 0..255 values to [-1, 1]."""
    return (bgr255 - 127.5) / 127.5


class AsnaNet(nn.Module):
    """ASNA on the original's inputs: two BGR images with values 0..255, (N, 3, S, S) each, S =
    ``config.input_size`` -> (N,) standardised scores. ``first``/``second`` are the network's
    inputs 1 and 2 (the decoder starts from input 2's deepest features)."""

    def __init__(self, config: AsnaConfig | None = None):
        super().__init__()
        self.config = config or AsnaConfig()
        self.encoder = AsnaEncoder(self.config)
        self.decoder = AsnaDecoder(self.config)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        size = self.config.input_size
        for name, x in (("input 1", first), ("input 2", second)):
            if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (size, size):
                raise InvalidInputError(f"ASNA {name} has shape {tuple(x.shape)}: expected (N, 3, {size}, {size}) "
                                        f"(score other sizes through AsnaMetric, which crops)")
        return self.decoder(self.encoder(scale_input(first)), self.encoder(scale_input(second)))


# -- scoring rules -------------------------------------------------------------------------------
def tile_origins(length: int, size: int) -> list[int]:
    """Start offsets of the fewest ``size`` windows covering ``length``: ceil(length / size) of
    them, spread evenly from 0 to length - size (rounded), so they overlap where length is not a
    multiple of size. Needs length >= size."""
    if length < size:
        raise ValueError(f"length {length} < window {size}")
    count = -(-length // size)
    if count == 1:
        return [0]
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def crop_origins(height: int, width: int, size: int, crop: str = "grid") -> list[tuple[int, int]]:
    """(y, x) of each crop the scorer averages: the covering grid, or the one central crop."""
    if crop == "center":
        return [((height - size) // 2, (width - size) // 2)]
    return [(y, x) for y in tile_origins(height, size) for x in tile_origins(width, size)]


def fit_to_size(images: torch.Tensor, size: int, small: str) -> torch.Tensor:
    """Grow images smaller than ``size`` on a side by the ``small`` rule (see the module docstring)."""
    h, w = images.shape[-2:]
    if h >= size and w >= size:
        return images
    if small == "pad":
        dy, dx = max(size - h, 0), max(size - w, 0)
        return F.pad(images, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
    if small == "resize":
        scale = size / min(h, w)
        out_hw = (max(size, round(h * scale)), max(size, round(w * scale)))
        return F.interpolate(images, size=out_hw, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    raise InvalidInputError(f"images are {w}x{h} but ASNA scores {size}x{size} crops: choose a rule for smaller "
                            f"images (small='pad' zero-pads to {size}, small='resize' scales the short side to {size})")


@dataclass(frozen=True)
class ScoringOptions:
    """How :class:`AsnaMetric` turns any image pair into network inputs and a score."""

    order: str = "ref-dist"
    crop: str = "grid"
    small: str = "error"
    destandardise: str | None = None
    tta: bool = False

    def __post_init__(self):
        for name, allowed in (("order", INPUT_ORDERS), ("crop", CROP_RULES), ("small", SMALL_RULES),
                              ("destandardise", (None, *STANDARDISATION))):
            if getattr(self, name) not in allowed:
                shown = ", ".join(str(a) for a in allowed)
                raise InvalidInputError(f"ASNA {name}={getattr(self, name)!r} is not one of: {shown}")

    def to_dict(self) -> dict:
        return asdict(self)


class AsnaMetric(QualityMetric):
    """ASNA as a full-reference metric: ``metric(ref, dist)``, RGB [0, 1] (N, 3, H, W) -> (N,),
    higher = better (standardised Elo / MOS, or the training set's scale with ``destandardise``).
    Options (:class:`ScoringOptions`) are described in the module docstring; always in eval mode."""

    name = "asna"
    kind = "fr"
    lower_better = False
    half_precision = True

    def __init__(self, net: AsnaNet, options: ScoringOptions | None = None, **option_values):
        super().__init__()
        if options is not None and option_values:
            raise TypeError("give AsnaMetric either a ScoringOptions or option keywords, not both")
        self.net = net
        self.options = options or ScoringOptions(**option_values)
        self.views = tta_augmentations() if self.options.tta else (IDENTITY,)
        self.train(False)

    def train(self, mode: bool = True) -> "AsnaMetric":
        return super().train(False)  # a scorer: dropout off, BatchNorm on its running statistics

    def check_size(self, hw: tuple[int, int], name: str = "images") -> None:
        """Images smaller than the crop need a ``small`` rule (checked before any image is decoded)."""
        size = self.net.config.input_size
        if min(hw) < size and self.options.small == "error":
            fit_to_size(torch.empty(0, 3, *hw), size, "error")

    def meta(self) -> dict:
        return {"metric": self.name, "variant": self.net.config.variant, **self.options.to_dict()}

    def _score_crops(self, ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        ref_bgr, dist_bgr = rgb_to_network(ref), rgb_to_network(dist)
        if self.options.order == "ref-dist":
            return self.net(ref_bgr, dist_bgr)
        return self.net(dist_bgr, ref_bgr)

    def score(self, ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        if ref.ndim != 4 or ref.shape[1] != 3 or ref.shape != dist.shape:
            raise InvalidInputError(f"ASNA needs two (N, 3, H, W) batches of the same shape, got reference "
                                    f"{tuple(ref.shape)} and distorted {tuple(dist.shape)}")
        size = self.net.config.input_size
        ref, dist = fit_to_size(ref, size, self.options.small), fit_to_size(dist, size, self.options.small)
        origins = crop_origins(ref.shape[-2], ref.shape[-1], size, self.options.crop)
        total = ref.new_zeros(ref.shape[0])
        for y, x in origins:
            ref_crop, dist_crop = ref[..., y:y + size, x:x + size], dist[..., y:y + size, x:x + size]
            for view in self.views:
                total = total + self._score_crops(view.apply(ref_crop), view.apply(dist_crop))
        score = total / (len(origins) * len(self.views))
        if self.options.destandardise is not None:
            score = STANDARDISATION[self.options.destandardise].destandardise(score)
        return score
