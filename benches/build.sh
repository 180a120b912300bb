#!/usr/bin/env bash
# Cold build vs one-override edit vs no-op rebuild, with the release binary, on
#   - the bundled example (pipelines/text-orientation: cls, 8 calibration samples, 3 targets), and
#   - det (det.prep.onnx with its 16 calibration samples from ../shared/fixtures; skipped when
#     the fixtures are absent, a failure instead under QUANT_REQUIRE_FIXTURES).
# Each pipeline is copied to a temporary folder with its own empty store (QUANT_CACHE_DIR).
# Wall time is measured around the whole process, as a user sees it. The cold build runs once;
# the edit and the no-op run REPEAT times each (default 5) and their median is reported.
#
#   - det again with `sqnr` calibration (histograms and a range search per activation), with its
#     16 samples and with 160 (each sample and 9 flipped or shifted variants; needs python3).
# Cold builds run COLD_REPEAT times (default 3), each with an empty store, and report the median.
# Usage: benches/build.sh            (builds the release binary first)
#        QUANT=path/to/quant benches/build.sh
# Goals: no-op < 50 ms, one-override edit < 100 ms and >= 100x faster than the cold build.
set -euo pipefail

crate="$(cd "$(dirname "$0")/.." && pwd)"
repeat="${REPEAT:-5}"
if [[ -z "${QUANT:-}" ]]; then
    cargo build --release --quiet --manifest-path "$crate/Cargo.toml"
    QUANT="$crate/target/release/quant"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

now_ns() { date +%s%N; }

# Runs one build of $1 with store $2; prints its wall time in ms (3 decimals) and keeps its
# --json summary in $work/summary.json.
timed_build() {
    local start end
    start=$(now_ns)
    if ! QUANT_CACHE_DIR="$2" "$QUANT" build "$1" --json >"$work/summary.json" 2>"$work/stderr"; then
        echo "quant build $1 failed:" >&2
        cat "$work/stderr" >&2
        exit 1
    fi
    end=$(now_ns)
    awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e6 }'
}

declare -A cold_ms

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Reads one top-level count from the last build's --json summary (jq if present; otherwise the
# first occurrence of the key, which is the top-level one unless per-target counts come first).
summary_count() {
    if command -v jq >/dev/null; then
        jq -r ".$1" "$work/summary.json"
    else
        grep -o "\"$1\": *[0-9]*" "$work/summary.json" | head -1 | grep -o '[0-9]*$'
    fi
}

# bench NAME ROOT OVERRIDES_FILE TENSOR
bench() {
    local name=$1 root=$2 overrides=$3 tensor=$4 store="$work/store-$1"
    local cold noop edit colds=() noops=() edits=() i
    # Cold builds: COLD_REPEAT (default 3) times with an empty store and no outputs; the median
    # counts. The last one leaves the store the edits below start from.
    for ((i = 0; i < ${COLD_REPEAT:-3}; i++)); do
        rm -rf "$store" "$root/quant-out"
        colds+=("$(timed_build "$root" "$store")")
    done
    cold=$(median "${colds[@]}")
    cold_ms[$name]=$cold
    local cold_samples; cold_samples=$(summary_count samples_run)
    local cold_tensors; cold_tensors=$(summary_count tensors_encoded)
    for ((i = 0; i < repeat; i++)); do
        noops+=("$(timed_build "$root" "$store")")
        [[ $(summary_count samples_run) == 0 && $(summary_count tensors_encoded) == 0 ]] ||
            { echo "$name: a no-op build did work: $(cat "$work/summary.json")" >&2; exit 1; }
        # A different max each time, saved like an editor saves (write, rename over).
        printf '{"activation_encodings": {"%s": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "max": %s, "min": 0.0}]}, "param_encodings": {}}\n' \
            "$tensor" "0.$((9 - i))" >"$overrides.tmp"
        mv "$overrides.tmp" "$overrides"
        edits+=("$(timed_build "$root" "$store")")
        edit_samples=$(summary_count samples_run)
        edit_tensors=$(summary_count tensors_encoded)
        edit_eval=$(summary_count eval_samples_run)
    done
    noop=$(median "${noops[@]}")
    edit=$(median "${edits[@]}")
    printf '%-26s cold %9.1f ms (median of %d; %s samples run, %s tensors encoded)\n' "$name" "$cold" "${#colds[@]}" "$cold_samples" "$cold_tensors"
    printf '%-26s edit %9.1f ms (median of %d; last: %s samples run, %s tensors encoded, %s eval samples run)  cold/edit = %.0fx\n' \
        "" "$edit" "$repeat" "$edit_samples" "$edit_tensors" "$edit_eval" "$(awk -v c="$cold" -v e="$edit" 'BEGIN { print c / e }')"
    printf '%-26s no-op %8.1f ms (median of %d)  cold/no-op = %.0fx\n' \
        "" "$noop" "$repeat" "$(awk -v c="$cold" -v n="$noop" 'BEGIN { print c / n }')"
    awk -v e="$edit" -v n="$noop" -v c="$cold" -v name="$name" 'BEGIN {
        printf "%-26s goals: no-op < 50 ms %s, edit < 100 ms %s, cold/edit >= 100x %s\n", "",
            (n < 50 ? "met" : "MISSED"), (e < 100 ? "met" : "MISSED"), (c / e >= 100 ? "met" : "MISSED") }'
}

