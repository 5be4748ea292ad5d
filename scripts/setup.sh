#!/usr/bin/env bash
# Idempotent, non-interactive set-up for building, running and testing kinderwatch on Debian 12.
#
# Installs (only what is missing):
#   * Debian packages: build (GStreamer dev headers), runtime (GStreamer plugins), tests (RTSP server,
#     x264 encoder, mosquitto, VLC as a foreign RTSP camera, systemd-analyze for the unit checks,
#     headless Chromium and its WebDriver for the console tests, PostgreSQL for the city center's
#     tests, started by them in a temporary directory);
#   * the ONNX Runtime shared library, unpacked from the PyPI `onnxruntime` wheel, sha256-checked;
#   * schemathesis (the API fuzzer of tests/openapi.rs) from PyPI into a virtual environment, its
#     versions pinned in scripts/schemathesis-requirements.txt;
#   * sample media: Debian opencv-doc's vtest.avi (transcoded once to H.264 for the RTSP test server)
#     and its still photos; photos from the PyPI scikit-image wheel (with and without people).
# Everything fetched lives in .deps/ (git-ignored). A second run only checks and takes about a second.
#
# Usage: scripts/setup.sh            (root, or a user with sudo)
#        KW_SETUP_SKIP_APT=1 ...     (skip the Debian package step, e.g. when packages are managed elsewhere)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS="$ROOT/.deps"
ORT_VERSION=1.31.1
ORT_SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3
ORT_LIB="$DEPS/onnxruntime/libonnxruntime.so.$ORT_VERSION"
SKIMAGE_VERSION=0.25.2
SKIMAGE_WHEEL_SHA256=24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641
# Photos from scikit-image's data folder: people (astronaut, camera) and no people (the rest).
SKIMAGE_PHOTOS=(astronaut.png camera.png coffee.png chelsea.png rocket.jpg motorcycle_left.png)

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and sudo is missing; run this script as root"
  SUDO="sudo -n"
fi

# --- Debian packages ------------------------------------------------------------------------
BUILD_PKGS=(pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev)
RUNTIME_PKGS=(gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-libav)
TEST_PKGS=(libgstrtspserver-1.0-dev gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-tools
           mosquitto mosquitto-clients systemd util-linux vlc-bin vlc-plugin-base
           chromium chromium-driver postgresql)
TOOL_PKGS=(python3 python3-pip python3-venv ca-certificates)

install_debian_packages() {
  local missing=()
  for p in "${BUILD_PKGS[@]}" "${RUNTIME_PKGS[@]}" "${TEST_PKGS[@]}" "${TOOL_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "Debian packages: all present"
    return
  fi
  log "Debian packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian mosquitto package starts a system broker on port 1883; tests start their own on free ports.
}

# --- localhost -----------------------------------------------------------------------------
# chromedriver reaches the browser it starts at ws://localhost:<port>; a root without /etc/hosts
# (a bare debootstrap) cannot resolve that name, and the console tests fail with "unable to
# connect to renderer".
ensure_localhost() {
  if getent hosts localhost >/dev/null; then
    return
  fi
  log "localhost does not resolve: adding it to /etc/hosts"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' | $SUDO tee -a /etc/hosts >/dev/null
}

# --- ONNX Runtime ---------------------------------------------------------------------------
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

