"""README.md's code runs as shown: every ```python block, and every command of every ```console block.

The blocks are read from README.md itself, so an edited or added block is tested without touching
this file. Commands run in README order in one working folder holding generated stand-ins for the
files the README names (example patches, renders + DB.csv, a BAPPS tree, an original Graphics-LPIPS
checkpoint); ImageNet weights come from the suite's fake TORCH_HOME. What a command's shown output
promises is checked:

- an ``error: ...`` line: exit code 1 and exactly that line on stderr;
- a JSON document: exit code 0 and a document with the same keys;
- otherwise exit code 0, and every shown line without numbers (which depend on the random
  weights and the machine), table borders or "..." appears in the output.

A console command other than ``iqa ...`` fails the test until this file learns to run it (``ls``
is known: the names it shows must exist). ```bash blocks are the install steps .ci/run runs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BOX = set("┏┓┗┛┃━┡┩│─└┘├┤┼┳┻╇╈┯┷╋╭╮╰╯")


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int  # line of the opening fence in README.md


@dataclass(frozen=True)
class Command:
    text: str  # as written after "$ "
    shown: tuple[str, ...]  # the output lines shown under it


def readme_blocks(lang: str | None = None) -> list[Block]:
    blocks, current, start, kind = [], None, 0, ""
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        fence = re.match(r"^```(\S*)\s*$", line)
        if fence and current is None:
            current, start, kind = [], number, fence.group(1)
        elif line.startswith("```") and current is not None:
            blocks.append(Block(kind, "\n".join(current), start))
            current = None
        elif current is not None:
            current.append(line)
    return [b for b in blocks if lang is None or b.lang == lang]


def commands(block: Block) -> list[Command]:
    out: list[Command] = []
    for line in block.body.splitlines():
        if line.startswith("$ "):
            out.append(Command(line[2:], ()))
        elif out:
            out[-1] = Command(out[-1].text, out[-1].shown + (line,))
    return [Command(c.text, tuple(_strip_trailing_blanks(c.shown))) for c in out]


def _strip_trailing_blanks(lines):
    lines = list(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _normal(text: str) -> str:
    return " ".join(text.split())


# -- the stand-ins for the files the README names ------------------------------------------------
def make_workdir(root: Path) -> Path:
    import numpy as np
    import torch

    from bapps_fixtures import make_bapps_tree
    from db_fixtures import make_tid
    from conftest import SHARED_EXAMPLES, save_png
    from mesh_fixtures import make_render_db, textured_object
    from test_original_checkpoints import original_network

    root.mkdir(parents=True, exist_ok=True)
    for name in ("ex_ref", "ex_p0", "ex_p1"):
        shutil.copy(SHARED_EXAMPLES / f"{name}.png", root / f"{name}.png")
    shutil.copy(root / "ex_ref.png", root / "a.png")
    shutil.copy(root / "ex_p1.png", root / "b.png")
    for i, name in enumerate(("x.png", "y.png")):
        save_png(root / "refs" / name, textured_object((64, 64), i))
        save_png(root / "dists" / name, textured_object((64, 64), i + 10))
    for i in range(3):
        save_png(root / "frames" / f"f{i}.png", textured_object((64, 64), 20 + i))
    save_png(root / "ref.png", np.zeros((512, 512, 3), np.uint8))
    save_png(root / "small.png", np.zeros((256, 256, 3), np.uint8))
    torch.save(original_network("graphics").state_dict(), root / "graphics_lpips.pth")  # as the original saves it
    make_render_db(root, n_models=3, n_stimuli_per_model=5, size=(256, 256))  # renders/, DB.csv; 15 stimuli
    val = ["val/traditional", "val/cnn", "val/superres", "val/deblur", "val/color", "val/frameinterp"]
    make_bapps_tree(root / "dataset", {"2afc": val + ["train/traditional", "train/cnn", "train/mix"],
                                       "jnd": ["val/traditional", "val/cnn"]}, n=3)
    make_tid(root / "tid2013", n_refs=4, types=(1, 8, 10), levels=(1, 3, 5))  # TID2013's layout, tiny images
    photos(root / "photos")
    return root


def photos(root: Path) -> None:
    """Crops of real photographs, large enough for NIQE's 96x96 blocks, two of them blurred."""
    import numpy as np
    from scipy import ndimage
    from skimage import data

    from conftest import save_png

    for name in ("astronaut", "coffee", "chelsea"):
        image = getattr(data, name)()[:192, :256]
        save_png(root / f"{name}.png", image)
    blurred = ndimage.gaussian_filter(data.astronaut()[:192, :256].astype(float), (2.5, 2.5, 0))
    save_png(root / "astronaut_blur.png", blurred.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def console_dir(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("readme") / "console")


@pytest.fixture(scope="module")
def python_dir(tmp_path_factory) -> Path:
    from iqa_cli.datasets.mesh_db import patchify

    root = make_workdir(tmp_path_factory.mktemp("readme") / "python")
    patchify(root / "renders", root / "DB.csv", root / "store.h5")
    return root


# -- running a command ---------------------------------------------------------------------------------
def run_iqa(argv: list[str]):
    from typer.testing import CliRunner

    from iqa_cli.cli.app import app

    return CliRunner().invoke(app, argv)


def check_command(command: Command) -> list[str]:
    """Run one console command in the current folder; the ways it departs from the README."""
    argv = shlex.split(command.text, comments=True)
    where = f"README command `{command.text.split('  #')[0].strip()}`"
    if argv[0] == "ls":
        listed = Path(argv[1])
        names = [n for line in command.shown for n in line.split()]
        return [f"{where}: {listed / n} does not exist" for n in names if not (listed / n).exists()]
    if argv[0] != "iqa":
        return [f"{where}: tests/test_readme.py does not know how to run '{argv[0]}'; teach it or drop the command"]
    result = run_iqa(argv[1:])
    shown = [re.sub(r"\s+#\s*\(.*\)\s*$", "", line) for line in command.shown]  # "# (this goes to stderr)"
    if shown and shown[0].startswith("error:"):
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        if result.exit_code != 1 or [_normal(ln) for ln in lines] != [_normal(shown[0])]:
            return [f"{where}: shows `{shown[0]}`, got exit {result.exit_code} and {lines or result.output!r}"]
        return []
    if result.exit_code != 0:
        return [f"{where}: exit {result.exit_code}: {(result.stderr or result.output).strip()[-500:]}"]
    if shown and shown[0].startswith("{"):
        documented, actual = json.loads("\n".join(shown)), json.loads(result.stdout)
        if set(documented) != set(actual):
            return [f"{where}: shows JSON keys {sorted(documented)}, got {sorted(actual)}"]
        return []
    output = _normal(result.stdout + "\n" + result.stderr)
    return [f"{where}: shows `{line.strip()}`, which is not in its output" for line in shown
            if line.strip() and not re.search(r"\d|\.\.\.", line) and not BOX & set(line)
            and _normal(line) not in output]


CONSOLE = readme_blocks("console")
PYTHON = readme_blocks("python")


def test_the_readme_has_code_to_test():
    assert len(CONSOLE) >= 5 and len(PYTHON) >= 1
    assert sum(len(commands(b)) for b in CONSOLE) >= 15


@pytest.mark.parametrize("block", [pytest.param(b, id=f"line{b.line}",
                                                marks=[pytest.mark.slow] if "iqa train" in b.body else [])
                                   for b in CONSOLE])
def test_console_block_runs_as_shown(block, console_dir, monkeypatch):
    """Blocks run in README order in one folder: later ones use what earlier ones wrote (store.h5)."""
    monkeypatch.chdir(console_dir)
    problems = [p for command in commands(block) for p in check_command(command)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", [pytest.param(b, id=f"line{b.line}") for b in PYTHON])
def test_python_block_runs(block, python_dir, monkeypatch):
    monkeypatch.chdir(python_dir)
    exec(compile(block.body, f"README.md, block at line {block.line}", "exec"), {"__name__": "__readme__"})


def test_offline_weights_message_is_the_one_shown(empty_torch_home, python_dir, monkeypatch):
    """The README's offline error, as the code writes it (with this machine's cache folder and the
    no-download ending of IQA_OFFLINE=1), and the download addresses it lists are torchvision's."""
    import torchvision.models as tvm

    shown = next(b.body.strip() for b in readme_blocks("") if b.body.startswith("error: ImageNet weights"))
    monkeypatch.chdir(python_dir)
    result = run_iqa(["score-pair", "ex_ref.png", "ex_p0.png"])
    assert result.exit_code == 1
    actual = result.stderr.strip()
    folder = re.search(r" in (\S+) \(download", shown).group(1)
    expected = shown.replace(folder, str(empty_torch_home / "hub" / "checkpoints"))
    assert actual.split("; IQA_OFFLINE")[0] == expected.split("; the download failed")[0]
    text = README.read_text(encoding="utf-8")
    for weights in (tvm.AlexNet_Weights, tvm.VGG16_Weights, tvm.SqueezeNet1_1_Weights):
        assert weights.IMAGENET1K_V1.url in text
