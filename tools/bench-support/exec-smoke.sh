#!/usr/bin/env bash
# exec-smoke.sh — end-to-end run of the bench-support tools on private
# loop-mounted images: fork+exec of a copy of /bin/true (exec-loop) and
# open+read of 500 small files (open-loop) with no daemon, with
# floor-listener (exec events; exec+open events), with appctl in enforce mode
# (exec events; exec+open events) and with fapolicyd in permissive mode
# (mount-namespace and bind isolation; Debian and known-libs rules).
#
# Two images: A (ext2, $W/mnt) is the one under test, the only one a daemon
# marks or watches; B (ext4, $W/ref) holds the same files and is never
# marked. exec-loop -b / open-loop -b interleave A and B in small chunks, so
# each case yields a *paired* delta A-B taken in the same seconds; on a shared
# VM whose speed drifts by 30 % from one minute to the next, that delta is far
# steadier than medians taken apart. The "none" case measures the A-B
# difference of the two filesystems themselves; "net" subtracts it.
#
#   sudo tools/bench-support/exec-smoke.sh [N [ROUNDS]]
#       N execs per case and round (default 2000), ROUNDS (default 3).
#   CASES="none floor appctl-exec fapd-ns-debian" ... to run only some cases.
#       none | floor | floor-open | floor-cached | appctl-exec | appctl-open |
#       fapd-{ns,bind}-{debian,known-libs} | fapd-ns-debug
#   PIN=none (default) | split (exec-loop/open-loop on CPU 0, the daemon's
#       threads on CPU 1) | same (everything on CPU 0). On these 2-vCPU VMs a
#       cross-CPU wake-up costs far more than a same-CPU switch, and where the
#       scheduler puts the two sides changes from run to run, which makes
#       unpinned figures bimodal; pinning trades realism for repeatability.
#   LDEXEC=1 (default) also times the "everything on the image" variant:
#       $MNT/ld-linux-x86-64.so.2 --library-path $MNT $MNT/true, with the
#       loader, libc (every library true needs) and true all copied onto the
#       image, so the exec of the loader, its open of true and its open of
#       libc are all events on the marked filesystem. LDEXEC=0 skips it.
#       (The plain "true" exec keeps its loader and libc on the host
#       filesystem: only the exec of true itself is on the image.)
#   BIGFILES=100000 adds an open-heavy measurement: BIGFILES files of BIGSIZE
#       bytes (default 1024) in one directory on each image, BIG_PASSES
#       (default 3) open+read+close passes after one warm-up pass, in the cases
#       listed in BIG_CASES (default "none floor-open appctl-open
#       fapd-ns-debian"). Default BIGFILES=0 (off).
#   FILE_OWNER (default root) and FILE_MODE (default 644): owner and mode of
#       the data files (files/ and big/): FILE_OWNER=nobody measures files a
#       service user owns, FILE_MODE=600 root files nobody else can read.
#   APPCTL=path of the appctl binary (default: ../../.build/release/appctl);
#       copied into the temp dir. APPCTL_CONF_EXTRA="confine = no" etc.: lines
#       appended to the daemon's config file.
#   OUT_DIR=dir: copy the raw results there (results.tsv, appctl.tsv,
#       appctl-*.stderr, appctl-status-*.json, startup.txt, reports.txt,
#       info.txt) for tools/bench-exec to format.
#
# appctl cases: a policy is learned from the image (true, the loader, libc)
# and signed with a fresh key; the daemon runs
#   appctl daemon --config FILE --mode enforce --policy P --key K --path $MNT ...
# where FILE says "open-events = no" (appctl-exec) or "open-events = yes"
# (appctl-open), plus "memfd-noexec = no": the daemon's default would set the
# machine-wide sysctl vm.memfd_noexec=2 in enforce mode, which a benchmark on
# a shared machine must not do (the sysctl is checked after every run).
# --path restricts its marks to the filesystems mounted at or below $MNT; the
# marks are checked in /proc/PID/fdinfo after start-up (exactly one mark, on
# the image's superblock, mask 40000 = FAN_OPEN_EXEC_PERM for appctl-exec, 50000 =
# FAN_OPEN_PERM|FAN_OPEN_EXEC_PERM for appctl-open; beside it the exec counter's 1000 = FAN_OPEN_EXEC and the
# pre-hasher's 8 = FAN_CLOSE_WRITE notification marks on the same image), else the run
# stops it and aborts. Ready = "appctl status" exits 0 (polled every 20 ms, 10 s
# at most). Before stopping: "appctl status --json" and VmRSS/VmHWM. Stopped by
# PID: SIGTERM, SIGKILL after 10 s; exit code and stop time recorded.
#
# Cases run in rounds, the order rotated each round; the summary gives, per
# case, the median over rounds of the A median, of the paired B median, of
# the paired delta, and the net delta (minus the "none" delta).
#
# Only the filesystem this script creates is ever marked. Everything it starts
# is stopped by PID, and the trap unmounts/detaches/removes what it made.
set -euo pipefail

