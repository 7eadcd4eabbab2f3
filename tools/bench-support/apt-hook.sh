#!/usr/bin/env bash
# tools/bench-support/apt-hook.sh — what trusting apt updates costs (issue 11). Three parts:
#  1. the hook alone (appctl-apt-hook pre-install, verifying the chain and hashing every member) on a small install
#     (hello tree figlet) and on ~20 upgradable packages of this machine, downloaded with apt-get download; median
#     of RUNS runs, in seconds and in seconds per 100 MB of packages;
#  2. real apt-get install transactions of hello tree figlet with and without the hook, alternating, purged between
#     (packages pre-downloaded, so the network is not measured): the hook's share of the transaction;
#  3. the daemon taking in an overlay of 10k entries: overlay-reload round trips (median), cache flushes (must be
#     0), and exec latency on its own marked tmpfs while reloads run every 100 ms against the same loop without.
# APPCTL (default .build/release/appctl; appctl-apt-hook next to it). The daemon marks only its own tmpfs and is
# stopped by its PID; the packages installed in part 2 are purged on exit (it refuses to run if one is installed).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
RUNS=${RUNS:-5}
APPCTL=${APPCTL:-$PROJECT_ROOT/.build/release/appctl}
HOOK=$(dirname "$APPCTL")/appctl-apt-hook
SMALL=(hello tree figlet)
W=$(mktemp -d /tmp/appctl-apthook.XXXXXX)
DAEMON='' RELOADER=''
cleanup() {
    [[ -n $RELOADER ]] && kill "$RELOADER" 2>/dev/null || true
    [[ -n $DAEMON ]] && stop_pid "$DAEMON" >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${SMALL[@]}" >/dev/null 2>&1 || true
    for m in "$W/a" "$W/b"; do mountpoint -q "$m" && umount "$m"; done
    rm -rf "$W"
}
for p in "${SMALL[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q installed && { echo "$p is installed; part 2 installs and purges it" >&2; exit 1; }
done
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

"$APPCTL" key generate --private "$W/k.pem" --public "$W/k.pub" >/dev/null
mkdir -p "$W/empty" "$W/debs/small" "$W/debs/upgrade"
cp /usr/bin/true "$W/empty/true"
mapfile -t SOURCES < <("$APPCTL" apt-hook sources)
args=(); for s in "${SOURCES[@]}"; do args+=(--apt-source "$s"); done
"$APPCTL" learn --root "$W/empty" --dpkg-admindir /nonexistent --sign-with "$W/k.pem" --serial 1 "${args[@]}" --out "$W/policy.txt" >/dev/null
printf 'mode = monitor\npolicy = %s\nkey = %s\nsocket = %s\nstate-dir = %s\n' "$W/policy.txt" "$W/k.pub" "$W/sock" "$W/state" > "$W/hook.conf"