# watch_bench NAME ROOT OVERRIDES_FILE TENSOR: the same edit under `quant watch`, whose database
# stays in memory between builds. Reports the time from the save to the "Finished" line (this
# includes the watcher's 50 ms debounce and this script's 5 ms polling) and the build time the
# line itself states.
watch_bench() {
    local name=$1 root=$2 overrides=$3 tensor=$4 log="$work/watch-$1.log" pid i n start end
    local waits=() builds=()
: >"$log"
    QUANT_CACHE_DIR="$work/store-$name" "$QUANT" watch "$root" 2>"$log" >/dev/null &
    pid=$!
    wait_lines() { # wait until the log has at least $1 lines matching $2 (60 s at most)
        local deadline=$((SECONDS + 60))
        until [[ $(grep -c "$2" "$log") -ge $1 ]]; do
            ((SECONDS < deadline)) || { echo "$name: quant watch printed no '$2'" >&2; cat "$log" >&2; kill "$pid"; exit 1; }
            sleep 0.005
        done
    }
    wait_lines 1 "Watching for changes"
    for ((i = 0; i < repeat; i++)); do
        n=$(grep -c "Finished" "$log")
        printf '{"activation_encodings": {"%s": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "max": %s, "min": 0.0}]}, "param_encodings": {}}\n' \
            "$tensor" "0.$((5 + i))5" >"$overrides.tmp"
        start=$(now_ns)
        mv "$overrides.tmp" "$overrides"
        wait_lines $((n + 1)) "Finished"
        end=$(now_ns)
        waits+=("$(awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e6 }')")
        builds+=("$(grep "Finished" "$log" | tail -1 | sed -E 's/.* in ([0-9.]+)(m?s).*/\1 \2/' |
            awk '{ printf "%.3f", ($2 == "s" ? $1 * 1000 : $1) }')")
        wait_lines $((n + 1)) "Watching for changes"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local build; build=$(median "${builds[@]}")
    printf '%-26s watch edit: save → Finished %.1f ms, build %.1f ms as printed (medians of %d)  cold/watch build = %.0fx\n' \
        "" "$(median "${waits[@]}")" "$build" "$repeat" "$(awk -v c="${cold_ms[$name]}" -v b="$build" 'BEGIN { print c / b }')"
}

echo "quant: $("$QUANT" --version)   machine: $(nproc) cores"

example="$work/text-orientation"
mkdir -p "$example"
(cd "$crate/pipelines/text-orientation" && tar --exclude=quant-out --exclude=.quant -cf - .) | (cd "$example" && tar -xf -)
bench text-orientation "$example" "$example/overrides/head.json" "save_infer_model/scale_0.tmp_1"
watch_bench text-orientation "$example" "$example/overrides/head.json" "save_infer_model/scale_0.tmp_1"

# The example with the edit on a tensor in the middle of the network (`relu_14.tmp_0`) instead of
# its output: the edit reaches the output, so every eval sample runs through the float model and
# the simulation again (the output edit above is re-quantized from stored traces, running none).
# The first edit also drops the example's pin of the output tensor; the later ones change only
# relu_14.tmp_0.
inner="$work/text-orientation-inner-edit"
cp -r "$example" "$inner"
rm -rf "$inner/quant-out"
bench text-orientation-inner-edit "$inner" "$inner/overrides/head.json" "relu_14.tmp_0"

