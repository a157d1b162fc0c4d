"""GraphIQA: parity with the architecture transcribed from reference/graphiqa.md, original and native
checkpoints, deterministic batch-independent scoring, the frozen backbone, the pretraining sampler
and losses, and a few steps of pretraining.

ResNet-50 is heavy on the shared CPU: one set of random "ImageNet" weights is written per module into
the private TORCH_HOME (as conftest does for the LPIPS backbones), K is 8, graphs have 3-4 nodes, and
everything but the parity check runs on small crops (the model is fully convolutional up to its pool).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from iqa_cli.errors import InvalidInputError, WeightsError
from iqa_cli.losses.graphiqa import (TripletSampler, finetune_loss, finetune_objective, fuzzy_sample,
                                     pretrain_loss, pretrain_objective)
from iqa_cli.models.graphiqa import (GraphIQA, GraphIQAConfig, GraphIQAScorer, ORIGINAL_KEY_PREFIXES, RESNET50,
                                     normalised_adjacency, original_to_native, random_crop_offsets)
from iqa_cli.weights import (graphiqa_checkpoint_payload, load_graphiqa, read_checkpoint, read_graphiqa_checkpoint,
                             save_graphiqa_checkpoint, torchvision_cache_file)

K = 8
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def random_resnet50_state(seed: int) -> dict[str, torch.Tensor]:
    """torchvision ResNet-50 keys (classifier included, no num_batches_tracked: the layout of
    torchvision's own ImageNet file) with random weights (torchvision's kaiming-normal scale for the
    convolutions) and non-trivial BatchNorm statistics. Drawn directly: no network is initialised."""
    import torchvision

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.resnet50(weights=None).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("running_mean") or (key.endswith("bias") and not key.startswith("fc.")):
            value = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("running_var") or len(shape) == 1:  # BatchNorm scale
            value = 0.8 + 0.4 * torch.rand(shape, generator=g)
        else:  # conv (out, in, kh, kw) or the classifier
            fan_out = shape[0] * (shape[2] * shape[3] if len(shape) == 4 else 1)
            value = torch.randn(shape, generator=g) * math.sqrt(2 / fan_out)
        state[key] = value
    return state


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """On the shared 2-core machine two intra-op threads stall each other (OpenMP spin-waits): one
    thread ran a ResNet-50 forward 4-10x faster there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def imagenet_resnet(torch_home) -> dict[str, torch.Tensor]:
    """Random ResNet-50 weights at torchvision's cache path for ResNet50_Weights.IMAGENET1K_V1."""
    state = random_resnet50_state(11)
    target = torchvision_cache_file(RESNET50)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return state


@pytest.fixture(scope="module")
def base_model(imagenet_resnet) -> GraphIQA:
    return load_graphiqa(config=GraphIQAConfig(embed_size=K)).eval()