N=${1:-2000}
ROUNDS=${2:-3}
WARM=${WARM:-200}
CHUNK=${CHUNK:-10}   # A/B interleaving granularity of exec-loop -k
PIN=${PIN:-none}
LDEXEC=${LDEXEC:-1}
BIGFILES=${BIGFILES:-0}
BIGSIZE=${BIGSIZE:-1024}
BIG_PASSES=${BIG_PASSES:-3}
BIG_CASES=${BIG_CASES:-none floor-open appctl-open fapd-ns-debian}
FILE_OWNER=${FILE_OWNER:-root}
FILE_MODE=${FILE_MODE:-644}
OUT_DIR=${OUT_DIR:-}
case $PIN in
    none)  CLIENT=(); DAEMON_CPU= ;;
    split) CLIENT=(taskset -c 0); DAEMON_CPU=1 ;;
    same)  CLIENT=(taskset -c 0); DAEMON_CPU=0 ;;
    *) echo "PIN must be none, split or same" >&2; exit 2 ;;
esac
pin_daemon() {   # pid: move every thread of it
    [[ -n $DAEMON_CPU ]] && taskset -a -p -c "$DAEMON_CPU" "$1" >/dev/null
    return 0
}
CASES=${CASES:-none floor floor-open appctl-exec appctl-open fapd-ns-debian fapd-ns-known-libs fapd-bind-debian fapd-bind-known-libs fapd-ns-debug}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"   # stop_pid, pid_running, json_field
APPCTL=${APPCTL:-$HERE/../../.build/release/appctl}
# shellcheck source=fapolicyd.sh
source "$HERE/fapolicyd.sh"

[[ $(id -u) -eq 0 ]] || { echo "run as root" >&2; exit 1; }
if grep -q ' ext2 ' /proc/mounts; then
    echo "an ext2 filesystem is already mounted; this run needs ext2 to be unique" >&2; exit 1
fi
if [[ " $CASES " == *" appctl-"* && ! -x $APPCTL ]]; then
    echo "appctl binary not found at $APPCTL (set APPCTL=...)" >&2; exit 1
fi

