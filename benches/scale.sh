#!/usr/bin/env bash
# A large synthetic model (examples/scale_model.rs: L layers of D×D MatMul + Relu, written with
# quant's own ONNX writer) calibrated by `quant quantize` on 200 and on 2 000 samples. Reports
# peak RSS against the model's size, the RSS growth from 200 to 2 000 samples, and throughput;
# writes target/scale.md and the table of book/src/survives.md.
#
#   benches/scale.sh [D] [L] [SAMPLES]      (default 4096 4 2000: 256 MiB of weights)
#
# Acceptance: peak RSS ≤ 1.5 × model size + 64 MiB (the constant: runtime, tract's plan and
# buffers, the process), and ≤ 10 % growth from SAMPLES/10 to SAMPLES samples.
# QUANT=path/to/quant picks the binary (default: target/release/quant, else target/debug/quant).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
d="${1:-4096}"
layers="${2:-4}"
samples="${3:-2000}"
few=$((samples / 10))
quant="${QUANT:-}"
if [ -z "$quant" ]; then
    quant="$root/target/release/quant"
    [ -x "$quant" ] || quant="$root/target/debug/quant"
fi
[ -x "$quant" ] || { echo "build first: cargo build [--release]" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 2; }
profile=$(basename "$(dirname "$quant")")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$root" && cargo run --quiet --example scale_model -- "$work" "$d" "$layers" "$samples")
head -n "$few" "$work/input_list.txt" >"$work/few.txt"
model_bytes=$(stat -c %s "$work/model.onnx")

run() { # list -> "seconds KiB"
    /usr/bin/time -f "%e %M" -o "$work/time" nice "$quant" quantize \
        --input_network "$work/model.onnx" --input_list "$1" \
        --output_encodings "$work/enc.json" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
    cat "$work/time"
}
read -r s_few k_few < <(run "$work/few.txt")
read -r s_all k_all < <(run "$work/input_list.txt")

out="$root/target/scale.md"
mkdir -p "$root/target"
awk -v mb="$model_bytes" -v d="$d" -v l="$layers" -v n="$samples" -v f="$few" \
    -v sf="$s_few" -v kf="$k_few" -v sa="$s_all" -v ka="$k_all" -v prof="$profile" \
    -v day="$(date -u +%Y-%m-%d)" 'BEGIN {
    model = mb / 1048576; pf = kf / 1024; pa = ka / 1024
    limit = 1.5 * model + 64
    growth = (pa / pf - 1) * 100
    tput = (n - f) / (sa - sf)
    printf "| figure | value | target |\n|---|---|---|\n"
    printf "| model | %d layers of %d×%d, %.0f MiB | a few hundred MB |\n", l, d, d, model
    printf "| peak RSS, %d samples | %.0f MiB (%.2f × model) | ≤ 1.5 × model + 64 MiB = %.0f MiB: %s |\n", n, pa, pa / model, limit, (pa <= limit ? "met" : "NOT met")
    printf "| peak RSS, %d samples | %.0f MiB | |\n", f, pf
    printf "| RSS growth %d → %d samples | %+.1f %% | ≤ 10 %%: %s |\n", f, n, growth, (growth <= 10 ? "met" : "NOT met")
    printf "| wall time, %d / %d samples | %.1f s / %.1f s | |\n", f, n, sf, sa
    printf "| throughput (the extra samples over the extra time) | %.0f samples/s | |\n", tput
    printf "\nMeasured by `benches/scale.sh %d %d %d` on %s with the %s binary (nice, on a shared 2-core machine).\n", d, l, n, day, prof
}' >"$out"
cat "$out"
page="$root/book/src/survives.md"
if [ -f "$page" ] && grep -q '<!-- scale:begin -->' "$page"; then
    awk -v table="$out" '
        /<!-- scale:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
        /<!-- scale:end -->/ { skip = 0 }
        !skip { print }
    ' "$page" >"$page.new" && mv "$page.new" "$page"
fi
