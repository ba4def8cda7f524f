#!/usr/bin/env bash
# Installs what ftpct's build, demo and tests need on a fresh Debian 12 machine (as root):
# Debian packages listed in tests/lab/requirements.txt (and build tools), Rust components and
# cargo tools. Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (it installs Debian packages)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

pkgs=(build-essential pkg-config)
while read -r line; do
    case $line in apt:*) pkgs+=("${line#apt:}") ;; esac
done < tests/lab/requirements.txt

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # vsftpd's package starts a system instance where systemd runs; the lab starts its own.
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now vsftpd >/dev/null 2>&1 || true
    fi
fi

while read -r line; do
    case $line in pip:*) python3 -m pip install -q "${line#pip:}" ;; esac
done < tests/lab/requirements.txt

command -v cargo >/dev/null || { echo "setup.sh: cargo not found: install Rust with rustup" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
for tool in $(sed -n 's/^cargo://p' tests/lab/requirements.txt); do
    cargo install --list | grep -q "^$tool " || cargo install --locked -q "$tool"
done
echo "setup.sh: ready"
