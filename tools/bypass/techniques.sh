# tools/bypass/techniques.sh — THE catalogue of bypass techniques: the threat model's attacks
# (README, SECURITY.md), each one row here and nowhere else. tools/bypass-suite runs them against
# no daemon, appctl and fapolicyd and writes SECURITY.md's tables; BypassTests.swift runs them
# against the daemon its harness starts. Sourced by catalogue.sh, whose header documents the
# environment and the helpers used below (try, attacker, judge_elf, judge_marker, must_change, sig).
#
# A row:   technique ID EXPECTED 'TITLE' [NEEDS]    (probe ... for the further, unscored probes)
#          ID() { ...set up as the attacker..., try "COMMAND"; judge_elf or judge_marker; }
# NEEDS `service`: the row runs in the profiled service (try_in_service), whose learned execution profile the
# enforcer must hold (catalogue.sh: BYPASS_CGROUP); callers that cannot set that up must say so, not score it.
# EXPECTED is what an allow-lister that keeps the threat model's promise does: runs (allowed
# code keeps working), blocked (the exec is refused), 'not run' (the loader or interpreter
# refuses the file), 'runs (documented gap)' (a gap SECURITY.md states). Titles are Markdown:
# they go into SECURITY.md as they are. Rows run in this order, in one tree, under one daemon.
# In scope: $OK (allowed files), $PAY (payloads, the working directory of try), $RUN (the tree),
# $FS (the enforced filesystem), $BIND, $WORK, $UNKNOWN_BIN, $ATT, $LDSO, $BYPASS_DAEMON.

technique t01 runs 'allowed binary runs'
t01() { try "$OK/true --version"; judge_elf; }

technique t02 runs 'allowed script (`./x.sh`)'
t02() { try "cd $OK && ./allowed.sh"; if [[ $OUT == *allowed-script-ran* ]]; then RAN=1; else RAN=0; fi; DETAIL="exit $RC${ERR:+: $(short)}"; }

technique t03 runs 'copy of the allowed binary at a new path'
t03() { attacker cp "$OK/true" "$PAY/true-copy"; try "$PAY/true-copy --version"; judge_elf; }

technique t04 blocked 'unknown binary'
t04() { try "./unknown --version"; judge_elf; }

# Rows t05-t10 change an allowed file after it ran once (so any cached verdict exists), as the
# attacker who owns it; must_change makes sure the change happened, or that the enforcer refused it.
# rerun_after_change FILE CHANGE...: runs FILE (so any cached verdict exists), makes the change as the attacker,
# checks that it happened (or that the enforcer refused it), runs FILE again and judges that run.
rerun_after_change() {
    local file=$1; shift
    try "$file --version"
    local b; b=$(sig "$file")
    "$@"
    must_change "$file" "$b" || return 0
    try "$file --version"; judge_elf
}

technique t05 blocked 'allowed binary modified by append'
t05() { rerun_after_change "$OK/append" attacker bash -c "printf X >> '$OK/append'"; }

technique t06 blocked 'same-size rewrite, mtime restored'
t06_change() {
    attacker /usr/bin/python3 - "$OK/samesize" <<'EOF'
import os, sys
p = sys.argv[1]
st = os.stat(p)
data = open(p, 'rb').read()
off = data.find(b'GNU coreutils')
fd = os.open(p, os.O_WRONLY)
os.pwrite(fd, b'gnu', off)
os.close(fd)
os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
st2 = os.stat(p)
assert st2.st_size == st.st_size and st2.st_mtime_ns == st.st_mtime_ns
EOF
}
t06() { rerun_after_change "$OK/samesize" t06_change; }

technique t07 blocked 'rename-over of an allowed name'
t07() { rerun_after_change "$OK/rename" attacker bash -c "cp '$UNKNOWN_BIN' '$PAY/other' && mv -f '$PAY/other' '$OK/rename'"; }

