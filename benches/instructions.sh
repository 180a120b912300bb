#!/usr/bin/env bash
# Instructions executed (valgrind's callgrind) by a no-op build and a one-override edit, for two
# binaries on the same inputs: the example pipeline and det (det.prep.onnx, 16 samples, two
# targets). Counts do not depend on what else the machine runs, so two binaries can be compared
# on a busy machine, where wall times cannot (benches/build.sh).
#
# Usage: benches/instructions.sh BASE_QUANT NEW_QUANT [FIXTURES]
# Each build is a fresh process; the store is warmed by a cold build first, and the files are
# left to settle (2.5 s) so the no-op takes them by their stamps, as a user's second build does.
set -euo pipefail
crate="$(cd "$(dirname "$0")/.." && pwd)"
base="$(realpath "$1")"
new="$(realpath "$2")"
fixtures="$(realpath "${3:-$crate/../shared/fixtures}")"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Prints the instructions one build of $2 by $1 executes (store $3).
instructions() {
    QUANT_CACHE_DIR="$3" valgrind --tool=callgrind --callgrind-out-file="$work/out.cg" \
        "$1" build "$2" --json >"$work/summary.json" 2>"$work/valgrind.err"
    grep -o 'Collected : [0-9]*' "$work/valgrind.err" | awk '{ print $3 }'
}

# $1 name, $2 pipeline folder (copied), $3 overrides file in it, $4 tensor to re-range.
compare() {
    local name="$1" source="$2" overrides="$3" tensor="$4"
    declare -A noop edit
    for which in base new; do
        local quant="${!which}" dir="$work/$name-$which"
        rm -rf "$dir" "$work/store-$which"
        cp -r "$source" "$dir"
        QUANT_CACHE_DIR="$work/store-$which" "$quant" build "$dir" --json >/dev/null
        sleep 2.5
        QUANT_CACHE_DIR="$work/store-$which" "$quant" build "$dir" --json >/dev/null
        noop[$which]=$(instructions "$quant" "$dir" "$work/store-$which")
        printf '{"activation_encodings": {"%s": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": 0.0, "max": 0.75}]}, "param_encodings": {}}\n' \
            "$tensor" >"$dir/$overrides"
        edit[$which]=$(instructions "$quant" "$dir" "$work/store-$which")
    done
    awk -v n="$name" -v bn="${noop[base]}" -v nn="${noop[new]}" -v be="${edit[base]}" -v ne="${edit[new]}" 'BEGIN {
        printf "%-18s no-op %8.2f M → %8.2f M (%.4f×)   edit %8.2f M → %8.2f M (%.4f×)\n",
            n, bn / 1e6, nn / 1e6, nn / bn, be / 1e6, ne / 1e6, ne / be }'
}

compare example "$crate/pipelines/text-orientation" overrides/head.json "save_infer_model/scale_0.tmp_1"

det="$work/det-source"
mkdir -p "$det/models" "$det/calib" "$det/overrides"
cp "$fixtures/models/det.prep.onnx" "$det/models/det.onnx"
cp "$fixtures/det/calib/"* "$det/calib/"
echo '{"activation_encodings": {}, "param_encodings": {}}' >"$det/overrides/head.json"
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
compare det "$det" overrides/head.json "sigmoid_0.tmp_0"
