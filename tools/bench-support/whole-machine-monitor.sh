#!/usr/bin/env bash
# tools/bench-support/whole-machine-monitor.sh [N [ROUNDS]] — what a daemon watching the whole machine costs a warm
# exec: `exec-loop N /bin/true` and `exec-loop N/10 /usr/bin/python3 -c pass` with no daemon, APPCTL and (optional)
# APPCTL_BASE, alternating in rounds. The daemons run in MONITOR mode (the safety rule for anything that marks the
# whole machine: monitor mode never denies) with a policy learned from /usr/bin and the library directories, so the
# execs are real allow decisions; each is stopped by its PID. Prints one line per case and round, with the daemon's
# inert opens and kernel-side marks placed (the data files it was asked about, and those it cached in the kernel).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
N=${1:-2000}
ROUNDS=${2:-3}
APPCTL=${APPCTL:-$PROJECT_ROOT/.build/release/appctl}
W=$(mktemp -d /tmp/appctl-whole.XXXXXX); DAEMON=''
cleanup() { [[ -n $DAEMON ]] && stop_pid "$DAEMON" >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT
cc -O2 -o "$W/exec-loop" "$PROJECT_ROOT/tools/bench-support/exec-loop.c"
"$APPCTL" key generate --private "$W/k.pem" --public "$W/k.pub" >/dev/null
roots=(--root /usr/bin)
for d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64; do [[ -d $d ]] && roots+=(--root "$d"); done
"$APPCTL" learn "${roots[@]}" --dpkg-admindir /nonexistent --sign-with "$W/k.pem" --serial 1 --out "$W/p.txt" >/dev/null 2>&1
printf 'memfd-noexec = no\nuserns-restrict = no\n' > "$W/c.conf"
builds=(none "new=$APPCTL"); [[ -n ${APPCTL_BASE:-} ]] && builds+=("base=$APPCTL_BASE")
for (( r = 1; r <= ROUNDS; r++ )); do
    for b in "${builds[@]}"; do
        label=${b%%=*} bin=${b#*=} counts=''
        if [[ $label != none ]]; then
            rm -f "$W/s"
            "$bin" daemon --config "$W/c.conf" --mode monitor --policy "$W/p.txt" --key "$W/k.pub" --events "$W/ev" \
                --socket "$W/s" --state-dir "$W/st-$label" --learn-out "$W/l" 2>>"$W/daemon.log" &
            DAEMON=$!
            for (( i = 0; i < 500; i++ )); do "$bin" status --socket "$W/s" >/dev/null 2>&1 && break; sleep 0.02; done
        fi
        "$W/exec-loop" 200 /bin/true >/dev/null
        t=$("$W/exec-loop" "$N" /bin/true)
        p=$("$W/exec-loop" $(( N / 10 )) /usr/bin/python3 -c pass)
        if [[ $label != none ]]; then
            "$bin" status --socket "$W/s" --json > "$W/status.json"
            counts="$(json_field inert_opens "$W/status.json") $(json_field ignore_marks_placed "$W/status.json")"
            stop_pid "$DAEMON" >/dev/null 2>&1 || true; DAEMON=''
        fi
        echo "round $r $label: true $t | python3 -c pass $p | inert opens, marks placed: $counts"
    done
done
