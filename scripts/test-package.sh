#!/usr/bin/env bash
# The package test (`make test-package`; root; about 10-15 minutes, most of it the release build and
# apt the first time, so it is not part of `make test`):
#  1. builds the package twice (revisions 1 and 2 of the same build: the upgrade);
#  2. installs revision 1 with apt into a fresh Debian 12 root (debootstrap, cached as a tarball),
#     runs lintian on it, checks the user, owners and modes, that the unit is enabled and not
#     started, `systemd-analyze verify` and `systemd-analyze security` on the installed unit;
#  3. points the config at a test camera (the sample clip served on this host, with a password kept
#     in /etc/kinderwatch/credentials) and an MQTT broker, runs `kinderwatch doctor` as an installer
#     would, then the unit's ExecStart as the service user, with the credentials handed over as
#     the unit's LoadCredential= does, and the broker down: crossings are recorded and wait in the
#     outbox;
#  4. upgrades to revision 2 (apt, the config edited since install): the config, the credentials
#     and the event database are kept; the maintainer scripts ask systemd to restart the unit
#     exactly once and never to stop it (no systemd runs in a chroot: a recording systemctl and
#     deb-systemd-invoke stand in for the upgrade); then the daemon runs again with the broker up
#     and every alert recorded before the upgrade reaches the broker.
# KW_PACKAGE_ROOT=dir chooses the root (default /tmp/kinderwatch-package-root; $dir.tar caches it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
ROOT=${KW_PACKAGE_ROOT:-/tmp/kinderwatch-package-root}
PRISTINE=$ROOT.tar
log() { echo "test-package: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, chroot)"
for tool in debootstrap mosquitto mosquitto_sub; do
    command -v "$tool" >/dev/null || fail "$tool missing (scripts/setup.sh installs mosquitto; apt-get install debootstrap)"
done

# --- 1. the packages ------------------------------------------------------------------------
# (cargo deb empties its output folder: each package is copied out as it is built.)
DEBS=$(mktemp -d /tmp/kinderwatch-package-debs.XXXXXX)
deb1=$DEBS/$(basename "$(DEB_REVISION=1 scripts/deb.sh | tail -n1)")
cp target/debian/"$(basename "$deb1")" "$deb1"
deb2=$DEBS/$(basename "$(DEB_REVISION=2 scripts/deb.sh | tail -n1)")
cp target/debian/"$(basename "$deb2")" "$deb2"
cargo build --release --locked --example sample_camera
log "packages: $deb1 $deb2"

# --- the root -------------------------------------------------------------------------------
unmount() {
    for d in dev/pts dev sys proc; do umount "$ROOT/$d" 2>/dev/null || true; done
}
cleanup() {
    [ -n "${CAMERA_PID:-}" ] && kill "$CAMERA_PID" 2>/dev/null || true
    [ -n "${BROKER_PID:-}" ] && kill "$BROKER_PID" 2>/dev/null || true
    unmount
    rm -rf "$DEBS"
}
trap cleanup EXIT
if [ ! -s "$PRISTINE" ]; then
    log "debootstrap bookworm (once; cached in $PRISTINE)"
    rm -rf "$ROOT.build"
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    debootstrap --variant=minbase --include=ca-certificates bookworm "$ROOT.build" ${mirror:+"$mirror"} \
        >/tmp/kinderwatch-debootstrap.log 2>&1 || fail "debootstrap (log: /tmp/kinderwatch-debootstrap.log)"
    tar -C "$ROOT.build" -cf "$PRISTINE" . && rm -rf "$ROOT.build"
fi
unmount
for d in dev sys proc; do
    if mountpoint -q "$ROOT/$d" 2>/dev/null; then fail "$ROOT/$d still mounted; refusing to delete $ROOT"; fi
done
rm -rf "$ROOT" && mkdir -p "$ROOT" && tar -C "$ROOT" -xf "$PRISTINE"
# The host's apt sources and trust store (this workplace reaches Debian through its own egress CA).
if [ -s /etc/apt/sources.list.d/debian.sources ]; then
    cp -r /etc/apt/sources.list.d/. "$ROOT/etc/apt/sources.list.d/" && rm -f "$ROOT/etc/apt/sources.list"
else
    cp /etc/apt/sources.list "$ROOT/etc/apt/sources.list" 2>/dev/null || true
fi
cp /etc/apt/apt.conf.d/* "$ROOT/etc/apt/apt.conf.d/" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt" 2>/dev/null || true
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
for d in proc sys dev dev/pts; do mkdir -p "$ROOT/$d"; mount --bind "/$d" "$ROOT/$d"; done
cp "$deb1" "$deb2" "$ROOT/tmp/"
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
apt_install() { in_root apt-get install -y -qq -o Dpkg::Options::=--force-confold "$@"; }

# --- 2. install, lint, check ----------------------------------------------------------------
log "installing $(basename "$deb1") with apt (and lintian, systemd for the checks)"
in_root apt-get update -qq
apt_install systemd lintian >/dev/null
install_out=$(apt_install "/tmp/$(basename "$deb1")" 2>&1) || { echo "$install_out" >&2; fail "apt install"; }
echo "$install_out" | grep -q "enabled, but not started" || fail "the install does not say the service is not started: $install_out"

log "lintian"
lintian_out=$(in_root lintian --fail-on error,warning --no-tag-display-limit "/tmp/$(basename "$deb1")" 2>&1) \
    || { echo "$lintian_out" >&2; fail "lintian"; }
[ -z "$lintian_out" ] || echo "$lintian_out" >&2

check_mode() {  # path expected-owner:group expected-mode
    local got; got=$(in_root stat -c '%U:%G %a' "$1")
    [ "$got" = "$2 $3" ] || fail "$1 is $got, expected $2 $3"
}
in_root getent passwd kinderwatch >/dev/null || fail "no kinderwatch user"
check_mode /etc/kinderwatch root:kinderwatch 750
check_mode /etc/kinderwatch/kinderwatch.toml root:kinderwatch 640
check_mode /etc/kinderwatch/credentials root:root 700
check_mode /usr/bin/kinderwatch root:root 755
check_mode /usr/lib/kinderwatch/libonnxruntime.so root:root 644
for f in nanodet-coco-416.onnx nanodet-coco-416.toml ssdlite-person.onnx PROVENANCE.md; do
    [ -s "$ROOT/usr/share/kinderwatch/models/$f" ] || fail "models/$f not installed"
done
[ -s "$ROOT/usr/share/doc/kinderwatch/onnxruntime/LICENSE" ] || fail "the ONNX Runtime licence is not installed"
[ -s "$ROOT/usr/share/man/man1/kinderwatch.1.gz" ] || fail "no manual page"
grep -qx /etc/kinderwatch/kinderwatch.toml "$ROOT/var/lib/dpkg/info/kinderwatch.conffiles" || fail "the config is not a conffile"
unit=/usr/lib/systemd/system/kinderwatch.service
[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/kinderwatch.service" ] || fail "the unit is not enabled"
if in_root dpkg-query -W -f='${Depends}' kinderwatch | grep -Eq 'dev|mosquitto|plugins-ugly|tools'; then
    fail "Depends names a test or dev package: $(in_root dpkg-query -W -f='${Depends}' kinderwatch)"
fi

log "systemd-analyze verify and security"
verify=$(in_root systemd-analyze verify --man=no "$unit" 2>&1) || { echo "$verify" >&2; fail "systemd-analyze verify"; }
[ -z "$verify" ] || { echo "$verify" >&2; fail "systemd-analyze verify has remarks"; }
security=$(in_root systemd-analyze security --offline=true --threshold=20 --no-pager "$unit" 2>&1) || true
level=$(echo "$security" | sed -n 's/.*exposure level for kinderwatch.service: \([0-9.]*\).*/\1/p')
[ -n "$level" ] || { echo "$security" >&2; fail "no exposure level"; }
awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }' || fail "exposure level $level over 2.0"
log "exposure level $level"

