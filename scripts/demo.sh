#!/usr/bin/env bash
# The demo: a local RTSP camera serving the sample clip, and kinderwatch watching it with the built-in
# demo config. Run through `make demo` (which runs scripts/setup.sh and builds first).
# DEMO_DURATION=30s limits the run; default: until Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${BIN:-target/release}
export GST_REGISTRY=${GST_REGISTRY:-$PWD/.deps/gst-registry.bin}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/onnxruntime/libonnxruntime.so}

coproc CAMERA { exec "$BIN/examples/sample_camera"; }
trap 'kill "$CAMERA_PID" 2>/dev/null || true' EXIT
read -r -t 20 url <&"${CAMERA[0]}" || { echo "demo: the sample camera did not start" >&2; exit 1; }
echo "demo: sample camera at $url (Ctrl-C to stop)" >&2
echo "demo: while it runs, ask the API: curl -H 'Authorization: Bearer kw_demo' http://127.0.0.1:8080/api/v1/events?limit=5" >&2
args=(demo --camera-url "$url")
[ -n "${DEMO_DURATION:-}" ] && args+=(--duration "$DEMO_DURATION")
status=0
"$BIN/kinderwatch" "${args[@]}" || status=$?
echo "demo: the newest events recorded in .deps/demo-state (kinderwatch events --db):" >&2
"$BIN/kinderwatch" events --db .deps/demo-state --since 15m --limit 15 || true
exit "$status"
