#!/usr/bin/env bash
# The long generated-input campaign: every parser's fuzz test with QUANT_FUZZ_CASES cases
# (tests/fuzz_parsers.rs, src/engine/payload_fuzz.rs), counts per parser summed from the tests'
# own `fuzz:` lines, written to target/fuzz-counts.md and the "What quant survives" book page.
#
#   benches/fuzz.sh [CASES] [PAYLOAD_CASES]
#
# CASES (default 40000) is the per-parser count the tests scale (ONNX decoding takes CASES/4,
# tract CASES/30: a case costs more there); PAYLOAD_CASES (default 20 × CASES) is the store
# payload decoders' count, which run ~100× faster per case. A failing case fails the script with
# the test's minimal input. The normal `cargo test` runs 1500 per parser (20000 for payloads).
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-40000}"
payload_cases="${2:-$((cases * 20))}"
log="target/fuzz-long.log"
mkdir -p target
start=$(date +%s)
{
    QUANT_FUZZ_CASES="$cases" nice cargo test --test fuzz_parsers -- --nocapture
    QUANT_FUZZ_CASES="$payload_cases" nice cargo test --lib engine::payload_fuzz -- --nocapture
} 2>&1 | tee "$log" | grep -E '^fuzz:|^test result' || true
if grep -q 'test result: FAILED' "$log" || ! grep -q '^fuzz:' "$log"; then
    echo "fuzz.sh: a test failed; see $log" >&2
    exit 1
fi
seconds=$(( $(date +%s) - start ))
counts="target/fuzz-counts.md"
{
    echo "| parser | cases | panics | oversize allocations |"
    echo "|---|---|---|---|"
    grep '^fuzz:' "$log" | sed -E 's/^fuzz: ([^:]+): ([0-9]+) cases.*/| \1 | \2 | 0 | 0 |/'
    total=$(grep '^fuzz:' "$log" | sed -E 's/^fuzz: [^:]+: ([0-9]+) cases.*/\1/' | paste -sd+ | bc)
    echo "| **total** | **$total** | **0** | **0** |"
    echo
    echo "Run by \`benches/fuzz.sh $cases $payload_cases\` on $(date -u +%Y-%m-%d) in ${seconds} s (debug build, nice)."
} > "$counts"
cat "$counts"
# The book page's table lives between markers, so a run keeps it current.
page="book/src/survives.md"
if [ -f "$page" ] && grep -q '<!-- fuzz:begin -->' "$page"; then
    awk -v counts="$counts" '
        /<!-- fuzz:begin -->/ { print; while ((getline line < counts) > 0) print line; skip = 1; next }
        /<!-- fuzz:end -->/ { skip = 0 }
        !skip { print }
    ' "$page" > "$page.new" && mv "$page.new" "$page"
fi