def skeleton(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The same keys and shapes, key number i filled with the value i by a zero-stride view: a file of a
    few kilobytes that still tells where every weight went."""
    return {prefix + key: torch.tensor(i, dtype=value.dtype).expand(value.shape) for i, (key, value) in
            enumerate(state.items())}


def small(model: GraphIQA, crop_size: int = 32) -> GraphIQA:
    """A copy that scores crops of ``crop_size`` (same weights)."""
    clone = copy.deepcopy(model)
    clone.config = dataclasses.replace(model.config, crop_size=crop_size)
    return clone


# -- a transcription of reference/graphiqa.md, under the original names this project assumes -----
class GraphConvolution(nn.Module):
    """Kipf & Welling's layer as the original uses it: weight (in, out), bias off."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_size, out_size).uniform_(-1, 1) / math.sqrt(out_size))


class RegDomain(nn.Module):
    """The original Reg_Domain as this project assumes its parameter names; forward is the formula
    of graphiqa.md in plain torch ops (loops over pairs, cosine_similarity), with bug 5's fix
    (absolute degrees) written out for the type graph."""

    def __init__(self, k: int, backbone_state: dict[str, torch.Tensor]):
        import torchvision

        super().__init__()
        with torch.device("meta"):
            trunk = torchvision.models.resnet50(weights=None)
        counters = {k: torch.zeros((), dtype=torch.long) for k in trunk.state_dict() if k.endswith("_tracked")}
        trunk.load_state_dict({**backbone_state, **counters}, assign=True)
        self.features = nn.Sequential(*list(trunk.children())[:-1])
        self.node_fc = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                                     nn.Linear(2048, 2048))
        self.edge_gc1, self.edge_gc2, self.edge_gc3 = (GraphConvolution(2048, 1024), GraphConvolution(1024, 512),
                                                       GraphConvolution(512, k))
        self.type_gc1, self.type_gc2, self.type_gc3 = (GraphConvolution(2048, 1024), GraphConvolution(1024, 512),
                                                       GraphConvolution(512, 256))
        half = (2048 + k) // 2
        self.level_fuzzy = nn.Sequential(nn.Linear(2048 + k, half), nn.ReLU(), nn.Linear(half, 2))
        self.mos_fuzzy = nn.Sequential(nn.Linear(2048 + k, half), nn.ReLU(), nn.Linear(half, 2))
        self.classifier = nn.Linear(256, 25)  # known unused
        self.predictor = nn.Linear(2048, 1)  # known unused

    @staticmethod
    def normalise(a: torch.Tensor, absolute: bool) -> torch.Tensor:
        a = a + torch.eye(a.shape[0])
        d = (a.abs() if absolute else a).sum(dim=1)
        d_inv_sqrt = torch.diag(d ** -0.5)
        return d_inv_sqrt @ a @ d_inv_sqrt

    def forward(self, x: torch.Tensor, summary: str):
        n = x.shape[0]
        features = self.features((x - MEAN) / STD).flatten(1)
        nodes = self.node_fc(features)
        unit = features / features.norm(dim=1, keepdim=True)
        edges = torch.stack([unit[i] * unit[j] for i in range(n) for j in range(n)])
        a_e = F.cosine_similarity(edges.unsqueeze(1), edges.unsqueeze(0), dim=-1)
        adj = self.normalise(a_e, absolute=False)
        h = F.relu(adj @ edges @ self.edge_gc1.weight)
        h = F.relu(adj @ h @ self.edge_gc2.weight)
        e_out = (adj @ h @ self.edge_gc3.weight).reshape(n, n, -1)
        if summary == "mean":
            e_bar = torch.stack([e_out[i].mean(dim=0) for i in range(n)])
        else:
            e_bar = torch.stack([e_out[i, i] for i in range(n)])
        adj_t = self.normalise(e_out.mean(dim=-1), absolute=True)
        t = F.relu(adj_t @ nodes @ self.type_gc1.weight)
        t = F.relu(adj_t @ t @ self.type_gc2.weight)
        code = (adj_t @ t @ self.type_gc3.weight).mean(dim=0)
        joint = torch.cat([nodes, e_bar], dim=1)
        return code, self.level_fuzzy(joint)[:, 0], self.mos_fuzzy(joint)[:, 0]


@pytest.fixture(scope="module")
def original(imagenet_resnet) -> RegDomain:
    torch.manual_seed(3)
    return RegDomain(K, random_resnet50_state(29)).eval()


@pytest.fixture(scope="module")
def original_file(original, tmp_path_factory):
    """The original saved the multi-GPU way: every key under 'module.'."""
    path = tmp_path_factory.mktemp("orig") / "graphiqa_pretrained.pth"
    torch.save({f"module.{k}": v for k, v in original.state_dict().items()}, path)
    return path


