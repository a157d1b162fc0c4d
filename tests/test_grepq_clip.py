"""GRepQ's high-level encoder (CLIP RN50 through open_clip) with random weights written to a file.

open_clip's RN50 is built once per module with random init (``pretrained=None``) and its state
dict saved, so every test goes through the real loading path. The text tower is built with
QuickGELU, as every published RN50 (OpenAI's included) and the loader use.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import open_clip  # the "clip" extra; also a test extra

from iqa_cli.errors import IQAError, WeightsError
from iqa_cli.models.grepq import (
    GRepQFeatures,
    GRepQZeroShot,
    HighLevelEncoder,
    LowLevelEncoder,
    attention_pool_without_position,
    load_high_level_encoder,
)



pytestmark = pytest.mark.slow  # building RN50 twice (~100 MB of weights) takes seconds


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    torch.manual_seed(11)
    model = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True).eval()
    with torch.no_grad():
        for m in model.visual.modules():  # zero-initialised bn3 weights would make the blocks identities
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("clip") / "RN50.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def encoder(clip_model) -> HighLevelEncoder:
    return load_high_level_encoder(clip_model[1])


def test_loaded_weights_and_prompt_embeddings(clip_model, encoder):
    model, _ = clip_model
    for key, value in model.visual.state_dict().items():
        assert torch.equal(encoder.visual.state_dict()[key], value), key
    tokenizer = open_clip.get_tokenizer("RN50")
    with torch.no_grad():
        good_bad = F.normalize(model.encode_text(tokenizer(["A good photo.", "A bad photo."])), dim=-1)
        labels = F.normalize(model.encode_text(tokenizer(["a Good photo.", "a Bad photo."])), dim=-1)
    torch.testing.assert_close(encoder.prompt_embeddings, torch.cat([good_bad, labels]))
    assert encoder.has_prompts and not encoder.training


def test_attention_pool_without_position(encoder):
    pool = encoder.visual.attnpool
    x = torch.randn(2, 2048, 7, 7)
    saved = pool.positional_embedding.detach().clone()
    try:
        with torch.no_grad():
            pool.positional_embedding.zero_()
            expected = pool(x)  # open_clip's own forward: at 7x7 (224x224 input) with a zero embedding
        torch.testing.assert_close(attention_pool_without_position(pool, x), expected, rtol=1e-5, atol=1e-6)
    finally:
        with torch.no_grad():
            pool.positional_embedding.copy_(saved)
    with torch.no_grad():
        assert not torch.allclose(pool(x), attention_pool_without_position(pool, x))  # the embedding is dropped
        out = encoder(torch.rand(1, 3, 160, 288))  # full-resolution input of another size
    assert out.shape == (1, 1024) and torch.isfinite(out).all()


def test_q_high_formula_and_the_zero_shot_sum(encoder):
    torch.manual_seed(5)
    low = LowLevelEncoder().eval()
    images = torch.rand(2, 3, 96, 144)
    with torch.no_grad():
        g = encoder(images)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        v = encoder.visual
        trunk = v.layer4(v.layer3(v.layer2(v.layer1(v.stem((images - mean) / std)))))
    torch.testing.assert_close(g, attention_pool_without_position(v.attnpool, trunk))
    t_good, t_bad = encoder.prompt_embeddings[0], encoder.prompt_embeddings[1]
    expected = [1 / (1 + np.exp(-10 * (float(F.cosine_similarity(gi, t_good, dim=0))
                                       - float(F.cosine_similarity(gi, t_bad, dim=0))))) for gi in g]
    np.testing.assert_allclose(encoder.zero_shot_quality(g).numpy(), expected, rtol=1e-5)

    metric = GRepQZeroShot(low, torch.rand(8, 3, 96, 96), high_level=encoder)
    parts = metric.components(images)
    assert metric.mode == parts.mode == "low+high"
    torch.testing.assert_close(parts.q_high, encoder.zero_shot_quality(g))
    torch.testing.assert_close(metric(images), (parts.q_low + parts.q_high.double()).float())

    features = GRepQFeatures(low, encoder).features(images)
    assert features.shape == (2, 1152)
    torch.testing.assert_close(features, torch.cat([g, low(images).detach()], dim=1))


def test_image_tower_files_and_our_own_file(clip_model, encoder, tmp_path):
    model, full = clip_model
    torch.manual_seed(3)
    tuned = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in model.visual.state_dict().items()}
    tuned_file = tmp_path / "high_level_model_weights.pth"  # as the authors release it: bare keys, fp16
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in tuned.items()}, tuned_file)

    alone = load_high_level_encoder(tuned_file)
    assert not alone.has_prompts
    torch.testing.assert_close(alone.visual.state_dict()["conv1.weight"], tuned["conv1.weight"].half().float())
    with pytest.raises(WeightsError, match="no prompt embeddings.*--clip-visual-weights"):
        GRepQZeroShot(LowLevelEncoder(), torch.rand(4, 3, 96, 96), high_level=alone)

    tuned_with_text = load_high_level_encoder(full, clip_visual_weights=tuned_file)
    torch.testing.assert_close(tuned_with_text.prompt_embeddings, encoder.prompt_embeddings)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(tuned_with_text(x), alone(x))
        assert not torch.allclose(tuned_with_text(x), encoder(x), atol=1e-4)

    own = tmp_path / "hlm.pth"
    torch.save(tuned_with_text.state_dict(), own)
    reloaded = load_high_level_encoder(own)
    torch.testing.assert_close(reloaded.prompt_embeddings, encoder.prompt_embeddings)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), tuned_with_text(x))


class _TorchScriptHolder(torch.nn.Module):
    """CLIP's tensors under CLIP's names plus the three bookkeeping buffers OpenAI's RN50.pt carries;
    traced, it is a TorchScript archive laid out as that file is."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logit_scale


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_openai_torchscript_archive_loads(clip_model, encoder, tmp_path):
    archive = tmp_path / "RN50.pt"
    torch.jit.trace(_TorchScriptHolder(clip_model[0]), torch.ones(2)).save(str(archive))
    loaded = load_high_level_encoder(archive)
    torch.testing.assert_close(loaded.prompt_embeddings, encoder.prompt_embeddings)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), encoder(x))


def test_bad_clip_inputs_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match=r"no such file for clip_weights \(--clip-weights\)") as err:
        load_high_level_encoder(tmp_path / "missing.pt")
    assert "\n" not in str(err.value) and "nothing is downloaded" in str(err.value)
    import torchvision

    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(WeightsError, match="does not fit this model; missing keys") as err:
        load_high_level_encoder(wrong)
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if the 'clip' extra were not installed
    with pytest.raises(IQAError, match=r"needs open_clip.*pip install 'iqa-cli\[clip\]'"):
        load_high_level_encoder(wrong)
