#!/usr/bin/env bash
# The GPU path end to end, in one GPU lease of under 10 minutes (issue 19):
#
#   bash benchmarks/gpu_check.sh                     # on a GPU machine without network, from the repo root
#   GPU_CHECK_DRY=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh   # the same steps on the CPU, tiny
#
# Needs .gpu_wheels/ and .gpu_data/ (benchmarks/gpu_check_prepare.sh makes them) and the machine's
# python3 with torch, lightning, transformers, sentence-transformers (what it lacks comes as wheels).
# Steps, each under `timeout` inside one overall deadline (GPU_CHECK_BUDGET seconds), each one's
# output in a log, each one's exit status recorded; a failed step does not stop the next:
#   env       the machine, the GPU and the packages
#   setup     install the carried wheels into /tmp/pydeps (PYTHONPATH; the project itself is not installed)
#   data      ../shared/data/hebnli/HebNLI_val.jsonl from .gpu_data; train/val/test files split by
#             premise (train cycled to TRAIN_PAIRS); a random encoder of mBERT's shape with MiniLM's tokenizer
#   train     `python -m src.train +experiment=hebrew_nli trainer=gpu` in fp32 and in bf16-mixed
#             (at the same time: these check that the path works, the benchmark below times it)
#   verify    both runs' metrics.json, model card, and the exported model loaded in sentence-transformers
#   bench     benchmarks/vs_sentence_transformers.py at batch 16 and at batch 256
#   profile   benchmarks/gpu_profile.py: what a training step is made of, at batch 16 and 256
#   compile   the same for model.compile=true at batch 16, if time is left
# Results land in $OUT (at most 8 files): summary.md, gpu_check.tar.gz (logs, run metrics and
# cards, results, profiler traces), and the benchmark's and profile's json/md.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=${GPU_CHECK_DRY:-0}
PYTHON=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
PYDEPS=${GPU_CHECK_PYDEPS:-/tmp/pydeps}
SHARED=$ROOT/../shared/data/hebnli/HebNLI_val.jsonl
if [ "$DRY" = 1 ]; then
    OUT=${OUT:-/tmp/gpu_out_dry}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    BUDGET=${GPU_CHECK_BUDGET:-1500}
    DEVICE=cpu TRAINER=cpu ENCODER=tiny THREADS=1
    TRAIN_PAIRS=${TRAIN_PAIRS:-128} MAX_STEPS=${MAX_STEPS:-6} VAL_EVERY=${VAL_EVERY:-3}
    REPS=${REPS:-1} B16_PAIRS=${B16_PAIRS:-64} BIG_BATCH=${BIG_BATCH:-32} BIG_PAIRS=${BIG_PAIRS:-64}
    PROFILE_ARGS=${PROFILE_ARGS:---config 16:32-true --warmup 2 --steps 4 --profile-steps 3}
    COMPILE_ARGS=${COMPILE_ARGS:---config 16:32-true:compile --warmup 3 --steps 4 --profile-steps 3}
    COMPILE_MIN_LEFT=${COMPILE_MIN_LEFT:-100000}  # compiling on this CPU takes minutes: only when asked
else
    : "${OUT:?set OUT to the folder for the results}"
    BUDGET=${GPU_CHECK_BUDGET:-570}  # under the device tool's 600 s limit, packing included
    DEVICE=cuda TRAINER=gpu ENCODER=mbert-size THREADS=8
    TRAIN_PAIRS=${TRAIN_PAIRS:-6400} MAX_STEPS=${MAX_STEPS:-300} VAL_EVERY=${VAL_EVERY:-150}
    REPS=${REPS:-2} B16_PAIRS=${B16_PAIRS:-3200} BIG_BATCH=${BIG_BATCH:-256} BIG_PAIRS=${BIG_PAIRS:-25600}
    PROFILE_ARGS=${PROFILE_ARGS:---config 16:bf16-mixed --config 16:32-true --config 256:bf16-mixed}
    COMPILE_ARGS=${COMPILE_ARGS:---config 16:bf16-mixed:compile --warmup 30 --profile-steps 5}
    COMPILE_MIN_LEFT=${COMPILE_MIN_LEFT:-60}  # seconds the compile step needs at least, or it is skipped
fi
# more levers for the batch-16 benchmark, e.g. B16_EXTRA="--lever fp32:trainer.precision=32-true" (2 more
# trainings, about 45 s on an H200); ours without a lever is bf16-mixed there, the GPU default
B16_EXTRA=${B16_EXTRA:-}
RESERVE=30  # seconds kept for packing the results, whatever happens before
START=$(date +%s)
LOGS=$WORK/logs
RESULTS=$WORK/results
DATA=$WORK/data
STEPS=$WORK/steps.tsv
rm -rf "$WORK" && mkdir -p "$LOGS" "$RESULTS" "$DATA" "$OUT"

