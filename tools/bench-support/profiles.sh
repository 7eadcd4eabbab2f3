#!/usr/bin/env bash
# tools/bench-support/profiles.sh — what execution profiles cost (issue 15), each figure beside its floor in one run.
#  1. Warm exec from inside a profiled service (web.service), enforcing, against the same program on an unmarked
#     tmpfs in the same exec-loop (paired: exec-loop -b, rounds interleaved):
#       a. a program every profile lists: its exec verdict stays in the kernel's cache;
#       b. a program web's profile lists but another profile (admin.service) does not: every exec is answered by the
#          daemon, which reads /proc/TID/cgroup;
#       c. an interpreter web may start only with a program file (`sh FILE`): answered by a hash worker, which also
#          reads the new command line from the waiting thread's memory;
#       d. (a) with no profile in the policy at all: today's fast path, for comparison;
#       e. (b) from a process in no service at all: what a profile costs the rest of the host (the kernel cannot tell
#          processes apart, so this exec reaches the daemon too, which finds no profile for it).
#  2. Learning over a day-like run: 20 services × 50 programs, each exec'd in turn, with the daemon learning
#     profiles (learn mode: every exec reaches the daemon) against no daemon on the same files; execs per second,
#     the daemon's RSS before and after, and the (subject, program) pairs learned.
# EXEC_N execs per case (default 2000), RUNS rounds (default 5), APPCTL (default .build/release/appctl).
# The daemon marks only this script's own tmpfs and is stopped by its PID; the cgroups it makes are removed on exit.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
RUNS=${RUNS:-5}
EXEC_N=${EXEC_N:-2000}
APPCTL=${APPCTL:-$PROJECT_ROOT/.build/release/appctl}
W=$(mktemp -d /tmp/appctl-profiles.XXXXXX)
CG_MOUNT=$(findmnt -t cgroup2 -n -o TARGET | head -1)
[[ -n $CG_MOUNT ]] || { echo "profiles.sh: no cgroup2 mount" >&2; exit 1; }
CG=$CG_MOUNT/appctl-bench-$$
DAEMON=''
cleanup() {
    [[ -n $DAEMON ]] && stop_pid "$DAEMON" >/dev/null 2>&1 || true
    for g in "$CG"/*/ "$CG"/; do [[ -d $g ]] && rmdir "$g" 2>/dev/null || true; done
    for m in "$W/mnt" "$W/ref"; do mountpoint -q "$m" && umount "$m"; done
    rm -rf "$W"
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

mkdir -p "$W/mnt" "$W/ref" "$CG"
mount -t tmpfs -o size=256m,mode=0755 tmpfs "$W/mnt"
mount -t tmpfs -o size=256m,mode=0755 tmpfs "$W/ref"
for g in web.service admin.service; do mkdir "$CG/$g"; done
cc -O2 -Wall -o "$W/exec-loop" "$(dirname "$0")/exec-loop.c"
for d in mnt ref; do
    cp /usr/bin/true "$W/$d/listed"
    { cat /usr/bin/true; echo excluded; } > "$W/$d/excluded"; chmod 0755 "$W/$d/excluded"
    cp /bin/dash "$W/$d/sh"
    printf ':\n' > "$W/$d/empty.sh"
done
"$APPCTL" key generate --private "$W/k.key" --public "$W/k.pub" >/dev/null
sha() { sha256sum "$1" | cut -d' ' -f1; }
L=$(sha "$W/mnt/listed") X=$(sha "$W/mnt/excluded") S=$(sha "$W/mnt/sh") E=$(sha "$W/mnt/empty.sh")
inventory() {   # $1 output, then profile lines
    local out=$1; shift
    {
        echo "appctl-policy $([[ $# -gt 0 ]] && echo 6 || echo 1)"
        echo "issued 2026-12-07T00:00:00Z"
        [[ $# -gt 0 ]] && printf "%s\n" "$@" | LC_ALL=C sort
        echo "allow-count 4"; echo "deny-count 0"
        for f in empty.sh excluded listed sh; do
            echo "allow $(sha "$W/mnt/$f") $(stat -c %s "$W/mnt/$f") elf-exec local $W/mnt/$f"
        done
    } > "$out"
}
inventory "$W/profiles.inv" \
    "profile service=admin.service sha256:$L no-inline -" \
    "profile service=web.service sha256:$L no-inline -" \
    "profile service=web.service sha256:$S no-inline -" \
    "profile service=web.service sha256:$X no-inline -"
inventory "$W/plain.inv"
"$APPCTL" policy sign --key "$W/k.key" --serial 1 --profiles "$W/profiles.inv" --out "$W/profiles.policy" "$W/profiles.inv" >/dev/null
"$APPCTL" policy sign --key "$W/k.key" --serial 1 --out "$W/plain.policy" "$W/plain.inv" >/dev/null

start_daemon() {   # $1 mode, $2 policy
    printf 'memfd-noexec = no\nuserns-restrict = no\nkernel-cache = yes\n' > "$W/appctl.conf"
    rm -rf "$W/state"
    "$APPCTL" daemon --config "$W/appctl.conf" --mode "$1" --policy "$2" --key "$W/k.pub" --path "$W/mnt" \
        --events "$W/events.jsonl" --socket "$W/appctl.sock" --state-dir "$W/state" --learn-out "$W/learned.txt" \
        >"$W/daemon.log" 2>&1 &
    DAEMON=$!
    for _ in $(seq 200); do "$APPCTL" status --socket "$W/appctl.sock" >/dev/null 2>&1 && return; sleep 0.05; done
    echo "profiles.sh: daemon not ready: $(cat "$W/daemon.log")" >&2; exit 1
}
stop_daemon() { stop_pid "$DAEMON" >/dev/null; DAEMON=''; }
in_web() { sh -c "echo \$\$ > $CG/web.service/cgroup.procs && exec \"\$@\"" sh "$@"; }
delta() {   # PROGRAM [ARGS]: exec-loop in web.service, paired with the same on the unmarked tmpfs: "median_us delta_us"
    in_web "$W/exec-loop" -b "$W/ref/${1##*/}" -s "$W/mnt=$W/ref" "$EXEC_N" "$@" |
        awk '/^median_us/ {split($1,a,"="); m=a[2]} /^B / {for (i=1;i<=NF;i++) if ($i ~ /^delta_median_us=/) {split($i,b,"="); d=b[2]}} END {print m, d}'
}

