# shellcheck shell=bash
# fapolicyd.sh — run Debian's fapolicyd 1.1.7 as a *benchmark opponent*, safely.
#
#   source tools/bench-support/fapolicyd.sh
#   fapolicyd_install                          # once; never starts or enables the service
#   fapolicyd_trust_from_paths TRUSTFILE /mnt/bench/true ...
#   fapolicyd_start /mnt/bench ext2 TRUSTFILE  # permissive, watches only that fs type
#   ... measure ...
#   fapolicyd_stop
#
# Safety rules this library keeps:
#   * permissive = 1 always (there is no switch to turn it off), and the daemon
#     is also started with --permissive, so a bad rule can never deny anything.
#   * watch_fs is a single filesystem type that must not be mounted anywhere
#     on the machine except at MOUNTPOINT (checked against /proc/mounts before
#     start); fapolicyd marks every mount of a watched type it sees.
#   * nothing under /etc/fapolicyd, /var/lib/fapolicyd or /run/fapolicyd is
#     edited: fapolicyd 1.1.7 has those paths compiled in (no -c option), so a
#     private directory is bind-mounted over them (see FAPOLICYD_ISOLATION).
#   * the daemon's PID is recorded (from /run/fapolicyd.pid, checked against
#     /proc/PID/exe, or $! in debug-deny mode) and fapolicyd_stop kills
#     exactly that PID (TERM, then KILL after a timeout). Nothing is ever
#     killed by name.
#
# Knobs (environment, read by fapolicyd_start):
#   FAPOLICYD_ISOLATION  ns   (default) the daemon runs in its own mount
#                             namespace (unshare -m) with the private config
#                             bind-mounted there; the host mount table is
#                             never touched, and if everything dies the binds
#                             die with it. Because mount marks do not cross
#                             mount namespaces (the namespace has *copies* of
#                             the mounts), this mode sets
#                             allow_filesystem_mark = 1 (one superblock mark,
#                             seen from every namespace).
#                        bind       binds in the host namespace (removed by
#                             fapolicyd_stop); fapolicyd keeps its default
#                             mount marks (allow_filesystem_mark = 0), i.e.
#                             the Debian default marking.
#   FAPOLICYD_RULES      debian (default) the rules the package installs in
#                             /etc/fapolicyd/rules.d (on Debian: only
#                             "deny_audit perm=execute all : all");
#                        known-libs upstream's default policy, assembled from
#                             /usr/share/fapolicyd/sample-rules like
#                             fagenrules would (this one consults the trust
#                             database, so integrity=sha256 really hashes);
#                        /path/file a rules file of your own.
#   FAPOLICYD_MODE       daemon (default) plain "fapolicyd --permissive", as
#                             the service runs it: it forks, the PID comes
#                             from /run/fapolicyd.pid, logs go to syslog;
#                        debug-deny "fapolicyd --debug-deny --permissive",
#                             foreground, every *deny* decision printed to
#                             $FAPOLICYD_LOG. Not for timing: with the Debian
#                             rules every exec is a (permissive) deny, and
#                             formatting each line costs a libmagic file-type
#                             lookup and a trust lookup (with sha256: a hash).
#   FAPOLICYD_INTEGRITY  sha256 (default) | size | none
#   FAPOLICYD_UID        0 | fapolicyd (default: fapolicyd if CAP_SYS_RESOURCE is
#                             in the bounding set, else 0; see below)
#   FAPOLICYD_READY_TIMEOUT  seconds to wait for start-up (default 120)
#   FAPOLICYD_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default 15)
#   FAPOLICYD_WORKDIR    private directory to use (emptied of a previous
#                        run first); default: a new mktemp -d
#                        /tmp/fapolicyd-bench.XXXXXX per start, which
#                        fapolicyd_cleanup removes
#
# After fapolicyd_start (globals): FAPOLICYD_PID, FAPOLICYD_DIR (the private
# directory), FAPOLICYD_LOG (daemon stdout/stderr), FAPOLICYD_STARTUP_S
# (seconds from launch until ready).
# After fapolicyd_stop: $FAPOLICYD_DIR/log/fapolicyd-access.log holds the
# daemon's shutdown statistics report (allowed/denied counts, cache hits).

