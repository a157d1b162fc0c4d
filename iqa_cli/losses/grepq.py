"""GRepQ's two training losses, exactly as ../shared/reference/grepq.md states them.

Quality-aware contrastive loss (QACL), low-level encoder. For one content with V versions,
z_k (anchor view of version k) and z'_l (augmented view of version l), both L2-normalised, and the
FSIM similarity s_kl between the full-resolution versions:

    S_kl = <z_k, z'_l> / tau,    w_kl = 2 s_kl^2 / (1 + s_kl^2),  w_kk = 1
    L_row = mean_k -log( sum_l w_kl e^S_kl / sum_l e^S_kl )
    L_col = mean_l -log( sum_k w_kl e^S_kl / sum_k e^S_kl )
    L = L_row + L_col, averaged over the contents of the batch.

The only negatives are the other versions of the same content: a version similar to the anchor
(high FSIM) counts almost as a positive, a very different one almost as a negative.

Group contrastive loss, high-level encoder. Sort the batch by pseudo-label q; the G lowest and
the G highest form two groups; u = normalize(head(v)). For each member a, p_a = mean cosine
similarity to the other members of its group, and

    L_a = -log( e^{p_a/T} / (e^{p_a/T} + sum_{b in the other group} e^{cos(a,b)/T}) ),  L = mean_a L_a.

The original never gave the projection head to its optimiser and its config disagrees with the
released weights; the defaults below are the authors' stated ones (lr 1e-5, G = 8) and the recipe
must optimise the head with the image tower.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import InvalidInputError

QACL_TEMPERATURE = 0.5
GROUP_TEMPERATURE = 0.5
GROUP_SIZE = 8
NORM_EPS = 1e-8  # the original clamps feature norms here before dividing


@dataclass(frozen=True)
class LowLevelRecipeDefaults:
    """How the authors trained the low-level encoder (grepq.md)."""

    contents_per_batch: int = 8
    versions: int = 9  # the reference + 4 distortion types x 2 levels
    epochs: int = 15
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.05
    min_lr: float = 1e-6  # cosine schedule, stepped every iteration
    temperature: float = QACL_TEMPERATURE
    fragment_grid: int = 7
    fragment_piece: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HighLevelRecipeDefaults:
    """How the authors trained the high-level encoder, with the original's bugs fixed: the projection
    head is optimised too, and lr / G are the values the authors state for the released weights
    (their config says 1e-6 and 4). The original used Adam with a linear warm-up over 2.5 epochs."""

    batch_size: int = 128
    crop: int = 224  # centre crop of pristine images
    optimizer: str = "adam"
    lr: float = 1e-5
    warmup_epochs: float = 2.5
    group_size: int = GROUP_SIZE
    temperature: float = GROUP_TEMPERATURE
    optimise_head: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def qacl_weights(similarity: torch.Tensor) -> torch.Tensor:
    """w_kl = 2 s^2 / (1 + s^2) with w_kk = 1, for (..., V, V) similarities."""
    s2 = similarity * similarity
    w = 2 * s2 / (1 + s2)
    eye = torch.eye(w.shape[-1], dtype=torch.bool, device=w.device)
    return torch.where(eye, torch.ones_like(w), w)


def qacl_loss(anchor: torch.Tensor, augmented: torch.Tensor, similarity: torch.Tensor,
              temperature: float = QACL_TEMPERATURE) -> torch.Tensor:
    """QACL of (B, V, D) anchor and augmented features with (B, V, V) FSIM similarities -> scalar.

    Computed in log space (logsumexp), so large similarities / tau do not overflow.
    """
    if anchor.ndim != 3 or anchor.shape != augmented.shape or tuple(similarity.shape) != anchor.shape[:2] + (
            anchor.shape[1],):
        raise ValueError(f"qacl_loss expects anchor and augmented (B, V, D) and similarity (B, V, V), got "
                         f"{tuple(anchor.shape)}, {tuple(augmented.shape)}, {tuple(similarity.shape)}")
    logits = _unit(anchor) @ _unit(augmented).transpose(1, 2) / temperature  # (B, V, V): [k, l]
    log_w = torch.log(qacl_weights(similarity.to(logits)))  # -inf where s = 0: that term drops out
    weighted = logits + log_w
    row = torch.logsumexp(logits, dim=2) - torch.logsumexp(weighted, dim=2)  # (B, V): one per k
    col = torch.logsumexp(logits, dim=1) - torch.logsumexp(weighted, dim=1)  # (B, V): one per l
    return (row.mean(dim=1) + col.mean(dim=1)).mean()


def select_groups(pseudo_labels: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the G lowest and the G highest pseudo-labels (stable sort: ties keep batch order)."""
    q = pseudo_labels.detach().flatten()
    if group_size < 2 or 2 * group_size > q.numel():
        raise InvalidInputError(f"the group contrastive loss needs 2 <= G and 2G <= batch size, got G = {group_size} "
                                f"with a batch of {q.numel()} (lower the group size or raise the batch size)")
    order = torch.argsort(q, stable=True)
    return order[:group_size], order[-group_size:]


def group_contrastive_loss(embeddings: torch.Tensor, pseudo_labels: torch.Tensor, group_size: int = GROUP_SIZE,
                           temperature: float = GROUP_TEMPERATURE) -> torch.Tensor:
    """The group contrastive loss of (B, D) projection-head outputs, grouped by (B,) pseudo-labels -> scalar."""
    low, high = select_groups(pseudo_labels, group_size)
    u = _unit(embeddings[torch.cat([low, high])])  # (2G, D): the low group, then the high group
    cos = u @ u.T
    g = group_size
    in_group = torch.zeros(2 * g, 2 * g, dtype=torch.bool, device=u.device)
    in_group[:g, :g] = True
    in_group[g:, g:] = True
    others = in_group & ~torch.eye(2 * g, dtype=torch.bool, device=u.device)
    positive = (cos * others).sum(dim=1) / (g - 1) / temperature  # p_a / T
    negatives = (cos / temperature).masked_fill(in_group, float("-inf"))  # only the other group
    denominator = torch.logsumexp(torch.cat([positive[:, None], negatives], dim=1), dim=1)
    return (denominator - positive).mean()