technique t08 blocked 'truncate + rewrite'
t08() { rerun_after_change "$OK/truncate" attacker bash -c "{ cat /usr/bin/true; printf '\\n'; } > '$OK/truncate'"; }

technique t09 blocked 'write through MAP_SHARED, mtime restored'
t09_change() {
    attacker /usr/bin/python3 - "$OK/mmap" <<'EOF'
import mmap, os, sys
p = sys.argv[1]
st = os.stat(p)
with open(p, 'r+b') as f:
    m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
    off = m.find(b'GNU coreutils')
    m[off:off + 3] = b'GnU'
    m.flush(); m.close()
os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
EOF
}
t09() { rerun_after_change "$OK/mmap" t09_change; }

technique t10 blocked 'hard link to an allowed file, then file modified'
t10() {
    try "$OK/hardlink --version"
    attacker ln "$OK/hardlink" "$PAY/linked"
    try "$PAY/linked --version"
    local b; b=$(sig "$OK/hardlink")
    attacker bash -c "printf X >> '$OK/hardlink'"; must_change "$OK/hardlink" "$b" || return 0
    try "$PAY/linked --version"; judge_elf
    local ran1=$RAN d1=$DETAIL
    try "$OK/hardlink --version"; judge_elf
    (( RAN = RAN || ran1 ))
    DETAIL="link: $d1; original: $DETAIL"
}

technique t11 blocked '`ld.so ./unknown`'
t11() { try "$LDSO ./unknown --version"; judge_elf; }

technique t12 blocked '`ld.so --library-path DIR ./unknown`'
t12() { try "$LDSO --library-path $PAY ./unknown --version"; judge_elf; }

technique t13 'not run' '`ld.so --preload ./evil.so /usr/bin/true`'
t13() { try "$LDSO --preload $PAY/evil.so /usr/bin/true"; judge_marker; }

technique t14 'not run' '`LD_PRELOAD=./evil.so /usr/bin/true`'
t14() { try "LD_PRELOAD=$PAY/evil.so /usr/bin/true"; judge_marker; }

technique t15 'not run' '`LD_AUDIT=./evil.so /usr/bin/true`'
t15() { try "LD_AUDIT=$PAY/evil.so /usr/bin/true"; judge_marker; }

technique t16 'not run' "python3 \`ctypes.CDLL('./evil.so')\`"
t16() { try "/usr/bin/python3 -c 'import ctypes; ctypes.CDLL(\"./evil.so\")'"; judge_marker; }

technique t17 'not run' '`sh ./unknown-script`'
t17() { try "/bin/sh ./unknown-sh"; judge_marker; }

technique t18 'not run' '`bash ./unknown-script`'
t18() { try "/usr/bin/bash ./unknown-bash"; judge_marker; }

technique t19 'not run' '`dash ./unknown-script`'
t19() { try "/usr/bin/dash ./unknown-dash"; judge_marker; }

technique t20 'not run' '`python3 ./unknown.py`'
t20() { try "/usr/bin/python3 ./unknown.py"; judge_marker; }

technique t21 'not run' '`perl ./unknown.pl`'
t21() { try "/usr/bin/perl ./unknown.pl"; judge_marker; }

technique t22 blocked '`./unknown.sh` via its shebang'
t22() { try "./unknown-shebang.sh"; judge_marker; }