FAPOLICYD_BIN=${FAPOLICYD_BIN:-/usr/sbin/fapolicyd}
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"   # stop_pid

_fapd_err() { echo "fapolicyd.sh: $*" >&2; }

# ---------------------------------------------------------------------------
# fapolicyd_install: install the Debian package without starting or enabling it.
fapolicyd_install() {
    if ! dpkg-query -W -f='${Status}' fapolicyd 2>/dev/null | grep -q 'install ok installed'; then
        local made_policy=0
        # Debian maintainer scripts ask /usr/sbin/policy-rc.d before starting a
        # service; 101 = "action forbidden". Keep an existing one untouched.
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            made_policy=1
        fi
        local rc=0
        if ! apt-cache show fapolicyd >/dev/null 2>&1; then
            apt-get update -qq || rc=$?
        fi
        if (( rc == 0 )); then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fapolicyd >/dev/null || rc=$?
        fi
        (( made_policy )) && rm -f /usr/sbin/policy-rc.d
        if (( rc != 0 )); then
            _fapd_err "apt-get failed ($rc)"
            return "$rc"
        fi
    fi
    # The postinst runs "deb-systemd-helper enable" on first install (a
    # multi-user.target.wants symlink). Undo that and record "disabled" so
    # upgrades keep it off; harmless when already disabled.
    deb-systemd-helper disable fapolicyd.service >/dev/null 2>&1 || true
    rm -f /etc/systemd/system/multi-user.target.wants/fapolicyd.service
    if [[ -d /run/systemd/system ]]; then
        # a real systemd: make sure the unit is not running either
        systemctl stop fapolicyd.service >/dev/null 2>&1 || true
        systemctl disable fapolicyd.service >/dev/null 2>&1 || true
    fi
    dpkg-query -W -f='fapolicyd ${Version}\n' fapolicyd
}

