#!/usr/bin/env bash
# tools/bench-support/writable-exec.sh [N [ROUNDS]] — what an exec of a program its owner (not root) can write
# costs: such a file is hashed on every exec, and (from 2026-12-01) leased for the time between its hash and the
# kernel's write denial. Paired: exec-loop alternates 10 execs of A (a nobody-owned copy of /usr/bin/true on a
# tmpfs the daemon marks) with 10 of B (the same on an unmarked tmpfs); the delta A-B is the daemon's cost.
# APPCTL (default .build/release/appctl) and APPCTL_BASE (another build, optional) run in alternating rounds, each
# in enforce mode with a policy allowing the copy. Prints one line per build and round, then the medians.
# PAD_MIB=n appends n MiB of zeros to the copy (a larger program: what hashing on every exec costs grows with it).
# From 2026-12-06 a known program's verdict is kept under a read lease once its first exec is past the write denial
# (`leased-verdicts`), so later execs are not hashed: compare with APPCTL_CONF_EXTRA="leased-verdicts = 0".
# Marks only its own tmpfs (--path); every daemon is stopped by its PID; everything is unmounted on exit.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
N=${1:-2000}
ROUNDS=${2:-3}
APPCTL=${APPCTL:-$PROJECT_ROOT/.build/release/appctl}
W=$(mktemp -d /tmp/appctl-writable.XXXXXX)
DAEMON=''
cleanup() {
    [[ -n $DAEMON ]] && stop_pid "$DAEMON" >/dev/null 2>&1 || true
    for m in "$W/a" "$W/b"; do mountpoint -q "$m" && umount "$m"; done
    rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/a" "$W/b"
PAD_MIB=${PAD_MIB:-0}
mount -t tmpfs -o size=$(( 64 + PAD_MIB ))m tmpfs "$W/a"
mount -t tmpfs -o size=$(( 64 + PAD_MIB ))m tmpfs "$W/b"
for d in a b; do
    cp /usr/bin/true "$W/$d/true"
    (( PAD_MIB > 0 )) && head -c $(( PAD_MIB << 20 )) /dev/zero >> "$W/$d/true"
    chown 65534:65534 "$W/$d/true"
done
cc -O2 -o "$W/exec-loop" "$PROJECT_ROOT/tools/bench-support/exec-loop.c"
"$APPCTL" key generate --private "$W/k.pem" --public "$W/k.pub" >/dev/null
"$APPCTL" learn --root "$W/a" --dpkg-admindir /nonexistent --sign-with "$W/k.pem" --serial 1 --out "$W/policy.txt" >/dev/null
printf 'memfd-noexec = no\nuserns-restrict = no\n%s\n' "${APPCTL_CONF_EXTRA:-}" > "$W/appctl.conf"
builds=("new=$APPCTL")
[[ -n ${APPCTL_BASE:-} ]] && builds+=("base=$APPCTL_BASE")
declare -A deltas
for (( r = 1; r <= ROUNDS; r++ )); do
    for b in "${builds[@]}"; do
        label=${b%%=*} bin=${b#*=}
        rm -rf "$W/state"; rm -f "$W/sock"
        "$bin" daemon --config "$W/appctl.conf" --mode enforce --policy "$W/policy.txt" --key "$W/k.pub" --path "$W/a" \
            --events "$W/events.jsonl" --socket "$W/sock" --state-dir "$W/state" --learn-out "$W/learned.txt" 2>>"$W/daemon.log" &
        DAEMON=$!
        for (( i = 0; i < 500; i++ )); do "$bin" status --socket "$W/sock" >/dev/null 2>&1 && break; sleep 0.02; done
        out=$("$W/exec-loop" -b "$W/b/true" -k 10 "$N" "$W/a/true" 2>&1 | tail -1)
        stop_pid "$DAEMON" >/dev/null 2>&1 || true
        DAEMON=''
        d=$(sed -n 's/.*delta_median_us=\([-0-9.]*\).*/\1/p' <<< "$out")
        echo "round $r $label: $out"
        deltas[$label]+="$d "
    done
done
for b in "${builds[@]}"; do
    label=${b%%=*}
    printf '%s: median of round deltas %s µs per exec (rounds: %s)\n' "$label" \
        "$(printf '%s\n' ${deltas[$label]} | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" "${deltas[$label]% }"
done