# --- 3. doctor and a run as the service user --------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CAMERA_PORT=$(free_port); BROKER_PORT=$(free_port); API_PORT=$(free_port)
# The camera asks for a password (RTSP digest), which the box keeps in its credentials directory.
CAMERA_PASSWORD="pw-$RANDOM$RANDOM"
"$REPO/target/release/examples/sample_camera" --port "$CAMERA_PORT" --user viewer --password "$CAMERA_PASSWORD" \
    >/tmp/kinderwatch-package-camera.txt 2>/dev/null &
CAMERA_PID=$!
for _ in $(seq 300); do camera_url=$(head -n1 /tmp/kinderwatch-package-camera.txt); [ -n "$camera_url" ] && break; sleep 0.1; done
[ -n "$camera_url" ] || fail "the sample camera did not start"
log "test camera at $camera_url"
cat >"$ROOT/etc/kinderwatch/kinderwatch.toml" <<EOF
# Edited after install (the upgrade must keep it).
[site]
id = "kg-package-test"
[state]
dir = "/var/lib/kinderwatch"
[store]
min_free_mb = 1
[api]
listen = "127.0.0.1:$API_PORT"
[detector]
model = "/usr/share/kinderwatch/models/nanodet-coco-416.toml"
workers = 1
[mqtt]
host = "127.0.0.1"
port = $BROKER_PORT
backoff_initial = "200ms"
backoff_max = "1s"
[[cameras]]
id = "gate"
url = "$camera_url"
username = "viewer"
password_file = "/run/credentials/kinderwatch.service/secret_gate"
detect_fps = 5
[[rules]]
id = "walkway"
camera = "gate"
kind = "tripwire"
line = [[0.5, 0.0], [0.5, 1.0]]
cooldown = "0s"
EOF
config_sha=$(sha256sum "$ROOT/etc/kinderwatch/kinderwatch.toml" | cut -d' ' -f1)
printf '%s\n' "$CAMERA_PASSWORD" >"$ROOT/etc/kinderwatch/credentials/gate"
chmod 600 "$ROOT/etc/kinderwatch/credentials/gate"
# What systemd does for the unit before ExecStart: StateDirectory=, CacheDirectory=, and
# LoadCredential=secret:/etc/kinderwatch/credentials (each file <name> as secret_<name>, readable
# by the service user only).
in_root install -d -o kinderwatch -g kinderwatch -m 0700 /var/lib/kinderwatch /var/cache/kinderwatch
grep -q '^LoadCredential=secret:/etc/kinderwatch/credentials$' "$ROOT/usr/lib/systemd/system/kinderwatch.service" \
    || fail "the unit does not load the credentials directory"