# -- parity --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("summary", ["mean", "self"])
def test_mu_and_code_match_the_transcribed_architecture(original, summary):
    state, dropped = original_to_native(original.state_dict())
    assert dropped == sorted(k for k in original.state_dict() if k.startswith(("classifier.", "predictor.")))
    model = GraphIQA.uninitialised(GraphIQAConfig(embed_size=K))
    model.load_state_dict(state, strict=True)
    model.eval()
    crops = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        code, level, mos = original(crops, summary)
        out = model(crops, parts=("code", "level", "mos"), summary=summary)
    assert mos.abs().max() > 1e-2 and code.abs().max() > 1e-2  # a real signal, not zeros
    torch.testing.assert_close(out.mos.mu[0], mos, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.level.mu[0], level, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.code[0], code, rtol=1e-5, atol=1e-5)


def test_normalised_adjacency_is_the_formula_when_degrees_are_positive_and_finite_otherwise():
    a = torch.rand(5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(normalised_adjacency(a), RegDomain.normalise(a, absolute=False))
    signed = torch.tensor([[-3.0, 0.5, 0.5], [0.2, 0.1, 0.3], [0.0, 0.0, -1.0]])  # rows 0, 2: degree <= 0
    assert not torch.isfinite(RegDomain.normalise(signed, absolute=False)).all()  # the original's NaN/inf
    fixed = normalised_adjacency(signed)
    assert torch.isfinite(fixed).all()
    assert torch.equal(fixed[2], torch.zeros(3))  # an all-zero row (A + I)_2 = 0: D^-1/2 taken as 0
    mixed = torch.tensor([[-3.0, 0.5, 0.5], [0.2, 0.1, 0.3], [0.4, -0.7, 0.2]])
    torch.testing.assert_close(normalised_adjacency(mixed), RegDomain.normalise(mixed, absolute=True))
    assert float(torch.linalg.matrix_norm(fixed, ord=2)) <= 1 + 1e-6  # the spectral radius stays <= 1


# -- backbone ------------------------------------------------------------------------------------
def test_backbone_comes_from_the_torchvision_cache(base_model, imagenet_resnet):
    assert base_model.backbone_source == "imagenet"
    torch.testing.assert_close(base_model.backbone.layer4[2].conv3.weight, imagenet_resnet["layer4.2.conv3.weight"])
    torch.testing.assert_close(base_model.backbone.bn1.running_var, imagenet_resnet["bn1.running_var"])


def test_offline_without_cached_resnet_names_the_file(empty_torch_home):
    with pytest.raises(WeightsError) as err:
        load_graphiqa(config=GraphIQAConfig(embed_size=K))
    message = str(err.value)
    assert "resnet50-0676ba61.pth" in message and str(empty_torch_home / "hub" / "checkpoints") in message
    assert "--backbone-weights" in message and "\n" not in message


def test_backbone_weights_from_a_local_file(tmp_path, empty_torch_home, imagenet_resnet):
    path = tmp_path / "r50.pth"
    torch.save(skeleton(imagenet_resnet, prefix="module."), path)  # a DataParallel save, classifier included
    model = load_graphiqa(backbone_weights=path, embed_size=K)
    assert model.backbone_source == "file"
    for i, key in enumerate(imagenet_resnet):
        if not key.startswith("fc."):
            assert bool((model.backbone.state_dict()[key] == i).all()), key
    broken = tmp_path / "broken.pth"
    torch.save(skeleton({k: v for k, v in imagenet_resnet.items() if not k.startswith("layer3.")}), broken)
    with pytest.raises(WeightsError, match=r"broken.pth does not fit this model; missing keys: layer3"):
        load_graphiqa(backbone_weights=broken, embed_size=K)


def test_backbone_batchnorm_stays_in_eval_and_frozen(base_model):
    model = small(base_model).train()
    assert model.node_mlp.training and model.mos_head.training
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    out = model(torch.rand(2, 4, 3, 32, 32), parts=("code", "level", "mos"))
    (out.code.sum() + out.level.mu.sum() + out.mos.mu.sum()).backward()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics did not drift
    assert model.node_mlp[0].weight.grad is not None


def test_graph_layers_are_xavier_uniform_with_zero_biases(base_model):
    w = base_model.node_mlp[2].weight.detach()
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert 0.99 * bound < float(w.abs().max()) <= bound * (1 + 1e-6)
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.01)  # uniform(-b, b) has std b / sqrt 3
    gc = base_model.edge_gcn[2].weight.detach()  # (512, K)
    assert float(gc.abs().max()) <= math.sqrt(6 / (512 + K)) * (1 + 1e-6)
    assert all(float(m.bias.abs().max()) == 0 for m in base_model.modules() if isinstance(m, nn.Linear))


