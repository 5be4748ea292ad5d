#!/usr/bin/env bash
# Measures what the daemon holds at the top of its range, for the unit's MemoryMax=, TasksMax= and
# LimitNOFILE= (docs/BENCHMARKS.md, "Service limits"): N cameras (default 32) all streaming the busy
# sample clip from the local sample camera (TRANSPORT=tcp|udp), the real model, the API and the store; samples
# /proc/PID every second for DURATION seconds (default 60) and prints the peaks.
# Needs `cargo build --release --bin kinderwatch --example sample_camera` and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CAMERAS=${CAMERAS:-32}
DURATION=${DURATION:-60}
TRANSPORT=${TRANSPORT:-tcp}
BIN=${BIN:-target/release}
export GST_REGISTRY=${GST_REGISTRY:-$PWD/.deps/gst-registry.bin}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/onnxruntime/libonnxruntime.so}
work=$(mktemp -d)
coproc CAMERA { exec "$BIN/examples/sample_camera"; }
trap 'kill "$CAMERA_PID" 2>/dev/null || true; [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null; rm -rf "$work"' EXIT
read -r -t 20 url <&"${CAMERA[0]}"
{
    printf '[site]\nid = "measure"\n[detector]\nmodel = "%s/models/nanodet-coco-416.toml"\n' "$PWD"
    printf '[state]\ndir = "%s/state"\n[api]\nlisten = "127.0.0.1:0"\n' "$work"
    for i in $(seq 1 "$CAMERAS"); do
        printf '[[cameras]]\nid = "cam%d"\nurl = "%s"\ndetect_fps = 5\ntransport = "%s"\n' "$i" "$url" "$TRANSPORT"
    done
} >"$work/kinderwatch.toml"
"$BIN/kinderwatch" run --config "$work/kinderwatch.toml" 2>"$work/log" &
DAEMON=$!
peak_threads=0 peak_fds=0
for _ in $(seq 1 "$DURATION"); do
    sleep 1
    [ -d "/proc/$DAEMON" ] || { cat "$work/log" >&2; echo "measure: the daemon exited" >&2; exit 1; }
    t=$(awk '/^Threads:/ {print $2}' "/proc/$DAEMON/status")
    f=$(ls "/proc/$DAEMON/fd" | wc -l)
    [ "$t" -gt "$peak_threads" ] && peak_threads=$t
    [ "$f" -gt "$peak_fds" ] && peak_fds=$f
done
hwm=$(awk '/^VmHWM:/ {print int($2 / 1024)}' "/proc/$DAEMON/status")
rss=$(awk '/^VmRSS:/ {print int($2 / 1024)}' "/proc/$DAEMON/status")
streaming=$(grep -c "camera streaming" "$work/log" || true)
echo "cameras=$CAMERAS transport=$TRANSPORT streaming=$streaming seconds=$DURATION peak_rss_mb=$hwm rss_mb=$rss peak_threads=$peak_threads peak_fds=$peak_fds"
