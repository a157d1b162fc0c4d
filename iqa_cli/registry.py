"""The one table of quality models: name -> spec, and the one function that builds any of them.

A spec says what a metric is (full- or no-reference, which way its scores point, their range, how
it treats colour), which weights it needs and where they come from, and how to build it. Every
command that takes ``--metric`` and every Python caller goes through ``create_metric``:

    metric = create_metric("ssim")                                   # classic, no weights
    metric = create_metric("lpips", net="vgg", device="cuda")        # bundled heads + ImageNet backbone
    metric = create_metric(checkpoint="latest_net_.pth")             # the metric the checkpoint holds
    d = metric(ref, dist)                                            # (N,) scores; see models/base.py
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import InvalidInputError, UnknownMetricError, WeightsError
from .models.backbones import BACKBONES, NET_ALIASES


# ---------------------------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightsNeed:
    """One set of weights a metric needs, and where it comes from.

    source: "bundled" (inside the package), "torchvision" (the ImageNet cache, downloaded when
    online), "user" (a file the user passes with ``option``), "none" (nothing needed)."""

    what: str
    source: str
    file: str = ""  # bundled resource, torchvision file name, or the option naming the user's file
    optional: bool = False

    def status(self) -> dict[str, str]:
        """{"what", "status", "file"}: bundled / cached / missing / needs OPTION."""
        if self.source == "bundled":
            from importlib import resources

            present = (resources.files("iqa_cli") / self.file).is_file()
            state = "bundled" if present else "missing"
        elif self.source == "torchvision":
            from .weights import torchvision_cache_dir

            state = "cached" if (torchvision_cache_dir() / self.file).is_file() else "missing"
        else:
            state = f"needs {self.file}" + (" (optional)" if self.optional else "")
        return {"what": self.what, "status": state, "file": Path(self.file).name if self.source != "user" else ""}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "fr" (metric(ref, dist)) or "nr" (metric(img))
    lower_better: bool
    score_range: tuple[float, float]
    colour: str  # what the metric computes on
    description: str
    factory: Callable[..., Any] = field(repr=False, compare=False)
    weights: tuple[WeightsNeed, ...] = ()
    aliases: tuple[str, ...] = ()

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options ``create_metric`` accepts for this metric (besides the common ones)."""
        return tuple(p for p in inspect.signature(self.factory).parameters if p != "name")

    def weights_status(self) -> list[dict[str, str]]:
        return [w.status() for w in self.weights]

    def to_dict(self, weights: bool = True) -> dict[str, Any]:
        out = {"name": self.name, "kind": self.kind, "lower_better": self.lower_better,
               "range": [_finite_or_none(v) for v in self.score_range], "colour": self.colour,
               "description": self.description, "options": list(self.options), "aliases": list(self.aliases)}
        if weights:
            out["weights"] = self.weights_status()
        return out


def _finite_or_none(x: float) -> float | None:
    return None if x in (float("inf"), float("-inf")) else x


# ---------------------------------------------------------------------------------------------
# factories
# ---------------------------------------------------------------------------------------------

def canonical_net(net: str) -> str:
    name = NET_ALIASES.get(net.lower(), net.lower())
    if name not in BACKBONES:
        raise UnknownMetricError(f"unknown network {net!r}: choose one of {', '.join(BACKBONES)}")
    return name


