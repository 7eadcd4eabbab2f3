# tools/lib.sh — the shell helpers every tool shares, and their only copies: find the toolchain,
# install missing Debian packages, build the release binary, stop a process by its PID, read a
# JSON field. Sourced by tools/test, quickstart, bench-exec, bypass-suite, verity-vm and
# bench-support/*.sh. It sets no shell options: each script chooses its own (bypass-suite runs
# without -e on purpose, so that one failed technique does not end the run).

PROJECT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$PATH:/opt/swift/usr/bin"

# ensure_packages PKG... — apt-get install only the packages that are not installed yet.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "installing: ${missing[*]}" >&2
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  # A fresh machine has no package lists yet: update only then (an update is slow and needs the
  # network), and once more if the install fails on lists that went stale.
  apt-cache show "${missing[@]}" >/dev/null 2>&1 || $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null && return 0
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_build_dependencies() {
  # libarchive-dev: the apt hook's program reads dpkg-deb's tar streams with it.
  # libcurl4-openssl-dev: the headers `appctl sync` is built against (it loads libcurl.so.4 at run time).
  ensure_packages libssl-dev libseccomp-dev libarchive-dev libcurl4-openssl-dev pkg-config
  command -v swift >/dev/null || { echo "swift not found (expected in /opt/swift/usr/bin)" >&2; exit 1; }
}

# build_release [swift build args...] — the binary hosts run, in .build/release/appctl: the Swift runtime and
# libstdc++ linked in statically (the host needs no toolchain), linked by lld with packed relative relocations
# (DT_RELR: 7 KB of relocation data instead of 0.9 MB read at every start; needs glibc >= 2.36, as Debian 12
# has). Together they cut the daemon's resident memory at 100k policy entries from 17.2 to 15.5 MiB
# (BENCHMARKS.md). Swift's static-stdlib link line asks for libstdc++ by name (-lstdc++); a directory searched
# first, in which libstdc++.so is the static archive, makes that name resolve to the archive.
build_release() {
  local libdir="$PROJECT_ROOT/.build/static-libstdc++" archive
  archive=$(clang -print-file-name=libstdc++.a 2>/dev/null || true)
  local link=(-Xswiftc -use-ld=lld -Xlinker -z -Xlinker pack-relative-relocs)
  if [[ $archive == /* && -f $archive ]]; then
    mkdir -p "$libdir"
    ln -sfn "$archive" "$libdir/libstdc++.so"
    link+=(-Xlinker "-L$libdir")
  else
    echo "build_release: no static libstdc++ found; linking it dynamically" >&2
  fi
  (cd "$PROJECT_ROOT" && swift build -c release --static-swift-stdlib "${link[@]}" "$@")
}

# stop_pid PID [SECONDS] — stop one process we started, by the PID we recorded: SIGTERM, wait up
# to SECONDS (default 10), then SIGKILL. Never by name: pkill/killall would hit every daemon of the
# same name on the host, including a production one. Returns the process's exit status when it is
# a child of this shell (only a parent can collect it; 128+N for signal N), else 0. Sets
# STOPPED_AFTER_MS to the time from SIGTERM to exit (0 when it had already exited).
stop_pid() {
  local pid=$1 limit=$(( ${2:-10} * 100 )) i t0 rc=0
  STOPPED_AFTER_MS=0
  [[ -n $pid ]] || return 0
  if pid_running "$pid"; then
    t0=$(date +%s%N)
    kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < limit; i++ )); do pid_running "$pid" || break; sleep 0.01; done
    if pid_running "$pid"; then
      echo "stop_pid: pid $pid ignored SIGTERM for ${2:-10} s: SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    STOPPED_AFTER_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
  fi
  wait "$pid" 2>/dev/null || rc=$?
  (( rc == 127 )) && rc=0   # not our child: its status went to its own parent
  return "$rc"
}
# pid_running PID — true while PID exists and has not finished: a zombie (a child of ours not yet
# waited for) has finished, though kill -0 still finds it.
pid_running() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# json_field KEY [FILE] — one top-level field of a JSON object (FILE, or stdin): strings as they
# are, numbers and booleans as JSON writes them, lists one item per line. Fails, printing nothing,
# when the field is missing or null or the text is not a JSON object.
json_field() {
  python3 -c '
import json, sys
try:
    value = json.load(open(sys.argv[2]) if len(sys.argv) > 2 else sys.stdin).get(sys.argv[1])
except (ValueError, AttributeError, OSError):
    sys.exit(1)
if value is None:
    sys.exit(1)
items = value if isinstance(value, list) else [value]
print("\n".join(item if isinstance(item, str) else json.dumps(item) for item in items))
' "$@"
}