W=$(mktemp -d /tmp/bench-smoke.XXXXXX)
MNT=$W/mnt
REF=$W/ref
LOOP=
LOOPB=
LISTENER_PID=
APPCTL_PID=
cleanup() {
    set +e
    trap - ERR
    [[ -n $LISTENER_PID ]] && stop_pid "$LISTENER_PID"
    [[ -n $APPCTL_PID ]] && stop_appctl
    [[ -n ${FAPOLICYD_PID:-} ]] && fapolicyd_stop
    if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" || umount -l "$MNT"; fi
    if mountpoint -q "$REF" 2>/dev/null; then umount "$REF" || umount -l "$REF"; fi
    [[ -n $LOOP ]] && losetup -d "$LOOP" 2>/dev/null
    [[ -n $LOOPB ]] && losetup -d "$LOOPB" 2>/dev/null
    if [[ -n $OUT_DIR && -d $W ]]; then
        mkdir -p "$OUT_DIR"
        cp -f "$W"/results.tsv "$W"/appctl.tsv "$W"/appctl-*.stderr "$W"/appctl-status-*.json \
              "$W"/appctl-events-*.jsonl \
              "$W"/appctl-marks.txt "$W"/startup.txt "$W"/reports.txt "$W"/info.txt "$W"/floor.stderr \
              "$W"/summary.txt "$OUT_DIR"/ 2>/dev/null
    fi
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
set -E
trap 'echo "exec-smoke.sh: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

mkdir -p "$W/bin" "$MNT" "$REF"
for t in floor-listener exec-loop open-loop; do
    cc -O2 -Wall -o "$W/bin/$t" "$HERE/$t.c"
done
: > "$W/results.tsv"; : > "$W/appctl.tsv"; : > "$W/startup.txt"; : > "$W/reports.txt"; : > "$W/floor.stderr"

# Image sizes: 64 MiB, plus room (blocks and inodes) for the open-heavy set.
IMG_MB=64
MKFS_EXTRA=()
if (( BIGFILES > 0 )); then
    IMG_MB=$(( 64 + BIGFILES * ((BIGSIZE + 4095) / 4096 * 4096 + 256) * 12 / 10 / 1048576 ))
    MKFS_EXTRA=(-N $(( BIGFILES + 4096 )))
fi
truncate -s "${IMG_MB}M" "$W/fs.img"
mkfs.ext2 -q -F "${MKFS_EXTRA[@]}" "$W/fs.img"
LOOP=$(losetup --find --show "$W/fs.img")
mount -t ext2 "$LOOP" "$MNT"
truncate -s "${IMG_MB}M" "$W/ref.img"
mkfs.ext4 -q -F "${MKFS_EXTRA[@]}" "$W/ref.img"
LOOPB=$(losetup --find --show "$W/ref.img")
mount -t ext4 "$LOOPB" "$REF"
# the kernel's dev_t as fdinfo prints it for a filesystem mark ("sdev:")
majmin=$(mountpoint -d -- "$MNT")
KDEV=$(printf '%x' $(( (${majmin%%:*} << 20) | ${majmin#*:} )))

cp /bin/true "$MNT/true"
# The "all on the image" variant: the loader and every library true needs.
LD_NAME=
if [[ $LDEXEC == 1 ]]; then
    LD_SRC=$(readlink -f /lib64/ld-linux-x86-64.so.2)
    LD_NAME=ld-linux-x86-64.so.2
    cp "$LD_SRC" "$MNT/$LD_NAME"
    while read -r lib; do
        cp "$(readlink -f "$lib")" "$MNT/$(basename "$lib")"
    done < <(ldd /bin/true | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
fi
mkdir "$MNT/files"
for i in $(seq 1 500); do head -c 4096 /dev/urandom > "$MNT/files/f$i"; done
if (( BIGFILES > 0 )); then
    mkdir "$MNT/big"
    head -c $(( BIGFILES * BIGSIZE )) /dev/urandom | split -b "$BIGSIZE" -a 7 -d - "$MNT/big/f"
fi
for d in "$MNT/files" "$MNT/big"; do
    [[ -d $d ]] || continue
    find "$d" -type f -exec chown "$FILE_OWNER" {} + -exec chmod "$FILE_MODE" {} +
done
cp -a "$MNT/." "$REF/"
sync
LD_ARGS=()
if [[ $LDEXEC == 1 ]]; then
    LD_ARGS=(--library-path "$MNT" "$MNT/true")
    # it must really take everything from the image
    "$MNT/$LD_NAME" "${LD_ARGS[@]}" || { echo "the loader variant does not run" >&2; exit 1; }
    bad=$(LD_TRACE_LOADED_OBJECTS=1 "$MNT/$LD_NAME" "${LD_ARGS[@]}" | awk -v m="$MNT/" '$2 == "=>" && index($3, m) != 1')
    if [[ -n $bad ]]; then echo "the loader variant loads libraries from outside the image: $bad" >&2; exit 1; fi
fi
trust_paths=("$MNT/true")
[[ $LDEXEC == 1 ]] && trust_paths+=("$MNT/$LD_NAME" $(ldd /bin/true | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | xargs -r -n1 basename | sed "s#^#$MNT/#"))
if [[ " $CASES " == *" fapd-"* ]]; then
    fapolicyd_trust_from_paths "$W/trust" "${trust_paths[@]}"
fi

# appctl: key, signed policy learned from the image (data directories left out), configs
if [[ " $CASES " == *" appctl-"* ]]; then
    A=$W/appctl
    cp "$APPCTL" "$A"
    # APPCTL_BASE: another build (the one before a change), run as the cases appctl-exec-base / appctl-open-base
    # in the same rounds, for a side-by-side before/after.
    [[ -n ${APPCTL_BASE:-} ]] && cp "$APPCTL_BASE" "$W/appctl-base"
    "$A" key generate --private "$W/k.pem" --public "$W/k.pub" >/dev/null
    excl=(--exclude "$MNT/files")
    (( BIGFILES > 0 )) && excl+=(--exclude "$MNT/big")
    "$A" learn --root "$MNT" "${excl[@]}" --dpkg-admindir /nonexistent --sign-with "$W/k.pem" --serial 1 \
        --out "$W/policy.txt" > "$W/learn.out" 2>&1 || { cat "$W/learn.out" >&2; exit 1; }
    n_allow=$(grep -c '^allow ' "$W/policy.txt" || true)
    if (( n_allow != ${#trust_paths[@]} )); then
        echo "appctl learn: $n_allow allow entries, expected ${#trust_paths[@]}:" >&2; cat "$W/learn.out" "$W/policy.txt" >&2; exit 1
    fi
    mkdir -p "$W/appctl-state"
    for kind in exec open; do
        {
            echo "# written by exec-smoke.sh"
            [[ $kind == exec ]] && echo "open-events = no" || echo "open-events = yes"
            echo "memfd-noexec = no"
            echo "userns-restrict = no"   # machine-wide sysctls stay untouched by a benchmark
            [[ -n ${APPCTL_CONF_EXTRA:-} ]] && printf '%s\n' "$APPCTL_CONF_EXTRA"
        } > "$W/appctl-$kind.conf"
    done
    APPCTL_VERSION=$(sha256sum "$A" | cut -c1-12)
fi
MEMFD_NOEXEC0=$(cat /proc/sys/vm/memfd_noexec 2>/dev/null || echo n/a)

{
    echo "# kernel $(uname -r), $(nproc) cores, loadavg $(cut -d' ' -f1-3 /proc/loadavg), $(dpkg-query -W -f='fapolicyd ${Version}' fapolicyd 2>/dev/null || echo 'fapolicyd not installed')"
    echo "# A $MNT: $(awk -v m="$MNT" '$2 == m { print $1, $3 }' /proc/mounts); B $REF: $(awk -v m="$REF" '$2 == m { print $1, $3 }' /proc/mounts)"
    echo "# N=$N execs x $ROUNDS rounds (A/B alternating every $CHUNK), $WARM warm-up execs, PIN=$PIN, LDEXEC=$LDEXEC, data files $FILE_OWNER $FILE_MODE, BIGFILES=$BIGFILES x $BIGSIZE B ($BIG_PASSES passes, cases: $BIG_CASES)"
    [[ -n ${APPCTL_VERSION:-} ]] && echo "# appctl $APPCTL (sha256 $APPCTL_VERSION...), policy: $n_allow allow entries"
} | tee "$W/info.txt"

start_listener() {   # args for floor-listener
    coproc FL { exec "$W/bin/floor-listener" "$@" 2>>"$W/floor.stderr"; }
    LISTENER_PID=$FL_PID
    pin_daemon "$LISTENER_PID"
    local line=
    read -r -t 10 line <&"${FL[0]}" || true
    [[ $line == ready ]] || { echo "floor-listener did not become ready" >&2; exit 1; }
}
stop_listener() {
    stop_pid "$LISTENER_PID" || true
    LISTENER_PID=
}

now_ms() { local t; t=$(date +%s%N); echo $(( t / 1000000 )); }

APPCTL_T0=
APPCTL_ERR0=0
APPCTL_EVENTS=
ODD_STDERR='^appctl: (start-up: applied policy serial|ready, mode|stopped$)'
start_appctl() {   # case round; case: appctl-exec | appctl-open | appctl-exec-base | appctl-open-base
    local c=$1 r=$2 kind=${1#appctl-} want bin=$A base=0
    if [[ $kind == *-base ]]; then kind=${kind%-base}; bin=$W/appctl-base; base=1; fi
    [[ $kind == exec ]] && want=40000 || want=50000
    # Builds before 2026-12-01 watched FAN_CLOSE_WRITE (0x8) in the permission group itself: a base build may.
    local older=$want
    (( base )) && older=$(( want + 8 ))
    # safety: the mount point we hand to --path is our loop device's and nothing else
    [[ $(awk -v m="$MNT" '$2 == m { print $1 }' /proc/mounts) == "$LOOP" ]] || { echo "$MNT is not $LOOP" >&2; exit 1; }
    rm -f "$W/appctl.sock"
    touch "$W/appctl-$c.stderr"
    APPCTL_ERR0=$(wc -l < "$W/appctl-$c.stderr")
    APPCTL_EVENTS=$W/appctl-events-$c-r$r.jsonl
    APPCTL_T0=$(now_ms)
    "$bin" daemon --config "$W/appctl-$kind.conf" --mode enforce --policy "$W/policy.txt" --key "$W/k.pub" \
        --path "$MNT" --events "$APPCTL_EVENTS" --socket "$W/appctl.sock" \
        --state-dir "$W/appctl-state" --learn-out "$W/appctl-learned.txt" \
        </dev/null >>"$W/appctl-$c.stderr" 2>&1 &
    APPCTL_PID=$!
    local i ready=0
    for (( i = 0; i < 500; i++ )); do
        if ! pid_running "$APPCTL_PID"; then
            echo "appctl daemon exited during start-up; its output:" >&2; tail -n 20 "$W/appctl-$c.stderr" >&2
            wait "$APPCTL_PID" 2>/dev/null || true; APPCTL_PID=; exit 1
        fi
        if "$A" status --socket "$W/appctl.sock" >/dev/null 2>&1; then ready=1; break; fi
        sleep 0.02
    done
    APPCTL_READY_MS=$(( $(now_ms) - APPCTL_T0 ))
    if (( ! ready )); then echo "appctl daemon not ready after 10 s; stopping it" >&2; stop_appctl; exit 1; fi
    # which marks does it hold? exactly one permission mark, on our image, with the expected mask (and the
    # exec counter's notification mark, FAN_OPEN_EXEC = 0x1000, on the same image)
    local marks
    marks=$(cat /proc/"$APPCTL_PID"/fdinfo/* 2>/dev/null | grep -E '^fanotify (sdev|mnt_id|ino):' |
            grep -v -x -e "fanotify sdev:$KDEV mflags:0 mask:1000 ignored_mask:0" -e "fanotify sdev:$KDEV mflags:0 mask:8 ignored_mask:0" || true)
    APPCTL_MARKS=$marks
    if [[ $marks != "fanotify sdev:$KDEV mflags:0 mask:$want ignored_mask:0" &&
          $marks != "fanotify sdev:$KDEV mflags:0 mask:$older ignored_mask:0" ]]; then
        echo "appctl ($c) holds unexpected fanotify marks (want sdev:$KDEV mask:$want):" >&2
        echo "$marks" >&2
        stop_appctl; exit 1
    fi
    echo "$c $(cat /proc/"$APPCTL_PID"/fdinfo/* | grep -E '^fanotify ' | tr '\n' ' ')" >> "$W/appctl-marks.txt"
    pin_daemon "$APPCTL_PID"
}
jfield() { json_field "$1" <<< "$2" || printf -- -; }   # key json-text -> value, or - when missing
stop_appctl() {   # stop_pid on the recorded PID; sets APPCTL_STOP_MS and APPCTL_RC
    local pid=$APPCTL_PID rc=0
    [[ -n $pid ]] || return 0
    stop_pid "$pid" 10 || rc=$?
    APPCTL_STOP_MS=$STOPPED_AFTER_MS
    APPCTL_RC=$rc
    APPCTL_PID=
}
record_appctl() {   # case round: status + memory, then stop, then one appctl.tsv line
    local c=$1 r=$2 st rss hwm thr seccomp nnp
    st=$("$A" status --socket "$W/appctl.sock" --json 2>&1) || st="{}"
    printf '%s\n' "$st" > "$W/appctl-status-$c-r$r.json"
    rss=$(awk '/^VmRSS:/ { print $2 }' /proc/"$APPCTL_PID"/status)
    hwm=$(awk '/^VmHWM:/ { print $2 }' /proc/"$APPCTL_PID"/status)
    thr=$(awk '/^Threads:/ { print $2 }' /proc/"$APPCTL_PID"/status)
    seccomp=$(awk '/^Seccomp:/ { print $2 }' /proc/"$APPCTL_PID"/status)
    nnp=$(awk '/^NoNewPrivs:/ { print $2 }' /proc/"$APPCTL_PID"/status)
    stop_appctl
    local memfd unexpected events
    memfd=$(cat /proc/sys/vm/memfd_noexec 2>/dev/null || echo n/a)
    if [[ $memfd != "$MEMFD_NOEXEC0" ]]; then
        echo "WARNING: vm.memfd_noexec changed from $MEMFD_NOEXEC0 to $memfd during $c" >&2
    fi
    # this run's stderr lines other than the start-up / ready / stopped lines
    unexpected=$(tail -n +$(( APPCTL_ERR0 + 1 )) "$W/appctl-$c.stderr" | grep -cvE "$ODD_STDERR" || true)
    events=0
    [[ -f $APPCTL_EVENTS ]] && events=$(wc -l < "$APPCTL_EVENTS")
    # case round ready_ms stop_ms rc hit_rate hits misses p50 p99 rss_kb hwm_kb allowed denied threads seccomp nnp unexpected_stderr events memfd
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$r" \
        "$APPCTL_READY_MS" "$APPCTL_STOP_MS" "$APPCTL_RC" \
        "$(jfield cache_hit_rate "$st")" "$(jfield cache_hits "$st")" "$(jfield cache_misses "$st")" \
        "$(jfield latency_p50_us "$st")" "$(jfield latency_p99_us "$st")" "$rss" "$hwm" \
        "$(jfield allowed "$st")" "$(jfield denied "$st")" "$thr" "$seccomp" "$nnp" "$unexpected" "$events" "$memfd" \
        >> "$W/appctl.tsv"
    printf '#   %-12s r%s appctl: ready %s ms, stop %s ms (exit %s), allowed %s denied %s, hits %s misses %s, p50 %s us p99 %s us, RSS %s kB\n' \
        "$c" "$r" "$APPCTL_READY_MS" "$APPCTL_STOP_MS" "$APPCTL_RC" "$(jfield allowed "$st")" "$(jfield denied "$st")" \
        "$(jfield cache_hits "$st")" "$(jfield cache_misses "$st")" "$(jfield latency_p50_us "$st")" "$(jfield latency_p99_us "$st")" "$rss"
}

kv() {   # key text -> value of "key=value" in text
    local t=" $2"
    t=${t#* "$1"=}
    printf '%s' "${t%% *}"
}
kvd() {   # like kv, "-" for an empty text
    if [[ -n $2 ]]; then kv "$1" "$2"; else printf -- -; fi
}
measure() {   # case round
    local e o ea eb oa ob l la lb g ga gb
    "${CLIENT[@]}" "$W/bin/exec-loop" -b "$REF/true" -k "$CHUNK" "$WARM" "$MNT/true" >/dev/null
    e=$("${CLIENT[@]}" "$W/bin/exec-loop" -b "$REF/true" -k "$CHUNK" "$N" "$MNT/true")
    "${CLIENT[@]}" "$W/bin/open-loop" -b "$REF/files" "$MNT/files" 1 >/dev/null
    o=$("${CLIENT[@]}" "$W/bin/open-loop" -b "$REF/files" "$MNT/files" 9)
    ea=${e%%$'\n'*}; eb=${e#*$'\n'B }
    oa=${o%%$'\n'*}; ob=${o#*$'\n'B }
    la=; lb=; ga=; gb=
    if [[ $LDEXEC == 1 ]]; then
        local ldb=(-b "$REF/$LD_NAME" -s "$MNT=$REF" -k "$CHUNK")
        "${CLIENT[@]}" "$W/bin/exec-loop" "${ldb[@]}" "$WARM" "$MNT/$LD_NAME" "${LD_ARGS[@]}" >/dev/null
        l=$("${CLIENT[@]}" "$W/bin/exec-loop" "${ldb[@]}" "$N" "$MNT/$LD_NAME" "${LD_ARGS[@]}")
        la=${l%%$'\n'*}; lb=${l#*$'\n'B }
    fi
    if (( BIGFILES > 0 )) && [[ " $BIG_CASES " == *" $1 "* ]]; then
        "${CLIENT[@]}" "$W/bin/open-loop" -b "$REF/big" "$MNT/big" 1 >/dev/null
        g=$("${CLIENT[@]}" "$W/bin/open-loop" -b "$REF/big" "$MNT/big" "$BIG_PASSES")
        ga=${g%%$'\n'*}; gb=${g#*$'\n'B }
    fi
    printf '%-22s r%s  A %s | B %s | open A %s B %s' "$1" "$2" \
        "${ea% n=*}" "$(kv median_us "$eb") delta $(kv delta_median_us "$eb")" \
        "$(kv per_file_us "$oa")" "$(kv per_file_us "$ob")"
    [[ -n $la ]] && printf ' | ld A %s B %s delta %s' "$(kv median_us "$la")" "$(kv median_us "$lb")" "$(kv delta_median_us "$lb")"
    [[ -n $ga ]] && printf ' | big A %s B %s' "$(kv per_file_us "$ga")" "$(kv per_file_us "$gb")"
    printf '\n'
    # case round A_median A_p99 B_median delta open_A open_B open_delta ld_A ld_B ld_delta big_A big_B big_delta
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" \
        "$(kv median_us "$ea")" "$(kv p99_us "$ea")" "$(kv median_us "$eb")" "$(kv delta_median_us "$eb")" \
        "$(kv per_file_us "$oa")" "$(kv per_file_us "$ob")" "$(kv delta_per_file_us "$ob")" \
        "$(kvd median_us "$la")" "$(kvd median_us "$lb")" "$(kvd delta_median_us "$lb")" \
        "$(kvd per_file_us "$ga")" "$(kvd per_file_us "$gb")" "$(kvd delta_per_file_us "$gb")" \
        >> "$W/results.tsv"
}

run_case() {   # case round
    local c=$1 r=$2
    case $c in
        none)       measure "$c" "$r" ;;
        floor)      start_listener "$MNT";        measure "$c" "$r"; stop_listener ;;
        floor-open) start_listener --open "$MNT"; measure "$c" "$r"; stop_listener ;;
        floor-cached) start_listener --open --cache "$MNT"; measure "$c" "$r"; stop_listener ;;
        appctl-exec|appctl-open|appctl-exec-base|appctl-open-base)
            start_appctl "$c" "$r"
            measure "$c" "$r"
            record_appctl "$c" "$r"
            ;;
        fapd-*)
            local rest=${c#fapd-} iso rules
            iso=${rest%%-*}; rules=${rest#*-}
            if [[ $rules == debug ]]; then
                FAPOLICYD_MODE=debug-deny FAPOLICYD_ISOLATION=$iso FAPOLICYD_WORKDIR=$W/$c \
                    fapolicyd_start "$MNT" ext2 "$W/trust" 2>>"$W/fapd.stderr"
            else
                FAPOLICYD_ISOLATION=$iso FAPOLICYD_RULES=$rules FAPOLICYD_WORKDIR=$W/$c \
                    fapolicyd_start "$MNT" ext2 "$W/trust" 2>>"$W/fapd.stderr"
            fi
            echo "$c $FAPOLICYD_STARTUP_S" >> "$W/startup.txt"
            pin_daemon "$FAPOLICYD_PID"
            measure "$c" "$r"
            fapolicyd_stop
            grep -E '^(Allowed|Denied) accesses' "$FAPOLICYD_DIR/log/fapolicyd-access.log" 2>/dev/null |
                tr '\n' ' ' | sed "s/^/#   $c r$r report: /; s/ *$/\n/" >> "$W/reports.txt" || true
            ;;
        *) echo "unknown case $c" >&2; exit 2 ;;
    esac
}

read -r -a cases <<< "$CASES"
nc=${#cases[@]}
for (( r = 1; r <= ROUNDS; r++ )); do
    for (( k = 0; k < nc; k++ )); do
        run_case "${cases[(k + r - 1) % nc]}" "$r"
    done
done

if [[ -s $W/startup.txt ]]; then
    echo "# fapolicyd start-up (launch -> mark present and a probe read answered), seconds:"
    sort "$W/startup.txt" | awk '{ a[$1] = a[$1] " " $2 } END { for (c in a) printf "#   %-22s%s\n", c, a[c] }' | sort
    echo "# fapolicyd shutdown reports (permissive: Denied = would have been denied):"
    sort -u "$W/reports.txt" | head -n 12
fi
if [[ -s $W/appctl.tsv ]]; then
    echo "# appctl marks seen in /proc/PID/fdinfo at start-up:"
    sort -u "$W/appctl-marks.txt" | sed 's/^/#   /'
    echo "# appctl per run: case round ready_ms stop_ms exit hit_rate hits misses p50_us p99_us rss_kB hwm_kB allowed denied threads seccomp nnp odd_stderr_lines event_log_lines memfd_noexec"
    sed 's/^/#   /' "$W/appctl.tsv"
    for f in "$W"/appctl-*.stderr; do
        if grep -qvE "$ODD_STDERR" "$f"; then
            echo "# unexpected appctl stderr in $(basename "$f"):"
            grep -vE "$ODD_STDERR" "$f" | sort | uniq -c | head -n 10 | sed 's/^/#   /'
        fi
    done
    for f in "$W"/appctl-events-*.jsonl; do
        [[ -s $f ]] || continue
        echo "# appctl event log $(basename "$f") (denies/would-denies; expected empty):"
        head -n 5 "$f" | sed 's/^/#   /'
    done
fi
[[ -s $W/floor.stderr ]] && tail -n 2 "$W/floor.stderr" | sed 's/^/# last /'
echo
echo "summary over $ROUNDS rounds (median of the per-round values; us): exec = one fork+exec+wait of true,"
echo "A = on the marked ext2, B = the same on the unmarked ext4 interleaved with it, delta = A-B paired,"
echo "net = delta minus the 'none' delta (the cost of the daemon); open = one open+read+close of a 4 KiB file;"
echo "ld = the loader, libc and true all on the image; big = open+read+close over $BIGFILES files of $BIGSIZE B"
awk -F'\t' -v order="$CASES" '
    function add(arr, k, v) { if (v != "-" && v != "") arr[k] = arr[k] " " v }
    { add(a, $1, $3); add(p, $1, $4); add(b, $1, $5); add(d, $1, $6); add(oa, $1, $7); add(od, $1, $9)
      add(la, $1, $10); add(lb, $1, $11); add(ld, $1, $12); add(ga, $1, $13); add(gd, $1, $15) }
    function med(s,   v, n, i, j, t) {
        n = split(s, v, " ")
        if (n == 0) return "-"
        for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j-1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
        return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function f(fmt, x) { return x == "-" ? "-" : sprintf(fmt, x) }
    function sub0(x, y) { return (x == "-" || y == "-") ? "-" : x - y }
    END {
        d0 = med(d["none"]); o0 = med(od["none"]); l0 = med(ld["none"]); g0 = med(gd["none"])
        nk = split(order, ks, " ")
        printf "%-22s %9s %9s %9s %9s %9s %8s | %9s %9s | %9s %9s %8s | %9s %9s\n", "case", "A_median", "A_p99", "B_median", "delta", "net", "ratio", "open_A", "open_net", "ld_A", "ld_net", "ld_ratio", "big_A", "big_net"
        for (k = 1; k <= nk; k++) {
            c = ks[k]; if (!(c in a)) continue
            mb = med(b[c]); net = med(d[c]) - d0
            lbm = med(lb[c]); lnet = sub0(med(ld[c]), l0)
            printf "%-22s %9.1f %9.1f %9.1f %+9.1f %+9.1f %8.3f | %9.2f %+9.2f | %9s %9s %8s | %9s %9s\n", c, med(a[c]), med(p[c]), mb, med(d[c]), net, (mb ? (mb + net) / mb : 0), med(oa[c]), med(od[c]) - o0,
                f("%.1f", med(la[c])), f("%+.1f", lnet), (lnet == "-" || lbm == "-") ? "-" : sprintf("%.3f", (lbm + lnet) / lbm),
                f("%.2f", med(ga[c])), f("%+.2f", sub0(med(gd[c]), g0))
        }
    }' "$W/results.tsv" | tee "$W/summary.txt"
