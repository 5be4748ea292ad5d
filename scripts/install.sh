#!/usr/bin/env bash
# Installs kinderwatch as a systemd service, on the paths the unit uses:
#   /usr/local/bin/kinderwatch                     the binary
#   /usr/lib/kinderwatch/libonnxruntime.so         ONNX Runtime (from .deps, scripts/setup.sh)
#   /usr/share/kinderwatch/models/                 the models and their manifests
#   /etc/kinderwatch/kinderwatch.toml              the config: root:kinderwatch 0640 (the service
#                                                  reads it, only root writes it); never overwritten
#   /etc/kinderwatch/credentials/                  camera and MQTT passwords, root only (0700);
#                                                  systemd hands each file <name> over as the
#                                                  credential secret_<name> (LoadCredential=)
#   /etc/systemd/system/kinderwatch.service, /usr/lib/sysusers.d/kinderwatch.conf
# Run as root after `cargo build --release`. Idempotent.
# DESTDIR=dir installs under dir (packaging, tests) and touches neither users nor systemd;
# BIN= the binary to install (default target/release/kinderwatch);
# SERVICE_USER/SERVICE_GROUP= the owner of the config's group (default kinderwatch).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DESTDIR=${DESTDIR:-}
BIN=${BIN:-target/release/kinderwatch}
SERVICE_GROUP=${SERVICE_GROUP:-${SERVICE_USER:-kinderwatch}}
ORT=$(ls .deps/onnxruntime/libonnxruntime.so.* 2>/dev/null | head -n1 || true)

[ -x "$BIN" ] || { echo "install: $BIN missing; run cargo build --release first" >&2; exit 1; }
[ -n "$ORT" ] || { echo "install: no .deps/onnxruntime/libonnxruntime.so.*; run scripts/setup.sh first" >&2; exit 1; }

install -D -m 755 "$BIN" "$DESTDIR/usr/local/bin/kinderwatch"
install -D -m 644 "$ORT" "$DESTDIR/usr/lib/kinderwatch/libonnxruntime.so"
install -d -m 755 "$DESTDIR/usr/share/kinderwatch/models"
install -m 644 models/*.onnx models/*.toml models/PROVENANCE.md "$DESTDIR/usr/share/kinderwatch/models/"
install -D -m 644 systemd/kinderwatch.sysusers "$DESTDIR/usr/lib/sysusers.d/kinderwatch.conf"
# The unit names the packaged binary (/usr/bin); installed by hand it is in /usr/local/bin.
install -d -m 755 "$DESTDIR/etc/systemd/system"
sed 's#/usr/bin/kinderwatch#/usr/local/bin/kinderwatch#g' systemd/kinderwatch.service \
    >"$DESTDIR/etc/systemd/system/kinderwatch.service"
chmod 644 "$DESTDIR/etc/systemd/system/kinderwatch.service"
install -D -m 644 README.md "$DESTDIR/usr/share/doc/kinderwatch/README.md"

# The service user and group exist before anything is given to them.
if [ -z "$DESTDIR" ]; then
    systemd-sysusers /usr/lib/sysusers.d/kinderwatch.conf
fi

install -d -m 750 -o root -g "$SERVICE_GROUP" "$DESTDIR/etc/kinderwatch"
install -d -m 700 -o root -g root "$DESTDIR/etc/kinderwatch/credentials"
config="$DESTDIR/etc/kinderwatch/kinderwatch.toml"
if [ -e "$config" ]; then
    echo "install: keeping the existing $config" >&2
else
    # The example points at the repository's models; installed, they live in /usr/share.
    sed 's#^model = "\.\./models/#model = "/usr/share/kinderwatch/models/#' config/example.toml >"$config.new"
    chown "root:$SERVICE_GROUP" "$config.new"
    chmod 640 "$config.new"
    mv "$config.new" "$config"
fi

if [ -z "$DESTDIR" ]; then
    systemctl daemon-reload 2>/dev/null || echo "install: systemd is not running; reload it later" >&2
fi
cat >&2 <<EOF
install: done. Next:
  edit /etc/kinderwatch/kinderwatch.toml (site, cameras, rules, mqtt)
  printf %s 'the-camera-password' | install -m 600 /dev/stdin /etc/kinderwatch/credentials/gate
  systemctl enable --now kinderwatch && journalctl -u kinderwatch -f
EOF
