#!/usr/bin/env bash
# Every precision the QDQ export writes, on cls and det (`.prep`), in one table: W8A8, W8A16,
# W4A8 per-channel, one Conv kept in FP32 (the rest INT8), an INT32 Add, and the FP16 model of
# a non-quantized (gpu) target. Each quantized variant is evaluated by `quant build` (QuantSim)
# and its `model.qdq.onnx` run in onnxruntime on the same eval samples; the FP16 model is run in
# onnxruntime against the float model.
#
# Usage: benches/precision.sh [QUANT] [FIXTURES]
#   QUANT     the binary (default target/release/quant)
#   FIXTURES  the fixtures folder (default ../shared/fixtures)
# Needs a Python with onnxruntime and onnx as $PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
QUANT="$(realpath "${1:-target/release/quant}")"
FIXTURES="$(realpath "${2:-../shared/fixtures}")"
PYTHON="${PYTHON:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The overrides are chosen by rule, not by name: the first Conv's output kept FP32, and the first
# Add whose two inputs are activations overridden to INT32 on both inputs and its output.
"$PYTHON" - "$FIXTURES" "$work" <<'PY'
import json, sys, onnx
fixtures, work = sys.argv[1], sys.argv[2]
for model in ("cls", "det"):
    graph = onnx.load(f"{fixtures}/models/{model}.prep.onnx").graph
    stored = {i.name for i in graph.initializer}
    conv = next(n for n in graph.node if n.op_type == "Conv")
    json.dump({"activation_encodings": {conv.output[0]: [{"bitwidth": 32, "dtype": "float"}]},
               "param_encodings": {}}, open(f"{work}/{model}-fp32conv.json", "w"))
    add = next(n for n in graph.node
               if n.op_type == "Add" and all(i not in stored for i in n.input))
    entries = {t: [{"bitwidth": 32, "dtype": "int"}] for t in list(add.input) + list(add.output)}
    json.dump({"activation_encodings": entries, "param_encodings": {}},
              open(f"{work}/{model}-int32add.json", "w"))
    print(f"{model}: FP32 Conv `{conv.name}`, INT32 Add `{add.name}`")
PY

{
    cat <<TOML
[pipeline]
name = "precision"

[models.cls]
path = "$FIXTURES/models/cls.prep.onnx"

[models.det]
path = "$FIXTURES/models/det.prep.onnx"

[calibration.cls]
input_list = "$FIXTURES/cls/calib/input_list.txt"

[calibration.det]
input_list = "$FIXTURES/det/calib/input_list.txt"

[eval.cls]
input_list = "$FIXTURES/cls/eval/input_list.txt"
labels = "$FIXTURES/cls/eval/labels.txt"

[eval.det]
input_list = "$FIXTURES/det/eval/input_list.txt"
TOML
    for model in cls det; do
        cat <<TOML

[overrides.$model-fp32conv]
path = "$work/$model-fp32conv.json"

[overrides.$model-int32add]
path = "$work/$model-int32add.json"

[targets.$model-gpu-fp16]
backend = "gpu"
models = ["$model"]
float_bitwidth = 16
TOML
        for variant in w8a8 w8a16 w4a8pc fp32conv int32add; do
            case "$variant" in
                w8a8) settings='' ;;
                w8a16) settings='act_bitwidth = 16' ;;
                w4a8pc) settings=$'weights_bitwidth = 4\nuse_per_channel_quantization = true\nparam_quantizer_schema = "symmetric"' ;;
                fp32conv) settings="overrides = [\"$model-fp32conv\"]" ;;
                int32add) settings="overrides = [\"$model-int32add\"]" ;;
            esac
            cat <<TOML

[targets.$model-$variant]
backend = "htp"
models = ["$model"]
calibration = "$model"
evaluate = "$model"
bias_bitwidth = 32
$settings
TOML
        done
    done
} > "$work/quant.toml"

"$QUANT" build "$work" --allow-outside-root --json > "$work/build.json"
"$PYTHON" - "$work" "$FIXTURES" <<'PY'
import json, os, subprocess, sys
import numpy as np
import onnxruntime as ort
work, fixtures = sys.argv[1], sys.argv[2]
ort.set_default_logger_severity(3)
labels = [int(l) for l in open(f"{fixtures}/cls/eval/labels.txt").read().split()]
dims = {"cls": "1,3,48,192", "det": "1,3,320,320"}
print("| model | variant | QuantSim | onnxruntime (QDQ export) | QDQ file bytes |")
print("|---|---|---|---|---|")
for model in ("cls", "det"):
    for variant in ("w8a8", "w8a16", "w4a8pc", "fp32conv", "int32add"):
        out = f"{work}/quant-out/{model}-{variant}/{model}"
        metrics = json.load(open(f"{out}/report.json"))["evaluation"]["metrics"]
        qdq = f"{out}/model.qdq.onnx"
        check = json.loads(subprocess.run(
            [sys.executable, "tests/python/check_qdq.py", qdq,
             f"{fixtures}/{model}/eval/input_list.txt", "--input_dim", "x", dims[model],
             "--float", f"{fixtures}/models/{model}.prep.onnx"],
            check=True, capture_output=True, text=True).stdout)
        if model == "cls":
            sim = f"top-1 {metrics['top1']['quantized']['accuracy'] * 100:.2f} %"
            correct = sum(int(a == l) for a, l in zip(check["qdq_argmax"][0], labels))
            rt = f"top-1 {100 * correct / len(labels):.2f} %"
        else:
            sim = f"SQNR {metrics['outputs'][0]['sqnr_db_mean']:.2f} dB"
            rt = f"SQNR {check['sqnr_db'][0]:.2f} dB"
        print(f"| {model} | {variant} | {sim} | {rt} | {os.path.getsize(qdq)} |")
    # The FP16 model of the gpu target against the float model, in onnxruntime.
    fp16 = f"{work}/quant-out/{model}-gpu-fp16/{model}/model.fp16.onnx"
    f32 = ort.InferenceSession(f"{fixtures}/models/{model}.prep.onnx")
    f16 = ort.InferenceSession(fp16)
    shape = [int(d) for d in dims[model].split(",")]
    base = f"{fixtures}/{model}/eval"
    signal = noise = 0.0
    per_sample, agree, n = [], 0, 0
    for line in open(f"{base}/input_list.txt"):
        path = line.split()[0]
        x = np.fromfile(os.path.join(base, path), np.float32).reshape(shape)
        a = f32.run(None, {f32.get_inputs()[0].name: x})[0].astype(np.float64)
        b = f16.run(None, {f16.get_inputs()[0].name: x})[0].astype(np.float64)
        s, e = float(np.sum(a * a)), float(np.sum((a - b) ** 2))
        per_sample.append(10 * np.log10(s / e) if e > 0 else float("inf"))
        agree += int(np.argmax(a) == np.argmax(b))
        n += 1
    mean = float(np.mean(per_sample))
    extra = f", argmax agrees {agree}/{n}" if model == "cls" else ""
    print(f"| {model} | gpu FP16 (non-quantized) | — | SQNR vs float {mean:.2f} dB (mean over {n} samples){extra} | {os.path.getsize(fp16)} |")
PY
