"""BasicSR 1.4.2's NIQE (Apache-2.0) as a test oracle, fetched from PyPI at test time.

``basicsr/metrics/niqe.py`` is a faithful numpy port of the official MATLAB NIQE (the BasicSR
authors report MATLAB's 5.7296 on "baboon"). It is used here only to check iqa's implementation,
never shipped: the sdist is downloaded once with pip into a cache folder ($IQA_TEST_ORACLES, else
~/.cache/iqa-test-oracles), and niqe.py with the few modules it imports (matlab_functions'
imresize, the colour utilities, the registry) is extracted into a private ``basicsr`` package
whose ``__init__`` files are empty stubs (the real ones import all of BasicSR's training stack).

Its ``imresize`` computes in float32 (torch.FloatTensor) where MATLAB uses double; ``imresize64``
is the same source with only the dtypes changed, for the comparisons at MATLAB's precision.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest

VERSION = "1.4.2"
SDIST = f"basicsr-{VERSION}.tar.gz"
SHA256 = "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87"
MEMBERS = ("basicsr/metrics/niqe.py", "basicsr/metrics/metric_util.py", "basicsr/utils/matlab_functions.py",
           "basicsr/utils/color_util.py", "basicsr/utils/registry.py")
STUBS = {"basicsr/__init__.py": "", "basicsr/metrics/__init__.py": "",
         "basicsr/utils/__init__.py": "from .color_util import bgr2ycbcr  # noqa: F401\n"}
# float32 -> float64 in matlab_functions.py (each must match exactly as many times as listed)
TO_FLOAT64 = (("torch.from_numpy(img.transpose(2, 0, 1)).float()",
               "torch.from_numpy(img.transpose(2, 0, 1)).double()", 1),
              ("torch.FloatTensor(", "torch.DoubleTensor(", 4),
              ("torch.linspace(1, out_length, out_length)", "torch.linspace(1, out_length, out_length, "
                                                            "dtype=torch.float64)", 1),
              ("torch.linspace(0, p - 1, p)", "torch.linspace(0, p - 1, p, dtype=torch.float64)", 1))


def cache_dir() -> Path:
    return Path(os.environ.get("IQA_TEST_ORACLES", Path.home() / ".cache" / "iqa-test-oracles"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_sdist() -> Path:
    """The BasicSR sdist, downloaded once from PyPI (skip when PyPI cannot be reached)."""
    cache = cache_dir()
    target = cache / SDIST
    if target.exists() and _sha256(target) == SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"basicsr=={VERSION}", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-d", str(cache)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the NIQE oracle (BasicSR {VERSION} sdist) could not be fetched from PyPI: {exc}")
    if proc.returncode != 0 or not target.exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the NIQE oracle (BasicSR {VERSION} sdist) could not be fetched from PyPI: {last}")
    digest = _sha256(target)
    if digest != SHA256:  # a corrupt or substituted download is a failure, not a skip
        target.unlink()
        raise AssertionError(f"{SDIST} from PyPI has sha256 {digest}, expected {SHA256}")
    return target


def load() -> types.SimpleNamespace:
    """The oracle: ``niqe`` (basicsr.metrics.niqe module), ``imresize`` (float32, as shipped),
    ``imresize64`` (the same code in float64) and ``niqe64(img, mu, cov, window)``."""
    sdist = fetch_sdist()
    root = cache_dir() / f"basicsr-{VERSION}-oracle"
    if not all((root / m).exists() for m in (*MEMBERS, *STUBS)):
        # unpacked beside the final folder, then renamed: parallel test processes (pytest -n) never
        # import a half-written file
        tmp = root.with_name(f"{root.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            for member in MEMBERS:
                data = tar.extractfile(f"basicsr-{VERSION}/{member}").read()
                (tmp / member).parent.mkdir(parents=True, exist_ok=True)
                (tmp / member).write_bytes(data)
        for name, text in STUBS.items():
            (tmp / name).write_text(text)
        shutil.rmtree(root, ignore_errors=True)  # an incomplete earlier unpack
        try:
            os.rename(tmp, root)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(tmp, ignore_errors=True)
    if "basicsr" in sys.modules and not str(getattr(sys.modules["basicsr"], "__file__", "")).startswith(str(root)):
        pytest.skip("another 'basicsr' package is imported; the oracle needs its own")
    sys.path.insert(0, str(root))
    try:
        niqe = importlib.import_module("basicsr.metrics.niqe")
        matlab = importlib.import_module("basicsr.utils.matlab_functions")
    finally:
        sys.path.remove(str(root))

    source = (root / "basicsr/utils/matlab_functions.py").read_text()
    for old, new, count in TO_FLOAT64:
        assert source.count(old) == count, f"oracle source changed: {old!r} found {source.count(old)} times"
        source = source.replace(old, new)
    matlab64 = types.ModuleType("basicsr_matlab_functions_float64")
    exec(compile(source, "matlab_functions_float64.py", "exec"), matlab64.__dict__)

    def niqe64(img, mu, cov, window):
        shipped = niqe.imresize
        niqe.imresize = matlab64.imresize
        try:
            return niqe.niqe(img, mu, cov, window)
        finally:
            niqe.imresize = shipped

    return types.SimpleNamespace(niqe=niqe, imresize=matlab.imresize, imresize64=matlab64.imresize, niqe64=niqe64)
