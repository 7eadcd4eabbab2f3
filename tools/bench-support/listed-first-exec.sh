#!/usr/bin/env bash
# tools/bench-support/listed-first-exec.sh [ROUNDS] — the first exec of a 150 MiB allowed program that was on disk
# before the daemon started: APPCTL (default .build/release/appctl; waits for its background pass over the policy's
# large listed files, and reports how long the pass took) vs APPCTL_BASE (optional, another build), alternating.
# Marks only its own tmpfs; daemons stopped by PID; everything unmounted on exit.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
ROUNDS=${1:-3}
APPCTL=${APPCTL:-$PROJECT_ROOT/.build/release/appctl}
W=$(mktemp -d /tmp/appctl-firstexec.XXXXXX); DAEMON=''
cleanup() { [[ -n $DAEMON ]] && stop_pid "$DAEMON" >/dev/null 2>&1 || true; mountpoint -q "$W/a" && umount "$W/a"; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$W/a"; mount -t tmpfs -o size=400m tmpfs "$W/a"
{ cat /usr/bin/true; head -c $((150 << 20)) /dev/zero; } > "$W/a/big"; chmod 755 "$W/a/big"
cc -O2 -o "$W/exec-loop" "$PROJECT_ROOT/tools/bench-support/exec-loop.c"
A=$APPCTL
"$A" key generate --private "$W/k.pem" --public "$W/k.pub" >/dev/null
"$A" learn --root "$W/a" --dpkg-admindir /nonexistent --sign-with "$W/k.pem" --serial 1 --out "$W/p.txt" >/dev/null
printf 'memfd-noexec = no\nuserns-restrict = no\n' > "$W/c.conf"
builds=("new=$APPCTL"); [[ -n ${APPCTL_BASE:-} ]] && builds+=("base=$APPCTL_BASE")
for (( r = 1; r <= ROUNDS; r++ )); do for b in "${builds[@]}"; do
  label=${b%%=*} bin=${b#*=}; rm -rf "$W/s" "$W/sock"
  "$bin" daemon --config "$W/c.conf" --mode enforce --policy "$W/p.txt" --key "$W/k.pub" --path "$W/a" --events "$W/e" --socket "$W/sock" --state-dir "$W/s" --learn-out "$W/l" 2>>"$W/d.log" &
  DAEMON=$!
  for i in $(seq 500); do "$bin" status --socket "$W/sock" >/dev/null 2>&1 && break; sleep 0.02; done
  t0=$(date +%s.%N)
  if [[ $label == new ]]; then
    for i in $(seq 1000); do s=$("$bin" status --json --socket "$W/sock"); [[ $(json_field listed_files_prehashed <<< "$s") == 1 ]] && break; sleep 0.01; done
  fi
  t1=$(date +%s.%N)
  out=$("$W/exec-loop" 1 "$W/a/big" 2>&1 | tail -1)
  echo "round $r $label: pass $(echo "$t1 - $t0" | bc) s; first exec: $out"
  stop_pid "$DAEMON" >/dev/null 2>&1 || true; DAEMON=''
done; done
