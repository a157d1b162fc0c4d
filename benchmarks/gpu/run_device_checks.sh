#!/usr/bin/env bash
# The GPU checks of docs/gpu.md in one command, on a machine with an NVIDIA GPU and no network.
#
#   benchmarks/gpu/fetch_wheels.sh                     # first, on a machine with PyPI (fills .whl/)
#   benchmarks/gpu/run_device_checks.sh tests          # on the GPU machine: CUDA tests, then the suite
#   benchmarks/gpu/run_device_checks.sh bench          #   every benchmark with --device cuda
#   benchmarks/gpu/run_device_checks.sh tests bench    #   both
#   DEVICE=cpu QUICK=1 SKIP_WHEELS=1 PYTHON=.venv/bin/python benchmarks/gpu/run_device_checks.sh bench  # dry run
#
# Everything lands in $OUT (default ./gpu-results): summary.txt (GPU, versions, each step's exit
# status and seconds), pytest.log, and results.tgz with every benchmark's JSON and log. Each step
# has its own time limit (STEP_TIMEOUT seconds, default 420; SUITE_TIMEOUT for the whole suite) and
# a failed step does not stop the others. ONLY="score_pair_throughput niqe_throughput" runs just those
# benchmarks (a rerun). Python: python3 (the one holding PyTorch), or $PYTHON.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
out=${OUT:-$repo/gpu-results}
work=$(mktemp -d)
mkdir -p "$out"
py=${PYTHON:-python3}
summary=$out/summary.txt

if [[ ${SKIP_WHEELS:-0} != 1 ]] && compgen -G ".whl/*.whl" >/dev/null; then  # SKIP_WHEELS=1: the local venv has them
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/iqa-site \
        .whl/*.whl || { echo "error: the carried wheels in .whl/ did not install" >&2; exit 1; }
    export PYTHONPATH=/tmp/iqa-site
fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 IQA_OFFLINE=1
[[ -d .whl/oracles ]] && export IQA_TEST_ORACLES=$repo/.whl/oracles
export TORCH_HOME=$work/torch_home  # random "ImageNet" weights, written below: nothing is downloaded

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "$py" - <<'EOF'
import platform, torch, numpy, h5py
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version(), "| numpy", numpy.__version__, "| h5py", h5py.__version__)
print("gpu:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE VISIBLE",
      "| cpus", __import__("os").cpu_count())
EOF
} >"$summary" 2>&1
"$py" benchmarks/bench_weights.py "$TORCH_HOME" >>"$summary" 2>&1  # whole random torchvision models

step() {  # step NAME TIMEOUT CMD...: run, log to $work/NAME.log, record status and seconds
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name: $*" | tee -a "$summary"
    timeout --signal=INT --kill-after=20 "$limit" "$@" >"$work/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start)) s" | tee -a "$summary"
    tail -n 3 "$work/$name.log" | sed 's/^/   | /' >>"$summary"
}

bench() {  # bench NAME ARGS...: a benchmark script writing $work/NAME.json (ONLY="a b": just those)
    local name=$1
    shift
    [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]] && return
    step "$name" "${STEP_TIMEOUT:-420}" "$py" "benchmarks/$name.py" "$@"
}

for phase in "$@"; do
    case $phase in
    tests)
        # the CUDA-marked tests alone first, so their verdict is there even if the suite runs out of time
        step cuda-tests "${STEP_TIMEOUT:-420}" "$py" -m pytest -q -p no:cacheprovider -m cuda -n 4
        step suite "${SUITE_TIMEOUT:-540}" "$py" -m pytest -q -p no:cacheprovider -n "${JOBS:-12}" --durations 15
        cp "$work/suite.log" "$out/pytest.log"
        ;;
    bench)
        d=${DEVICE:-cuda}
        if [[ ${QUICK:-0} == 1 ]]; then  # a dry run of this script on any machine: tiny sizes
            gb=0.01 pairs=12 images=8 repeats=2 nr=(--crops 2)
            db=(--refs 2 --types 1,2 --levels 1,3) train=() graphiqa=(--batch 4 --crops 2 --images 2 --crop-size 64
                                                                      --image-size 96 --repeats 1)
        else
            gb=2 pairs=400 images=256 repeats=5 nr=()
            db=(--refs 20 --levels 1,3,5) graphiqa=()
            train=(--scale 4 --steps 10 --crop 224 --image-side 288 --npatches 150 --versions 9 --fragment-grid 7
                   --fragment-piece 32 --sorter-preset original)
        fi
        bench mesh_db_throughput --device "$d" --synthetic-gb $gb --skip-loop --precision fp32 tf32 bf16 fp16 \
            --batch-size 2048 --repeats $repeats --json "$work/mesh_db_throughput.json"
        bench score_pair_throughput --device "$d" --pairs $pairs --batch-size 32 128 --repeats $repeats \
            --json "$work/score_pair_throughput.json"
        bench eval_db_throughput --device "$d" "${db[@]}" --batch-size 64 --repeats 3 --json
        bench score_image_throughput --device "$d" --images $images --batch-size 32 --rounds 3 "${nr[@]}" \
            --json "$work/score_image_throughput.json"
        bench niqe_throughput --device "$d" --images $images --batch-size 64 --json
        bench train_throughput --device "$d" "${train[@]}" --json "$work/train_throughput.json"
        bench graphiqa_throughput --device "$d" "${graphiqa[@]}"
        ;;
    *) echo "unknown phase '$phase' (tests, bench)" >&2 ;;
    esac
done

cp "$summary" "$work/" 2>/dev/null
tar czf "$out/results.tgz" -C "$work" --exclude torch_home . && echo "results: $out/results.tgz" >>"$summary"
cat "$summary"
