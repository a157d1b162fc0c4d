"""The pieces that make results independent of the number of processes, checked in one process:
how work is split, per-item randomness, and the store scorer's fixed reference-feature batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iqa_cli.engine import shard_bounds, shard_work
from iqa_cli.training.keyed import ItemDropout, item_randomness, keyed_dropout_
from iqa_cli.training.loop import item_seeds


@pytest.mark.parametrize("n,world", [(10, 4), (3, 4), (0, 2), (7, 1), (8, 8)])
def test_blocks_are_contiguous_ordered_and_cover_every_unit_once(n, world):
    blocks = [shard_bounds(n, rank=r, world=world) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # np.array_split's rule


def test_weighted_blocks_balance_the_weights():
    weights = [512] * 9 + [100]  # nine full batches and a short last one
    blocks = [shard_bounds(len(weights), weights, rank=r, world=2) for r in range(2)]
    assert [i for b in blocks for i in b] == list(range(10))
    assert abs(sum(weights[i] for i in blocks[0]) - sum(weights[i] for i in blocks[1])) <= 512
    assert shard_bounds(1, [5], rank=0, world=2) == range(1)  # a lone unit goes to the main process


def test_one_process_work_shard_changes_nothing():
    work = shard_work(5, weights=[1, 2, 3, 4, 5])
    assert work.mine == range(5) and work.share == 1.0
    advance = lambda n=1, postfix=None: None  # noqa: E731
    assert work.progress(advance) is advance
    assert work.gather(list("abcde")) == list("abcde")


def test_item_seeds_depend_on_the_item_not_on_the_batch_split():
    seeds = item_seeds(7, epoch=3, step=2, n=10)
    assert len(set(seeds.tolist())) == 10
    assert np.array_equal(seeds, item_seeds(7, 3, 2, 10))
    assert not np.array_equal(seeds, item_seeds(7, 3, 3, 10)) and not np.array_equal(seeds, item_seeds(8, 3, 2, 10))


def test_item_dropout_masks_do_not_depend_on_how_items_are_split():
    """Items of 3, 1 and 2 rows: dropping out all at once or in two shards gives the same rows."""
    drop = ItemDropout(0.5).train()
    x = torch.rand(6, 4, 3, 3) + 1
    seeds, rows = [11, 22, 33], [3, 1, 2]
    with item_randomness(seeds, rows, x.device):
        whole = drop(x)
    with item_randomness(seeds[:1], rows[:1], x.device):
        first = drop(x[:3])
    with item_randomness(seeds[1:], rows[1:], x.device):
        rest = drop(x[3:])
    assert torch.equal(whole, torch.cat([first, rest]))
    kept = whole != 0
    assert 0.3 < kept.float().mean() < 0.7 and torch.allclose(whole[kept], 2 * x[kept])  # p=0.5: scaled by 2
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="rows_per_item"), item_randomness(seeds, rows, x.device):
        drop.train()(x[:5])


def test_keyed_dropout_keeps_the_state_dict():
    from iqa_cli.models.heads import MLPHead

    head = MLPHead(8)
    keys = list(head.state_dict())
    keyed_dropout_(head)
    assert list(head.state_dict()) == keys
    assert sum(isinstance(m, ItemDropout) for m in head.modules()) == 2


def test_reference_feature_batches_do_not_depend_on_which_stimuli_are_scored(tmp_path, torch_home):
    """A process whose first stimulus is model 1's computes model 1's reference patches in the
    batch one process would (models 0 and 1 together): fill groups are planned over all models."""
    from iqa_cli.engine import _ReferenceFeatures
    from iqa_cli.io.store import PatchStore
    from iqa_cli.registry import create_metric
    from test_training import make_teacher_store

    path, _, _ = make_teacher_store(tmp_path / "s.h5", head="lpips", n_models=5, n_stimuli=1, n_patches=6)
    store = PatchStore.open(path)
    metric = create_metric("lpips", device="cpu").eval()
    ref_first = store.models["ref_first"].to_numpy()

    def batches_run(first_model: int) -> list[np.ndarray]:
        refs = _ReferenceFeatures(store, metric, torch.device("cpu"), batch_size=14)
        seen, features = [], refs._features
        refs._features = lambda patches: seen.append(patches.copy()) or features(patches)
        with torch.inference_mode():
            for m in range(first_model, 5):
                refs.gather(np.array([ref_first[m]]))
        return seen

    everything = batches_run(0)
    assert [len(b) for b in everything] == [12, 12, 6]  # models (0, 1), (2, 3), (4): at most 14 patches
    from_model_1 = batches_run(1)
    assert len(from_model_1) == 3
    assert all(np.array_equal(a, b) for a, b in zip(from_model_1, everything))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cpu_sync_batchnorm_conversion_keeps_the_parameters_and_their_dtype(dtype):
    """sync_batchnorm (what data_parallel does on the CPU under torchrun) swaps the module but keeps
    its parameters and buffers themselves, as torch's convert_sync_batchnorm does: a float64 model
    stayed float32 in its BatchNorms before (state copied into fresh float32 tensors), which put
    float32 rounding (~1e-7) into a float64 two-process run."""
    from iqa_cli.engine import CPUSyncBatchNorm, sync_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm1d(2, affine=False))
    model[1].bias.requires_grad_(False)
    model.to(dtype)
    model[1].running_var.uniform_(0.5, 2.0)
    model[1].num_batches_tracked.fill_(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    converted = sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], CPUSyncBatchNorm) and isinstance(converted[2], CPUSyncBatchNorm)
    after = converted.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert after[key].dtype == before[key].dtype and torch.equal(after[key], before[key]), key
    assert all(p is params[k] for k, p in converted.named_parameters())  # an optimiser made before still fits
    assert converted[1].weight.requires_grad and not converted[1].bias.requires_grad
