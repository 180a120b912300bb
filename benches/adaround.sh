#!/usr/bin/env bash
# AdaRound on cls and det (`.prep` forms): accuracy and cost of
# `quant quantize --apply_algorithms adaround`, against AIMET's figures.
#
# Runs, each W4A8 per-channel min-max (weights symmetric per channel, activations 8-bit, bias 32,
# statistics gathered with the weights quantized as AIMET does), plus cls W8A8 per-tensor:
#   cls W4A8 pc, 1000 iterations      (AIMET: 97.25 %, 46.7 s)
#   det W4A8 pc, 200 iterations       (AIMET: 9.56 dB, 122.9 s)
#   cls W8A8, 1000 iterations         (AIMET: 98.00 %, with its default config: also run so)
# and, as the baseline measured in the same run, the same quantization without AdaRound.
# For each: the AdaRound step's wall time (quant prints it), the whole process's wall time and
# peak RSS (/usr/bin/time), quantsim top-1 (`quant eval`, cls), and onnxruntime on the QDQ export
# (cls top-1; det output SQNR against the float det.prep.onnx, as AIMET's table measures it).
# AIMET's seconds are the figures of ../shared/fixtures/reference/aimet_algorithms.md (an idle
# machine), not measured here.
#
# Usage: benches/adaround.sh [QUANT] [FIXTURES]
#   QUANT     the binary (default target/release/quant)
#   FIXTURES  the fixtures folder (default ../shared/fixtures)
# Needs $PYTHON (default /work/venv/bin/python) with onnxruntime. ITERATIONS_SCALE=10 runs the
# default 10000 / 2000 iterations instead. RUNS="cls-w4-adaround det-w4-adaround" runs only the
# named runs. Each row ends with the 1-minute load average when the run started: on a shared
# machine, a timing taken under load says little.
set -euo pipefail
cd "$(dirname "$0")/.."
QUANT="$(realpath "${1:-target/release/quant}")"
FIXTURES="$(realpath "${2:-../shared/fixtures}")"
PYTHON="${PYTHON:-/work/venv/bin/python}"
SCALE="${ITERATIONS_SCALE:-1}"
work="$(mktemp -d)"
# KEEP=1 keeps the outputs (printed at the end) for a closer look.
if [ -n "${KEEP:-}" ]; then trap 'echo "outputs kept in $work"' EXIT; else trap 'rm -rf "$work"' EXIT; fi

run() { # name model dims iterations weights-args...
    local name=$1 model=$2 dims=$3 iterations=$4
    shift 4
    if [ -n "${RUNS:-}" ] && [[ " $RUNS " != *" $name "* ]]; then
        return
    fi
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    local algorithms=()
    if [ "$iterations" != 0 ]; then
        printf 'num_iterations: %s\n' "$iterations" > "$work/$name.yaml"
        algorithms=(--apply_algorithms adaround --config "$work/$name.yaml")
    fi
    mkdir -p "$work/$name"
    /usr/bin/time -v "$QUANT" quantize \
        --input_network "$FIXTURES/models/$model.prep.onnx" \
        --input_list "$FIXTURES/$model/calib/input_list.txt" \
        --output_encodings "$work/$name/encodings.json" \
        --output_float_model "$work/$name/model.adaround.onnx" \
        --output_model "$work/$name/model.qdq.onnx" \
        --act_bitwidth 8 --bias_bitwidth 32 --calibrate_with_quantized_weights \
        --input_dim x "$dims" "${algorithms[@]}" "$@" \
        > "$work/$name/stdout" 2> "$work/$name/stderr"
    local step wall rss
    step=$(grep -o 'layers in [0-9.]*s' "$work/$name/stderr" | grep -o '[0-9.]*' || echo -)
    wall=$(grep 'Elapsed (wall clock)' "$work/$name/stderr" | awk '{print $NF}')
    rss=$(grep 'Maximum resident' "$work/$name/stderr" | awk '{print $NF}')
    local network="$FIXTURES/models/$model.prep.onnx"
    [ -f "$work/$name/model.adaround.onnx" ] && network="$work/$name/model.adaround.onnx"
    local sim=- rounding=onnx
    # A quantsim config means AIMET's simulation, which is what `quant build` evaluates with.
    [[ " $* " == *" --quantsim_config "* ]] && rounding=aimet
    if [ "$model" = cls ]; then
        sim=$("$QUANT" eval --input_network "$network" --encodings "$work/$name/encodings.json" \
            --rounding "$rounding" \
            --input_list "$FIXTURES/cls/eval/input_list.txt" --labels "$FIXTURES/cls/eval/labels.txt" \
            --input_dim x "$dims" --json | "$PYTHON" -c \
            'import json,sys; m=json.load(sys.stdin)["metrics"]; a=m["top1"]["quantized"]["accuracy"]; print(f"{a*100:.2f} %")' 2>/dev/null || echo -)
    fi
    # onnxruntime twice: with its default graph optimizations (Q/DQ pairs fused into integer
    # kernels, with their own rounding) and without (the float Q/DQ the model specifies).
    local ort ort_plain
    ort=$(qdq_metric "$work/$name/model.qdq.onnx" "$model" "$dims" all)
    ort_plain=$(qdq_metric "$work/$name/model.qdq.onnx" "$model" "$dims" disable)
    printf '| %s | %s | %s s | %s | %s MiB | %s | %s | %s | %s |\n' "$name" "$iterations" "$step" \
        "$wall" "$((rss / 1024))" "$sim" "$ort" "$ort_plain" "$load"
}