export PYTHONPATH=$PYDEPS:${GPU_CHECK_PYTHONPATH:+$GPU_CHECK_PYTHONPATH:}$ROOT
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled HF_HOME=$WORK/hf
export ROOT DRY PYTHON WORK PYDEPS SHARED DEVICE TRAINER ENCODER THREADS TRAIN_PAIRS MAX_STEPS VAL_EVERY
export REPS B16_PAIRS B16_EXTRA BIG_BATCH BIG_PAIRS PROFILE_ARGS COMPILE_ARGS LOGS RESULTS DATA

left() { echo $((BUDGET - ($(date +%s) - START))); }

# run_step NAME CAP LATER COMMAND...: COMMAND under a timeout of CAP seconds, or less so that LATER
# seconds (for the steps after it) and the packing reserve remain; its output to $LOGS/NAME.log
run_step() {
    local name=$1 cap=$2 later=$3
    shift 3
    local limit=$(($(left) - RESERVE - later))
    [ "$limit" -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt 15 ]; then
        printf '%s\tskipped\t0\t%s\n' "$name" "no time left" >>"$STEPS"
        echo "[$name] skipped: $(left)s left"
        return 99
    fi
    echo "[$name] start, timeout ${limit}s, $(left)s left"
    local began=$(date +%s)
    timeout -k 15 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    local took=$(($(date +%s) - began))
    local note=""
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && note="timed out after ${limit}s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$took" "$note" >>"$STEPS"
    echo "[$name] exit $rc after ${took}s ${note}"
    [ "$rc" = 0 ] || tail -n 20 "$LOGS/$name.log" | cut -c1-300 | sed "s/^/[$name] | /"
    return $rc
}

env_step() {
    set -x
    date -u
    uname -a
    nproc
    free -g
    df -h /tmp "$ROOT"
    nvidia-smi || true
    "$PYTHON" -V
    "$PYTHON" -m pip list 2>/dev/null | grep -iE "^(torch|lightning|pytorch-lightning|transformers|sentence-transformers|tokenizers|torchmetrics|accelerate|pyarrow|pandas|fsspec|huggingface.hub|httpx|requests|aiohttp|xxhash|numpy|scipy|jinja2|pyyaml|packaging|safetensors|triton|datasets|dill|multiprocess|hydra-core|omegaconf|antlr4-python3-runtime) "
    "$PYTHON" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
    command -v gcc cc nvcc || true
    git -C "$ROOT" log --oneline -1 || true
    ls -l .gpu_wheels .gpu_data
}

setup_step() {
    set -e
    # datasets: the newest carried version whose bounds the machine's packages meet
    local datasets
    datasets=$("$PYTHON" - <<'PY'
import glob
import importlib.metadata as md
import os
import re
import sys
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

forced = os.environ.get("DATASETS_VERSION")
carried = {}
for wheel in glob.glob(".gpu_wheels/*.whl"):
    name, version = os.path.basename(wheel).split("-")[:2]
    if canonicalize_name(name) != "datasets":
        carried[canonicalize_name(name)] = Version(version)

def have(name):
    if canonicalize_name(name) in carried:
        return carried[canonicalize_name(name)]
    try:
        return Version(md.version(name))
    except md.PackageNotFoundError:
        return None

choices = []
for wheel in glob.glob(".gpu_wheels/datasets-*.whl"):
    version = Version(os.path.basename(wheel).split("-")[1])
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    unmet = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        found = have(req.name)
        if found is None or (req.specifier and not req.specifier.contains(found, prereleases=True)):
            unmet.append(f"{req.name}{req.specifier} (here: {found})")
    print(f"datasets {version}: " + ("all requirements met" if not unmet else "unmet: " + ", ".join(unmet)), file=sys.stderr)
    choices.append((forced is not None and str(version) != forced, len(unmet), -version.major, -version.minor, -version.micro, wheel))
print(sorted(choices)[0][-1])
PY
)
    echo "chosen: $datasets"
    local wheels=()
    for w in .gpu_wheels/*.whl; do
        case "$w" in
        */datasets-*) [ "$w" = "$datasets" ] && wheels+=("$w") ;;
        *-py312-* | *-cp312-*)
            # a wheel for CPython 3.12 only: on another Python (a dry run) the environment's own copy stays
            if "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then wheels+=("$w"); else echo "not on this Python: $w"; fi ;;
        *) wheels+=("$w") ;;
        esac
    done
    rm -rf "$PYDEPS"
    "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --target "$PYDEPS" "${wheels[@]}"
    ls "$PYDEPS"
    "$PYTHON" - <<'PY'
import importlib.metadata as md

