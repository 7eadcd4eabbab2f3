# tools/bypass/catalogue.sh — the machinery that runs the bypass techniques of techniques.sh.
# Sourced by tools/bypass-suite, and by tools/bypass/technique (what BypassTests.swift calls), so
# both run the same attacks with the same payloads and judge them by the same evidence.
#
# The caller sets, before bypass_init:
#   BYPASS_WORK        a scratch directory OFF the enforced filesystem, root-owned, mode 0755: the
#                      payloads are built here (an enforcing appctl refuses even to read an unknown
#                      ELF file, so they must exist before any daemon starts), and the marker lives here
#   BYPASS_FS          the mount point of the enforced filesystem (the bind-mount row binds it)
#   BYPASS_BIND        an empty directory for the bind-mount row (default $BYPASS_WORK/bind)
#   BYPASS_ATTACKER    the threat model's attacker, an unprivileged uid (default 65534, nobody)
#   BYPASS_TIMEOUT     seconds before one attempt is killed (default 30)
#   BYPASS_TRANSCRIPT  every attempt's command, exit status and output are appended here
#                      (default $BYPASS_WORK/transcript.txt)
#   BYPASS_DAEMON      what enforces while the techniques run: baseline, appctl, fapd-... (a label)
#   BYPASS_MEMFD_BEFORE  vm.memfd_noexec before anything ran; the memfd row notes a different value
#                      seen while appctl is not the one enforcing
#   BYPASS_CGROUP      a cgroup v2 group named web.service, made by the caller (and removed by it): the
#                      profiled service. The rows registered with `service` (technique list says so) and
#                      the service's own work (bypass_service_workload) run in it; the enforcer under test
#                      is to hold that service's execution profile, learned from bypass_service_workload
#                      (appctl: learn mode, then `appctl policy sign --profiles FRAGMENT --subject
#                      service=web.service`). Unset: those rows are reported as preparation failures.
# Then, per enforcement under test: bypass_tree DIR (a fresh ok/ + pay/ tree on the enforced
# filesystem), and bypass_run ID for each ID of BYPASS_ROWS and BYPASS_PROBES. bypass_run sets
# RAN (1: the payload's code ran), DETAIL (exit status and the last stderr line) and PREP_FAIL
# (1: the attack could not even be set up, so the row proves nothing either way).
#
# Evidence, not exit status: ELF payloads are /usr/bin/true plus appended bytes, run with
# --version, so running prints "true (GNU coreutils) ..."; scripts, the shared object
# (payload.c) and the machine code of the profiled-service rows create the marker file
# $BYPASS_WORK/m/marker.
# Needs root (setpriv, mounts); bash 4 or later.

BYPASS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LDSO=/lib64/ld-linux-x86-64.so.2

bypass_say() { echo "${PROG:-bypass}: $*" >&2; }

# bypass_init: checks the contract, builds the payloads in $BYPASS_WORK (once) and the marker directory.
bypass_init() {
    WORK=${BYPASS_WORK:?BYPASS_WORK must name a scratch directory}
    FS=${BYPASS_FS:?BYPASS_FS must name the enforced filesystem}
    BIND=${BYPASS_BIND:-$WORK/bind}
    ATT=${BYPASS_ATTACKER:-65534}
    TIMEOUT=${BYPASS_TIMEOUT:-30}
    MARKDIR=$WORK/m
    MARK=$MARKDIR/marker
    UNKNOWN_BIN=$WORK/unknown-bin
    getent passwd "$ATT" >/dev/null || { bypass_say "no user with uid $ATT"; return 1; }
    mkdir -p "$MARKDIR" "$BIND" || return 1
    chown "$ATT:$ATT" "$MARKDIR"
    bypass_machine_code
    [[ -f $WORK/evil.so && -f $WORK/evil.b64 && -f $UNKNOWN_BIN ]] && return 0
    /usr/bin/cc -shared -fPIC "-DMARKER=\"$MARK\"" -o "$WORK/evil.so" "$BYPASS_DIR/payload.c" || { bypass_say "cc failed"; return 1; }
    base64 < "$WORK/evil.so" > "$WORK/evil.b64"
    cp /usr/bin/true "$UNKNOWN_BIN" && printf '\n#bypass-suite unknown payload\n' >> "$UNKNOWN_BIN" && chmod 755 "$UNKNOWN_BIN"
    base64 < "$UNKNOWN_BIN" > "$WORK/unknown.b64"
}