# -- scoring -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_scores_are_deterministic_and_independent_of_the_batch(base_model):
    scorer = GraphIQAScorer(small(base_model), crops=4, seed=3)
    assert (scorer.name, scorer.kind, scorer.lower_better) == ("graphiqa", "nr", False)
    assert scorer.meta() == {"metric": "graphiqa", "crops": 4, "seed": 3, "embed_size": K, "crop_size": 32}
    images = torch.rand(4, 3, 40, 48, generator=torch.Generator().manual_seed(2))
    full = scorer(images)
    assert full.shape == (4,) and torch.isfinite(full).all() and len(set(full.tolist())) == 4
    assert torch.equal(scorer(images), full)  # μ only: no sampled noise
    assert torch.equal(scorer(images.flip(0)), full.flip(0))  # order
    assert torch.equal(scorer(images[2:3]), full[2:3])  # alone
    others = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(9))
    assert torch.equal(scorer(torch.cat([others[:1], images[1:2], others[1:]]))[1], full[1])  # other company
    scorer.model.train()  # train mode changes nothing either: BatchNorm frozen, no sampling in the model
    assert torch.equal(scorer(images), full)


def test_score_is_the_mean_mu_of_the_image_crops_at_the_seeded_layout(base_model):
    model = small(base_model)
    scorer = GraphIQAScorer(model, crops=3, seed=5)
    image = torch.rand(1, 3, 36, 50, generator=torch.Generator().manual_seed(4))
    offsets = random_crop_offsets(36, 50, 3, 32, torch.Generator().manual_seed(5))
    crops = torch.stack([image[0, :, t:t + 32, l:l + 32] for t, l in offsets.tolist()])
    with torch.no_grad():
        expected = model(crops, parts=("mos",)).mos.mu.mean()
        torch.testing.assert_close(scorer(image)[0], expected)


def test_crop_layout_is_reproducible_and_inside_the_image(base_model):
    scorer = GraphIQAScorer(base_model, seed=7)
    layout = scorer.crop_layout(300, 260)
    assert layout.shape == (25, 2)
    assert torch.equal(layout, GraphIQAScorer(base_model, seed=7).crop_layout(300, 260))
    assert not torch.equal(layout, GraphIQAScorer(base_model, seed=8).crop_layout(300, 260))
    assert int(layout[:, 0].max()) <= 300 - 224 and int(layout[:, 1].max()) <= 260 - 224 and int(layout.min()) >= 0
    assert int(GraphIQAScorer(base_model).crop_layout(224, 224).abs().sum()) == 0


def test_images_smaller_than_a_crop_are_refused_in_one_line(base_model):
    with pytest.raises(InvalidInputError, match=r"^images: 300x200 pixels, but GraphIQA .*224x224 crops.*first\)$"):
        GraphIQAScorer(base_model, crops=2)(torch.rand(1, 3, 200, 300))
    with pytest.raises(InvalidInputError, match=r"^small.png: 100x300 pixels"):
        GraphIQAScorer(base_model).check_size((300, 100), "small.png")
    assert GraphIQAScorer(base_model)(torch.rand(0, 3, 230, 230)).shape == (0,)
    with pytest.raises(InvalidInputError, match=r"\(3, H, W\) or \(N, 3, H, W\)"):
        GraphIQAScorer(base_model)(torch.rand(2, 4, 224, 224))  # (3, H, W) alone is one image: a batch of one


