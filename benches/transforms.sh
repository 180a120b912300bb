#!/usr/bin/env bash
# The model transforms' accuracy table: cls and det, W8A8 per-tensor and W4A8 per-channel
# min-max (with float weights while calibrating, qairt's default, and with quantized weights,
# AIMET's way), each plain, with CLE, and with CLE + bias correction, built by one `quant build` of a
# generated manifest over the shared fixtures; then cls's QDQ exports run in onnxruntime.
#
# Usage: benches/transforms.sh [QUANT] [FIXTURES] [FORM]
#   QUANT     the binary (default target/release/quant)
#   FIXTURES  the fixtures folder (default ../shared/fixtures)
#   FORM      canonical (BatchNorms present, the default) or prep (folded by onnxruntime)
# Needs a Python with onnxruntime as $PYTHON (default .venv/bin/python) for the cross-check.
# ONLY=cost runs only the last part: the cost of CLE in a det build.
set -euo pipefail
cd "$(dirname "$0")/.."
QUANT="$(realpath "${1:-target/release/quant}")"
FIXTURES="$(realpath "${2:-../shared/fixtures}")"
FORM="${3:-canonical}"
PYTHON="${PYTHON:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ "${ONLY:-}" != cost ]; then
{
    cat <<TOML
[pipeline]
name = "transforms"

[models.cls]
path = "$FIXTURES/models/cls.$FORM.onnx"
input_dims = { x = [1, 3, 48, 192] }

[models.det]
path = "$FIXTURES/models/det.$FORM.onnx"
input_dims = { x = [1, 3, 320, 320] }

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
        for scheme in w8a8 w4a8pc w4a8pc-aimet; do
            for algos in plain cle cle-bc; do
                case "$scheme" in
                    w8a8) settings='weights_bitwidth = 8' ;;
                    w4a8pc) settings=$'weights_bitwidth = 4\nuse_per_channel_quantization = true\nparam_quantizer_schema = "symmetric"' ;;
                    # AIMET's way: activation statistics gathered with the weights quantized.
                    w4a8pc-aimet) settings=$'weights_bitwidth = 4\nuse_per_channel_quantization = true\nparam_quantizer_schema = "symmetric"\ncalibrate_with_quantized_weights = true' ;;
                esac
                case "$algos" in
                    plain) list='[]' ;;
                    cle) list='["cle"]' ;;
                    cle-bc) list='["cle", "bias_correction"]' ;;
                esac
                cat <<TOML

[targets.$model-$scheme-$algos]
backend = "htp"
models = ["$model"]
calibration = "$model"
evaluate = "$model"
act_bitwidth = 8
bias_bitwidth = 32
$settings
algorithms = $list
TOML
            done
        done
    done
} > "$work/quant.toml"

start=$(date +%s.%N)
"$QUANT" build "$work" --allow-outside-root --json > "$work/build.json"
end=$(date +%s.%N)
printf 'one build of 18 targets: %.1f s\n' "$(echo "$end - $start" | bc)"
"$PYTHON" - "$work" "$FIXTURES" <<'PY'
import json, subprocess, sys, os
work, fixtures = sys.argv[1], sys.argv[2]
build = json.load(open(f"{work}/build.json"))
print("counts:", {k: v for k, v in build.items() if isinstance(v, (int, float))})
print()
print("| target | quantsim | onnxruntime on the QDQ export |")
print("|---|---|---|")
for model in ("cls", "det"):
    for scheme in ("w8a8", "w4a8pc", "w4a8pc-aimet"):
        for algos in ("plain", "cle", "cle-bc"):
            target = f"{model}-{scheme}-{algos}"
            out = f"{work}/quant-out/{target}/{model}"
            metrics = json.load(open(f"{out}/report.json"))["evaluation"]["metrics"]
            if model == "cls":
                top1 = metrics["top1"]
                sim = (f"top-1 {top1['quantized']['accuracy'] * 100:.2f} % "
                       f"(float {top1['float']['accuracy'] * 100:.2f} %)")
                check = subprocess.run(
                    [sys.executable, "tests/python/check_qdq.py", f"{out}/model.qdq.onnx",
                     f"{fixtures}/cls/eval/input_list.txt", "--input_dim", "x", "1,3,48,192"],
                    check=True, capture_output=True, text=True)
                argmax = json.loads(check.stdout)["qdq_argmax"][0]
                labels = [int(l) for l in open(f"{fixtures}/cls/eval/labels.txt").read().split()]
                correct = sum(int(a == l) for a, l in zip(argmax, labels))
                ort = f"top-1 {100 * correct / len(labels):.2f} %"
            else:
                sim = f"output SQNR {metrics['outputs'][0]['sqnr_db_mean']:.2f} dB"
                ort = "—"
            print(f"| {target} | {sim} | {ort} |")
PY
fi

# The cost of CLE in a build: det alone, no evaluation, cold (empty store each time), plain
# against `algorithms = ["cle"]`, alternating, 3 times each; medians and their ratio.
for algos in plain cle; do
    mkdir -p "$work/cost-$algos"
    list='[]'
    [ "$algos" = cle ] && list='["cle"]'
    cat > "$work/cost-$algos/quant.toml" <<TOML
[pipeline]
name = "cost"

[models.det]
path = "$FIXTURES/models/det.$FORM.onnx"
input_dims = { x = [1, 3, 320, 320] }

[calibration.det]
input_list = "$FIXTURES/det/calib/input_list.txt"

[targets.htp]
backend = "htp"
calibration = "det"
algorithms = $list
TOML
done
for round in 1 2 3; do
    for algos in plain cle; do
        rm -rf "$work/cost-$algos/quant-out" "$work/cost-store"
        start=$(date +%s%N)
        QUANT_CACHE_DIR="$work/cost-store" "$QUANT" build "$work/cost-$algos" --allow-outside-root --json > /dev/null
        end=$(date +%s%N)
        echo "$algos $(( (end - start) / 1000000 ))" >> "$work/cost.txt"
    done
done
"$PYTHON" - "$work/cost.txt" <<'PY'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    algos, ms = line.split()
    times.setdefault(algos, []).append(int(ms))
plain, cle = statistics.median(times["plain"]), statistics.median(times["cle"])
print(f"\ndet cold build, no evaluation (median of 3): plain {plain:.0f} ms, with CLE {cle:.0f} ms, "
      f"ratio {cle / plain:.2f} (CLE's own cost is the difference: {cle - plain:.0f} ms)")
PY
