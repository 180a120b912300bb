#!/usr/bin/env bash
# Wall time and peak RSS of `quant quantize` (min-max, sqnr) against onnxruntime's
# quantize_static (MinMax, Entropy) on cls.prep and det.prep with the same samples, each in a
# fresh process under GNU time, all in this one run; prints the ratios ours / theirs.
#
# Usage: benches/peers.sh [FIXTURES_DIR]   (default ../shared/fixtures)
# Needs: the release binary (cargo build --release), /usr/bin/time, and a Python with
# onnxruntime (.venv/bin/python, or $PYTHON).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
fixtures="${1:-$root/../shared/fixtures}"
quant="$root/target/release/quant"
python="${PYTHON:-$root/.venv/bin/python}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

[ -x "$quant" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 2; }
"$python" -c "import onnxruntime" || { echo "needs onnxruntime in $python" >&2; exit 2; }

# measure NAME CMD...: runs CMD under GNU time; prints "NAME seconds MiB".
measure() {
    local name="$1"; shift
    /usr/bin/time -f "%e %M" -o "$out/$name.time" "$@" >"$out/$name.log" 2>&1 || {
        echo "$name failed:" >&2; cat "$out/$name.log" >&2; exit 1; }
    read -r secs kib <"$out/$name.time"
    echo "$name $secs $((kib / 1024))"
}

printf '%-5s %-28s %9s %9s\n' model run "wall s" "peak MiB"
for model in cls det; do
    onnx="$fixtures/models/$model.prep.onnx"
    list="$fixtures/$model/calib/input_list.txt"
    samples=$(grep -cv '^\s*$' "$list")
    declare -A secs=() mib=()
    for run in quant-min-max quant-sqnr ort-MinMax ort-Entropy; do
        case $run in
            quant-min-max) cmd=("$quant" quantize --input_network "$onnx" --input_list "$list"
                                --output_encodings "$out/$model.mm.json") ;;
            quant-sqnr) cmd=("$quant" quantize --input_network "$onnx" --input_list "$list"
                             --output_encodings "$out/$model.sqnr.json"
                             --act_quantizer_calibration sqnr) ;;
            ort-*) cmd=("$python" "$root/benches/ort_quantize.py" "$onnx" "$list"
                        "$out/$model.$run.onnx" "${run#ort-}") ;;
        esac
        read -r _ s m < <(measure "$model-$run" "${cmd[@]}")
        secs[$run]=$s; mib[$run]=$m
        printf '%-5s %-28s %9s %9s\n' "$model" "$run ($samples samples)" "$s" "$m"
    done
    for pair in "quant-min-max ort-MinMax" "quant-sqnr ort-Entropy"; do
        read -r ours theirs <<<"$pair"
        awk -v m="$model" -v o="$ours" -v t="$theirs" \
            -v os="${secs[$ours]}" -v ts="${secs[$theirs]}" -v om="${mib[$ours]}" -v tm="${mib[$theirs]}" \
            'BEGIN { printf "%-5s %s / %s: time %.2f, peak RSS %.2f\n", m, o, t, os / ts, om / tm }'
    done
done