# -- checkpoints ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_original_multi_gpu_checkpoint_loads_strictly_and_scores_like_the_original(original, original_file):
    ckpt = read_graphiqa_checkpoint(original_file)
    assert (ckpt.kind, ckpt.embed_size, ckpt.has_backbone) == ("original", K, True)
    assert {k.split(".")[0] for k in ckpt.dropped} == {"classifier", "predictor"}
    model = load_graphiqa(original_file).eval()
    assert model.backbone_source == "checkpoint" and model.config.summary == "self"
    crops = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(crops, parts=("mos",)).mos.mu[0], original(crops, "self")[2],
                                   rtol=1e-5, atol=1e-5)


def test_every_row_of_the_key_table_moves_its_weights(original, tmp_path):
    state = original.state_dict()
    path = tmp_path / "single_gpu.pth"  # no 'module.' prefix this time
    torch.save(skeleton(state), path)
    loaded = load_graphiqa(path).state_dict()
    index = {key: i for i, key in enumerate(state)}
    for old, new in ORIGINAL_KEY_PREFIXES:
        moved = [key for key in state if key.startswith(old)]
        assert moved, f"no original key starts with {old}"
        for key in moved:
            assert bool((loaded[new + key[len(old):]] == index[key]).all()), key
    table = {new + key[len(old):] for old, new in ORIGINAL_KEY_PREFIXES for key in state if key.startswith(old)}
    assert table == set(loaded)  # every weight of the model comes from the file


def test_original_checkpoint_with_another_k_names_both_sizes(original, tmp_path):
    path = tmp_path / "k8.pth"
    torch.save(skeleton(original.state_dict(), prefix="module."), path)
    with pytest.raises(WeightsError) as err:
        load_graphiqa(path, embed_size=16)
    message = str(err.value)
    assert "K=8" in message and "K=16" in message and "\n" not in message


