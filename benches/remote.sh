#!/usr/bin/env bash
# The remote cache, measured against a real nginx (WebDAV PUT) started on loopback:
#   - per pipeline (the bundled example; det with its 16 samples from ../shared/fixtures): a cold
#     local build (no remote, empty store: the baseline), clone A building cold with the remote
#     (it uploads), then clone B with its own empty store building from the remote. Checks B ran
#     0 samples and wrote byte-identical outputs; reports A and B as ratios to the cold build.
#   - sharding: det with 160 calibration samples (the 16 and 9 variants of each, flipped or rolled
#     sideways, as benches/build.sh makes them), built unsharded (local), then as 4 shards with
#     the remote (each its own clone and store), then a merge build in a fresh clone. Checks the
#     merge ran 0 samples and its outputs are byte-identical to the unsharded build's; reports
#     each shard's wall time and the merge's, as ratios to the unsharded build.
# det is skipped when the fixtures are absent (a failure under QUANT_REQUIRE_FIXTURES).
# Usage: benches/remote.sh            (builds the release binary first)
#        QUANT=path/to/quant benches/remote.sh
set -euo pipefail

crate="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${QUANT:-}" ]]; then
    cargo build --release --quiet --manifest-path "$crate/Cargo.toml"
    QUANT="$crate/target/release/quant"
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
if [[ ! -x "$nginx_bin" ]]; then
    echo "nginx is not installed (apt-get install -y nginx)" >&2
    exit 1
fi
work="$(mktemp -d)"
nginx_pid=""
cleanup() {
    [[ -n "$nginx_pid" ]] && kill -- "-$nginx_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# nginx with a WebDAV root on a free port; workers as the current user (root in CI).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx/www/cache" "$work/nginx/tmp"
user_line=""
[[ "$(id -u)" == 0 ]] && user_line="user root root;"
cat >"$work/nginx/nginx.conf" <<EOF
$user_line
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
    client_max_body_size 0;
    server {
        listen 127.0.0.1:$port;
        root $work/nginx/www;
        location /cache/ { dav_methods PUT; create_full_put_path on; }
    }
}
EOF
setsid "$nginx_bin" -c "$work/nginx/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" &
nginx_pid=$!
for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done
remote="http://127.0.0.1:$port/cache"

now_ns() { date +%s%N; }

# timed ROOT STORE [REMOTE] [ARGS...]: one build; prints its wall time in ms and keeps the
# --json summary in $work/summary.json.
timed() {
    local root=$1 store=$2 url=$3 start end
    shift 3
    start=$(now_ns)
    if ! QUANT_CACHE_DIR="$store" QUANT_REMOTE_CACHE="$url" "$QUANT" build "$root" --json "$@" \
        >"$work/summary.json" 2>"$work/stderr"; then
        echo "quant build $root $* failed:" >&2
        cat "$work/stderr" >&2
        exit 1
    fi
    end=$(now_ns)
    awk -v ns=$((end - start)) 'BEGIN { printf "%.0f", ns / 1e6 }'
}

count() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$work/summary.json" "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
clone() { mkdir -p "$2"; cp -r "$1/." "$2/"; rm -rf "$2/quant-out" "$2/.quant"; }

# two_clones NAME DIR: the clone comparison above.
two_clones() {
    local name=$1 dir=$2 cold a b
    clone "$dir" "$work/$name-cold"
    clone "$dir" "$work/$name-a"
    clone "$dir" "$work/$name-b"
    cold=$(timed "$work/$name-cold" "$work/$name-cold.store" "")
    local cold_samples
    cold_samples=$(count samples_run)
    a=$(timed "$work/$name-a" "$work/$name-a.store" "$remote")
    local uploaded
    uploaded=$(count bytes_uploaded)
    b=$(timed "$work/$name-b" "$work/$name-b.store" "$remote")
    local b_samples hits downloaded
    b_samples=$(count samples_run)
    hits=$(count remote_hits)
    downloaded=$(count bytes_downloaded)
    if [[ "$b_samples" != 0 ]]; then
        echo "$name: clone B ran $b_samples samples" >&2
        exit 1
    fi
    diff -r "$work/$name-a/quant-out" "$work/$name-b/quant-out" >/dev/null
    diff -r "$work/$name-cold/quant-out" "$work/$name-b/quant-out" >/dev/null
    printf '%-18s cold %6d ms (%s samples) | A %6d ms = %s x cold, %s bytes up | B %6d ms = %s x cold, 0 samples, %s hits, %s bytes down, outputs identical\n' \
        "$name" "$cold" "$cold_samples" "$a" "$(ratio "$a" "$cold")" "$uploaded" "$b" "$(ratio "$b" "$cold")" "$hits" "$downloaded"
}

two_clones text-orientation "$crate/pipelines/text-orientation"

fixtures="$crate/../shared/fixtures"
if [[ ! -f "$fixtures/models/det.prep.onnx" || ! -f "$fixtures/det/calib/input_list.txt" ]]; then
    if [[ -n "${QUANT_REQUIRE_FIXTURES:-}" && "${QUANT_REQUIRE_FIXTURES}" != 0 ]]; then
        echo "fixtures missing at $fixtures" >&2
        exit 1
    fi
    echo "skipped det: fixtures not found at $fixtures"
    exit 0
fi
det="$work/det"
mkdir -p "$det/models" "$det/calib"
cp "$fixtures/models/det.prep.onnx" "$det/models/det.onnx"
cp "$fixtures/det/calib/"* "$det/calib/"
cat >"$det/quant.toml" <<'EOF'
[pipeline]
name = "det"

[models.det]
path = "models/det.onnx"

[calibration.pages]
input_list = "calib/input_list.txt"

[targets.htp]
backend = "htp"
calibration = "pages"
act_bitwidth = 8
weights_bitwidth = 8
bias_bitwidth = 32
param_quantizer_schema = "symmetric"
use_per_channel_quantization = true

[targets.htp-a16]
extends = "htp"
act_bitwidth = 16
EOF
two_clones det "$det"

big="$work/det-160"
clone "$det" "$big"
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
[[ $(grep -c . "$big/calib/input_list.txt") == 160 ]]
# Shards meet on an empty remote.
rm -rf "$work/nginx/www/cache" && mkdir -p "$work/nginx/www/cache"
clone "$big" "$work/det160-unsharded"
unsharded=$(timed "$work/det160-unsharded" "$work/det160-unsharded.store" "")
echo "det-160            unsharded (local) $unsharded ms, $(count samples_run) samples"
total=0
for k in 0 1 2 3; do
    clone "$big" "$work/det160-shard$k"
    ms=$(timed "$work/det160-shard$k" "$work/det160-shard$k.store" "$remote" --shard "$k/4")
    n=$(count samples_run)
    total=$((total + n))
    echo "det-160            shard $k/4: $ms ms = $(ratio "$ms" "$unsharded") x unsharded, $n samples, $(count bytes_uploaded) bytes up"
done
[[ $total == 160 ]]
clone "$big" "$work/det160-merge"
merge=$(timed "$work/det160-merge" "$work/det160-merge.store" "$remote")
merge_samples=$(count samples_run)
[[ $merge_samples == 0 ]]
diff -r "$work/det160-unsharded/quant-out" "$work/det160-merge/quant-out" >/dev/null
echo "det-160            merge: $merge ms = $(ratio "$merge" "$unsharded") x unsharded, 0 samples, outputs identical to the unsharded build"
