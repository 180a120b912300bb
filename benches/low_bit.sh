#!/usr/bin/env bash
# Low-bit defaults and packed 4-bit weights, on the fixtures' prep models: for W8A8, W8A16 and
# W4A8 per-channel (per-row on Gemm/MatMul, packed INT4 weights), with float weights while
# calibrating (qairt's default) and, for W4A8, with quantized weights (AIMET's way):
#   - cls top-1 on cls/eval (400) and det output SQNR on det/eval (8), from quantsim
#     (`quant eval`) and from onnxruntime running the QDQ export (`tests/python/check_qdq.py`,
#     default session options);
#   - for W4A8, the what-ifs of `benches/low_bit_variants.py` (AIMET's Conv+Relu supergroups,
#     float biases) in onnxruntime;
#   - the QDQ files' sizes and their stored weight bytes (`benches/qdq_weight_bytes.py`).
#
# Usage: benches/low_bit.sh [QUANT] [FIXTURES]
#   QUANT     the binary (default target/release/quant)
#   FIXTURES  the fixtures folder (default ../shared/fixtures)
# Needs a Python with onnxruntime and onnx as $PYTHON (default .venv/bin/python).
# ONLY="cls" or ONLY="det" runs one model; CONFIGS="w4a8_pc ..." a subset of the settings;
# SIM=0 skips quantsim (the slow part with a debug binary) and reports onnxruntime only.
set -euo pipefail
cd "$(dirname "$0")/.."
QUANT="$(realpath "${1:-target/release/quant}")"
FIXTURES="$(realpath "${2:-../shared/fixtures}")"
PYTHON="${PYTHON:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

W4="--weights_bitwidth 4 --use_per_channel_quantization --use_per_row_quantization --pack_4_bit_weights"
declare -A FLAGS=(
    [w8a8]=""
    [w8a16]="--act_bitwidth 16"
    [w8a8_pc]="--use_per_channel_quantization --use_per_row_quantization"
    [w4a8_pc]="$W4"
    [w4a8_pc_qw]="$W4 --calibrate_with_quantized_weights"
)
CONFIGS="${CONFIGS:-w8a8 w8a16 w8a8_pc w4a8_pc w4a8_pc_qw}"

for model in ${ONLY:-cls det}; do
    float="$FIXTURES/models/$model.prep.onnx"
    calib="$FIXTURES/$model/calib/input_list.txt"
    list="$FIXTURES/$model/eval/input_list.txt"
    labels=()
    dims=1,3,320,320
    if [ "$model" = cls ]; then
        labels=(--labels "$FIXTURES/cls/eval/labels.txt")
        dims=1,3,48,192
    fi
    for config in $CONFIGS; do
        out="$work/$model.$config"
        # shellcheck disable=SC2086
        "$QUANT" quantize --input_network "$float" --input_list "$calib" \
            --output_encodings "$out.json" --output_model "$out.qdq.onnx" ${FLAGS[$config]} \
            >/dev/null 2>&1
        if [ "${SIM:-1}" != 0 ]; then
            "$QUANT" eval --input_network "$float" --encodings "$out.json" --input_list "$list" \
                "${labels[@]}" --json >"$out.eval.json" 2>/dev/null
        else
            echo null >"$out.eval.json"
        fi
        "$PYTHON" tests/python/check_qdq.py "$out.qdq.onnx" "$list" --float "$float" \
            >"$out.ort.json"
        "$PYTHON" benches/qdq_weight_bytes.py "$out.qdq.onnx" >"$out.bytes.json"
        if [ "${config#w4}" != "$config" ]; then
            "$PYTHON" benches/low_bit_variants.py "$out.qdq.onnx" "$float" "$list" \
                "${labels[@]}" --dims "$dims" >"$out.variants.json"
        fi
        python3 - "$model" "$config" "$out" "${labels[1]:-}" <<'PY'
import json, sys
model, config, out, labels = sys.argv[1:5]
ev = json.load(open(out + ".eval.json"))
ort = json.load(open(out + ".ort.json"))
size = json.load(open(out + ".bytes.json"))
if labels:
    truth = [int(l) for l in open(labels) if l.strip()]
    ours = f"{ev['metrics']['top1']['quantized']['correct']}/400" if ev else "not run"
    theirs = sum(int(a == l) for a, l in zip(ort["qdq_argmax"][0], truth))
    figures = f"quantsim {ours}, onnxruntime {theirs}/400"
else:
    ours = f"{ev['metrics']['outputs'][0]['sqnr_db_mean']:.2f} dB" if ev else "not run"
    figures = f"quantsim {ours}, onnxruntime {ort['sqnr_db'][0]:.2f} dB"
print(f"{model} {config}: {figures}; file {size['file_bytes']} B, "
      f"weights {size['weight_bytes']} B {'/'.join(size['dtypes'])}", flush=True)
try:
    for line in open(out + ".variants.json"):
        v = json.loads(line)
        shown = f"top-1 {v['top1']}/400, p(float class) {v['p_float_class']}" if "top1" in v else f"{v['sqnr_db']:.2f} dB"
        print(f"    onnxruntime, {v['variant']}: {shown}", flush=True)
except FileNotFoundError:
    pass
PY
    done
done
