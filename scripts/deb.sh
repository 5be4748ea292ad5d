#!/usr/bin/env bash
# Builds the Debian package: target/debian/kinderwatch_<version>_amd64.deb (run by `make deb`, after
# scripts/setup.sh has fetched ONNX Runtime). Installs cargo-deb from crates.io on first use.
# DEB_REVISION=n sets the package revision (default 1; an upgrade test builds 2).
# Prints the package's path on its last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO_DEB_VERSION=3.8.0
log() { echo "deb: $*" >&2; }

# dpkg-shlibdeps (dpkg-dev) computes the package's library dependencies; strip (binutils).
if ! command -v dpkg-shlibdeps >/dev/null || ! command -v strip >/dev/null; then
    log "installing dpkg-dev and binutils"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev binutils >/dev/null
fi
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    log "installing cargo-deb $CARGO_DEB_VERSION from crates.io (once)"
    cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi
for f in .deps/onnxruntime/libonnxruntime.so.1.31.1 .deps/onnxruntime/LICENSE; do
    [ -s "$f" ] || { log "$f missing: run scripts/setup.sh first"; exit 1; }
done

cargo build --release --locked --bin kinderwatch
# What the package ships besides the build: the manual page from the CLI, and the example config
# pointing at the installed models.
mkdir -p target/deb-assets
target/release/kinderwatch man | gzip -9n >target/deb-assets/kinderwatch.1.gz
sed 's#^model = "\.\./models/#model = "/usr/share/kinderwatch/models/#' config/example.toml \
    >target/deb-assets/kinderwatch.toml
grep -q '^model = "/usr/share/kinderwatch/models/' target/deb-assets/kinderwatch.toml \
    || { log "config/example.toml: no model line to point at /usr/share/kinderwatch/models"; exit 1; }

out=$(cargo deb --no-build --locked --strip --deb-revision "${DEB_REVISION:-1}" 2>&1) || {
    echo "$out" >&2
    exit 1
}
deb=$(echo "$out" | tail -n1)
[ -f "$deb" ] || { echo "$out" >&2; log "cargo deb printed no package path"; exit 1; }
log "built $deb"
echo "$deb"