request() {  # request DEB... — the protocol-3 text apt writes for installs of these files
    printf 'VERSION 3\nDir=/\nDir::State=var/lib/apt\nDir::State::lists=lists/\n\n'
    for d in "$@"; do
        printf '%s - - none < %s %s none %s\n' "$(dpkg-deb -f "$d" Package)" "$(dpkg-deb -f "$d" Version)" "$(dpkg-deb -f "$d" Architecture)" "$d"
    done
}
hook_alone() {  # hook_alone LABEL DIR
    local label=$1 dir=$2 t0 t1 times=() mb
    request "$dir"/*.deb > "$W/request.txt"
    mb=$(du -cb "$dir"/*.deb | tail -1 | awk '{printf "%.1f", $1 / 1e6}')
    for (( i = 0; i < RUNS; i++ )); do
        rm -rf "$W/state"
        t0=$(now); "$HOOK" pre-install --config "$W/hook.conf" < "$W/request.txt" 2>"$W/hook.log"; t1=$(now)
        times+=("$(echo "$t1 - $t0" | bc)")
    done
    local m; m=$(printf '%s\n' "${times[@]}" | median)
    echo "hook alone, $label: $(ls "$dir"/*.deb | wc -l) packages, $mb MB: median $m s ($(echo "scale=3; $m * 100 / $mb" | bc) s per 100 MB); runs: ${times[*]}"
    tail -1 "$W/hook.log"
}

echo "== 1. the hook alone"
(cd "$W/debs/small" && apt-get download -qq "${SMALL[@]}" 2>/dev/null)
mapfile -t UPGRADE < <(apt list --upgradable 2>/dev/null | tail -n +2 | cut -d/ -f1 | head -20)
(cd "$W/debs/upgrade" && apt-get download -qq "${UPGRADE[@]}" 2>/dev/null)
hook_alone "small install (${SMALL[*]})" "$W/debs/small"
hook_alone "upgrade (${#UPGRADE[@]} packages: ${UPGRADE[*]:0:5} ...)" "$W/debs/upgrade"

echo "== 2. apt-get install of ${SMALL[*]}, with and without the hook"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --download-only "${SMALL[@]}" >/dev/null
with=() without=()
for (( i = 0; i < RUNS; i++ )); do
    for variant in without with; do
        rm -rf "$W/state"
        hookargs=()
        [[ $variant == with ]] && hookargs=(-o "DPkg::Pre-Install-Pkgs::=$HOOK pre-install --config $W/hook.conf"
                                            -o "DPkg::Tools::Options::$HOOK::Version=3"
                                            -o "DPkg::Post-Invoke::=$HOOK post-invoke --config $W/hook.conf")
        t0=$(now)
        apt-get install -y -qq --no-install-recommends -o APT::Keep-Downloaded-Packages=true "${hookargs[@]}" "${SMALL[@]}" >/dev/null 2>"$W/apt.log"
        t1=$(now)
        apt-get purge -y -qq -o APT::Keep-Downloaded-Packages=true "${SMALL[@]}" >/dev/null 2>&1
        [[ $variant == with ]] && with+=("$(echo "$t1 - $t0" | bc)") || without+=("$(echo "$t1 - $t0" | bc)")
    done
done
mw=$(printf '%s\n' "${with[@]}" | median) mo=$(printf '%s\n' "${without[@]}" | median)
echo "apt-get install: with the hook median $mw s (${with[*]}), without $mo s (${without[*]}); added $(echo "scale=3; $mw - $mo" | bc) s = $(echo "scale=1; ($mw - $mo) * 100 / $mo" | bc) %"

echo "== 3. the daemon taking in an overlay of 10k entries"
mkdir -p "$W/a" "$W/b" "$W/state/overlays"; chmod 700 "$W/state" "$W/state/overlays"
mount -t tmpfs -o size=64m tmpfs "$W/a"; mount -t tmpfs -o size=64m tmpfs "$W/b"
cp /usr/bin/true "$W/a/true"; cp /usr/bin/true "$W/b/true"
"$APPCTL" learn --root "$W/a" --dpkg-admindir /nonexistent --sign-with "$W/k.pem" --serial 2 "${args[@]}" --out "$W/policy.txt" >/dev/null
signer=${SOURCES[0]#signer=}; signer=${signer%%,*}
origin=$(sed -n 's/.*origin=\([^,]*\).*/\1/p' <<< "${SOURCES[0]}"); suite=$(sed -n 's/.*suite=\([^,]*\).*/\1/p' <<< "${SOURCES[0]}")
cc -O2 -o "$W/exec-loop" "$PROJECT_ROOT/tools/bench-support/exec-loop.c"
printf 'memfd-noexec = no\nuserns-restrict = no\n' > "$W/appctl.conf"
"$APPCTL" daemon --config "$W/appctl.conf" --mode enforce --policy "$W/policy.txt" --key "$W/k.pub" --path "$W/a" \
    --events "$W/events.jsonl" --socket "$W/sock" --state-dir "$W/state" --learn-out "$W/learned.txt" 2>>"$W/daemon.log" &
DAEMON=$!
for (( i = 0; i < 500; i++ )); do "$APPCTL" status --socket "$W/sock" >/dev/null 2>&1 && break; sleep 0.02; done
# Written after start-up: the daemon's start reconciles overlays with dpkg's database, which has no bench packages.
python3 - "$W/state/overlays/apt.overlay" "$signer" "$origin" "$suite" <<'PY'
import hashlib, os, sys
path, signer, origin, suite = sys.argv[1:5]
lines = ["appctl-overlay 1", "layer apt"]
for p in range(100):
    lines.append(f"package bench{p:03d} 1.0 amd64 {hashlib.sha256(b'deb%d' % p).hexdigest()} {signer} {origin} {suite} {suite} 100")
    for f in range(100):
        lines.append(f"file {hashlib.sha256(b'%d/%d' % (p, f)).hexdigest()} {1000 + f} elf-exec /usr/lib/bench{p:03d}/f{f:03d}")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, ("\n".join(lines) + "\n").encode())
os.close(fd)
PY
"$APPCTL" overlay-reload --socket "$W/sock"
flushes0=$("$APPCTL" status --socket "$W/sock" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kernel_cache_flushes"])')
reloads=()
for (( i = 0; i < 20; i++ )); do
    t0=$(now); "$APPCTL" overlay-reload --socket "$W/sock" >/dev/null; t1=$(now)
    reloads+=("$(echo "($t1 - $t0) * 1000" | bc)")
done
echo "overlay-reload of 10k entries (client round trip, incl. appctl's own start): median $(printf '%s\n' "${reloads[@]}" | median) ms"
quiet_loop() { "$W/exec-loop" -b "$W/b/true" -k 10 3000 "$W/a/true" 2>&1 | tail -2 | tr '\n' ' '; }
echo "execs, no reloads:          $(quiet_loop)"
( while true; do "$APPCTL" overlay-reload --socket "$W/sock" >/dev/null 2>&1; sleep 0.1; done ) &
RELOADER=$!
echo "execs, reload every 100 ms: $(quiet_loop)"
kill "$RELOADER"; wait "$RELOADER" 2>/dev/null || true; RELOADER=''
flushes1=$("$APPCTL" status --socket "$W/sock" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kernel_cache_flushes"])')
echo "kernel cache flushes during the reloads: $(( flushes1 - flushes0 ))"
