#!/usr/bin/env bash
# Peak RSS of `quant quantize` on det.prep with its calibration list once and repeated 10×:
# statistics are reduced as each activation is produced, so memory must not grow with the
# number of samples (acceptance: the 10× run within 10 % of the 1× run).
#
# Usage: benches/memory.sh [FIXTURES_DIR] [CALIBRATION]   (default ../shared/fixtures, min-max)
# Needs the release binary (cargo build --release) and /usr/bin/time.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# Absolute: the lists below name sample files relative to their own (temporary) folder.
fixtures="$(cd "${1:-$root/../shared/fixtures}" && pwd)"
calibration="${2:-min-max}"
quant="$root/target/release/quant"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
[ -x "$quant" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 2; }

calib="$fixtures/det/calib"
grep -v '^\s*$' "$calib/input_list.txt" | sed "s|^|$calib/|" >"$out/x1.txt"
for _ in $(seq 10); do cat "$out/x1.txt"; done >"$out/x10.txt"

peak() { # list -> "seconds KiB"
    /usr/bin/time -f "%e %M" -o "$out/time" "$quant" quantize \
        --input_network "$fixtures/models/det.prep.onnx" --input_list "$1" \
        --output_encodings "$out/enc.json" --act_quantizer_calibration "$calibration" \
        >"$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
    cat "$out/time"
}

read -r s1 k1 < <(peak "$out/x1.txt")
read -r s10 k10 < <(peak "$out/x10.txt")
n=$(wc -l <"$out/x1.txt")
awk -v n="$n" -v c="$calibration" -v s1="$s1" -v k1="$k1" -v s10="$s10" -v k10="$k10" 'BEGIN {
    printf "det.prep %s, %d samples:  %6.2f s, peak RSS %7.1f MiB\n", c, n, s1, k1 / 1024
    printf "det.prep %s, %d samples: %6.2f s, peak RSS %7.1f MiB\n", c, 10 * n, s10, k10 / 1024
    r = k10 / k1
    printf "peak RSS ratio 10x / 1x: %.3f (%s)\n", r, (r <= 1.10 ? "within 10 %" : "OVER 10 %")
    exit (r <= 1.10 ? 0 : 1)
}'
