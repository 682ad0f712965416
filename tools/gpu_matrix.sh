#!/usr/bin/env bash
# The rollout benchmark matrix on a GPU machine, prepared here and run there in one call.
#
# A GPU machine lent through the `device` tool has torch, transformers and lightning but no network and no
# room for SmolLM2's 92 MB GGUF, so what it needs travels in .gpu/ (ignored by git, carried by the call):
# SmolLM2-135M-Instruct's config and tokenizer (speed does not depend on the weights: the matrix builds the
# architectures with random weights), a trained tiny policy, and the wheel of the transformers this project is
# developed and tested with (the machine's image has an older one, 5.17, whose sdpa attention copies the keys
# and values of grouped-query models once per query head whenever a mask is passed; the run unpacks the wheel
# into /tmp/site and records which version ran).
#
#   bash tools/gpu_matrix.sh prepare [TINY_POLICY_DIR]   # here: fills .gpu/ (default policy: the tests' cached
#                                                         # SFT policy, 2 layers; the README's CPU row uses the
#                                                         # study's warm start, study/paper/runs/warm_start/seed0/policy)
#   bash tools/gpu_matrix.sh run                          # there: matrix.md, machine.txt and logs.tgz under $OUT
#   SMALL=1 bash tools/gpu_matrix.sh run                  # a quick check of the script itself, on a CPU
#                                                         # (1/64 of the prompts and tokens, 2 of the 1.7B's layers)
#
# Rows (issue: GPU rollouts at least 2x `model.generate`): the tiny trained policy, fp32, 512 prompts x 8;
# SmolLM2-135M's architecture and tokenizer, bf16, 256 prompts x 8, 256 new tokens, T = 0.7; a 1.7B Llama of
# SmolLM2-1.7B's shape with the same tokenizer, bf16, 128 prompts x 8, 256 new tokens; then the share of an
# Expert Iteration and a PPO round spent sampling (tools/bench_step.py) on the tiny policy.
set -euo pipefail
TINY_POLICY=${2:+$(realpath "$2")}  # before the cd: relative to where the script was called from
cd "$(dirname "$0")/.."
GPU_DIR=.gpu
# The project's environment where there is one (here), else the machine's python3 (the GPU machine's image).
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}

# The newest complete policy the tests' SFT fixture exported (pytest's cache; not its tmp* staging folders).
fixture_policy() {
    local dir
    for dir in $(ls -td .pytest_cache/d/lit-reason-sft-policy/[0-9a-f]*/ 2>/dev/null); do
        if [[ -f "$dir/config.json" && -f "$dir/model.safetensors" ]]; then
            echo "$dir"
            return
        fi
    done
}

