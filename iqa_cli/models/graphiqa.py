"""GraphIQA (Sun et al., IEEE TMM 2022): blind quality from a graph whose nodes are image crops.

Architecture (reference/graphiqa.md), for one graph of N crops:

    X  = GAP(ResNet-50(crops))                    (N, 2048), frozen ImageNet backbone, BatchNorm in eval
    V  = MLP(X)                                   2048-2048-2048-2048, ReLU between
    E  = {x̂_i ⊙ x̂_j}, x̂ = X / |X|                 (N², 2048), every ordered pair, i = j included
    Ã  = norm(cos(E, E))                          (N², N²)
    E' = Ã ReLU(Ã ReLU(Ã E W1) W2) W3             2048-1024-512-K, no biases
    ē_i = mean_j E'_ij ("mean", pretraining) or E'_ii ("self", fine-tuning)
    Ã_T = norm(A_T), A_T[i, j] = mean_k E'_ijk
    T  = GCN(V, Ã_T) 2048-1024-512-256;  graph code c = mean_i T_i
    (μ, s) = head([V | ē]): Linear(2048+K, (2048+K)//2)-ReLU-Linear(., 2); a level head and a MOS head

with norm(A) = D^-1/2 (A + I) D^-1/2. Every weight is Xavier-uniform, every bias zero.

Where this module departs from the released code, on purpose:

- Degrees (bug 5). A_T is built from GCN outputs and can be negative, so a row sum of A_T + I can be
  zero or negative and D^-1/2 NaN or inf. D here holds *absolute* row sums, D_ii = sum_j |A + I|_ij
  (the usual normalisation of a signed graph): identical to the original whenever A + I has no
  negative entry (always so for the edge graph, whose cosine similarities of non-negative ReLU
  features are >= 0), finite otherwise, and it keeps the propagation matrix's spectral radius <= 1
  so the three GCN layers cannot blow up. A row of all zeros gets D^-1/2 = 0 (as PyG's gcn_norm).
- Inference (bugs 1, 2). Nothing here samples: the model returns (μ, s) and only the training loss
  draws μ + ε·s (losses/graphiqa.py); a score is μ. The graph a prediction comes from is fixed:
  **at inference and in fine-tuning (training and evaluation) one graph = the N crops of one image**;
  in pretraining one graph = one batch of crops of one distortion type (the triplet's anchor,
  positive or negative batch). GraphIQAScorer runs each image's graph on its own, so an image's
  score never depends on which other images share its batch or where it sits in it (bit-identical
  on one device), and averages the crops' μ into the image's score.
- One K (bug 3) for both stages, DEFAULT_EMBED_SIZE unless configured, recorded in the checkpoint.
- The backbone's BatchNorm stays in eval mode even when the module is put in train mode.

Checkpoints of the original ``Reg_Domain`` module: reference/graphiqa.md does not list its parameter
names, so ORIGINAL_KEY_PREFIXES is this project's assumed mapping (original prefix -> ours), kept
in one table and tested against a module built with exactly those names. ``classifier.*`` and
``predictor.*`` are known to be unused by the computation and are dropped; any other unknown key
is an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .base import QualityMetric

FEATURE_SIZE = 2048  # ResNet-50's pooled features
CODE_SIZE = 256  # the graph code of the type discrimination network
DEFAULT_EMBED_SIZE = 64  # K: the released pretraining value, so one K serves both stages
CROP_SIZE = 224
DEFAULT_CROPS = 25
SUMMARIES = ("mean", "self")
PARTS = ("code", "level", "mos")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Training stages: which outputs each uses, its per-node edge summary, and the modules it trains.
STAGE_PARTS = {"pretrain": ("code", "level"), "finetune": ("mos",)}
STAGE_SUMMARY = {"pretrain": "mean", "finetune": "self"}
STAGE_MODULES = {"pretrain": ("node_mlp", "edge_gcn", "type_gcn", "level_head"),
                 "finetune": ("node_mlp", "edge_gcn", "mos_head")}
GRAPH_MODULES = ("node_mlp", "edge_gcn", "type_gcn", "level_head", "mos_head")

# Original Reg_Domain prefix -> this module's prefix (assumed names, see the module docstring).
# The backbone was a torchvision ResNet-50 without its classifier, as nn.Sequential(*children[:-1]):
# children 2, 3 and 8 (ReLU, max-pool, average-pool) hold no weights.
ORIGINAL_KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("features.0.", "backbone.conv1."),
    ("features.1.", "backbone.bn1."),
    ("features.4.", "backbone.layer1."),
    ("features.5.", "backbone.layer2."),
    ("features.6.", "backbone.layer3."),
    ("features.7.", "backbone.layer4."),
    ("node_fc.", "node_mlp."),
    ("edge_gc1.", "edge_gcn.0."),
    ("edge_gc2.", "edge_gcn.1."),
    ("edge_gc3.", "edge_gcn.2."),
    ("type_gc1.", "type_gcn.0."),
    ("type_gc2.", "type_gcn.1."),
    ("type_gc3.", "type_gcn.2."),
    ("level_fuzzy.", "level_head."),
    ("mos_fuzzy.", "mos_head."),
)
ORIGINAL_UNUSED_PREFIXES = ("classifier.", "predictor.")
MULTI_GPU_PREFIX = "module."


@dataclass(frozen=True)
class ResNetSpec:
    """What weights.py needs to find torchvision's ImageNet weights (same fields as BackboneSpec)."""

    name: str
    torchvision_builder: str
    weights_enum: str