technique t23 blocked 'memfd_create + fexecve (python3)'
t23() {
    try "/usr/bin/python3 -c '
import base64, os
data = base64.b64decode(open(\"unknown.b64\", \"rb\").read())
fd = os.memfd_create(\"payload\", 0)
os.write(fd, data)
os.execv(f\"/proc/self/fd/{fd}\", [\"payload\", \"--version\"])
'"
    judge_elf
    # vm.memfd_noexec is machine-wide: another appctl (or a test) may have raised it meanwhile
    local v; v=$(cat /proc/sys/vm/memfd_noexec 2>/dev/null)
    [[ ${BYPASS_DAEMON:-} != appctl && -n ${BYPASS_MEMFD_BEFORE:-} && $v != "$BYPASS_MEMFD_BEFORE" ]] &&
        DETAIL+="; vm.memfd_noexec was $v, not $BYPASS_MEMFD_BEFORE"
    echo "vm.memfd_noexec=$v" >> "$(bypass_transcript)"
}

technique t24 blocked 'tmpfs mounted under the image after start'
t24() {
    # root mounts it after the daemon started, under the enforced filesystem's mount point; the
    # attacker copies the payload there and runs it at once (no waiting for the daemon to notice),
    # then once more a second later
    mount -t tmpfs -o size=16m,mode=1777 bypass-suite-later "$RUN/later" || { RAN=0; DETAIL="mount failed"; return; }
    try "cp $UNKNOWN_BIN $RUN/later/unknown && $RUN/later/unknown --version"; judge_elf
    local ran1=$RAN d1=$DETAIL
    sleep 1
    try "$RUN/later/unknown --version"; judge_elf
    umount "$RUN/later" || umount -l "$RUN/later"
    if (( ran1 != RAN )); then DETAIL="at once: $d1 ($( ((ran1)) && echo ran || echo blocked)); 1 s later: $DETAIL ($( ((RAN)) && echo ran || echo blocked))"; fi
    (( RAN = RAN || ran1 ))
}

technique t25 blocked 'bind mount of the image elsewhere'
t25() {
    mount --bind "$FS" "$BIND" || { RAN=0; DETAIL="bind mount failed"; return; }
    try "$BIND/${PAY#"$FS"/}/unknown --version"; judge_elf
    umount "$BIND" || umount -l "$BIND"
}

technique t26 blocked 'other mount namespace (`unshare -m`)'
t26() {   # root makes the namespace (unshare -m needs it), the attacker runs the payload inside
    TRY_AS=root try "unshare -m --propagation private setpriv --reuid=$ATT --regid=$ATT --clear-groups -- /bin/sh -c '$PAY/unknown --version'"
    judge_elf
}

# Rows t27-t30 (issue 10): content that changes under a verdict. The attacker owns a copy of allowed
# content, and changes it after the allow-lister has looked at it.
technique t27 'not run' 'copy of an allowed script, appended to while it runs (`sh ./copy.sh`)'
t27() { try "cp $OK/wait.sh ./grow.sh && { sh ./grow.sh ./go-27 & p=\$!; while kill -0 \$p 2>/dev/null && [ ! -e ./go-27.started ]; do sleep 0.01; done; echo 'touch $MARK' >> ./grow.sh; touch ./go-27; wait \$p; }"; judge_marker; }

technique t28 'not run' 'copy of an allowed script, appended to while it runs (`./copy.sh` via its shebang)'
t28() { try "cp $OK/wait.sh ./grow2.sh && chmod 755 ./grow2.sh && { ./grow2.sh ./go-28 & p=\$!; while kill -0 \$p 2>/dev/null && [ ! -e ./go-28.started ]; do sleep 0.01; done; echo 'touch $MARK' >> ./grow2.sh; touch ./go-28; wait \$p; }"; judge_marker; }

technique t29 'not run' 'copy of an allowed library, changed after it was checked (`LD_PRELOAD=./copy.so`)'
t29() { try "cp $OK/lib.so ./copy.so && LD_PRELOAD=./copy.so $OK/true --version"; judge_marker; }

technique t30 'not run' 'copy of an allowed library opened with `dlopen` (python3 ctypes)'
t30() { try "cp $OK/lib.so ./copy2.so && python3 -c \"import ctypes; ctypes.CDLL('./copy2.so')\""; judge_marker; }

# Row t31 (issue 10, case 5): a verdict cached in the kernel for a data open must hold for every later opener. root.log
# is root's, world-readable, with a line the attacker got into it (a request logged by a root service); once anyone has
# read it, an interpreter is handed it as its program.
technique t31 'not run' 'root-owned log anyone can read, with a line the attacker chose: read, then `sh root.log`'
t31() { try "cat $RUN/root.log > /dev/null && sh $RUN/root.log"; judge_marker; }

# Rows t32-t36 (issue 15): the attacker runs inside a profiled service, web.service (BYPASS_CGROUP). The service's own
# work (bypass_service_workload) starts true, its script by its #! line and through sh, and python3 with its program
# file; the profile learned from that work lists those programs, and lets neither sh nor python3 take inline code. The
# attacker has code execution in the service (a command or template injection) and reaches for what the policy allows
# on the host but the service never started, or never started that way. Profiles judge execs, so each payload here
# needs the exec of sh or python3 with inline code, or of dd; code the service's running processes make themselves,
# with no exec, is outside them (SECURITY.md).
bypass_service_workload() {
    try_in_service "$OK/true --version; $SVC/web.sh; $SVC/sh $SVC/web.sh; $SVC/python3 $SVC/app.py"
    local missing=()
    [[ $OUT == *coreutils* ]] || missing+=(true)
    [[ $(grep -c '^web-script-ran$' <<<"$OUT") == 2 ]] || missing+=('web.sh (#! and sh web.sh)')
    [[ $OUT == *web-app-ran* ]] || missing+=('python3 app.py')
    local list=''
    if (( ${#missing[@]} )); then RAN=0 list=$(printf '%s, ' "${missing[@]}"); else RAN=1; fi
    DETAIL="exit $RC${list:+; did not run: ${list%, }}${ERR:+: $(short)}"
}
# The machine code of t34 and t36 is x86-64's (bypass_machine_code).
need_machine_code() { [[ -n $CODE_HEX ]] || { prep_failed "the machine-code payload is x86-64 only"; return 1; }; }

technique t32 runs 'profiled service (`web.service`): its own programs, its script (`#!` and `sh web.sh`) and `python3 app.py`' service
t32() { bypass_service_workload; }

technique t33 blocked 'profiled service: web shell, `sh -c` (the command writes the marker)' service
t33() { try_in_service "$SVC/sh -c 'echo web-shell-ran > $MARK'"; judge_marker; }

technique t34 blocked 'profiled service: `python3 -c` with ctypes, machine code run from an anonymous `mmap`' service
t34() {
    need_machine_code || return 0
    try_in_service "$SVC/python3 -c '
import ctypes, mmap
code = bytes.fromhex(\"$CODE_HEX\")
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
ctypes.CFUNCTYPE(None)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()
'"
    judge_marker
}

technique t35 blocked 'profiled service: `python3 -c` writes a library into a memfd, `dlopen("/proc/self/fd/N")`' service
t35() {
    try_in_service "$SVC/python3 -c '
import base64, ctypes, os
fd = os.memfd_create(\"lib\")
os.write(fd, base64.b64decode(open(\"evil.b64\", \"rb\").read()))
ctypes.CDLL(f\"/proc/self/fd/{fd}\")
'"
    judge_marker
}

# t36 is DDexec's primitive in its smallest form: the tool loads a whole ELF program this way, this writes 33 bytes of
# machine code. A shell opens its own /proc/PID/mem; dd, the "seeker", moves that shared file offset to the instruction
# after the read(2) system call the shell is in while it reads its own /proc/PID/syscall; the shell's printf writes the
# code there, and its next read(2) returns into it. No file of the payload is opened or executed: what an exec-judging
# enforcer can see is the exec of dd, and of the shell when one is started for it.
ddexec_snippet() {   # SEEKER: the dd to run
    printf '%s' "read nr a1 a2 a3 a4 a5 a6 sp pc < /proc/\$\$/syscall && exec 3<>/proc/\$\$/mem && $1 bs=1 count=0 seek=\$((pc)) status=none >&3 || exit 3
printf '$CODE_OCTAL' >&3
read x < /dev/null
echo 'the machine code did not run'"
}
technique t36 blocked 'profiled service: DDexec-style, `sh -c` and `dd` write machine code into the shell through `/proc/PID/mem`' service
t36() {
    need_machine_code || return 0
    local script ran1 d1
    script=$(ddexec_snippet "$SVC/dd")
    # As a web shell does it: the service's sh with the code as its command string.
    try_in_service "$SVC/sh -c $(printf '%q' "$script")"; judge_marker
    ran1=$RAN d1=$DETAIL
    # In a shell the attacker already runs in the service (this row's bash, off the enforced filesystem): dd is left.
    try_in_service "$script"; judge_marker
    (( RAN = RAN || ran1 ))
    DETAIL="sh -c: $d1; a running shell: $DETAIL"
}

# Inline code named as if it were a file, or carried in by an option or the environment (found while building the
# rows above and in the review of issue 15): each must count as inline code for an interpreter listed no-inline.
technique t37 blocked 'profiled service: `python3 /dev/stdin`, the code on a pipe' service
t37() { try_in_service "echo \"open('$MARK', 'w').close()\" | $SVC/python3 /dev/stdin"; judge_marker; }

technique t38 blocked 'profiled service: `sh ./fifo`, a FIFO the attacker writes' service
t38() {
    try_in_service "cd $RUN && rm -f ./fifo && mkfifo ./fifo && { timeout -s KILL 5 sh -c 'echo \"echo x > $MARK\" > ./fifo' </dev/null >/dev/null 2>&1 & } && $SVC/sh ./fifo"
    judge_marker
}

technique t39 blocked 'profiled service: `python3 -i app.py`, code on standard input after the script' service
t39() { try_in_service "echo \"open('$MARK', 'w').close()\" | $SVC/python3 -i $SVC/app.py"; judge_marker; }

technique t40 blocked 'profiled service: `ENV=/dev/stdin sh -i web.sh`' service
t40() { try_in_service "echo 'echo x > $MARK' | ENV=/dev/stdin $SVC/sh -i $SVC/web.sh"; judge_marker; }

technique t41 blocked 'profiled service: `ld.so dd`, the loader run directly to start what the profile lacks' service
t41() { try_in_service "$OK/ld.so $SVC/dd if=/dev/zero of=$MARK count=1 status=none"; judge_marker; }

technique t42 blocked 'profiled service: `ld.so python3 -c`, the loader handing python inline code' service
t42() { try_in_service "$OK/ld.so $SVC/python3 -c \"open('$MARK', 'w').close()\""; judge_marker; }

# Further probes (not scored): the threat model beyond the scored rows, and documented gaps.
probe e1 blocked 'unprivileged user: tmpfs inside `unshare -Urm`, unknown binary there'
e1() {
    try "unshare -Urm /bin/sh -c 'mount -t tmpfs -o size=8m none $RUN/userns && cp $UNKNOWN_BIN $RUN/userns/unknown && $RUN/userns/unknown --version'"
    judge_elf
}

probe e2 'not run' '`ld.so /usr/bin/python3 ./unknown.py`'
e2() { try "$LDSO /usr/bin/python3 ./unknown.py"; judge_marker; }

probe e3 'not run' '`ld.so /usr/bin/dash ./unknown-script`'
e3() { try "$LDSO /usr/bin/dash ./unknown-dash"; judge_marker; }

probe e4 'not run' 'copy of an allowed interpreter (dash) at a new path runs an unknown script'
e4() { attacker cp "$OK/dash" "$PAY/mydash"; try "./mydash ./unknown-dash"; judge_marker; }

probe e5 blocked 'copy of the (allowed) loader at a new path: `./myld ./unknown`'
e5() { attacker cp "$OK/ld.so" "$PAY/myld"; try "./myld ./unknown --version"; judge_elf; }

probe e6 'runs (documented gap)' '`sh < ./unknown-script` (stdin; documented gap)'
e6() { try "/bin/sh < ./unknown-dash"; judge_marker; }

probe e7 'runs (documented gap)' "python3 \`exec(open('x').read())\` (documented gap)"
e7() { try "/usr/bin/python3 -c 'exec(open(\"unknown.py\").read())'"; judge_marker; }
