"""Shared fixtures. Nothing here touches the network or needs a GPU.

Backbone weights: random torchvision state dicts written where torchvision's weights API looks
($TORCH_HOME/hub/checkpoints/<official file name>), so the real loading path runs in every test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

SHARED_EXAMPLES = Path(__file__).parent / "data" / "lpips-examples"


def _write_fake_torchvision_cache(torch_home: Path) -> None:
    import torch

    from iqa_cli.models.backbones import BACKBONES, torchvision_features
    from iqa_cli.weights import torchvision_cache_file

    os.environ["TORCH_HOME"] = str(torch_home)
    for i, spec in enumerate(BACKBONES.values()):
        torch.manual_seed(1234 + i)
        features = torchvision_features(spec)
        state = {f"features.{k}": v.clone() for k, v in features.state_dict().items()}
        target = torchvision_cache_file(spec)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)


@pytest.fixture(scope="session", autouse=True)
def torch_home(tmp_path_factory) -> Path:
    """A private TORCH_HOME holding generated 'ImageNet' weights; downloads are disabled."""
    home = tmp_path_factory.mktemp("torch_home")
    old = {k: os.environ.get(k) for k in ("TORCH_HOME", "IQA_OFFLINE")}
    os.environ["IQA_OFFLINE"] = "1"
    _write_fake_torchvision_cache(home)
    yield home
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    """A TORCH_HOME with no cached weights (the offline, never-downloaded case)."""
    home = tmp_path / "empty_torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("IQA_OFFLINE", "1")
    return home


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def cli(runner):
    """Invoke `iqa ARGS...`; returns click's Result (exit_code, stdout, stderr)."""
    from iqa_cli.cli.app import app

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def save_png(path: Path, array: np.ndarray) -> Path:
    """Write uint8 HxW, HxWx3 or HxWx4 as PNG (parents created)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


@pytest.fixture
def examples(tmp_path) -> dict[str, Path]:
    """The three 64x64 LPIPS example patches (copied, so tests may write beside them)."""
    out = {}
    for name in ("ex_ref", "ex_p0", "ex_p1"):
        out[name] = Path(shutil.copy(SHARED_EXAMPLES / f"{name}.png", tmp_path / f"{name}.png"))
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster and immune to OpenMP spin-wait stalls when
    other processes share the cores (use with pytest.mark.usefixtures in a module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