qdq_metric() { # model.qdq.onnx model dims optimization
    "$PYTHON" tests/python/check_qdq.py "$1" "$FIXTURES/$2/eval/input_list.txt" \
        --float "$FIXTURES/models/$2.prep.onnx" --input_dim x "$3" --optimization "$4" |
        "$PYTHON" -c '
import json, sys
r = json.load(sys.stdin)
model, labels = sys.argv[1], sys.argv[2]
if model == "cls":
    argmax = r["qdq_argmax"][0]
    truth = [int(l) for l in open(labels).read().split()]
    print(f"top-1 {100 * sum(a == t for a, t in zip(argmax, truth)) / len(truth):.2f} %")
else:
    sqnr = r["sqnr_db"][0]
    print(f"SQNR {sqnr:.2f} dB")
' "$2" "$FIXTURES/$2/eval/labels.txt"
}

w4=(--weights_bitwidth 4 --use_per_channel_quantization --param_quantizer_schema symmetric)
echo "| run | iterations | AdaRound step | process wall | peak RSS | quantsim top-1 | onnxruntime (QDQ) | onnxruntime, no graph optimizations | load |"
echo "|---|---|---|---|---|---|---|---|---|"
run cls-w4-plain cls 1,3,48,192 0 "${w4[@]}"
run cls-w4-adaround cls 1,3,48,192 $((1000 * SCALE)) "${w4[@]}"
run det-w4-plain det 1,3,320,320 0 "${w4[@]}"
run det-w4-adaround det 1,3,320,320 $((200 * SCALE)) "${w4[@]}"
run cls-w8-plain cls 1,3,48,192 0 --weights_bitwidth 8
run cls-w8-adaround cls 1,3,48,192 $((1000 * SCALE)) --weights_bitwidth 8
# AIMET's W8A8 figures come from its default config (per-tensor, symmetric weights, its
# placement and rounding): the same quantization here.
aimet8=(--weights_bitwidth 8 --quantsim_config aimet-default)
run cls-w8-aimet-plain cls 1,3,48,192 0 "${aimet8[@]}"
run cls-w8-aimet-adaround cls 1,3,48,192 $((1000 * SCALE)) "${aimet8[@]}"
echo
echo "AdaRound step against AIMET's idle-machine figures (from the fixtures' table, not measured here):"
for pair in cls-w4-adaround:46.7 det-w4-adaround:122.9; do
    name=${pair%%:*} aimet=${pair##*:}
    [ -f "$work/$name/stderr" ] || continue
    step=$(grep -o 'layers in [0-9.]*s' "$work/$name/stderr" | grep -o '[0-9.]*')
    echo "  $name: ${step} s vs $aimet s → $(echo "scale=1; $aimet / $step" | bc)× faster"
done
