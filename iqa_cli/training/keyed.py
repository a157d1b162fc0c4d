"""Randomness keyed by batch item, so that a training step does not depend on how many processes
share it.

Dropout drawn from torch's global generator depends on which rows a process holds and in which
order: the same global batch split over two processes would get other masks than on one, and the
weights would drift apart. Here each item of the global batch gets its own seed from the training
loop (run seed, epoch, step and the item's position in the batch, see ``Shard.seeds``); each item's
masks come from its own generator, so they are the same whichever process holds the item.

    model = keyed_dropout_(model)                      # nn.Dropout -> ItemDropout, same state dict
    with item_randomness(shard.seeds, rows_per_item=[n_patches] * len(shard.items), device=device):
        out = model(x)                                 # x holds the items' rows, item by item

Outside ``item_randomness`` an ItemDropout is plain nn.Dropout (global generator); in eval mode it
is the identity.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import torch
from torch import nn

_ACTIVE: contextvars.ContextVar["ItemRandomness | None"] = contextvars.ContextVar("iqa_item_randomness", default=None)


class ItemRandomness:
    """One generator per item; draws for a tensor whose rows are the items' rows, item by item."""

    def __init__(self, seeds: Sequence[int], rows_per_item: Sequence[int], device: torch.device):
        if len(seeds) != len(rows_per_item):
            raise ValueError(f"{len(seeds)} item seeds for {len(rows_per_item)} items")
        self.rows = [int(r) for r in rows_per_item]
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def uniform(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """U[0, 1) of ``shape``; rows [sum(rows[:i]), sum(rows[:i+1])) come from item i's generator."""
        if shape[0] != sum(self.rows):
            raise ValueError(f"a tensor of {shape[0]} rows inside item_randomness for items of {sum(self.rows)} rows "
                             f"(rows_per_item must describe every tensor the keyed modules see)")
        parts = [torch.rand((r, *shape[1:]), generator=g, device=device, dtype=dtype)
                 for g, r in zip(self.generators, self.rows)]
        return torch.cat(parts) if parts else torch.empty(tuple(shape), device=device, dtype=dtype)


@contextlib.contextmanager
def item_randomness(seeds: Sequence[int], rows_per_item: Sequence[int], device: torch.device) -> Iterator[None]:
    """Inside this block, ItemDropout draws each item's mask from that item's seed."""
    token = _ACTIVE.set(ItemRandomness(seeds, rows_per_item, device))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class ItemDropout(nn.Dropout):
    """nn.Dropout whose masks, inside ``item_randomness``, are drawn per item (see module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = _ACTIVE.get()
        if active is None or not self.training or self.p == 0:
            return super().forward(x)
        if self.p == 1:
            return x * 0
        keep = active.uniform(x.shape, x.device, x.dtype) >= self.p
        return x * keep / (1 - self.p)


def keyed_dropout_(module: nn.Module) -> nn.Module:
    """Replace every nn.Dropout inside ``module`` by an ItemDropout of the same p, in place (dropout
    has no state, so the state dict keeps its keys). Returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout) and not isinstance(child, ItemDropout):
            replacement = ItemDropout(child.p, child.inplace)
            replacement.train(child.training)
            module.add_module(name, replacement)
        else:
            keyed_dropout_(child)
    return module