import datasets, hydra, omegaconf  # noqa: F401

import src.data.datamodule, src.model, src.train  # noqa: F401  (the project, importable from the repo root)

for name in ("hydra-core", "omegaconf", "antlr4-python3-runtime", "datasets", "dill", "multiprocess", "fsspec",
             "pyarrow", "huggingface_hub", "transformers", "sentence-transformers", "lightning", "torch"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
print("src from", src.__file__)
PY
}

data_step() {
    set -e
    mkdir -p "$(dirname "$SHARED")"
    [ -f "$SHARED" ] || cp .gpu_data/HebNLI_val.jsonl "$SHARED"
    "$PYTHON" - <<'PY'
import filecmp
import json
import os
from pathlib import Path

from src.data.files import split_by_group

assert filecmp.cmp(os.environ["SHARED"], ".gpu_data/HebNLI_val.jsonl", shallow=False), "the shared file differs from .gpu_data's"
print("shared file in place:", os.environ["SHARED"])
rows = [json.loads(line) for line in Path(os.environ["SHARED"]).read_text(encoding="utf-8").splitlines() if line.strip()]
parts = split_by_group([str(r["promptID"]) for r in rows], {"val": 0.15, "test": 0.15}, seed=42)
train = parts["train"]
parts["train"] = [train[i % len(train)] for i in range(int(os.environ["TRAIN_PAIRS"]))]  # cycled
for name, indices in parts.items():
    path = Path(os.environ["DATA"]) / f"{name}.jsonl"
    path.write_text("".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in indices), encoding="utf-8")
    print(name, len(indices), "pairs,", len({rows[i]["promptID"] for i in indices}), "premises ->", path)
PY
    "$PYTHON" benchmarks/vs_sentence_transformers.py --encoder "$ENCODER" --tokenizer .gpu_data/minilm_tokenizer \
        --save-encoder "$WORK/encoder"
    ls -l "$WORK/encoder"
}

train_run() {  # train_run NAME PRECISION
    "$PYTHON" -m src.train +experiment=hebrew_nli trainer="$TRAINER" logger=csv \
        model.name_or_path="$WORK/encoder" data.hub_dataset=null \
        data.train_file="$DATA/train.jsonl" data.val_file="$DATA/val.jsonl" data.test_file="$DATA/test.jsonl" \
        trainer.precision="$2" trainer.max_steps="$MAX_STEPS" trainer.val_check_interval="$VAL_EVERY" \
        trainer.log_every_n_steps=25 hydra.run.dir="$WORK/runs/$1" paths.cache_dir="$WORK/cache_$1"
}

verify_step() {
    "$PYTHON" - <<'PY'
import json
import math
import os
import sys
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

device = os.environ["DEVICE"]
ok = True
for run in ("train_fp32", "train_bf16"):
    folder = Path(os.environ["WORK"]) / "runs" / run
    metrics_file, card = folder / "metrics.json", folder / "model" / "README.md"
    if not metrics_file.exists() or not card.exists():
        print(f"{run}: MISSING metrics.json or model/README.md")
        ok = False
        continue
    metrics = json.loads(metrics_file.read_text())
    finite = all(math.isfinite(v) for v in metrics.values())
    print(f"{run}: {len(metrics)} metrics, all finite: {finite}; val/spearman_cosine {metrics.get('val/spearman_cosine')}, "
          f"test/spearman_cosine {metrics.get('test/spearman_cosine')}; card {card.stat().st_size} bytes")
    ok &= finite and any(k.startswith("val/") for k in metrics) and any(k.startswith("test/") for k in metrics)
    model = SentenceTransformer(str(folder / "model"), device=device)
    embeddings = model.encode(["שלום עולם", "מה שלומך?"], convert_to_tensor=True)
    print(f"{run}: sentence-transformers loads model/ on {embeddings.device}: embeddings {tuple(embeddings.shape)}, "
          f"finite: {bool(torch.isfinite(embeddings).all())}")
    ok &= bool(torch.isfinite(embeddings).all())
sys.exit(0 if ok else 1)
PY
}

bench_small() {
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/vs_sentence_transformers.py --device "$DEVICE" --encoder "$ENCODER" --encoder-dir "$WORK/encoder" \
        --reps "$REPS" --batch-size 16 --train-pairs "$B16_PAIRS" --threads "$THREADS" \
        --peer-lever bf16:bf16=true $B16_EXTRA --name gpu_b16 --results-dir "$RESULTS"
}

