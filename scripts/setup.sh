#!/usr/bin/env bash
# Installs what ftpct's build, demo and tests need on a fresh Debian 12 machine (as root):
# Debian packages listed in tests/lab/requirements.txt (and build tools), a Rust toolchain if
# there is none, Rust components and cargo tools. Idempotent and quick when everything is
# already there.
#   scripts/setup.sh [--demo]
#     --demo   only what scripts/demo.sh needs: no rustfmt/clippy, no cargo tools
#
# Rust: a cargo on PATH (or in ~/.cargo/bin, rustup's) is used as it is. Without one, rustup
# installs the stable toolchain with rustfmt and clippy (rustup-init from static.rust-lang.org,
# checked against its published SHA-256), which is what scripts/test.sh needs (fmt, clippy,
# `cargo +stable fuzz`). If that server cannot be reached, Debian's own packages are
# installed instead: rustc/cargo if their version satisfies Cargo.toml's rust-version, else
# rustc-web/cargo-web (Debian 12's up-to-date Rust). Debian has no rustfmt/clippy for those:
# the demo and the tests work, the fmt/clippy/fuzz steps of scripts/test.sh do not.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

demo=no
for a in "$@"; do
    case $a in
    --demo) demo=yes ;;
    *) echo "usage: $0 [--demo]" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (it installs Debian packages)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

updated=no
apt_update() {
    if [ $updated = no ]; then
        apt-get update -qq
        updated=yes
    fi
}

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
    apt_update
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # vsftpd's package starts a system instance where systemd runs; the lab starts its own.
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now vsftpd >/dev/null 2>&1 || true
    fi
fi

while read -r line; do
    case $line in pip:*) python3 -m pip install -q "${line#pip:}" ;; esac
done < tests/lab/requirements.txt

# Packages that conflict with one above (pure-ftpd and vsftpd both provide ftp-server): their
# Debian package is downloaded and unpacked into a directory of their own, not installed; the
# libraries they need are in the apt: lines.
while read -r line; do
    case $line in
    unpack:*)
        spec=${line#unpack:}
        pkg=${spec%%:*} dir=${spec#*:}
        [ -f "$dir/.unpacked" ] && continue
        echo "setup.sh: unpacking Debian's $pkg into $dir (not installed: it conflicts)"
        apt_update
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null)
        rm -rf "$dir"
        mkdir -p "$dir"
        dpkg-deb -x "$tmp"/"$pkg"_*.deb "$dir"
        rm -rf "$tmp"
        touch "$dir/.unpacked"
        ;;
    esac
done < tests/lab/requirements.txt

# Rust.
need=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup.sh: using rustup's cargo in $HOME/.cargo/bin (add it to PATH)"
    export PATH=$HOME/.cargo/bin:$PATH
fi
# rustup-init, verified, then the stable toolchain; false if anything fails.
install_rustup() {
    local url=https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init
    local tmp
    tmp=$(mktemp -d)
    command -v curl >/dev/null || { apt_update; apt-get install -y -qq curl ca-certificates >/dev/null; }
    if curl -fsS --retry 2 -o "$tmp/rustup-init" "$url" &&
        curl -fsS --retry 2 -o "$tmp/rustup-init.sha256" "$url.sha256" &&
        [ "$(sha256sum < "$tmp/rustup-init" | cut -d' ' -f1)" = "$(cut -d' ' -f1 < "$tmp/rustup-init.sha256")" ]; then
        chmod +x "$tmp/rustup-init"
        "$tmp/rustup-init" -y -q --profile minimal --default-toolchain stable \
            --component rustfmt,clippy >/dev/null
        local rc=$?
        rm -rf "$tmp"
        return $rc
    fi
    rm -rf "$tmp"
    return 1
}
if ! command -v cargo >/dev/null; then
    echo "setup.sh: cargo not found: installing Rust with rustup (stable, rustfmt, clippy)"
    if install_rustup && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH=$HOME/.cargo/bin:$PATH
        echo "setup.sh: Rust installed in $HOME/.cargo/bin (add it to PATH for later shells)"
    else
        echo "setup.sh: rustup could not be installed; falling back to Debian's Rust"
    fi
fi
if ! command -v cargo >/dev/null; then
    apt_update
    # The candidate version of a Debian package, without epoch and Debian revision.
    candidate() {
        apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: \([0-9]*:\)\{0,1\}\([0-9.]*\).*/\2/p'
    }
    chosen=
    for pair in "rustc cargo" "rustc-web cargo-web"; do
        set -- $pair
        v=$(candidate "$1")
        if [ -n "$v" ] && dpkg --compare-versions "$v" ge "$need"; then
            chosen=$pair
            break
        fi
        echo "setup.sh: Debian's $1 is ${v:-not available}, older than rust-version $need"
    done
    if [ -z "$chosen" ]; then
        echo "setup.sh: no Rust >= $need in Debian's packages here: install it with rustup" \
            "(https://rustup.rs), then run setup.sh again" >&2
        exit 1
    fi
    echo "setup.sh: cargo not found: installing Debian's $chosen ($v)"
    # shellcheck disable=SC2086 # two package names
    apt-get install -y -qq --no-install-recommends $chosen >/dev/null
fi
have=$(rustc --version | awk '{print $2}')
if ! dpkg --compare-versions "${have%%-*}" ge "$need"; then
    echo "setup.sh: rustc $have is older than Cargo.toml's rust-version $need: update it" \
        "(rustup update, or Debian's rustc-web)" >&2
    exit 1
fi

if [ $demo = no ]; then
    if command -v rustup >/dev/null; then
        rustup component add rustfmt clippy >/dev/null 2>&1 || true
    fi
    for c in fmt clippy; do
        cargo "$c" --version >/dev/null 2>&1 ||
            echo "setup.sh: note: 'cargo $c' is missing (scripts/test.sh needs it): Debian has" \
                "none for rustc-web; use a rustup toolchain (rustup component add rustfmt clippy)"
    done
    for tool in $(sed -n 's/^cargo://p' tests/lab/requirements.txt); do
        cargo install --list | grep -q "^$tool " || cargo install --locked -q "$tool"
    done
fi
echo "setup.sh: ready"