echo "## warm exec from web.service (N=$EXEC_N per case, $RUNS rounds; delta = marked − unmarked, paired)"
declare -A D A
by_daemon() { "$APPCTL" status --json --socket "$W/appctl.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["execs_allowed_by_daemon"])'; }
run_case() {   # CASE PROGRAM [ARGS]: the paired delta, and how many of the execs the daemon answered
    local before after d
    before=$(by_daemon)
    read -r _ d < <(delta "${@:2}")
    after=$(by_daemon)
    D[$1]+="$d "; A[$1]=$((after - before))
}
for r in $(seq "$RUNS"); do
    start_daemon enforce "$W/profiles.policy"
    for c in listed excluded; do in_web "$W/mnt/$c" >/dev/null; done   # warm: digests cached, marks placed
    in_web "$W/mnt/sh" "$W/mnt/empty.sh"
    run_case a "$W/mnt/listed"
    run_case b "$W/mnt/excluded"
    run_case c "$W/mnt/sh" "$W/mnt/empty.sh"
    in_web() { "$@"; }   # case e: the same exec-loop, in no service
    run_case e "$W/mnt/excluded"
    in_web() { sh -c "echo \$\$ > $CG/web.service/cgroup.procs && exec \"\$@\"" sh "$@"; }
    stop_daemon
    start_daemon enforce "$W/plain.policy"
    in_web "$W/mnt/listed" >/dev/null
    run_case d "$W/mnt/listed"
    stop_daemon
done
printf '| case | median extra µs per exec (rounds) | execs the daemon answered (last round) |\n| --- | --- | --- |\n'
for c in a b c d e; do
    case $c in
        a) label="a. listed by every profile (kernel cache)" ;;
        b) label="b. excluded by another profile (daemon reads /proc/TID/cgroup)" ;;
        c) label="c. sh FILE, sh listed no-inline (a worker reads the new argv)" ;;
        d) label="d. the policy has no profiles (today's path)" ;;
        e) label="e. (b) from a process in no service" ;;
    esac
    echo "| $label | $(tr ' ' '\n' <<<"${D[$c]}" | grep . | median) ($(echo ${D[$c]})) | ${A[$c]} of $EXEC_N |"
done

echo
echo "## learning profiles over a day-like run: 20 services × 50 programs"
mkdir -p "$W/mnt/p" "$W/ref/p"
for i in $(seq 50); do for d in mnt ref; do { cat /usr/bin/true; echo "p$i"; } > "$W/$d/p/p$i"; chmod 0755 "$W/$d/p/p$i"; done; done
for s in $(seq 20); do mkdir -p "$CG/svc$s.service"; done
cat > "$W/day.sh" <<EOF
#!/bin/sh
# \$1: the directory of programs; each of 20 services runs each of the 50 programs, REPEAT times over.
for r in \$(seq \$2); do for s in \$(seq 20); do
    echo \$\$ > $CG/svc\$s.service/cgroup.procs
    for i in \$(seq 50); do "\$1/p\$i"; done
done; done
EOF
chmod 0755 "$W/day.sh"
REPEAT=${REPEAT:-4}
T=() B=()
start_daemon learn "$W/plain.policy"
rss_before=$(awk '/VmRSS/ {print $2}' /proc/"$DAEMON"/status)
for r in $(seq "$RUNS"); do
    t0=$(date +%s.%N); "$W/day.sh" "$W/mnt/p" "$REPEAT"; t1=$(date +%s.%N)
    "$W/day.sh" "$W/ref/p" "$REPEAT"; t2=$(date +%s.%N)
    T+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"); B+=("$(awk -v a="$t1" -v b="$t2" 'BEGIN {print b - a}')")
done
rss_after=$(awk '/VmRSS/ {print $2}' /proc/"$DAEMON"/status)
learned=$("$APPCTL" status --json --socket "$W/appctl.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["profile_entries_learned"])')
stop_daemon
pairs=$(grep -c '^profile ' "$W/learned.txt" || true)
execs=$((20 * 50 * REPEAT))
tl=$(printf '%s\n' "${T[@]}" | median) tb=$(printf '%s\n' "${B[@]}" | median)
printf '| | median s per %d execs | execs/s |\n| --- | --- | --- |\n' "$execs"
echo "| learning daemon | $tl | $(awk -v n="$execs" -v t="$tl" 'BEGIN {printf "%.0f", n / t}') |"
echo "| no daemon (unmarked tmpfs) | $tb | $(awk -v n="$execs" -v t="$tb" 'BEGIN {printf "%.0f", n / t}') |"
echo
echo "pairs learned: $learned (status), $pairs profile lines in the fragment; daemon RSS ${rss_before} kB before, ${rss_after} kB after $((RUNS * execs)) execs"
