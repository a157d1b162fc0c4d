#!/usr/bin/env bash
# Run HERE (a machine with PyPI access and this project's venv), before a lent GPU machine's run:
# that machine has PyTorch, h5py, scipy, scikit-image, torchmetrics, rich, pytest and pytest-xdist
# but no network, so the few packages it lacks travel as wheels in .whl/ (git-ignored), with the
# NIQE test oracle's sdist. Versions are the ones this project's venv runs its tests with.
#
#   benchmarks/gpu/fetch_wheels.sh [VENV]        # VENV default: .venv ; Python 3.12 wheels (the device's)
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${1:-.venv}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/oracles

# what the device image lacks (or holds in an older version than the code needs)
packages=(typer annotated-doc pydantic pydantic-core typing-inspection annotated-types shellingham rich
          lpips piq open_clip_torch ftfy wcwidth openpyxl et_xmlfile)
pins=()
for name in "${packages[@]}"; do
    version=$("$venv/bin/pip" show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [[ -n $version ]] || { echo "error: $name is not installed in $venv (pip install -e '.[test]' first)" >&2; exit 1; }
    pins+=("$name==$version")
done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "${pins[@]}"

# the NIQE oracle (tests/niqe_oracle.py reads $IQA_TEST_ORACLES)
"$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d .whl/oracles \
    "basicsr==$("$venv/bin/python" -c 'import sys; sys.path.insert(0, "tests"); import niqe_oracle; print(niqe_oracle.VERSION)')"
du -sh .whl
ls .whl .whl/oracles
