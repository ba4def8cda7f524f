#!/usr/bin/env bash
# The ftpct demo, as root on a fresh machine: installs what is needed, builds ftpct, builds a
# lab in network namespaces (a client behind a NAT gateway with a strict firewall, a vsftpd
# server), shows an active-mode download failing without an ALG, then working through ftpct,
# with ftpct's expectation table and session list. Everything is removed at the end.
# Exits non-zero if the download without an ALG does not fail (then the lab demonstrates
# nothing) or the one through ftpct does not succeed.
#   scripts/demo.sh [--no-setup]
#     --no-setup        do not run scripts/setup.sh (what it installs is already there)
#     FTPCT_BIN=PATH    use this ftpct binary instead of building a release one
# tests/demo.rs runs it with both, on the test's own binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
setup=yes
for a in "$@"; do
    case $a in
    --no-setup) setup=no ;;
    *) echo "usage: $0 [--no-setup]" >&2; exit 2 ;;
    esac
done
if [ $setup = yes ]; then
    scripts/setup.sh --demo
    # setup.sh may just have installed Rust with rustup earlier: its cargo, if not on PATH.
    command -v cargo >/dev/null || PATH=$HOME/.cargo/bin:$PATH
fi
if [ -n "${FTPCT_BIN:-}" ]; then
    BIN=$(readlink -f "$FTPCT_BIN")
else
    echo "== building ftpct (release)"
    cargo build --release -q
    BIN=$(readlink -f "${CARGO_TARGET_DIR:-target}")/release/ftpct
fi
LAB=tests/lab/lab.sh
P=ftpctdemo
SOCK=/run/ftpct-lab/$P/ftpct.sock

cleanup() {
    [ -n "${FTPCT_PID:-}" ] && kill "$FTPCT_PID" 2>/dev/null && wait "$FTPCT_PID" 2>/dev/null
    ip netns exec "$P-gw" "$BIN" rules --queue 0 --ports 21 --delete >/dev/null 2>&1 || true
    $LAB down "$P" >/dev/null 2>&1 || true
}
trap cleanup EXIT
$LAB down "$P" >/dev/null 2>&1 || true

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "lab: client 10.77.100.102 -> gateway (MASQUERADE to 203.0.113.1, FORWARD policy DROP, INVALID dropped, ESTABLISHED,RELATED accepted, no kernel helper) -> vsftpd 203.0.113.2"
$LAB up "$P" --topology masq
$LAB server "$P" >/dev/null

# The lines of a `lab.sh fetch` log worth showing: the PORT, the server's answer, the result.
dialog() { grep -E "^> PORT|^< 200 PORT|^< 500|^< 425|^FAIL|^OK" | head -5 | sed 's/^/    /'; }

step "without an ALG: active-mode download (curl, PORT)"
rc=0
out=$($LAB fetch "$P" curl port small.txt 2>&1) || rc=$?
printf '%s\n' "$out" | dialog
if [ $rc = 0 ]; then
    echo "demo.sh: the download WITHOUT an ALG succeeded: this lab demonstrates nothing" \
        "(a kernel FTP helper attached? the gateway's FORWARD policy not DROP?)" >&2
    exit 1
fi
echo "    -> failed without an ALG, as expected"

step "starting ftpct in the gateway (ftpct rules --apply; ftpct run)"
ip netns exec "$P-gw" "$BIN" rules --queue 0 --ports 21 --apply
ip netns exec "$P-gw" "$BIN" run --queue 0 --socket "$SOCK" --log info \
    2> >(sed 's/^/    ftpct: /' >&2) &
FTPCT_PID=$!
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { echo "demo.sh: ftpct did not start" >&2; exit 1; }

step "with ftpct: the same download"
rc=0
out=$($LAB fetch "$P" curl port small.txt 2>&1) || rc=$?
printf '%s\n' "$out" | dialog
if [ $rc != 0 ]; then
    echo "demo.sh: the download through ftpct failed" >&2
    exit 1
fi
echo "    -> succeeded through ftpct"

step "a session holding an expectation: 'ftpct sessions' and 'ftpct list' while the client waits"
ip netns exec "$P-cli" python3 - "$BIN" "$SOCK" "$P" <<'PY'
import ftplib, socket, subprocess, sys
binary, sock, prefix = sys.argv[1:4]
ftp = ftplib.FTP()
ftp.connect("203.0.113.2", 21, timeout=5)
ftp.login()
lsock = socket.create_server(("10.77.100.102", 0))
port = lsock.getsockname()[1]
print("    client> PORT 10,77,100,102,%d,%d" % (port >> 8, port & 255))
print("    server< " + ftp.sendcmd("PORT 10,77,100,102,%d,%d" % (port >> 8, port & 255)))
for what in ("sessions", "list"):
    print("    # ftpct %s" % what)
    out = subprocess.run(["ip", "netns", "exec", prefix + "-gw", binary, what, "--socket", sock],
                         capture_output=True, text=True).stdout
    print("".join("    " + l + "\n" for l in out.splitlines()), end="")
ftp.voidcmd("TYPE I")
ftp.putcmd("RETR small.txt")
print("    server< " + ftp.getresp())
conn, _ = lsock.accept()
data = b""
while chunk := conn.recv(65536):
    data += chunk
conn.close()
print("    server< " + ftp.voidresp())
print("    received %d bytes over the data connection the server opened to 203.0.113.1:%d" % (len(data), port))
ftp.quit()
PY

step "ftpct stats"
ip netns exec "$P-gw" "$BIN" stats --socket "$SOCK" | grep -E "^(rewrites|expect_created|expect_used|ct_created|latency_p50_ns|latency_p99_ns) "
step "done (lab removed)"
