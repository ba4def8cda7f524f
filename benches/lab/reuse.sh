#!/usr/bin/env bash
# Checks two ftpct defects found while benchmarking, and since fixed (docs/benchmarks.md,
# "Defects found"), each with the kernel helper as the reference, in the lab of the end-to-end
# tests (masq, the lab's own vsftpd: connect_from_port_20=YES):
#
#   A. data connection on the 4-tuple of a recent one: two active-mode sessions, one after the
#      other, whose client listens on the same data port. The server's data connection comes
#      from port 20 both times, so the second one has the 4-tuple of the first, whose conntrack
#      entry is in TIME_WAIT in the gateway.
#   B. control connection on the 4-tuple of a recent one: two sessions, one after the other,
#      from the same client control port.
#
#   sudo benches/lab/reuse.sh [--no-build]
# Exit status 0 when ftpct handles every case as the kernel helper does (both sessions work);
# prints what happened either way. (When the defects were found, ftpct failed both.)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB=$REPO/tests/lab/lab.sh
TGT=${CARGO_TARGET_DIR:-$REPO/target}
[ "$(id -u)" = 0 ] || { echo "reuse.sh: must run as root" >&2; exit 1; }
if [ "${1:-}" != --no-build ]; then
    build=(cargo build --release --quiet --manifest-path "$REPO/Cargo.toml" --bin ftpct --example loadgen)
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        runuser -u "$SUDO_USER" -- env CARGO_TARGET_DIR="$TGT" bash -lc '"$@"' _ "${build[@]}"
    else
        CARGO_TARGET_DIR=$TGT "${build[@]}"
    fi
fi
BIN=$TGT/release/ftpct LG=$TGT/release/examples/loadgen
P=fr$(( $$ % 100000 )) QUEUE=7 FPID=""
cleanup() {
    [ -n "$FPID" ] && kill -KILL "$FPID" 2>/dev/null || true
    "$LAB" down "$P" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$LAB" up "$P" --topology masq >/dev/null
"$LAB" server "$P" >/dev/null
S=/run/ftpct-lab/$P
printf 'ports = 21\n' >"$S/ftpct.conf"

on() {
    if [ "$1" = kernel ]; then "$LAB" helper "$P" on >/dev/null; return; fi
    ip netns exec "$P-gw" "$BIN" rules --queue "$QUEUE" --ports 21 --apply >/dev/null
    ip netns exec "$P-gw" "$BIN" run --queue "$QUEUE" --socket "$S/ftpct.sock" --config "$S/ftpct.conf" \
        --log debug >"$S/ftpct.log" 2>&1 &
    FPID=$!
    local i
    for i in $(seq 1 100); do [ -S "$S/ftpct.sock" ] && break; sleep 0.05; done
}
off() {
    if [ "$1" = kernel ]; then
        "$LAB" helper "$P" off >/dev/null
    else
        kill -TERM "$FPID" 2>/dev/null || true; wait "$FPID" 2>/dev/null || true; FPID=""
        ip netns exec "$P-gw" "$BIN" rules --queue "$QUEUE" --ports 21 --delete >/dev/null
    fi
    ip netns exec "$P-gw" conntrack -F >/dev/null 2>&1 || true
}
# two sessions, one after the other: prints ok/failed and the failure reasons
two() {
    ip netns exec "$P-cli" "$LG" rate --target 203.0.113.2:21 --mode port --concurrency 1 \
        --max-sessions 2 --duration 30 --warmup 0 --timeout 4 "$@" |
        sed 's/.*"sessions_ok":\([0-9]*\).*"failures":\([0-9]*\).*"fail_reasons":\({[^}]*}\).*/\1 ok, \2 failed \3/'
}

status=0
n=0
for alg in kernel ftpct; do
    on "$alg"
    n=$((n + 1))
    a=$(two --data-port $((41000 + n)) --ctl-ports $((5000 + 10 * n))-$((5009 + 10 * n)))
    b=$(two --ctl-ports $((6000 + n))-$((6000 + n)) --data-port 0)
    echo "$alg: A (same data port twice): $a"
    echo "$alg: B (same control port twice): $b"
    [[ $a == "2 ok, 0 failed"* && $b == "2 ok, 0 failed"* ]] || status=1
    if [ "$alg" != kernel ]; then
        grep -a "already tracked" "$S/ftpct.log" | head -2 || true
    fi
    off "$alg"
done
exit "$status"