# The same pipeline without `evaluate`: the example re-evaluates quantized vs float on every
# edit of an encoding; this separates that from the rest.
noeval="$work/text-orientation-no-eval"
cp -r "$example" "$noeval"
rm -rf "$noeval/quant-out"
sed -i '/^evaluate *=/d' "$noeval/quant.toml"
bench text-orientation-no-eval "$noeval" "$noeval/overrides/head.json" "save_infer_model/scale_0.tmp_1"
watch_bench text-orientation-no-eval "$noeval" "$noeval/overrides/head.json" "save_infer_model/scale_0.tmp_1"

fixtures="$crate/../shared/fixtures"
if [[ -f "$fixtures/models/det.prep.onnx" && -f "$fixtures/det/calib/input_list.txt" ]]; then
    det="$work/det"
    mkdir -p "$det/models" "$det/calib" "$det/overrides"
    cp "$fixtures/models/det.prep.onnx" "$det/models/det.onnx"
    cp "$fixtures/det/calib/"* "$det/calib/"
    echo '{"activation_encodings": {}, "param_encodings": {}}' >"$det/overrides/head.json"
    cat >"$det/quant.toml" <<'EOF'
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
act_bitwidth = 8
weights_bitwidth = 8
bias_bitwidth = 32
param_quantizer_schema = "symmetric"
use_per_channel_quantization = true

[targets.htp-a16]
extends = "htp"
act_bitwidth = 16
EOF
    bench det "$det" "$det/overrides/head.json" "sigmoid_0.tmp_0"
    watch_bench det "$det" "$det/overrides/head.json" "sigmoid_0.tmp_0"

    # The same with `sqnr` calibration: histograms of every activation and a range search per
    # tensor, what a cold build costs when accuracy matters; an edit costs the same as above.
    sqnr="$work/det-sqnr"
    cp -r "$det" "$sqnr"
    rm -rf "$sqnr/quant-out"
    sed -i 's/^use_per_channel_quantization = true$/&\nact_quantizer_calibration = "sqnr"/' "$sqnr/quant.toml"
    grep -q '^act_quantizer_calibration = "sqnr"$' "$sqnr/quant.toml"
    bench det-sqnr "$sqnr" "$sqnr/overrides/head.json" "sigmoid_0.tmp_0"
    watch_bench det-sqnr "$sqnr" "$sqnr/overrides/head.json" "sigmoid_0.tmp_0"

    # det-sqnr with 160 calibration samples, the size of a real calibration set: the 16
    # fixture samples and 9 variants of each (flipped, and rolled sideways by 8..48 pixels), so
    # every sample has other content. A cold build grows with the samples; an edit does not.
    big="$work/det-sqnr-160"
    cp -r "$sqnr" "$big"
    rm -rf "$big/quant-out"
    python3 - "$big/calib" <<'PY'
import array, pathlib, sys
calib = pathlib.Path(sys.argv[1])
names = [l.strip() for l in (calib / "input_list.txt").read_text().splitlines() if l.strip() and not l.startswith(("#", "%"))]
C, H, W = 3, 320, 320
def rows(a):
    return [a[i * W:(i + 1) * W] for i in range(C * H)]
def join(rs):
    out = array.array("f")
    for r in rs:
        out.extend(r)
    return out
lines = []
for name in names:
    a = array.array("f", (calib / name).read_bytes())
    assert len(a) == C * H * W, name
    rs = rows(a)
    variants = [a,
                join(r[::-1] for r in rs),
                join(rs[c * H:(c + 1) * H][::-1][i] for c in range(C) for i in range(H)),
                join(r[::-1] for r in (rs[c * H:(c + 1) * H][::-1][i] for c in range(C) for i in range(H)))]
    variants += [join(r[-k:] + r[:-k] for r in rs) for k in (8, 16, 24, 32, 40, 48)]
    for v, data in enumerate(variants):
        out = f"{pathlib.Path(name).stem}_{v}.raw"
        (calib / out).write_bytes(data.tobytes())
        lines.append(out)
(calib / "input_list.txt").write_text("\n".join(lines) + "\n")
PY
    bench det-sqnr-160 "$big" "$big/overrides/head.json" "sigmoid_0.tmp_0"
    watch_bench det-sqnr-160 "$big" "$big/overrides/head.json" "sigmoid_0.tmp_0"
elif [[ -n "${QUANT_REQUIRE_FIXTURES:-}" && "${QUANT_REQUIRE_FIXTURES}" != 0 ]]; then
    # Same rule as the tests: where the fixtures must be there, their absence is a failure.
    echo "det: fixtures not found at $fixtures (QUANT_REQUIRE_FIXTURES is set)" >&2
    exit 1
else
    echo "det: skipped (fixtures not found at $fixtures)"
fi