def _lpips_family(name: str, net: str | None = None, version: str | None = None, spatial: bool = False,
                  checkpoint: str | Path | None = None, backbone_weights: str | Path | None = None):
    """LPIPS, Graphics-LPIPS or the baseline; heads from the bundle or a checkpoint.

    net defaults to the checkpoint's network, else alex; version defaults to 0.1. backbone_weights:
    'imagenet' (torchvision cache, the default), 'random', or a file; ignored when the checkpoint
    carries its own backbone (original Graphics-LPIPS files do)."""
    from .models.backbones import Backbone
    from .models.lpips import VERSIONS, PerceptualDistance
    from .weights import bundled_head_state, load_backbone_weights, load_strict, read_checkpoint

    head_type = {"lpips": "lpips", "graphics-lpips": "graphics", "baseline": "none"}[name]
    if version is not None and version not in VERSIONS:
        raise UnknownMetricError(f"unknown LPIPS version {version!r}: choose one of {', '.join(VERSIONS)}")
    backbone_weights = backbone_weights or "imagenet"
    ckpt = read_checkpoint(checkpoint) if checkpoint is not None else None
    if name == "graphics-lpips" and ckpt is None:
        raise WeightsError("graphics-lpips has no bundled weights: pass --checkpoint PATH (an original "
                           "Graphics-LPIPS .pth or one written by 'iqa train')")
    if ckpt is not None:
        if head_type == "none":
            raise UnknownMetricError("the baseline metric has no heads: drop --checkpoint or use --metric lpips")
        if ckpt.head_type != head_type:
            wanted = "graphics-lpips" if ckpt.head_type == "graphics" else "lpips"
            raise WeightsError(f"{ckpt.path} holds {ckpt.head_type} heads but metric {name!r} was asked for: "
                               f"use --metric {wanted}")
    net_name = canonical_net(net or (ckpt.net if ckpt and ckpt.net != "unknown" else "alex"))
    version = version or (ckpt.version if ckpt else "0.1")
    spec = BACKBONES[net_name]
    model = PerceptualDistance(spec, version=version, head_type=head_type, spatial=spatial, backbone=Backbone(spec))
    if ckpt is not None:
        try:
            load_strict(model.heads_module(), ckpt.head_state, source=f"{ckpt.path} (for net '{ckpt.net}')")
        except WeightsError as exc:
            if ckpt.net in ("unknown", net_name):
                raise
            raise WeightsError(f"{ckpt.path} holds heads for net '{ckpt.net}' but net '{net_name}' was asked for: "
                               f"drop --net or pass --net {ckpt.net} ({exc})") from None
        if ckpt.backbone_state is not None:
            load_strict(model.net, ckpt.backbone_state, source=f"{ckpt.path} backbone")
        else:
            load_backbone_weights(model.net, spec, backbone_weights)
    else:
        if head_type == "lpips":
            load_strict(model.heads_module(), bundled_head_state(net_name, version),
                        source=f"bundled LPIPS v{version} {net_name} heads")
        load_backbone_weights(model.net, spec, backbone_weights)
    return model


def _lpips(net=None, version=None, spatial=False, checkpoint=None, backbone_weights=None):
    return _lpips_family("lpips", net, version, spatial, checkpoint, backbone_weights)


def _graphics_lpips(net=None, spatial=False, checkpoint=None, backbone_weights=None):
    return _lpips_family("graphics-lpips", net, None, spatial, checkpoint, backbone_weights)


def _baseline(net=None, version=None, spatial=False, backbone_weights=None):
    return _lpips_family("baseline", net, version, spatial, None, backbone_weights)


def _psnr(colour: str = "luma"):
    from .models.classic import PSNR

    return PSNR(colour=colour)


def _classic(cls_name: str):
    def factory():
        from .models import classic

        return getattr(classic, cls_name)()

    return factory


def _fsim(chromatic: bool = True):
    from .models.classic import FSIM

    return FSIM(chromatic=chromatic)


def _graphiqa(checkpoint=None, crops: int = 25, seed: int = 0, embed_size: int | None = None,
              backbone_weights=None):
    """GraphIQA from a checkpoint (an original Reg_Domain state dict or one written by iqa train)."""
    from .models.graphiqa import GraphIQAScorer
    from .weights import load_graphiqa

    if checkpoint is None:
        raise WeightsError("graphiqa has no bundled weights: pass --checkpoint PATH (a GraphIQA checkpoint from "
                           "'iqa train --method graphiqa' or the original code)")
    model = load_graphiqa(checkpoint, backbone_weights=backbone_weights or "imagenet", embed_size=embed_size)
    return GraphIQAScorer(model, crops=crops, seed=seed)


def _asna(checkpoint=None, order: str = "ref-dist", crop: str = "grid", small: str = "error",
          destandardise: str | None = None, tta: bool = False):
    """The NTIRE 2021 MACS network from a native checkpoint or a released Keras .hdf5 model."""
    from .models.asna import AsnaMetric
    from .weights import load_asna

    if checkpoint is None:
        raise WeightsError("asna has no bundled weights: pass --checkpoint PATH (a Keras .hdf5 model of the MACS "
                           "release, or a checkpoint from 'iqa train --method asna')")
    return AsnaMetric(load_asna(checkpoint), order=order, crop=crop, small=small, destandardise=destandardise,
                      tta=tta)


def _niqe(pristine=None, grey: str = "rgb2gray"):
    """NIQE with the official pristine model, or ``pristine``: a model .npz (official layout) or a
    pristine store built by 'iqa patchify --pristine' (its Gaussian is fitted once and cached there)."""
    from .models.niqe import NIQE

    if pristine is not None and Path(pristine).suffix.lower() in (".h5", ".hdf5"):
        from .pristine import fit_pristine_model

        return NIQE(pristine=fit_pristine_model(pristine, grey=grey), grey=grey)
    return NIQE(pristine=pristine, grey=grey)