install_onnxruntime() {
  # The licence and third-party notices travel with the library (the Debian package ships them).
  if sha_ok "$ORT_LIB" "$ORT_SHA256" && [ -s "$DEPS/onnxruntime/LICENSE" ] \
     && [ -s "$DEPS/onnxruntime/ThirdPartyNotices.txt" ]; then
    log "ONNX Runtime $ORT_VERSION: present ($ORT_LIB)"
    return
  fi
  log "ONNX Runtime $ORT_VERSION: fetching the PyPI wheel"
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --python-version 3.11 -d "$tmp" "onnxruntime==$ORT_VERSION" \
    || die "pip could not download onnxruntime==$ORT_VERSION from PyPI"
  local wheel; wheel=$(ls "$tmp"/onnxruntime-*.whl | head -n1)
  mkdir -p "$DEPS/onnxruntime"
  python3 - "$wheel" "$ORT_LIB.partial" "$ORT_VERSION" <<'PY'
import sys, zipfile, shutil
wheel, out, ver = sys.argv[1:]
import os
with zipfile.ZipFile(wheel) as z:
    with z.open(f"onnxruntime/capi/libonnxruntime.so.{ver}") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    for name in ("LICENSE", "ThirdPartyNotices.txt"):
        member = next(n for n in z.namelist() if n.endswith(f".dist-info/{name}") or n == f"onnxruntime/{name}")
        with z.open(member) as src, open(os.path.join(os.path.dirname(out), name), "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  sha_ok "$ORT_LIB.partial" "$ORT_SHA256" || { rm -f "$ORT_LIB.partial"; die "libonnxruntime sha256 mismatch (expected $ORT_SHA256)"; }
  mv "$ORT_LIB.partial" "$ORT_LIB"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$DEPS/onnxruntime/libonnxruntime.so"
  log "ONNX Runtime $ORT_VERSION: installed at $ORT_LIB"
}

# --- Sample media ---------------------------------------------------------------------------
install_media() {
  local media="$DEPS/media"
  mkdir -p "$media"
  if [ ! -f "$media/vtest.avi" ] || [ ! -f "$media/messi5.jpg" ] || [ ! -f "$media/basketball1.png" ]; then
    log "sample media: fetching Debian opencv-doc"
    local tmp; tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq opencv-doc >/dev/null 2>&1) || {
      $SUDO apt-get update -qq && (cd "$tmp" && apt-get download -qq opencv-doc >/dev/null)
    } || die "apt-get download opencv-doc failed"
    dpkg -x "$tmp"/opencv-doc_*.deb "$tmp/x"
    local data="$tmp/x/usr/share/doc/opencv-doc/examples/data"
    for f in vtest.avi messi5.jpg basketball1.png; do
      if [ -f "$data/$f" ]; then cp "$data/$f" "$media/$f";
      elif [ -f "$data/$f.gz" ]; then gunzip -c "$data/$f.gz" >"$media/$f";
      else rm -rf "$tmp"; die "opencv-doc has no $f"; fi
    done
    rm -rf "$tmp"
  fi
  if [ ! -s "$media/vtest.h264" ]; then
    log "sample media: transcoding vtest.avi to H.264 (once)"
    gst-launch-1.0 -q filesrc location="$media/vtest.avi" ! decodebin ! videoconvert ! video/x-raw,format=I420 \
      ! x264enc tune=zerolatency speed-preset=fast key-int-max=10 bframes=0 \
      ! video/x-h264,profile=constrained-baseline ! h264parse config-interval=-1 \
      ! video/x-h264,stream-format=byte-stream,alignment=au ! filesink location="$media/vtest.h264.partial" \
      || die "transcoding vtest.avi failed (needs gstreamer1.0-libav and gstreamer1.0-plugins-ugly)"
    mv "$media/vtest.h264.partial" "$media/vtest.h264"
  fi
  local missing_photo=0
  for f in "${SKIMAGE_PHOTOS[@]}"; do [ -f "$media/$f" ] || missing_photo=1; done
  if [ "$missing_photo" = 1 ]; then
    log "sample media: fetching scikit-image $SKIMAGE_VERSION photos (PyPI wheel)"
    local tmp; tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
      --python-version 3.11 -d "$tmp" "scikit-image==$SKIMAGE_VERSION" \
      || { rm -rf "$tmp"; die "pip could not download scikit-image==$SKIMAGE_VERSION from PyPI"; }
    local wheel; wheel=$(ls "$tmp"/scikit_image-*.whl | head -n1)
    sha_ok "$wheel" "$SKIMAGE_WHEEL_SHA256" || { rm -rf "$tmp"; die "scikit-image wheel sha256 mismatch"; }
    python3 - "$wheel" "$media" "${SKIMAGE_PHOTOS[@]}" <<'PY'
import sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for n in names:
        with open(f"{out}/{n}", "wb") as f:
            f.write(z.read(f"skimage/data/{n}"))
PY
    rm -rf "$tmp"
  fi
  log "sample media: present ($media)"
}

# --- schemathesis (tests/openapi.rs) --------------------------------------------------------
ST_VENV="$DEPS/schemathesis-venv"
ST_REQUIREMENTS="$ROOT/scripts/schemathesis-requirements.txt"

install_schemathesis() {
  local want; want=$(sed -n 's/^schemathesis==//p' "$ST_REQUIREMENTS")
  if [ -x "$ST_VENV/bin/schemathesis" ] && "$ST_VENV/bin/python" - "$want" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(m.version("schemathesis") != sys.argv[1])
PY
  then
    log "schemathesis $want: present ($ST_VENV)"
    return
  fi
  log "schemathesis $want: installing from PyPI into $ST_VENV"
  rm -rf "$ST_VENV"
  python3 -m venv "$ST_VENV" || die "python3 -m venv failed (the python3-venv package is needed)"
  "$ST_VENV/bin/pip" install -q --disable-pip-version-check -r "$ST_REQUIREMENTS" \
    || { rm -rf "$ST_VENV"; die "pip could not install schemathesis $want from PyPI"; }
}

if [ "${KW_SETUP_SKIP_APT:-0}" != 1 ]; then install_debian_packages; fi
ensure_localhost
install_onnxruntime
install_media
install_schemathesis
log "done"