load_credentials() {
    local creds=$ROOT/run/credentials/kinderwatch.service
    rm -rf "$creds" && install -d -m 0500 -o "$(in_root id -u kinderwatch)" "$creds"
    for f in "$ROOT"/etc/kinderwatch/credentials/*; do
        install -m 0400 -o "$(in_root id -u kinderwatch)" "$f" "$creds/secret_$(basename "$f")"
    done
}

start_broker() {
    mosquitto -p "$BROKER_PORT" >/dev/null 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null && return; sleep 0.1; done
    fail "mosquitto did not start"
}
stop_broker() { kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=; }
# The unit's environment and command, as systemd would run them (as the service user).
unit_env=$(sed -n 's/^Environment=//p' "$ROOT$unit")
exec_start=$(sed -n 's/^ExecStart=//p' "$ROOT$unit")
as_service() { in_root $unit_env RUST_LOG=info runuser -u kinderwatch -- "$@"; }

start_broker
log "kinderwatch doctor (as the service user)"
# As root, outside the unit, as an installer runs it: the camera's password comes from the
# credentials directory.
doctor=$(in_root $unit_env /usr/bin/kinderwatch doctor --config /etc/kinderwatch/kinderwatch.toml 2>&1) \
    || { echo "$doctor" >&2; fail "doctor found a problem"; }
echo "$doctor" >&2
echo "$doctor" | grep -q "password read from /etc/kinderwatch/credentials/gate" \
    || fail "doctor did not read the camera's password from the credentials directory"
stop_broker

run_daemon() {  # seconds log-file
    load_credentials
    as_service timeout -s TERM "$1" $exec_start >"$2" 2>&1 || {
        local rc=$?; [ "$rc" = 124 ] || { cat "$2" >&2; fail "the daemon exited with $rc"; }
    }
    grep -q "stopped cleanly" "$2" || { cat "$2" >&2; fail "the daemon did not stop cleanly"; }
}
log "the unit's ExecStart as the service user for 25 s, the broker down"
run_daemon 25 /tmp/kinderwatch-package-run1.log
grep -q "camera state changed.*to=streaming" /tmp/kinderwatch-package-run1.log \
    || { cat /tmp/kinderwatch-package-run1.log >&2; fail "the camera did not stream"; }
before=$(in_root /usr/bin/kinderwatch events --db /var/lib/kinderwatch --since 1h --limit 1000 --format json)
ids_before=$(echo "$before" | python3 -c 'import json,sys; print(" ".join(sorted(e["id"] for e in json.load(sys.stdin) if e["kind"]=="line_crossed")))')
[ -n "$ids_before" ] || { cat /tmp/kinderwatch-package-run1.log >&2; fail "no crossing recorded in 25 s"; }
log "recorded before the upgrade: $(echo "$ids_before" | wc -w) crossings (in the outbox: the broker was down)"

# --- 4. the upgrade -------------------------------------------------------------------------
log "upgrading to $(basename "$deb2")"
# No systemd runs in a chroot: for the upgrade the root looks like a running systemd
# (/run/systemd/system) whose systemctl and deb-systemd-invoke write down what they are asked,
# so that the maintainer scripts' stop/restart decisions are seen (they are the package's own).
mkdir -p "$ROOT/run/systemd/system"
for tool in systemctl deb-systemd-invoke; do
    mv "$ROOT/usr/bin/$tool" "$ROOT/usr/bin/$tool.real"
    printf '#!/bin/sh\necho "%s $*" >>/tmp/systemd-calls\n' "$tool" >"$ROOT/usr/bin/$tool"
    chmod 755 "$ROOT/usr/bin/$tool"
done
rm -f "$ROOT/tmp/systemd-calls"
apt_install "/tmp/$(basename "$deb2")" >/dev/null
for tool in systemctl deb-systemd-invoke; do mv "$ROOT/usr/bin/$tool.real" "$ROOT/usr/bin/$tool"; done
rmdir "$ROOT/run/systemd/system"
calls=$(cat "$ROOT/tmp/systemd-calls" 2>/dev/null || true)
[ "$(echo "$calls" | grep -c 'restart kinderwatch.service')" = 1 ] \
    || fail "the upgrade should restart the service exactly once; systemd was asked: $calls"
echo "$calls" | grep -q 'stop kinderwatch.service' && fail "the upgrade stopped the service: $calls"
log "systemd was asked, during the upgrade: $(echo "$calls" | tr '\n' ';')"
[ "$(in_root dpkg-query -W -f='${Version}' kinderwatch)" = "0.1.0-2" ] || fail "the upgrade did not install 0.1.0-2"
[ "$(sha256sum "$ROOT/etc/kinderwatch/kinderwatch.toml" | cut -d' ' -f1)" = "$config_sha" ] || fail "the upgrade changed the config"
check_mode /etc/kinderwatch/kinderwatch.toml root:kinderwatch 640
[ "$(cat "$ROOT/etc/kinderwatch/credentials/gate")" = "$CAMERA_PASSWORD" ] || fail "the upgrade lost the credentials"
check_mode /etc/kinderwatch/credentials/gate root:root 600
after=$(in_root /usr/bin/kinderwatch events --db /var/lib/kinderwatch --since 1h --limit 1000 --format json)
ids_after=$(echo "$after" | python3 -c 'import json,sys; print(" ".join(sorted(e["id"] for e in json.load(sys.stdin) if e["kind"]=="line_crossed")))')
[ "$ids_after" = "$ids_before" ] || fail "the event database changed in the upgrade"

log "after the upgrade, the broker up: every alert of before reaches it"
start_broker
mosquitto_sub -p "$BROKER_PORT" -t 'kinderwatch/kg-package-test/events/#' -q 1 -W 40 -v >/tmp/kinderwatch-package-alerts.txt 2>/dev/null &
SUB_PID=$!
sleep 1
run_daemon 20 /tmp/kinderwatch-package-run2.log
sleep 2; kill "$SUB_PID" 2>/dev/null || true; wait "$SUB_PID" 2>/dev/null || true
missing=$(python3 - "$ids_before" /tmp/kinderwatch-package-alerts.txt <<'PY'
import json, sys
want = set(sys.argv[1].split())
got = set()
for line in open(sys.argv[2], errors="replace"):
    topic, _, payload = line.partition(" ")
    if topic.endswith("/snapshot"):
        continue
    try:
        got.add(json.loads(payload)["event_id"])
    except (ValueError, KeyError):
        pass
print(" ".join(sorted(want - got)))
PY
)
[ -z "$missing" ] || { cat /tmp/kinderwatch-package-run2.log >&2; fail "alerts lost in the upgrade: $missing"; }
log "all $(echo "$ids_before" | wc -w) alerts from before the upgrade delivered"
log "passed"