def _grepq(low_level_weights=None, pristine=None, clip_weights=None, clip_visual_weights=None,
           patch_batch: int = 256):
    """GRepQ zero-shot: the low-level encoder's features against a pristine store's Gaussian, plus
    the CLIP part when CLIP weights are given (else low-level only, which the result says)."""
    from .models.grepq import GRepQZeroShot, load_high_level_encoder, load_low_level_encoder
    from .pristine import grepq_pristine_mvg

    if low_level_weights is None:
        raise WeightsError("grepq needs its low-level encoder: pass --low-level-weights PATH (the authors' .tar or "
                           "a checkpoint from 'iqa train --method grepq-low')")
    if pristine is None:
        raise WeightsError("grepq needs pristine patches: pass --pristine STORE.h5 (build one with "
                           "'iqa patchify --pristine IMAGES/ --out STORE.h5')")
    low = load_low_level_encoder(low_level_weights)
    high = load_high_level_encoder(clip_weights, clip_visual_weights) if clip_weights is not None else None
    if high is None and clip_visual_weights is not None:
        raise InvalidInputError("--clip-visual-weights replaces the image tower of --clip-weights: give both")
    return GRepQZeroShot(low, grepq_pristine_mvg(pristine, low, patch_batch), high, patch_batch=patch_batch)


def _grepq_ridge(checkpoint=None, low_level_weights=None, clip_weights=None, clip_visual_weights=None):
    """GRepQ's data-efficient model: the ridge.pth of 'iqa train --method grepq-ridge' with the
    encoders it records (or the files given; their weights must hash as when it was fitted)."""
    from .models.grepq_ridge import load_grepq_ridge

    if checkpoint is None:
        raise WeightsError("grepq-ridge needs its fitted model: pass --checkpoint ridge.pth (written by 'iqa train "
                           "--method grepq-ridge')")
    return load_grepq_ridge(checkpoint, low_level_weights=low_level_weights, clip_weights=clip_weights,
                            clip_visual_weights=clip_visual_weights)


def _imagenet_file(net: str) -> str:
    """torchvision's cache file name of a backbone (read off its weights enum, no download)."""
    from urllib.parse import urlparse

    from .weights import torchvision_weights_enum

    return Path(urlparse(torchvision_weights_enum(BACKBONES[net]).url).path).name


def _lpips_weights(heads: str) -> tuple[WeightsNeed, ...]:
    needs = []
    if heads == "bundled":
        needs.append(WeightsNeed("LPIPS heads", "bundled", "heads/v0.1/alex.pth"))
    elif heads == "checkpoint":
        needs.append(WeightsNeed("Graphics-LPIPS heads", "user", "--checkpoint"))
    return (*needs, *(WeightsNeed(f"ImageNet {net} backbone", "torchvision", _imagenet_file(net),
                                  optional=net != "alex") for net in BACKBONES))


NONE_NEEDED: tuple[WeightsNeed, ...] = ()
INF = float("inf")

SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("lpips", "fr", True, (0.0, INF), "RGB",
               "LPIPS (Zhang et al. 2018): learned linear heads on alex/vgg/squeeze features", _lpips,
               weights=_lpips_weights("bundled")),
    MetricSpec("graphics-lpips", "fr", True, (0.0, INF), "RGB",
               "Graphics-LPIPS (Nehme et al. 2022): MLP heads on AlexNet, weights from --checkpoint",
               _graphics_lpips, weights=_lpips_weights("checkpoint"), aliases=("graphics_lpips",)),
    MetricSpec("baseline", "fr", True, (0.0, INF), "RGB",
               "LPIPS without heads: squared normalised feature differences summed over channels", _baseline,
               weights=_lpips_weights("none")),
    MetricSpec("psnr", "fr", False, (0.0, 80.0), "luma (0.299/0.587/0.114); colour='rgb' for all channels",
               "peak signal-to-noise ratio in dB (identical images: 80, piq's MSE floor)", _psnr),
    MetricSpec("ssim", "fr", False, (-1.0, 1.0), "luma",
               "SSIM (Wang et al. 2004) as the reference ssim.m: 11x11 Gaussian, K 0.01/0.03, downsampling",
               _classic("SSIM")),
    MetricSpec("ms-ssim", "fr", False, (0.0, 1.0), "luma",
               "multi-scale SSIM (Wang et al. 2003), five scales; images of at least 161x161",
               _classic("MSSSIM"), aliases=("msssim", "ms_ssim")),
    MetricSpec("fsim", "fr", False, (0.0, 1.0), "RGB (FSIMc); chromatic=False: luma",
               "feature similarity (Zhang et al. 2011): phase congruency and gradient magnitude", _fsim,
               aliases=("fsimc",)),
    MetricSpec("gmsd", "fr", True, (0.0, INF), "luma",
               "gradient magnitude similarity deviation (Xue et al. 2014)", _classic("GMSD")),
    MetricSpec("vif", "fr", False, (0.0, INF), "luma",
               "visual information fidelity, pixel domain (Sheikh and Bovik 2006); 1 for a copy",
               _classic("VIF"), aliases=("vifp", "vif-p")),
    MetricSpec("asna", "fr", False, (-INF, INF), "BGR, scaled to [-1, 1] (288x288 crops)",
               "ASNA (NTIRE 2021, team MACS): attention Siamese-difference network; standardised Elo/MOS",
               _asna, weights=(WeightsNeed("ASNA model (.pth or Keras .hdf5)", "user", "--checkpoint"),)),
    MetricSpec("niqe", "nr", True, (0.0, INF), "grey (MATLAB rgb2gray; grey='y': YCbCr Y)",
               "NIQE (Mittal et al. 2013), the official algorithm and pristine model; pristine= refits it",
               _niqe, weights=(WeightsNeed("official pristine model", "bundled", "data/niqe/niqe_pris_params.npz"),)),
    MetricSpec("grepq", "nr", False, (0.0, 1.5), "RGB (low level); CLIP-normalised RGB (high level)",
               "GRepQ zero-shot (Srinath et al. 2024): learned-feature NIQE + CLIP prompts; needs a pristine store",
               _grepq, weights=(WeightsNeed("low-level encoder", "user", "--low-level-weights"),
                                WeightsNeed("pristine store", "user", "--pristine"),
                                WeightsNeed("CLIP RN50", "user", "--clip-weights", optional=True))),
    MetricSpec("grepq-ridge", "nr", False, (-INF, INF), "RGB (low level); CLIP-normalised RGB (high level)",
               "GRepQ data-efficient: ridge on encoder features; predicts the score it was fitted on (its direction)",
               _grepq_ridge, weights=(WeightsNeed("ridge model", "user", "--checkpoint"),
                                      WeightsNeed("low-level encoder", "user", "--low-level-weights"),
                                      WeightsNeed("CLIP RN50", "user", "--clip-weights", optional=True)),
               aliases=("grepq_ridge",)),
    MetricSpec("graphiqa", "nr", False, (-INF, INF), "RGB (ImageNet-normalised 224x224 crops)",
               "GraphIQA (Sun et al. 2022): distortion-graph blind IQA; predicts the MOS scale it was trained on",
               _graphiqa, weights=(WeightsNeed("GraphIQA model", "user", "--checkpoint"),
                                   WeightsNeed("ImageNet resnet50 backbone", "torchvision", "resnet50-0676ba61.pth"))),
)

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in SPECS}
_ALIASES: dict[str, str] = {alias: spec.name for spec in SPECS for alias in (spec.name, *spec.aliases)}


def list_metrics(kind: str | None = None) -> list[MetricSpec]:
    """Every registered metric (optionally only "fr" or "nr"), in the registry's order."""
    return [spec for spec in SPECS if kind is None or spec.kind == kind]


def get_spec(name: str) -> MetricSpec:
    """The spec of a metric name or alias (case-insensitive)."""
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise UnknownMetricError(f"unknown metric {name!r}: choose one of {', '.join(METRICS)} "
                                 f"('iqa list-metrics' describes them)")
    return METRICS[_ALIASES[key]]


def checkpoint_metric(checkpoint: str | Path) -> str:
    """The metric a checkpoint file holds weights for (what ``--checkpoint`` alone selects)."""
    from .weights import checkpoint_metric_name

    return checkpoint_metric_name(checkpoint)


def create_metric(name: str | None = None, *, device: str = "cpu", input_range: str | None = None,
                  as_loss: bool = False, **options: Any):
    """Build a ready-to-use metric (eval mode, frozen weights, on ``device``).

    name: a registered name or alias (see ``list_metrics()``); None means what ``checkpoint`` holds,
    else lpips. options: the metric's own (``get_spec(name).options``); None values are ignored, so
    callers may pass every option they have. input_range '[-1,1]' or '[0,255]' accepts such float
    images; as_loss keeps autograd on in calls (inference runs without it by default).
    """
    from .engine import resolve_device

    options = {k: v for k, v in options.items() if v is not None}
    if name is None:
        name = checkpoint_metric(options["checkpoint"]) if "checkpoint" in options else "lpips"
    spec = get_spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise InvalidInputError(f"metric {spec.name} does not take {', '.join(unknown)} (its options: {accepted})")
    metric = spec.factory(**options)
    metric.set_input_range(input_range).as_loss(as_loss)
    for p in metric.parameters():
        p.requires_grad_(False)  # frozen: a metric used as a loss passes gradients to its inputs only
    return metric.eval().to(resolve_device(device))