def test_original_checkpoint_with_missing_or_unknown_keys_is_one_line(original, tmp_path):
    state = {k: v for k, v in original.state_dict().items()
             if k not in ("type_gc3.weight", "features.7.2.conv3.weight")}
    state["extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(skeleton(state, prefix="module."), path)
    with pytest.raises(WeightsError) as err:
        load_graphiqa(path)
    message = str(err.value)
    assert "\n" not in message and "partial.pth (original Reg_Domain state dict) does not fit" in message
    assert "missing keys: features.7.2.conv3.weight, type_gc3.weight;" in message  # the file's own names
    assert message.endswith("unexpected keys: extra_head.weight")


def test_foreign_files_are_not_taken_for_graphiqa(tmp_path):
    path = tmp_path / "lpips_heads.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, path)
    with pytest.raises(WeightsError, match="not a GraphIQA checkpoint .*found lin0.model.1.weight"):
        read_graphiqa_checkpoint(path)


@pytest.mark.slow
def test_native_checkpoint_round_trip_records_k_and_leaves_out_the_imagenet_backbone(base_model, tmp_path):
    model = copy.deepcopy(base_model)
    model.config = dataclasses.replace(model.config, summary="mean")
    path = save_graphiqa_checkpoint(tmp_path / "run" / "latest.pth", model, extra={"epoch": 3})
    ckpt = read_graphiqa_checkpoint(path)
    assert ckpt.kind == "iqa" and ckpt.extra == {"epoch": 3} and ckpt.config["embed_size"] == K
    assert not ckpt.has_backbone
    loaded = load_graphiqa(path)  # the backbone comes from the (fake) torchvision cache again
    assert loaded.config == model.config and loaded.backbone_source == "imagenet"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(WeightsError, match=r"a graphiqa checkpoint, not an LPIPS one \(use --metric graphiqa\)"):
        read_checkpoint(path)
    with pytest.raises(WeightsError, match="K=8 but K=64"):
        load_graphiqa(path, embed_size=64)


def test_native_checkpoint_keeps_a_backbone_that_is_not_imagenet(base_model, tmp_path):
    assert graphiqa_checkpoint_payload(base_model)["backbone"] == "imagenet"
    model = copy.deepcopy(base_model)
    model.backbone_source = "checkpoint"  # e.g. brought by an original file: its BatchNorm statistics differ
    payload = graphiqa_checkpoint_payload(model, extra={"epoch": 1})
    assert payload["backbone"] == "included" and set(payload["state_dict"]) == set(model.state_dict())
    with pytest.raises(ValueError, match="extra may not set"):
        graphiqa_checkpoint_payload(model, extra={"config": {}})
    payload["state_dict"] = skeleton(payload["state_dict"])
    path = tmp_path / "with_backbone.pth"
    torch.save(payload, path)
    loaded = load_graphiqa(path, backbone_weights="random")  # ignored: the file has its own backbone
    index = list(payload["state_dict"]).index("backbone.layer2.0.conv2.weight")
    assert bool((loaded.backbone.layer2[0].conv2.weight == index).all())
    del payload["state_dict"]["mos_head.2.bias"]
    torch.save(payload, tmp_path / "damaged.pth")
    with pytest.raises(WeightsError, match=r"damaged.pth does not fit this model; missing keys: mos_head.2.bias$"):
        load_graphiqa(tmp_path / "damaged.pth")


# -- pretraining sampler -------------------------------------------------------------------------
TYPES = [1] * 10 + [2] * 3 + [None] * 4 + [5] * 40  # type 2 has fewer rows than a batch; None never drawn


def test_sampler_batches_have_the_right_types():
    sampler = TripletSampler(TYPES, batch_size=8, seed=0)
    types = np.array([-1 if t is None else t for t in TYPES])
    anchor_types, negative_types = set(), set()
    for draw in (sampler.draw(step) for step in range(60)):
        assert len(draw.anchor) == len(draw.positive) == len(draw.negative) == 8
        assert set(types[draw.anchor]) == set(types[draw.positive]) == {draw.anchor_type}
        assert set(types[draw.negative]) == {draw.negative_type} and draw.negative_type != draw.anchor_type
        if len(sampler.rows[draw.anchor_type]) >= 8:
            assert len(set(draw.anchor.tolist())) == 8  # distinct contents/levels when the type has enough
        anchor_types.add(draw.anchor_type)
        negative_types.add(draw.negative_type)
    assert anchor_types == negative_types == {1, 2, 5}


def test_sampler_is_a_function_of_seed_stream_and_step():
    a, b = TripletSampler(TYPES, 8, seed=4), TripletSampler(TYPES, 8, seed=4)
    assert [d.to_dict() for d in (a.draw(s) for s in (5, 0, 9))] == [b.draw(s).to_dict() for s in (5, 0, 9)]
    from itertools import islice

    assert [d.to_dict() for d in islice(iter(a), 3)] == [b.draw(s).to_dict() for s in range(3)]
    assert a.draw(1).to_dict() != TripletSampler(TYPES, 8, seed=5).draw(1).to_dict()
    assert a.draw(1).to_dict() != TripletSampler(TYPES, 8, seed=4, stream=1).draw(1).to_dict()


def test_sampler_needs_two_types_and_takes_names_or_numpy_numbers():
    with pytest.raises(InvalidInputError, match="at least 2 distortion types, found types: 3"):
        TripletSampler([3, 3, None, float("nan")])
    named = TripletSampler(["gblur", "jpeg", "gblur", None], batch_size=2)
    assert named.types == ("gblur", "jpeg") and named.draw(0).negative_type in ("gblur", "jpeg")
    assert TripletSampler(np.array([4, 4, 7]), batch_size=2).types == (4, 7)


# -- losses --------------------------------------------------------------------------------------
def test_pretrain_loss_against_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    anchor = torch.randn(1, 256, generator=g, requires_grad=True)
    positive = (anchor.detach() + 0.01 * torch.randn(1, 256, generator=g)).requires_grad_()
    negative = (anchor.detach() + 0.003 * torch.randn(1, 256, generator=g)).requires_grad_()
    level_pred = torch.tensor([1.5, 2.0, 4.0], requires_grad=True)
    levels = torch.tensor([1, 3, 5])
    loss = pretrain_loss(anchor, positive, negative, level_pred, levels)
    # torch's pairwise distance adds eps = 1e-6 to the difference before the norm
    d_ap = float(((anchor - positive + 1e-6) ** 2).sum().sqrt())
    d_an = float(((anchor - negative + 1e-6) ** 2).sum().sqrt())
    triplet = max(d_ap - d_an + 0.1, 0.0)
    mse = (0.5 ** 2 + 1.0 ** 2 + 1.0 ** 2) / 3
    assert triplet > 0
    assert float(loss.triplet) == pytest.approx(triplet, rel=1e-5)
    assert float(loss.level) == pytest.approx(mse, rel=1e-6)
    assert float(loss.total) == pytest.approx(triplet + 0.25 * mse, rel=1e-5)
    loss.total.backward()
    assert positive.grad is None and negative.grad is None and anchor.grad is not None


def test_finetune_loss_and_fuzzy_sampling():
    pred = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 6.0]])
    assert float(finetune_loss(pred, torch.tensor([2.0, 5.0]))) == pytest.approx((1 + 0 + 1 + 1 + 1 + 1) / 6)
    mu, spread = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -2.0])
    eps = torch.randn(2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(fuzzy_sample(mu, spread, torch.Generator().manual_seed(8)), mu + eps * spread)


@pytest.mark.slow
def test_a_few_pretraining_steps_lower_the_loss(base_model):
    model = small(base_model).train()
    params = model.stage_parameters("pretrain")
    assert not any(p.requires_grad for p in model.mos_head.parameters())
    optimiser = torch.optim.Adam(params, lr=1e-5)  # the released pretraining rate
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 40, 40, generator=g)
    images[4:8] = images[4:8].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)  # type 2: grey
    images[8:] = F.avg_pool2d(images[8:], 5, stride=1, padding=2)  # type 3: blurred
    types = [1] * 4 + [2] * 4 + [3] * 4
    levels = torch.tensor([1.0, 2.0, 3.0, 5.0] * 3)
    draw = TripletSampler(types, batch_size=4, seed=1).draw(0)
    offsets = random_crop_offsets(40, 40, 1, 32, torch.Generator().manual_seed(draw.crop_seed))
    t, l = offsets[0].tolist()
    crops = images[:, :, t:t + 32, l:l + 32]

    def loss():
        return pretrain_objective(model, crops[draw.anchor], crops[draw.positive], crops[draw.negative],
                                  levels[draw.anchor], generator=torch.Generator().manual_seed(2))

    first = loss()
    for _ in range(4):
        optimiser.zero_grad()
        loss().total.backward()
        optimiser.step()
    last = loss()
    assert float(last.total) < 0.5 * float(first.total)
    assert float(last.level) < float(first.level)


def test_finetune_objective_trains_only_the_mos_path(base_model):
    model = small(base_model).train()
    params = model.stage_parameters("finetune")
    assert {id(p) for p in params} == {id(p) for m in (model.node_mlp, model.edge_gcn, model.mos_head)
                                       for p in m.parameters()}
    loss = finetune_objective(model, torch.rand(2, 3, 3, 32, 32), torch.tensor([30.0, 70.0]),
                              generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.mos_head[2].weight.grad is not None and model.type_gcn[0].weight.grad is None