prepare() {
    local tiny=${TINY_POLICY:-$(fixture_policy)}
    [[ -n "$tiny" && -f "$tiny/config.json" ]] || {
        echo "no trained tiny policy: pass an exported policy directory (or run the tests once)" >&2
        exit 2
    }
    local exclude smollm2
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qxF "/$GPU_DIR/" "$exclude" 2>/dev/null || echo "/$GPU_DIR/" >>"$exclude"
    smollm2=$($PY tools/fetch_smollm2.py | tail -1)  # its own line: a failed fetch stops here
    rm -rf "$GPU_DIR" && mkdir -p "$GPU_DIR"
    cp -r "$tiny" "$GPU_DIR/tiny-policy"
    $PY - "$GPU_DIR/smollm2-135m" "$smollm2" <<'EOF'
import sys

from transformers import AutoConfig, AutoTokenizer

target, source = sys.argv[1], sys.argv[2]
options = {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
AutoConfig.from_pretrained(source, **options).save_pretrained(target)  # the architecture, no weights
AutoTokenizer.from_pretrained(source, **options).save_pretrained(target)
EOF
    $PY -m pip download -q --no-deps --only-binary=:all: -d "$GPU_DIR/wheels" \
        "transformers==$($PY -c 'import transformers; print(transformers.__version__)')" ||
        echo "no transformers wheel fetched: the GPU machine will run its image's own transformers" >&2
    du -sh "$GPU_DIR"
    echo "carry $GPU_DIR in the device call: run(command='bash tools/gpu_matrix.sh run', carry=['$GPU_DIR'])"
}

run() {
    # The device tool brings back at most 8 files from $OUT, so the logs are written outside it and archived into
    # $OUT/logs.tgz after each benchmark (a job killed at its limit still returns what finished); matrix.md
    # gathers the figures. Each benchmark has its own time limit, so that one that hangs or overruns cannot take
    # the others' device time: the limits and their 5 s grace add up to 460 s, the two probes and the wheel's
    # unpacking about 60 s more.
    # The 135M row, the issue's main target, runs first.
    local out=${OUT:-/tmp/gpu_matrix}
    local logs=/tmp/gpu_matrix_logs/logs
    [[ -d $GPU_DIR/tiny-policy && -d $GPU_DIR/smollm2-135m ]] || {
        echo "no $GPU_DIR/tiny-policy or $GPU_DIR/smollm2-135m:" \
            "run 'bash tools/gpu_matrix.sh prepare' first and carry $GPU_DIR" >&2
        exit 2
    }
    rm -rf "$logs" && mkdir -p "$logs" "$out"
    (timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) | tee "$out/machine.txt"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    # The carried transformers only where it installs and imports with the image's own packages (peft too).
    if compgen -G "$GPU_DIR/wheels/*.whl" >/dev/null && [[ -z "${SMALL:-}" ]]; then
        if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$GPU_DIR"/wheels/*.whl && PYTHONPATH=$PYTHONPATH:/tmp/site $PY -c "import transformers, peft"; then
            PYTHONPATH=$PYTHONPATH:/tmp/site
        else
            echo "the carried transformers did not install or import: the image's own runs" | tee -a "$out/machine.txt"
        fi
    fi
    # The CUDA-graph path runs last: a capture that fails may leave torch's allocator unable to free its cache
    # (older torch skips ending the capture's pool when the capture is refused), which must not cost the other
    # paths' figures.
    local device=cuda step_device=gpu scale=1 step_questions=64 big_layers=24 decoding=static,dynamic,cuda_graph
    local step_decodings="cuda_graph" stretch=1
    if [[ -n "${SMALL:-}" ]]; then
        device=cpu step_device=cpu scale=64 step_questions=8 big_layers=2 decoding=static,dynamic
        step_decodings="static dynamic" stretch=3  # a CPU is slower: the limits stretch
    fi
    local smol=$GPU_DIR/smollm2-135m
    local big="{\"hidden_size\": 2048, \"intermediate_size\": 8192, \"num_hidden_layers\": $big_layers, \"num_attention_heads\": 32, \"num_key_value_heads\": 32}"
    (timeout 20 $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" ||
        true) | tee -a "$out/machine.txt"
    archive() { tar -czf "$out/logs.tgz" -C "$(dirname "$logs")" logs || true; }  # a lost archive stops nothing
    outcome() {  # what, its exit status, seconds allowed, log: a line in matrix.md unless it succeeded
        case $2 in
        0) ;;
        124 | 137) echo "TIMED OUT after $3 s: $1 (see $4 in logs.tgz)" | tee -a "$out/matrix.md" ;;
        *) echo "FAILED (exit $2; a check or an error): $1 (see $4 in logs.tgz)" | tee -a "$out/matrix.md" ;;
        esac
    }
    bench() {  # name, seconds allowed, then bench_rollout's options
        local name=$1 seconds=$(($2 * stretch)) status=0
        shift 2
        echo "== $name: $*" | tee -a "$out/matrix.md"
        timeout -k 5 "$seconds" $PY tools/bench_rollout.py --device "$device" --decoding "$decoding" "$@" \
            >"$logs/$name.log" 2>&1 || status=$?
        grep -E "^(model|lit-reason|cuda_graph)|differ|only|Error" "$logs/$name.log" | tee -a "$out/matrix.md" || true
        outcome "$name" "$status" "$seconds" "logs/$name.log"
        archive
    }
    bench smollm2-135m 140 --policy $smol --random-weights --dtype bfloat16 --prompts $((256 / scale)) \
        --num-samples 8 --max-new-tokens $((256 / scale)) --temperature 0.7 --batch-size 2048
    bench smollm2-1.7b-shape 160 --policy $smol --random-weights --dtype bfloat16 --config-overrides "$big" \
        --prompts $((128 / scale)) --num-samples 8 --max-new-tokens $((256 / scale)) --batch-size 1024
    bench tiny 80 --policy $GPU_DIR/tiny-policy --prompts $((512 / scale)) --num-samples 8 --batch-size 4096
    for step_decoding in $step_decodings; do
        local seconds=$((60 * stretch))
        echo "== round shares, $step_decoding decoding: bench_step.py on the tiny policy" | tee -a "$out/matrix.md"
        local status=0
        timeout -k 5 "$seconds" $PY tools/bench_step.py --policy $GPU_DIR/tiny-policy --device "$step_device" \
            --only ppo,expert_iteration --questions $step_questions --samples 8 --rounds 3 \
            --decoding "$step_decoding" --json "$logs/step-$step_decoding.json" >"$logs/step-$step_decoding.log" 2>&1 ||
            status=$?
        tail -6 "$logs/step-$step_decoding.log" | tee -a "$out/matrix.md"
        outcome "bench_step ($step_decoding)" "$status" "$seconds" "logs/step-$step_decoding.log"
        archive
    done
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*) echo "usage: bash tools/gpu_matrix.sh prepare [TINY_POLICY_DIR] | run" >&2 && exit 2 ;;
esac