bench_big() {
    # sentence-transformers' fp32 default would take several times longer at this batch size: left out
    local compile=()
    [ "${BENCH_COMPILE:-0}" = 1 ] && compile=(--lever compile:model.compile=true)
    "$PYTHON" benchmarks/vs_sentence_transformers.py --device "$DEVICE" --encoder "$ENCODER" --encoder-dir "$WORK/encoder" \
        --reps "$REPS" --batch-size "$BIG_BATCH" --train-pairs "$BIG_PAIRS" --threads "$THREADS" \
        --peer-lever bf16:bf16=true "${compile[@]}" --only "ours,sentence_transformers+bf16${compile:+,ours+compile}" \
        --name "gpu_b$BIG_BATCH" --results-dir "$RESULTS"
}

profile_step() {
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/gpu_profile.py --device "$DEVICE" --encoder-dir "$WORK/encoder" --threads "$THREADS" \
        $PROFILE_ARGS --out-dir "$RESULTS" --name gpu_profile
}

compile_step() {
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/gpu_profile.py --device "$DEVICE" --encoder-dir "$WORK/encoder" --threads "$THREADS" \
        $COMPILE_ARGS --out-dir "$RESULTS" --name gpu_profile_compile
}

export -f env_step setup_step data_step train_run verify_step bench_small bench_big profile_step compile_step

printf 'step\texit\tseconds\tnote\n' >"$STEPS"
run_step env 30 0 bash -c env_step
run_step setup 90 0 bash -c setup_step
run_step data 120 0 bash -c data_step
# both trainings at once: they check the path; their speed is what the benchmark measures
run_step train_fp32 240 180 bash -c 'train_run train_fp32 32-true' &
sleep 2
run_step train_bf16 240 180 bash -c 'train_run train_bf16 bf16-mixed' &
wait
run_step verify 60 150 bash -c verify_step
run_step bench_b16 210 130 bash -c bench_small
run_step "bench_b$BIG_BATCH" 170 60 bash -c bench_big
run_step profile 120 0 bash -c profile_step
if [ "$(left)" -gt $((COMPILE_MIN_LEFT + RESERVE)) ]; then
    run_step compile 300 0 bash -c compile_step
else
    printf 'compile\tskipped\t0\t%s\n' "$(left)s left, needs $COMPILE_MIN_LEFT" >>"$STEPS"
    echo "[compile] skipped: $(left)s left"
fi

# ---- pack what came out: summary.md, one archive, and the results files -------------------------
nvidia-smi --query-gpu=name,memory.used,memory.total,temperature.gpu,clocks.sm --format=csv >"$LOGS/nvidia_smi_end.txt" 2>&1
{
    echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ), $( [ "$DRY" = 1 ] && echo "DRY RUN on the CPU" || echo "device $DEVICE"), $(($(date +%s) - START))s of ${BUDGET}s"
    echo
    echo "| step | exit | seconds | note |"
    echo "| --- | --- | --- | --- |"
    tail -n +2 "$STEPS" | sed 's/\t/ | /g; s/^/| /; s/$/ |/'
    echo
    grep -h "^train_\|^datasets \|^chosen" "$LOGS/verify.log" "$LOGS/setup.log" 2>/dev/null | sed 's/^/    /'
    for f in "$RESULTS"/gpu_b*.md "$RESULTS"/gpu_profile*.md; do
        [ -f "$f" ] && { echo; echo "## $(basename "$f")"; echo; cat "$f"; }
    done
} >"$OUT/summary.md"
tar -czf "$OUT/gpu_check.tar.gz" -C "$WORK" --exclude='*.ckpt' --exclude='*.safetensors' --exclude='*.bin' \
    --exclude='runs/*/checkpoints' --exclude='cache*' --exclude='hf' --exclude='encoder' --exclude='data' \
    logs results runs steps.tsv 2>"$LOGS/tar.log"
if [ "$(stat -c %s "$OUT/gpu_check.tar.gz")" -gt $((15 * 1024 * 1024)) ]; then  # the traces made it too big
    tar -czf "$OUT/gpu_check.tar.gz" -C "$WORK" --exclude='*.ckpt' --exclude='*.safetensors' --exclude='*.bin' \
        --exclude='runs/*/checkpoints' --exclude='cache*' --exclude='hf' --exclude='encoder' --exclude='data' \
        --exclude='*.trace.json.gz' logs results runs steps.tsv
fi
for f in gpu_b16.json gpu_b16.md "gpu_b$BIG_BATCH.json" "gpu_b$BIG_BATCH.md" gpu_profile.json gpu_profile.md; do
    [ -f "$RESULTS/$f" ] && cp "$RESULTS/$f" "$OUT/"
done
ls -l "$OUT"
echo
# the console gets the summary without the profiler's op tables (the reply keeps only its tail)
awk '/^Top ops by self/ {skip=1} /^### |^## [A-Za-z0-9_]+[.]md$/ {skip=0} !skip' "$OUT/summary.md" | grep -v '^```' | cut -c1-400
