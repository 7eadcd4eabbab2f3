#!/usr/bin/env bash
# tools/bench-support/fleet.sh — what fleet distribution costs (issue 12), each figure beside its floor in one run:
#  1. publish a 1M-entry base and ten 1k-entry supplements (first publish, and a renewal that only re-signs the
#     timestamp), against copying and hashing the same files (cp + sha256sum);
#  2. fetch, verify and install that bundle over HTTP from 127.0.0.1 (Python's http.server) into an empty policy
#     directory, against curl downloading the same files plus `appctl policy verify` of the base;
#  3. a poll that finds nothing new: time and bytes on the wire, against the same conditional request by curl;
#  4. the daemon taking the set in: `appctl reload` and start-up with the 11 layers against one file of the same
#     1.01M entries, and its resident memory each way.
# Medians of RUNS runs, alternating. APPCTL (default .build/release/appctl). The daemon marks only its own tmpfs,
# runs in monitor mode, and is stopped by its PID; the server too.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
RUNS=${RUNS:-5}
APPCTL=${APPCTL:-$PROJECT_ROOT/.build/release/appctl}
W=$(mktemp -d /tmp/appctl-fleet.XXXXXX)
SERVER='' DAEMON=''
cleanup() {
    [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null || true
    [[ -n $DAEMON ]] && stop_pid "$DAEMON" >/dev/null 2>&1 || true
    mountpoint -q "$W/mnt" && umount "$W/mnt"
    rm -rf "$W"
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }

for k in base web stamp; do "$APPCTL" key generate --private "$W/$k.key" --public "$W/$k.pub" >/dev/null; done
# Inventories: content that exists nowhere (the daemon marks only its own empty tmpfs), in canonical order.
python3 - "$W" <<'PY'
import hashlib, sys
w = sys.argv[1]
def inventory(path, prefix, count):
    with open(path, "w") as f:
        f.write(f"appctl-policy 1\nissued 2026-12-06T00:00:00Z\nallow-count {count}\ndeny-count 0\n")
        for i in range(count):
            f.write(f"allow {hashlib.sha256(f'{prefix}{i}'.encode()).hexdigest()} {4096 + i} elf-exec local {prefix}{i:07d}\n")
inventory(f"{w}/base.inv", "/usr/bench/base/", 1_000_000)
for s in range(10):
    inventory(f"{w}/app{s}.inv", f"/opt/app{s}/", 1000)
# One file of the same 1.01M entries, for the comparison with one policy file.
with open(f"{w}/all.inv", "w") as f:
    lines = []
    for name, count in [("/usr/bench/base/", 1_000_000)] + [(f"/opt/app{s}/", 1000) for s in range(10)]:
        lines += [f"allow {hashlib.sha256(f'{name}{i}'.encode()).hexdigest()} {4096 + i} elf-exec local {name}{i:07d}\n" for i in range(count)]
    lines.sort(key=lambda l: l.split(" ")[5].encode())
    f.write(f"appctl-policy 1\nissued 2026-12-06T00:00:00Z\nallow-count {len(lines)}\ndeny-count 0\n")
    f.writelines(lines)
PY
delegates=(); for s in $(seq 0 9); do delegates+=(--delegate "name=app$s,key=$W/web.pub,max-entries=5000"); done
t0=$(now); "$APPCTL" policy sign --key "$W/base.key" --serial 1 --name base "${delegates[@]}" --out "$W/base.policy" "$W/base.inv" >/dev/null; t1=$(now)
echo "sign the 1M-entry base: $(elapsed "$t0" "$t1") s ($(stat -c %s "$W/base.policy") bytes)"
layers=("$W/base.policy")
for s in $(seq 0 9); do
    "$APPCTL" policy sign --key "$W/web.key" --serial 1 --name "app$s" --supplement-of base --out "$W/app$s.policy" "$W/app$s.inv" >/dev/null
    layers+=("$W/app$s.policy")
done
"$APPCTL" policy sign --key "$W/base.key" --serial 1 --out "$W/all.policy" "$W/all.inv" >/dev/null

# 1. Publish.
first=() renew=() floor=()
for r in $(seq "$RUNS"); do
    rm -rf "$W/pub" "$W/copy"; mkdir -p "$W/copy"
    t0=$(now); "$APPCTL" bundle publish --timestamp-key "$W/stamp.key" --out "$W/pub" "${layers[@]}" >/dev/null; t1=$(now)
    "$APPCTL" bundle publish --timestamp-key "$W/stamp.key" --out "$W/pub" "${layers[@]}" >/dev/null; t2=$(now)
    cp "${layers[@]}" "$W/copy/"; sha256sum "$W"/copy/* >/dev/null; sync; t3=$(now)
    first+=("$(elapsed "$t0" "$t1")"); renew+=("$(elapsed "$t1" "$t2")"); floor+=("$(elapsed "$t2" "$t3")")
done
echo "| publish, first (11 files, $(du -sb "$W/pub/files" | cut -f1) bytes) | $(printf '%s\n' "${first[@]}" | median) s | ${first[*]} |"
echo "| publish, renewal (same policies: a new timestamp only) | $(printf '%s\n' "${renew[@]}" | median) s | ${renew[*]} |"
echo "| floor: cp + sha256sum of the same files | $(printf '%s\n' "${floor[@]}" | median) s | ${floor[*]} |"

# 2. Fetch + verify + install over HTTP, against curl + policy verify.
rm -rf "$W/bundle"; "$APPCTL" bundle publish --timestamp-key "$W/stamp.key" --out "$W/bundle" "${layers[@]}" >/dev/null
python3 "$PROJECT_ROOT/Tests/Fixtures/bundle-server.py" "$W/bundle" "$W/server.log" > "$W/port" &
SERVER=$!
for _ in $(seq 100); do [[ -s $W/port ]] && break; sleep 0.05; done
URL="http://127.0.0.1:$(cat "$W/port")"
echo bench > "$W/machine-id"
sync_args() { echo "sync --once --from $URL --key $W/base.pub --timestamp-key $W/stamp.pub --policy-dir $1/policy.d --state-dir $1/state --socket $W/none.sock --report none --machine-id-file $W/machine-id --config /dev/null"; }
full=() curlv=()
for r in $(seq "$RUNS"); do
    rm -rf "$W/host" "$W/dl"; mkdir -p "$W/host" "$W/dl"
    t0=$(now); "$APPCTL" $(sync_args "$W/host") >/dev/null; t1=$(now)
    (cd "$W/dl" && for f in "$W"/bundle/files/*; do curl -sS -O "$URL/files/$(basename "$f")"; done; curl -sS -O "$URL/timestamp")
    "$APPCTL" policy verify --key "$W/base.pub" "$W/dl/$(basename "$(ls -S "$W"/bundle/files/* | head -1)")" >/dev/null; t2=$(now)
    full+=("$(elapsed "$t0" "$t1")"); curlv+=("$(elapsed "$t1" "$t2")")
done
echo "| sync: fetch, verify and install (empty host) | $(printf '%s\n' "${full[@]}" | median) s | ${full[*]} |"
echo "| floor: curl of the same files + policy verify of the base | $(printf '%s\n' "${curlv[@]}" | median) s | ${curlv[*]} |"

# 3. A poll that finds nothing new.
poll=() curlpoll=()
: > "$W/server.log"
lastmod=$(curl -sSI "$URL/timestamp" | tr -d '\r' | sed -n 's/^Last-Modified: //p')
for r in $(seq "$RUNS"); do
    t0=$(now); "$APPCTL" $(sync_args "$W/host") >/dev/null; t1=$(now)
    curl -sS -o /dev/null -H "If-Modified-Since: $lastmod" "$URL/timestamp"; t2=$(now)
    poll+=("$(elapsed "$t0" "$t1")"); curlpoll+=("$(elapsed "$t1" "$t2")")
done
wire=$(curl -sS -o /dev/null -w '%{size_request} %{size_header} %{size_download}' -H "If-Modified-Since: $lastmod" "$URL/timestamp")
echo "| poll, nothing new (appctl sync --once) | $(printf '%s\n' "${poll[@]}" | median) s | ${poll[*]} |"
echo "| floor: the same conditional GET by curl | $(printf '%s\n' "${curlpoll[@]}" | median) s | ${curlpoll[*]} |"
echo "server log of the polls, in order (path status body-bytes): $(tr "\n" ";" < "$W/server.log")"
echo "one poll on the wire (curl's count of the same request): request ${wire%% *} bytes, response headers $(echo "$wire" | cut -d' ' -f2) bytes, body $(echo "$wire" | cut -d' ' -f3) bytes"

# 4. The daemon: reload and start-up with 11 layers vs one file of the same entries; RSS.
mkdir -p "$W/mnt"; mount -t tmpfs -o size=16m tmpfs "$W/mnt"
start_daemon() {  # start_daemon ARGS... — sets DAEMON, and STARTUP to the seconds until it answered status
    local t0 t1
    t0=$(now)
    "$APPCTL" daemon --mode monitor --path "$W/mnt" --key "$W/base.pub" --socket "$W/d.sock" --state-dir "$W/dstate" --events "$W/events" \
        --config /dev/null "$@" > "$W/daemon.log" 2>&1 &
    DAEMON=$!
    until "$APPCTL" status --socket "$W/d.sock" >/dev/null 2>&1; do kill -0 "$DAEMON" || { cat "$W/daemon.log"; exit 1; }; sleep 0.02; done
    t1=$(now); STARTUP=$(elapsed "$t0" "$t1")
}
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$DAEMON/status"; }
declare -A startup reload memory
for r in $(seq "$RUNS"); do
    for how in layers file; do
        rm -rf "$W/dstate"
        if [[ $how == layers ]]; then start_daemon --policy-dir "$W/host/policy.d"; else start_daemon --policy "$W/all.policy"; fi
        s=$STARTUP
        t0=$(now); "$APPCTL" reload --socket "$W/d.sock" >/dev/null; t1=$(now)
        startup[$how]+="$s "; reload[$how]+="$(elapsed "$t0" "$t1") "; memory[$how]+="$(rss) "
        stop_pid "$DAEMON" >/dev/null; DAEMON=''
    done
done
for how in layers file; do
    echo "| $how: start-up to ready | $(echo ${startup[$how]} | tr ' ' '\n' | median) s | ${startup[$how]}|"
    echo "| $how: reload | $(echo ${reload[$how]} | tr ' ' '\n' | median) s | ${reload[$how]}|"
    echo "| $how: RSS after reload | $(echo ${memory[$how]} | tr ' ' '\n' | median) MiB | ${memory[$how]}|"
done