RESNET50 = ResNetSpec("resnet50", "resnet50", "ResNet50_Weights")


@dataclass(frozen=True)
class GraphIQAConfig:
    """The sizes and choices a checkpoint records. summary: per-node edge summary for the heads."""

    embed_size: int = DEFAULT_EMBED_SIZE
    summary: str = "self"
    crop_size: int = CROP_SIZE

    def __post_init__(self):
        if int(self.embed_size) < 1:
            raise InvalidInputError(f"GraphIQA embedding size K must be >= 1, got {self.embed_size}")
        if self.summary not in SUMMARIES:
            raise InvalidInputError(f"GraphIQA edge summary {self.summary!r}: choose one of {', '.join(SUMMARIES)}")
        if int(self.crop_size) < 32:
            raise InvalidInputError(f"GraphIQA crop size must be >= 32 (ResNet-50's stride), got {self.crop_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GraphIQAConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class FuzzyPrediction:
    """A fuzzy head's output per node: the prediction μ and the spread s of μ + ε·s (training only)."""

    mu: torch.Tensor  # (G, N)
    spread: torch.Tensor  # (G, N)


@dataclass(frozen=True)
class GraphOutputs:
    """What one forward pass computed for G graphs of N nodes; parts not asked for are None."""

    code: torch.Tensor | None  # (G, 256) graph codes
    level: FuzzyPrediction | None  # distortion level per node
    mos: FuzzyPrediction | None  # quality per node


# -- building blocks ---------------------------------------------------------------------------
def resnet50_trunk() -> nn.Module:
    """torchvision's ResNet-50 with its classifier replaced by identity: images -> (N, 2048) pooled."""
    import torchvision.models as tvm

    net = tvm.resnet50(weights=None)
    net.fc = nn.Identity()
    return net


def normalised_adjacency(adjacency: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2 over the last two dims, D_ii = sum_j |A + I|_ij (see the module docstring)."""
    eye = torch.eye(adjacency.shape[-1], dtype=adjacency.dtype, device=adjacency.device)
    looped = adjacency + eye
    degree = looped.abs().sum(dim=-1)
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(torch.finfo(degree.dtype).tiny).rsqrt(),
                           torch.zeros_like(degree))
    return inv_sqrt.unsqueeze(-1) * looped * inv_sqrt.unsqueeze(-2)


class GraphConv(nn.Module):
    """H -> Ã H W without bias; W is stored (in, out), as the formula writes it."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_size, out_size))

    def forward(self, nodes: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return adjacency @ (nodes @ self.weight)


class GCN(nn.ModuleList):
    """Stacked GraphConv layers with ReLU between them (none after the last)."""

    def __init__(self, sizes: Iterable[int]):
        sizes = list(sizes)
        super().__init__(GraphConv(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, nodes: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self):
            nodes = layer(nodes, adjacency)
            if i < len(self) - 1:
                nodes = F.relu(nodes)
        return nodes


def fuzzy_head(in_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_size, in_size // 2), nn.ReLU(), nn.Linear(in_size // 2, 2))


def edge_summary(edges: torch.Tensor, summary: str) -> torch.Tensor:
    """(G, N, N, K) edge embeddings -> (G, N, K): mean over j of E'_ij, or the self edge E'_ii."""
    if summary == "mean":
        return edges.mean(dim=2)
    if summary == "self":
        return torch.diagonal(edges, dim1=1, dim2=2).transpose(1, 2)
    raise InvalidInputError(f"GraphIQA edge summary {summary!r}: choose one of {', '.join(SUMMARIES)}")


# -- the model ---------------------------------------------------------------------------------
class GraphIQA(nn.Module):
    """The whole network. ``forward(crops)`` takes (N,3,s,s) (one graph) or (G,N,3,s,s) (G graphs)
    floats in [0,1] (or uint8) and returns GraphOutputs; ImageNet normalisation happens inside.

    The backbone is frozen and always runs without autograd; ``backbone_source`` says where its
    weights came from (set by weights.load_graphiqa_backbone; a checkpoint keeps the backbone
    only when it is not the plain ImageNet one).
    """

    def __init__(self, config: GraphIQAConfig | None = None, backbone: nn.Module | None = None):
        super().__init__()
        self.config = config or GraphIQAConfig()
        k = int(self.config.embed_size)
        self.backbone = backbone if backbone is not None else resnet50_trunk()
        self.backbone.requires_grad_(False)
        self.backbone_source = "random"
        self.node_mlp = nn.Sequential(nn.Linear(FEATURE_SIZE, FEATURE_SIZE), nn.ReLU(),
                                      nn.Linear(FEATURE_SIZE, FEATURE_SIZE), nn.ReLU(),
                                      nn.Linear(FEATURE_SIZE, FEATURE_SIZE))
        self.edge_gcn = GCN((FEATURE_SIZE, 1024, 512, k))
        self.type_gcn = GCN((FEATURE_SIZE, 1024, 512, CODE_SIZE))
        self.level_head = fuzzy_head(FEATURE_SIZE + k)
        self.mos_head = fuzzy_head(FEATURE_SIZE + k)
        self.register_buffer("imagenet_mean", torch.empty(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.empty(1, 3, 1, 1), persistent=False)
        self._set_input_constants()
        self.reset_graph_parameters()
        self.backbone.eval()

    @classmethod
    def uninitialised(cls, config: GraphIQAConfig | None = None) -> "GraphIQA":
        """The same module with every weight left as uninitialised memory, for weights about to be
        loaded (a strict load overwrites every tensor): skips ~67M random draws, 1-2 s on a CPU."""
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device="cpu")
        model._set_input_constants()
        return model

    def _set_input_constants(self) -> None:
        with torch.no_grad():
            self.imagenet_mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.imagenet_std.copy_(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @property
    def embed_size(self) -> int:
        return int(self.config.embed_size)

    def reset_graph_parameters(self) -> None:
        """Xavier-uniform weights and zero biases for every layer outside the backbone."""
        for name in GRAPH_MODULES:
            for module in getattr(self, name).modules():
                if isinstance(module, (nn.Linear, GraphConv)):
                    nn.init.xavier_uniform_(module.weight)
                    if getattr(module, "bias", None) is not None:
                        nn.init.zeros_(module.bias)

    def graph_modules(self) -> nn.ModuleDict:
        """Everything but the backbone, under the same key prefixes as in this module's state dict."""
        return nn.ModuleDict({name: getattr(self, name) for name in GRAPH_MODULES})

    def train(self, mode: bool = True) -> "GraphIQA":
        # The frozen backbone's BatchNorm keeps its ImageNet statistics (the original let them drift).
        super().train(mode)
        self.backbone.eval()
        return self

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """Make exactly the modules ``stage`` trains require gradients (so DDP sees no unused
        parameter) and return their parameters, for the optimiser."""
        if stage not in STAGE_MODULES:
            raise InvalidInputError(f"GraphIQA stage {stage!r}: choose one of {', '.join(STAGE_MODULES)}")
        for name in GRAPH_MODULES:
            getattr(self, name).requires_grad_(name in STAGE_MODULES[stage])
        return [p for name in STAGE_MODULES[stage] for p in getattr(self, name).parameters()]

    # -- forward -------------------------------------------------------------------------------
    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """(G,N,3,s,s) or (N,3,s,s) crops in [0,1] -> (G,N,2048) pooled backbone features."""
        if crops.ndim == 4:
            crops = crops.unsqueeze(0)
        if crops.ndim != 5 or crops.shape[2] != 3:
            raise InvalidInputError(f"GraphIQA expects crops (N,3,H,W) or (G,N,3,H,W), got {tuple(crops.shape)}")
        graphs, nodes = crops.shape[:2]
        flat = crops.reshape(graphs * nodes, *crops.shape[2:])
        flat = flat.float() / 255.0 if flat.dtype == torch.uint8 else flat.to(self.imagenet_mean.dtype)
        with torch.no_grad():
            pooled = self.backbone((flat - self.imagenet_mean) / self.imagenet_std)
        return pooled.reshape(graphs, nodes, -1)

    def forward(self, crops: torch.Tensor, parts: Iterable[str] = ("mos",), summary: str | None = None
                ) -> GraphOutputs:
        return self.forward_features(self.features(crops), parts=parts, summary=summary)

    def forward_features(self, features: torch.Tensor, parts: Iterable[str] = ("mos",),
                         summary: str | None = None) -> GraphOutputs:
        """The graph part, from (G,N,2048) backbone features. parts: any of 'code', 'level', 'mos'."""
        parts = tuple(parts)
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise InvalidInputError(f"GraphIQA outputs {unknown}: choose from {', '.join(PARTS)}")
        summary = summary or self.config.summary
        graphs, n, _ = features.shape
        nodes = self.node_mlp(features)
        unit = F.normalize(features, dim=-1)
        edges = (unit.unsqueeze(2) * unit.unsqueeze(1)).reshape(graphs, n * n, -1)
        unit_edges = F.normalize(edges, dim=-1)
        edge_adjacency = normalised_adjacency(unit_edges @ unit_edges.transpose(1, 2))
        edge_embed = self.edge_gcn(edges, edge_adjacency).reshape(graphs, n, n, -1)

        code = level = mos = None
        if "code" in parts:
            type_adjacency = normalised_adjacency(edge_embed.mean(dim=-1))
            code = self.type_gcn(nodes, type_adjacency).mean(dim=1)
        if "level" in parts or "mos" in parts:
            joint = torch.cat([nodes, edge_summary(edge_embed, summary)], dim=-1)
            if "level" in parts:
                out = self.level_head(joint)
                level = FuzzyPrediction(out[..., 0], out[..., 1])
            if "mos" in parts:
                out = self.mos_head(joint)
                mos = FuzzyPrediction(out[..., 0], out[..., 1])
        return GraphOutputs(code=code, level=level, mos=mos)

    def image_scores(self, crops: torch.Tensor) -> torch.Tensor:
        """(G,N,3,s,s): the crops of G images -> (G,) quality, each image's own graph, μ averaged over
        its crops. One graph per forward, so an image's score is independent of the others."""
        if crops.ndim != 5:
            raise InvalidInputError(f"image_scores expects crops (G,N,3,H,W), got {tuple(crops.shape)}")
        return torch.cat([self(crops[g:g + 1], parts=("mos",)).mos.mu.mean(dim=1) for g in range(crops.shape[0])])


# -- crops -------------------------------------------------------------------------------------
def check_crop_fits(hw: tuple[int, int], size: int, name: str = "images") -> None:
    if min(hw) < size:
        raise InvalidInputError(f"{name}: {hw[1]}x{hw[0]} pixels, but GraphIQA scores {size}x{size} crops taken "
                                f"without resizing and needs at least {size}x{size} pixels (resize the images first)")


def random_crop_offsets(height: int, width: int, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 2) int64 (top, left) of ``size`` crops drawn uniformly inside a height x width image
    (torchvision RandomCrop's rule), from ``generator`` only."""
    check_crop_fits((height, width), size)
    top = torch.randint(0, height - size + 1, (count,), generator=generator)
    left = torch.randint(0, width - size + 1, (count,), generator=generator)
    return torch.stack([top, left], dim=1)


def take_crops(images: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
    """(B,3,H,W) images and (n,2) offsets -> (B,n,3,size,size), the same crops of every image."""
    return torch.stack([images[:, :, t:t + size, l:l + size] for t, l in offsets.tolist()], dim=1)


class GraphIQAScorer(QualityMetric):
    """GraphIQA as a no-reference metric: ``metric(img)`` (N,3,H,W) in [0,1] -> (N,) predicted MOS
    (higher = better, on the training database's scale).

    Each image is scored from ``crops`` crops of config.crop_size (224) at positions drawn from
    ``seed`` and the image size only (RandomCrop's uniform rule), so the layout is the same for every
    image of a size and every run; the crops of one image form its graph, and the image's score is
    the mean of their μ. Images smaller than the crop size are an error (the model was trained on
    crops taken without resizing; resize them first).

    """

    name = "graphiqa"
    kind = "nr"
    lower_better = False
    half_precision = True

    def __init__(self, model: GraphIQA, crops: int = DEFAULT_CROPS, seed: int = 0):
        super().__init__()
        if int(crops) < 1:
            raise InvalidInputError(f"--crops must be >= 1, got {crops}")
        self.model = model.eval()
        self.crops = int(crops)
        self.seed = int(seed)

    def meta(self) -> dict:
        return {"metric": self.name, "crops": self.crops, "seed": self.seed,
                "embed_size": self.model.embed_size, "crop_size": self.model.config.crop_size}

    def check_size(self, hw: tuple[int, int], name: str = "images") -> None:
        check_crop_fits(hw, self.model.config.crop_size, name)

    def crop_layout(self, height: int, width: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return random_crop_offsets(height, width, self.crops, self.model.config.crop_size, generator)

    def score(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1] != 3:
            raise InvalidInputError(f"GraphIQA expects images (N,3,H,W), got {tuple(img.shape)}")
        if img.shape[0] == 0:
            return img.new_zeros((0,), dtype=torch.float32)
        offsets = self.crop_layout(int(img.shape[2]), int(img.shape[3]))
        return torch.cat([self.model.image_scores(take_crops(img[i:i + 1], offsets, self.model.config.crop_size))
                          for i in range(img.shape[0])])


# -- original checkpoints ----------------------------------------------------------------------
def original_to_native(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an original Reg_Domain state dict (``module.``-prefixed or not) to this module's keys.

    Returns (renamed state, dropped keys). Keys under ORIGINAL_UNUSED_PREFIXES are dropped; a key
    no rule covers is kept as it is, so the strict load reports it as unexpected.
    """
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        key = key.removeprefix(MULTI_GPU_PREFIX)
        if key.startswith(ORIGINAL_UNUSED_PREFIXES):
            dropped.append(key)
            continue
        for old, new in ORIGINAL_KEY_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed, sorted(dropped)


def embed_size_of(state: dict[str, torch.Tensor]) -> int | None:
    """K as a (native-keyed) state dict's shapes say: the edge GCN's output width."""
    last = state.get("edge_gcn.2.weight")
    return int(last.shape[1]) if last is not None and last.ndim == 2 else None


def native_to_original_key(key: str) -> str:
    """This module's key -> the original Reg_Domain's (inverse of ORIGINAL_KEY_PREFIXES), for messages."""
    for old, new in ORIGINAL_KEY_PREFIXES:
        if key.startswith(new):
            return old + key[len(new):]
    return key
