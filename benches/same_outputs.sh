#!/usr/bin/env bash
# Checks that two `quant` binaries write byte-identical outputs: on the bundled example and, when
# ../shared/fixtures is present, on a det pipeline (det.prep with its 16 calibration samples,
# per-channel htp and htp-a16 targets). Each binary builds each pipeline twice in the same folder:
# cold (empty store, no outputs) and warm (outputs deleted, store kept). All four output trees of
# a pipeline must be equal file for file.
#
# Usage: benches/same_outputs.sh BASE_BINARY NEW_BINARY
set -euo pipefail
base=${1:?usage: same_outputs.sh BASE_BINARY NEW_BINARY}
new=${2:?usage: same_outputs.sh BASE_BINARY NEW_BINARY}
crate="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# outputs NAME SOURCE_DIR: builds SOURCE_DIR's pipeline with both binaries, cold and warm, and
# compares every output tree with the base binary's cold one.
outputs() {
    local name=$1 source=$2 bin label files
    for bin in base new; do
        local quant; quant=$([[ $bin == base ]] && echo "$base" || echo "$new")
        rm -rf "$work/$name"
        cp -r "$source" "$work/$name"
        rm -rf "$work/$name/quant-out" "$work/$name/.quant"
        for label in cold warm; do
            [[ $label == warm ]] && rm -rf "$work/$name/quant-out"
            QUANT_CACHE_DIR="$work/store-$name-$bin" "$quant" build "$work/$name" --json \
                >"$work/$name-$bin-$label.json" 2>"$work/$name-$bin-$label.err" ||
                { echo "$name: $bin $label build failed" >&2; cat "$work/$name-$bin-$label.err" >&2; exit 1; }
            cp -r "$work/$name/quant-out" "$work/out-$name-$bin-$label"
        done
    done
    files=$(cd "$work/out-$name-base-cold" && find . -type f | wc -l)
    for other in base-warm new-cold new-warm; do
        if ! diff -r "$work/out-$name-base-cold" "$work/out-$name-$other" >"$work/diff" 2>&1; then
            echo "$name: base-cold and $other differ:" >&2
            head -20 "$work/diff" >&2
            exit 1
        fi
    done
    echo "$name: $files output files byte-identical across base cold/warm and new cold/warm"
}

outputs text-orientation "$crate/pipelines/text-orientation"

fixtures="$crate/../shared/fixtures"
if [[ -f "$fixtures/models/det.prep.onnx" && -f "$fixtures/det/calib/input_list.txt" ]]; then
    det="$work/det-source"
    mkdir -p "$det/models" "$det/calib" "$det/overrides"
    cp "$fixtures/models/det.prep.onnx" "$det/models/det.onnx"
    cp "$fixtures/det/calib/"* "$det/calib/"
    echo '{"activation_encodings": {"sigmoid_0.tmp_0": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "max": 0.9, "min": 0.0}]}, "param_encodings": {}}' >"$det/overrides/head.json"
    cat >"$det/quant.toml" <<'TOML'
[pipeline]
name = "det"

[models.det]
path = "models/det.onnx"

[calibration.pages]
input_list = "calib/input_list.txt"

[overrides.head]
path = "overrides/head.json"

[targets.htp]
backend = "htp"
calibration = "pages"
overrides = ["head"]
bias_bitwidth = 32
param_quantizer_schema = "symmetric"
use_per_channel_quantization = true

[targets.htp-a16]
extends = "htp"
act_bitwidth = 16
TOML
    outputs det "$det"
else
    echo "det: skipped (fixtures not found at $fixtures)"
fi
