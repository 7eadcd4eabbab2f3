# Shared by tools/test, tools/quickstart and tools/bench: find the toolchain, install what the
# build needs from Debian's packages when it is missing, and nothing else.
set -euo pipefail

PROJECT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$PATH:/opt/swift/usr/bin"

# ensure_packages PKG... — apt-get install only the packages that are not installed yet.
ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "installing: ${missing[*]}" >&2
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  # A fresh machine has no package lists yet; update once, then install.
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_build_dependencies() {
  ensure_packages libssl-dev libseccomp-dev pkg-config
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