# ---------------------------------------------------------------------------
# Trust file format (fapolicyd.trust(5) of 1.1.7, and the header that
# fapolicyd-cli 1.1.7 itself writes): one "PATH SIZE SHA256" line per file,
# '#' comments. The daemon parses each line with sscanf("%4096s %lu %64s"), so
# a path cannot hold white space as such; 1.1.7 percent-encodes such
# characters (%20 for a space, upper-case hex) and decodes them on load.
_fapd_escape_path() {
    local p=$1 out='' c i
    local LC_ALL=C
    for (( i = 0; i < ${#p}; i++ )); do
        c=${p:i:1}
        case $c in
            [[:space:]]|%|[[:cntrl:]]) printf -v c '%%%02X' "'$c" ;;
        esac
        out+=$c
    done
    printf '%s' "$out"
}

# fapolicyd_trust_from_paths FILE PATHS...
# Regular files are listed; directories are walked (like fapolicyd-cli
# --file add). Each argument is first resolved with realpath -e: fapolicyd
# looks up the path the kernel reports for the opened file (/usr/bin/true,
# not /bin/true on a merged-/usr system), so that is the path to trust.
# Batched (find | xargs sha256sum/stat), so tens of thousands of files are fine.
fapolicyd_trust_from_paths() {
    local out=$1; shift
    if [[ -z $out || $# -eq 0 ]]; then
        _fapd_err "usage: fapolicyd_trust_from_paths FILE PATHS..."
        return 2
    fi
    local tmp list p rp
    tmp=$(mktemp "${out}.XXXXXX") || return 1
    list=$(mktemp "${out}.list.XXXXXX") || { rm -f "$tmp"; return 1; }
    : > "$list"
    for p in "$@"; do
        rp=$(realpath -e -- "$p") || { _fapd_err "no such file: $p"; rm -f "$tmp" "$list"; return 1; }
        find "$rp" -type f -print0 >> "$list" || { rm -f "$tmp" "$list"; return 1; }
    done
    {
        echo '# AUTOGENERATED FILE VERSION 2'
        echo '# This file contains a list of trusted files'
        echo '#'
        echo '#  FULL PATH        SIZE                             SHA256'
    } > "$tmp"
    # sizes and hashes in the same (sorted, de-duplicated) order; sha256sum -z
    # writes "HASH  PATH\0" without escaping the name.
    local n=0 rec size sum f
    sort -z -u -o "$list" "$list"
    while IFS= read -r -d '' rec && IFS= read -r -d '' size <&3; do
        sum=${rec%%  *}
        f=${rec#*  }
        if [[ $f == *[[:space:]%[:cntrl:]]* ]]; then f=$(_fapd_escape_path "$f"); fi
        printf '%s %s %s\n' "$f" "$size" "$sum"
        n=$((n + 1))
    done < <(xargs -0 -r sha256sum -z -- < "$list") \
         3< <(xargs -0 -r stat --printf '%s\0' -- < "$list") >> "$tmp"
    local expected
    expected=$(tr -cd '\0' < "$list" | wc -c)
    rm -f "$list"
    if (( n != expected )); then
        _fapd_err "hashed $n of $expected files"; rm -f "$tmp"; return 1
    fi
    mv -f "$tmp" "$out"
    echo "fapolicyd_trust_from_paths: $n files -> $out" >&2
}

# ---------------------------------------------------------------------------
_fapd_write_rules() {   # $1 = destination compiled.rules
    local dst=$1 sel=${FAPOLICYD_RULES:-debian} src=() f
    case $sel in
        debian)
            for f in /etc/fapolicyd/rules.d/*.rules; do [[ -f $f ]] && src+=("$f"); done ;;
        known-libs)
            for f in 10-languages 20-dracut 21-updaters 30-patterns 40-bad-elf \
                     41-shared-obj 42-trusted-elf 70-trusted-lang 72-shell \
                     90-deny-execute 95-allow-open; do
                src+=("/usr/share/fapolicyd/sample-rules/$f.rules")
            done ;;
        *)  src=("$sel") ;;
    esac
    if (( ${#src[@]} == 0 )); then _fapd_err "no rules found for FAPOLICYD_RULES=$sel"; return 1; fi
    # what fagenrules does: concatenate in order, drop comments and blank lines
    cat -- "${src[@]}" | grep -v -E '^[[:space:]]*(#|$)' > "$dst" || true
    if [[ ! -s $dst ]]; then _fapd_err "rules ($sel) are empty"; return 1; fi
}

# fapolicyd_start MOUNTPOINT FSTYPE TRUSTFILE
fapolicyd_start() {
    local mnt=$1 fstype=$2 trust=$3
    if [[ $# -ne 3 || ! -d $mnt || ! -f $trust ]]; then
        _fapd_err "usage: fapolicyd_start MOUNTPOINT FSTYPE TRUSTFILE (existing dir and file)"
        return 2
    fi
    if [[ -n ${FAPOLICYD_PID:-} ]] && kill -0 "$FAPOLICYD_PID" 2>/dev/null; then
        _fapd_err "already started (pid $FAPOLICYD_PID)"; return 1
    fi
    [[ -x $FAPOLICYD_BIN ]] || { _fapd_err "$FAPOLICYD_BIN missing: run fapolicyd_install"; return 1; }
    mnt=$(realpath -- "$mnt")

    # watch_fs must cover the test filesystem and nothing else on this machine.
    local mnt_fstype others
    mnt_fstype=$(awk -v m="$mnt" '$2 == m { t = $3 } END { print t }' /proc/mounts)
    if [[ $mnt_fstype != "$fstype" ]]; then
        _fapd_err "$mnt is not mounted as $fstype (found '${mnt_fstype:-nothing}')"; return 1
    fi
    others=$(awk -v m="$mnt" -v t="$fstype" '$3 == t && $2 != m' /proc/mounts)
    if [[ -n $others ]]; then
        _fapd_err "refusing: other $fstype mounts exist and would be watched:"; echo "$others" >&2; return 1
    fi
    if [[ -e /run/fapolicyd.pid ]] && kill -0 "$(cat /run/fapolicyd.pid 2>/dev/null)" 2>/dev/null; then
        _fapd_err "another fapolicyd is running (pid $(cat /run/fapolicyd.pid)); not starting"; return 1
    fi

    local iso=${FAPOLICYD_ISOLATION:-ns} fsmark
    case $iso in ns) fsmark=1 ;; bind) fsmark=0 ;; *) _fapd_err "FAPOLICYD_ISOLATION must be ns or bind"; return 2 ;; esac
    local integrity=${FAPOLICYD_INTEGRITY:-sha256}

    # fapolicyd drops to uid/gid "fapolicyd" keeping CAP_SYS_RESOURCE among
    # others (capset); where that capability is missing from the bounding set
    # (as in these VMs) capset fails with EPERM and the daemon exits with
    # "Cannot change to uid N". It then has to stay root (uid = 0, gid = 0,
    # fapolicyd's own compiled-in default), which changes nothing in the
    # decision path. FAPOLICYD_UID forces one or the other.
    local run_uid=${FAPOLICYD_UID:-}
    if [[ -z $run_uid ]]; then
        local bnd
        bnd=$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)
        if (( (16#$bnd >> 24) & 1 )); then run_uid=fapolicyd; else run_uid=0; fi
    fi
    local run_gid=$run_uid

    # A fresh private directory per start (an explicit FAPOLICYD_WORKDIR is
    # reused but emptied of the previous run's config, database and report).
    local d=${FAPOLICYD_WORKDIR:-}
    if [[ -z $d ]]; then
        d=$(mktemp -d /tmp/fapolicyd-bench.XXXXXX) || return 1
        FAPOLICYD_DIR_MADE=1
    else
        FAPOLICYD_DIR_MADE=0
    fi
    rm -rf "$d"/etc "$d"/lib "$d"/run "$d"/log
    mkdir -p "$d"/etc/rules.d "$d"/etc/trust.d "$d"/lib "$d"/run "$d"/log || return 1
    FAPOLICYD_DIR=$d
    FAPOLICYD_LOG=$d/fapolicyd.stderr
    FAPOLICYD_ISOLATION_USED=$iso

    # Configuration: the Debian defaults, except the keys marked (*).
    cat > "$d/etc/fapolicyd.conf" <<EOF
# written by tools/bench-support/fapolicyd.sh for a benchmark run
# (*) = changed from the Debian package's fapolicyd.conf
permissive = 1
nice_val = 14
q_size = 640
# (*) when CAP_SYS_RESOURCE is missing from the bounding set (see fapolicyd.sh)
uid = $run_uid
gid = $run_gid
do_stat_report = 1
detailed_report = 1
db_max_size = 50
subj_cache_size = 1549
obj_cache_size = 8191
# (*) only the test filesystem's type
watch_fs = $fstype
# (*) file backend only: no package database
trust = file
# (*)
integrity = $integrity
syslog_format = rule,dec,perm,auid,pid,exe,:,path,ftype,trust
rpm_sha256_only = 0
# (*) 1 in ns isolation (mount marks do not cross mount namespaces)
allow_filesystem_mark = $fsmark
EOF
    cp -- "$trust" "$d/etc/fapolicyd.trust" || return 1
    # the package's own empty example under trust.d is not copied: trust.d stays empty
    _fapd_write_rules "$d/etc/compiled.rules" || return 1
    # the daemon drops to uid/gid fapolicyd and must still read/write these
    chown -R root:fapolicyd "$d/etc" && chmod -R g+rX,o-rwx "$d/etc"
    chown fapolicyd:fapolicyd "$d/lib" "$d/run"
    chmod 755 "$d"

    # binds: private dir -> compiled-in path
    local binds=("$d/etc:/etc/fapolicyd" "$d/lib:/var/lib/fapolicyd" "$d/run:/run/fapolicyd")
    local b
    for b in "${binds[@]}"; do
        [[ -d ${b#*:} ]] || { _fapd_err "${b#*:} missing (is the package installed?)"; return 1; }
    done

    local mode=${FAPOLICYD_MODE:-daemon} args
    case $mode in
        daemon)     args=(--permissive) ;;
        debug-deny) args=(--debug-deny --permissive) ;;
        *) _fapd_err "FAPOLICYD_MODE must be daemon or debug-deny"; return 2 ;;
    esac
    # A pid file left by a dead fapolicyd would only confuse us; a live one
    # was refused above.
    rm -f /run/fapolicyd.pid

    FAPOLICYD_BOUND=()
    : > "$FAPOLICYD_LOG"
    local t0 t1
    t0=$(date +%s.%N)
    if [[ $iso == ns ]]; then
        local script="set -e"
        for b in "${binds[@]}"; do script+="; mount --bind '${b%%:*}' '${b#*:}'"; done
        # the shutdown report goes to /var/log/fapolicyd-access.log: keep it private
        script+="; mount --bind '$d/log' /var/log"
        script+="; exec '$FAPOLICYD_BIN' ${args[*]}"
        # unshare(1) execs bash, bash execs fapolicyd: $! is fapolicyd's PID
        # (in daemon mode, the PID of the parent that forks the daemon)
        unshare --mount --propagation private -- bash -c "$script" \
            </dev/null >>"$FAPOLICYD_LOG" 2>&1 &
    else
        if [[ -e /var/log/fapolicyd-access.log ]]; then
            mv -f /var/log/fapolicyd-access.log "$d/log/host-fapolicyd-access.log.orig"
        fi
        for b in "${binds[@]}"; do
            if ! mount --bind "${b%%:*}" "${b#*:}"; then
                _fapd_err "bind ${b} failed"; _fapd_unbind; return 1
            fi
            FAPOLICYD_BOUND+=("${b#*:}")
        done
        "$FAPOLICYD_BIN" "${args[@]}" </dev/null >>"$FAPOLICYD_LOG" 2>&1 &
    fi
    local starter=$!
    local timeout=${FAPOLICYD_READY_TIMEOUT:-120}
    local deadline=$(( $(date +%s) + timeout ))

    if [[ $mode == daemon ]]; then
        # fapolicyd forks; the child writes /run/fapolicyd.pid. The parent
        # exits at once, so wait for it and then for the pid file.
        while kill -0 "$starter" 2>/dev/null && (( $(date +%s) < deadline )); do sleep 0.05; done
        if kill -0 "$starter" 2>/dev/null; then
            _fapd_err "fapolicyd did not fork into the background; stopping pid $starter"
            FAPOLICYD_PID=$starter; fapolicyd_stop; return 1
        fi
        local rc=0
        wait "$starter" || rc=$?
        if (( rc != 0 )); then
            _fapd_err "fapolicyd start failed (exit $rc); output:"; sed 's/^/    /' "$FAPOLICYD_LOG" >&2
            _fapd_unbind; return 1
        fi
        local p=
        while (( $(date +%s) < deadline )); do
            p=$(cat /run/fapolicyd.pid 2>/dev/null) || p=
            if [[ $p =~ ^[0-9]+$ ]] && [[ $(readlink "/proc/$p/exe" 2>/dev/null) == "$FAPOLICYD_BIN" ]]; then
                break
            fi
            p=
            sleep 0.05
        done
        if [[ -z $p ]]; then
            _fapd_err "no fapolicyd pid file after ${timeout}s; output:"; sed 's/^/    /' "$FAPOLICYD_LOG" >&2
            _fapd_unbind; return 1
        fi
        FAPOLICYD_PID=$p
    else
        FAPOLICYD_PID=$starter
    fi
    echo "$FAPOLICYD_PID" > "$d/daemon.pid"

    # Readiness, checked in the kernel rather than in a log (the daemon logs
    # to syslog, which may not exist): (1) the daemon's fanotify fd shows a
    # mark on the test filesystem in /proc/PID/fdinfo ("sdev:" for a
    # filesystem mark, "mnt_id:" for a mount mark); (2) reading a file on it
    # completes, i.e. the decision thread answers permission events.
    # (--debug-deny also prints "Starting to listen for events" at that point.)
    local majmin kdev mntid
    majmin=$(mountpoint -d -- "$mnt")
    kdev=$(printf '%x' $(( (${majmin%%:*} << 20) | ${majmin#*:} )))
    mntid=$(awk -v m="$mnt" '$5 == m { id = $1 } END { print id }' /proc/self/mountinfo)
    mntid=$(printf '%x' "${mntid:-0}")
    local marked=0
    while (( $(date +%s) < deadline )); do
        if ! kill -0 "$FAPOLICYD_PID" 2>/dev/null; then
            _fapd_err "fapolicyd exited during start-up; its output:"
            sed 's/^/    /' "$FAPOLICYD_LOG" >&2
            wait "$FAPOLICYD_PID" 2>/dev/null || true
            FAPOLICYD_PID=
            _fapd_unbind
            return 1
        fi
        if cat /proc/"$FAPOLICYD_PID"/fdinfo/* 2>/dev/null |
                grep -qE "^fanotify (sdev:$kdev|mnt_id:$mntid) "; then
            marked=1; break
        fi
        sleep 0.05
    done
    if (( ! marked )); then
        _fapd_err "no fanotify mark on $mnt after ${timeout}s; stopping it. Output:"
        sed 's/^/    /' "$FAPOLICYD_LOG" >&2
        fapolicyd_stop
        return 1
    fi
    local probe
    probe=$(find "$mnt" -xdev -maxdepth 2 -type f -print -quit 2>/dev/null)
    if [[ -n $probe ]]; then
        if ! timeout "$timeout" head -c 1 -- "$probe" >/dev/null; then
            _fapd_err "probe read of $probe did not complete; stopping it"
            fapolicyd_stop
            return 1
        fi
    else
        _fapd_err "warning: no file on $mnt to probe with; readiness = mark present only"
    fi
    t1=$(date +%s.%N)
    FAPOLICYD_STARTUP_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    echo "fapolicyd pid $FAPOLICYD_PID ready in ${FAPOLICYD_STARTUP_S}s (mode=$mode, isolation=$iso, uid=$run_uid, watch_fs=$fstype, rules=${FAPOLICYD_RULES:-debian}, integrity=$integrity, workdir=$d)" >&2
}

_fapd_unbind() {
    local i
    for (( i = ${#FAPOLICYD_BOUND[@]} - 1; i >= 0; i-- )); do
        umount "${FAPOLICYD_BOUND[i]}" || umount -l "${FAPOLICYD_BOUND[i]}"
    done
    FAPOLICYD_BOUND=()
    if [[ ${FAPOLICYD_ISOLATION_USED:-} == bind && -n ${FAPOLICYD_DIR:-} ]]; then
        # statistics report written to the host path: move it to the workdir,
        # and put back a report that was there before.
        if [[ -e /var/log/fapolicyd-access.log ]]; then
            mv -f /var/log/fapolicyd-access.log "$FAPOLICYD_DIR/log/fapolicyd-access.log"
        fi
        if [[ -e $FAPOLICYD_DIR/log/host-fapolicyd-access.log.orig ]]; then
            mv -f "$FAPOLICYD_DIR/log/host-fapolicyd-access.log.orig" /var/log/fapolicyd-access.log
        fi
    fi
}

# fapolicyd_stop: SIGTERM the recorded PID, SIGKILL after FAPOLICYD_STOP_TIMEOUT.
fapolicyd_stop() {
    local pid=${FAPOLICYD_PID:-}
    if [[ -z $pid && -n ${FAPOLICYD_DIR:-} && -f $FAPOLICYD_DIR/daemon.pid ]]; then
        pid=$(cat "$FAPOLICYD_DIR/daemon.pid")
    fi
    # reaps it too in debug-deny mode, the one mode where it is our child
    [[ -n $pid ]] && { stop_pid "$pid" "${FAPOLICYD_STOP_TIMEOUT:-15}" || true; }
    # the daemon removes its pid file on a clean exit; after SIGKILL it cannot
    if [[ -n $pid && -f /run/fapolicyd.pid && $(cat /run/fapolicyd.pid 2>/dev/null) == "$pid" ]]; then
        rm -f /run/fapolicyd.pid
    fi
    _fapd_unbind
    FAPOLICYD_PID=
    [[ -n ${FAPOLICYD_DIR:-} ]] && rm -f "$FAPOLICYD_DIR/daemon.pid"
    return 0
}

# fapolicyd_cleanup: fapolicyd_stop, then remove the private directory if
# fapolicyd_start made it (an explicit FAPOLICYD_WORKDIR is left alone).
fapolicyd_cleanup() {
    fapolicyd_stop
    if [[ ${FAPOLICYD_DIR_MADE:-0} == 1 && -n ${FAPOLICYD_DIR:-} && -d $FAPOLICYD_DIR ]]; then
        rm -rf -- "$FAPOLICYD_DIR"
    fi
    FAPOLICYD_DIR=
    FAPOLICYD_DIR_MADE=0
}