# bypass_machine_code: CODE_HEX and CODE_OCTAL, the machine-code payload of rows t34 and t36 (x86-64 only;
# empty elsewhere, and those rows then fail their preparation). It never exists as a file: a row hands it to
# python3 as hex, or to a shell's printf as octal escapes. Position-independent, 33 bytes, then the marker's path:
#   lea rdi, [rip + 26]   (the path, right after the code)     48 8d 3d 1a 00 00 00
#   mov esi, 0x41         (O_WRONLY | O_CREAT)                  be 41 00 00 00
#   mov edx, 0644                                               ba a4 01 00 00
#   mov eax, 2            (open)                                b8 02 00 00 00
#   syscall                                                     0f 05
#   mov eax, 231          (exit_group)                          b8 e7 00 00 00
#   xor edi, edi          (status 0)                            31 ff
#   syscall                                                     0f 05
bypass_machine_code() {
    CODE_HEX='' CODE_OCTAL=''
    [[ $(uname -m) == x86_64 ]] || return 0
    local hex i
    hex=488d3d1a000000be41000000baa4010000b8020000000f05b8e700000031ff0f05
    hex+=$(printf '%s' "$MARK" | od -An -v -tx1 | tr -d ' \n')00
    CODE_HEX=$hex
    for (( i = 0; i < ${#hex}; i += 2 )); do CODE_OCTAL+=$(printf '\\%03o' "$((16#${hex:i:2}))"); done
}

# Read at each use: the suite changes BYPASS_TRANSCRIPT and BYPASS_DAEMON between columns.
bypass_transcript() { printf '%s' "${BYPASS_TRANSCRIPT:-$WORK/transcript.txt}"; }

# bypass_use_tree DIR: point RUN, OK and PAY at a tree bypass_tree made.
# SVC ($1.svc, beside the tree) is the profiled service's own directory: root's, as a real service's programs are
# (a directory the attacker can write would let them swap a script for a FIFO after the daemon looked at it).
bypass_use_tree() { RUN=$1 OK=$1/ok PAY=$1/pay SVC=$1.svc; }

# bypass_tree DIR: a fresh tree on the enforced filesystem. ok/ holds what a policy allows (copies
# of /usr/bin/true, one per row that modifies one, of dash and of the loader, whose content a real
# host's policy holds, and a #! script); pay/ holds the payloads. The policy or trust file under
# test is made from ok/ before the daemon starts.
bypass_tree() {
    bypass_use_tree "$1"
    mkdir -p "$OK" "$PAY" "$RUN/later" "$RUN/userns" "$SVC"
    local f
    for f in true append samesize rename truncate mmap hardlink; do cp /usr/bin/true "$OK/$f"; done
    cp /usr/bin/dash "$OK/dash"
    cp "$(realpath "$LDSO")" "$OK/ld.so"
    printf '#!/bin/sh\necho allowed-script-ran\n' > "$OK/allowed.sh"
    # An allowed script that says it runs ($1.started), then waits for the file $1 (rows t27-t28 append to a copy
    # once it runs).
    printf '#!/bin/sh\ntouch "$1.started"\nwhile [ ! -e "$1" ]; do sleep 0.01; done\n' > "$OK/wait.sh"
    # An allowed library: the payload library's own content (rows t29-t30 load the attacker's copy of it).
    cp "$WORK/evil.so" "$OK/lib.so"
    # The profiled service web.service (rows t32-t36): a copy of the host's sh (dash), python3 and dd, and the
    # service's script and Python program. All allowed by the policy; the service's profile lists only what
    # its work (bypass_service_workload) starts, and sh and python3 only with a program file.
    cp /usr/bin/dash "$SVC/sh"
    cp "$(realpath /usr/bin/python3)" "$SVC/python3"
    cp /usr/bin/dd "$SVC/dd"
    printf '#!%s\n%s --version > /dev/null && echo web-script-ran\n' "$SVC/sh" "$OK/true" > "$SVC/web.sh"
    printf "print('web-app-ran')\n" > "$SVC/app.py"
    chmod 755 "$OK"/* "$SVC" "$SVC"/*
    cp "$UNKNOWN_BIN" "$PAY/unknown"
    cp "$WORK/unknown.b64" "$PAY/unknown.b64"
    cp "$WORK/evil.so" "$PAY/evil.so"
    cp "$WORK/evil.b64" "$PAY/evil.b64"
    printf '#!/bin/sh\ntouch %s\necho payload-ran\n' "$MARK" > "$PAY/unknown-sh"
    printf 'touch %s\necho payload-ran\n' "$MARK" > "$PAY/unknown-bash"
    printf 'touch %s\necho payload-ran\n' "$MARK" > "$PAY/unknown-dash"
    printf "import os\nopen('%s', 'w').close()\nprint('payload-ran')\n" "$MARK" > "$PAY/unknown.py"
    printf "use strict;\nopen(my \$f, '>', '%s') or die;\nclose(\$f);\nprint \"payload-ran\\\\n\";\n" "$MARK" > "$PAY/unknown.pl"
    printf '#!/bin/sh\ntouch %s\necho payload-ran\n' "$MARK" > "$PAY/unknown-shebang.sh"
    chmod 755 "$PAY"/unknown*
    chmod 644 "$PAY/unknown.b64" "$PAY/evil.b64"
    # the attacker's own files: writable by them (so never eligible for appctl's kernel-side cache
    # of root-only-writable files, and modifiable, which the rows that change a file need)
    chown -R "$ATT:$ATT" "$RUN"
    # Scripts and libraries run where only root can change them (a shell reads its script as it goes; the
    # loader's private mappings show later writes): root deployed these, as on a real host.
    # The binaries the rows only run or copy are root's too (a system's /usr/bin/true, dash and loader); the ones
    # rows t05-t10 change stay the attacker's.
    chown root:root "$OK/allowed.sh" "$OK/wait.sh" "$OK/lib.so" "$OK/true" "$OK/dash" "$OK/ld.so"
    chmod 755 "$OK/allowed.sh" "$OK/wait.sh" "$OK/lib.so" "$OK/true" "$OK/dash" "$OK/ld.so"
    chown -R root:root "$SVC"
    # Row t31: a log root writes and anyone can read, holding a line the attacker got logged.
    printf 'GET /index.html from 10.0.0.7\ntouch %s\n' "$MARK" > "$RUN/root.log"
    chown root:root "$RUN/root.log"; chmod 644 "$RUN/root.log"
    sync
}

# The registry. techniques.sh calls these once per row, next to the row's function (named ID).
# NEEDS: what the row needs beyond a tree and an enforcer: '' (nothing), or `service` (it runs in the profiled
# service $BYPASS_CGROUP, and the enforcer is to hold that service's learned profile).
BYPASS_ROWS=() BYPASS_PROBES=()
declare -gA TITLE EXPECT NEEDS
technique() { BYPASS_ROWS+=("$1"); EXPECT[$1]=$2 TITLE[$1]=$3 NEEDS[$1]=${4:-}; }   # ID EXPECTED TITLE [NEEDS]: a scored row
probe() { BYPASS_PROBES+=("$1"); EXPECT[$1]=$2 TITLE[$1]=$3 NEEDS[$1]=${4:-}; }     # the same, not scored

# bypass_run ID: one technique in the current tree; sets RAN, DETAIL, PREP_FAIL.
bypass_run() {
    CURRENT="$1 ${TITLE[$1]}"
    RAN=0 DETAIL='' PREP_FAIL=0
    "$1"
    (( PREP_FAIL )) && DETAIL="PREPARATION FAILED; $DETAIL"
    return 0
}

# ---------------------------------------------------------------------------------------------
# What the techniques are written with. try SNIPPET runs it with bash in $PAY under a timeout, as
# the attacker, or as root with TRY_AS=root; in the cgroup TRY_CGROUP when that is set (try_in_service:
# in the profiled service). attacker CMD... runs a preparation step (a file change) as the attacker.
# judge_elf / judge_marker set RAN and DETAIL from the evidence.
OUT='' ERR='' RC='' RAN=0 DETAIL='' PREP_FAIL=0 TRY_PID=''
# The attacker's last step's stderr is kept: an enforcer may refuse the change itself (appctl refuses to open
# an ELF object that someone other than root can change), which must_change then reports as a refusal.
ATT_ERR=''
attacker() {
    env HOME="$MARKDIR" setpriv --reuid="$ATT" --regid="$ATT" --clear-groups -- "$@" 2>"$WORK/att-err" || prep_failed "$*"
    ATT_ERR=$(cat "$WORK/att-err"); [[ -z $ATT_ERR ]] || printf '%s\n' "$ATT_ERR" >&2
}
# A preparation step that failed, or a file that did not change, makes the row invalid rather than
# letting it pass. sig reads only metadata: an enforcing appctl would refuse to open an unknown ELF.
prep_failed() { PREP_FAIL=1; bypass_say "preparation failed: $*"; }
sig() { stat -c '%i:%s:%z' -- "$1" 2>/dev/null; }
# must_change FILE SIG: the row's change happened (return 0), or the enforcer refused the change itself
# (return 1: RAN=0, the row is judged blocked with that detail; the caller returns), or neither (invalid row).
must_change() {
    [[ $(sig "$1") != "$2" ]] && return 0
    if [[ $ATT_ERR == *"Operation not permitted"* ]]; then
        PREP_FAIL=0 RAN=0 DETAIL="the change itself was refused: $(ERR=$ATT_ERR short)"
        return 1
    fi
    prep_failed "$1 did not change"
}
try() {
    local as=${TRY_AS:-attacker} who=()
    [[ $as == root ]] || who=(setpriv --reuid="$ATT" --regid="$ATT" --clear-groups --)
    local cg=${TRY_CGROUP:-}
    rm -f "$MARK"
    RC=0
    # In the background + wait: timeout(1) leaves the terminal's process group and exits normally
    # on Ctrl-C, and bash then ignores the SIGINT of a foreground child; "wait" lets a trap run.
    # With a cgroup, root moves this subshell into it first; everything it starts stays there.
    (cd "$PAY" && { [[ -z $cg ]] || echo "$BASHPID" > "$cg/cgroup.procs" || { echo "bypass: cannot join the cgroup $cg" >&2; exit 199; }; } &&
        exec env HOME="$MARKDIR" timeout -k 5 "$TIMEOUT" "${who[@]}" /usr/bin/bash -c "$1") \
        >"$WORK/out" 2>"$WORK/err" </dev/null &
    TRY_PID=$!
    wait "$TRY_PID" || RC=$?
    TRY_PID=
    OUT=$(cat "$WORK/out") ERR=$(cat "$WORK/err")
    (( RC == 124 || RC == 137 )) && ERR+=" [killed after ${TIMEOUT}s]"
    (( RC == 199 )) && [[ $ERR == *"cannot join the cgroup"* ]] && prep_failed "$ERR"
    printf '### %s (as %s%s)\n$ %s\nexit %s\n--- stdout\n%s\n--- stderr\n%s\n' "$CURRENT" "$as" "${cg:+, in $cg}" "$1" "$RC" "$OUT" "$ERR" >> "$(bypass_transcript)"
}
# try_in_service SNIPPET: try, in the profiled service (BYPASS_CGROUP). Without it the row cannot be set up.
try_in_service() {
    local cg=${BYPASS_CGROUP:-}
    if [[ -z $cg || ! -f $cg/cgroup.procs ]]; then
        prep_failed "no profiled service: BYPASS_CGROUP (${cg:-unset}) is not a cgroup v2 group"
        RC=0 OUT='' ERR='no profiled service (BYPASS_CGROUP)'; rm -f "$MARK"; return 0
    fi
    TRY_CGROUP=$cg try "$1"
}
short() {   # a short, path-free form of the last stderr line
    local s
    s=$(printf '%s\n' "$ERR" | grep -v '^[[:space:]]*$' | tail -n 1 |
        sed -E 's#^[^ :]*(bash|sh|dash)(: line [0-9]+|: [0-9]+)?: ##')
    s=${s//$BIND\/${PAY#"$FS"/}\//}
    s=${s//$PAY\//}; s=${s//$OK\//ok\/}; s=${s//$RUN\//}; s=${s//$WORK\//}
    s=${s//|/\\|}
    (( ${#s} > 100 )) && s="${s:0:97}..."
    printf '%s' "$s"
}
evidence_elf() { [[ $OUT == *"coreutils"* ]]; }
evidence_marker() { [[ -e $MARK ]]; }
judge_elf() { if evidence_elf; then RAN=1; else RAN=0; fi; DETAIL="exit $RC${ERR:+: $(short)}"; }
judge_marker() { if evidence_marker; then RAN=1; else RAN=0; fi; DETAIL="exit $RC${ERR:+: $(short)}"; }

# shellcheck source=techniques.sh
source "$BYPASS_DIR/techniques.sh"
