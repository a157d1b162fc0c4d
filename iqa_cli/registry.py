"""Metric names users can ask for, and the one function that builds them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UnknownMetricError, WeightsError
from .models.backbones import BACKBONES, NET_ALIASES, Backbone
from .models.lpips import VERSIONS, PerceptualDistance


@dataclass(frozen=True)
class MetricInfo:
    name: str
    head_type: str
    description: str


METRICS: dict[str, MetricInfo] = {
    "lpips": MetricInfo("lpips", "lpips", "LPIPS: learned linear heads on alex/vgg/squeeze (bundled v0.1/v0.0 weights)"),
    "graphics-lpips": MetricInfo("graphics-lpips", "graphics",
                                 "Graphics-LPIPS: MLP heads on AlexNet, from a --checkpoint"),
    "baseline": MetricInfo("baseline", "none", "LPIPS without heads: squared normalised feature differences"),
}


def list_metrics() -> list[MetricInfo]:
    return list(METRICS.values())


def canonical_net(net: str) -> str:
    name = NET_ALIASES.get(net.lower(), net.lower())
    if name not in BACKBONES:
        raise UnknownMetricError(f"unknown network {net!r}: choose one of {', '.join(BACKBONES)}")
    return name


def create_metric(name: str | None = "lpips", net: str | None = None, version: str | None = None, spatial: bool = False,
                  checkpoint: str | Path | None = None, backbone_weights: str | Path = "imagenet",
                  device: str = "cpu") -> PerceptualDistance:
    """Build a ready-to-use distance module (eval mode, frozen, on ``device``).

    name None means "what the checkpoint holds" (lpips or graphics-lpips), else lpips.
    net defaults to the checkpoint's network, else alex; version defaults to 0.1.
    backbone_weights: 'imagenet' (torchvision cache), 'random', or a file; ignored when the
    checkpoint carries its own backbone (original Graphics-LPIPS files do).
    """
    from .engine import resolve_device
    from .weights import bundled_head_state, load_backbone_weights, load_strict, read_checkpoint

    if name is not None and name not in METRICS:
        raise UnknownMetricError(f"unknown metric {name!r}: choose one of {', '.join(METRICS)}")
    if version is not None and version not in VERSIONS:
        raise UnknownMetricError(f"unknown LPIPS version {version!r}: choose one of {', '.join(VERSIONS)}")
    ckpt = read_checkpoint(checkpoint) if checkpoint is not None else None
    if name is None:
        name = "graphics-lpips" if ckpt is not None and ckpt.head_type == "graphics" else "lpips"
    info = METRICS[name]
    if info.name == "graphics-lpips" and ckpt is None:
        raise WeightsError("graphics-lpips has no bundled weights: pass --checkpoint PATH (an original "
                           "Graphics-LPIPS .pth or one written by 'iqa train')")
    if ckpt is not None:
        if info.head_type == "none":
            raise UnknownMetricError("the baseline metric has no heads: drop --checkpoint or use --metric lpips")
        if ckpt.head_type != info.head_type:
            wanted = "graphics-lpips" if ckpt.head_type == "graphics" else "lpips"
            raise WeightsError(f"{ckpt.path} holds {ckpt.head_type} heads but metric {name!r} was asked for: "
                               f"use --metric {wanted}")
    net_name = canonical_net(net or (ckpt.net if ckpt and ckpt.net != "unknown" else "alex"))
    version = version or (ckpt.version if ckpt else "0.1")
    spec = BACKBONES[net_name]
    model = PerceptualDistance(spec, version=version, head_type=info.head_type, spatial=spatial,
                               backbone=Backbone(spec))
    if ckpt is not None:
        source = f"{ckpt.path} (for net '{ckpt.net}')"
        try:
            load_strict(model.heads_module(), ckpt.head_state, source=source)
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
        if info.head_type == "lpips":
            load_strict(model.heads_module(), bundled_head_state(net_name, version),
                        source=f"bundled LPIPS v{version} {net_name} heads")
        load_backbone_weights(model.net, spec, backbone_weights)
    return model.eval().to(resolve_device(device))
