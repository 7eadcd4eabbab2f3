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
