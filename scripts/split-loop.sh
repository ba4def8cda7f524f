#!/usr/bin/env bash
# The 0.3 s split-command case of issue 12, in a loop, against vsftpd, pure-ftpd and pyftpdlib:
# a client behind the lab's MASQUERADE gateway (strict firewall, ftpct running) writes
# `PORT a,b,c` and, DELAY seconds later, `,d,p1,p2\r\n` (TCP_NODELAY), then downloads a file in
# active mode. Every run must succeed. Slow (about a second a run), so not part of CI.
#
#   sudo scripts/split-loop.sh [RUNS_PER_SERVER [DELAY [SERVERS...]]]
#     defaults: 20 runs per server (60 in all), DELAY 0.3, servers vsftpd pure-ftpd pyftpdlib
#   FTPCT_BIN=path  the ftpct binary (default: the newer of target/release/ftpct and target/debug/ftpct)
#
# Prints one line per failure and a summary; exit status 0 only when no run failed. Each
# server gets its own lab (network namespaces, torn down at the end, also on failure); the
# client log of a failed run is kept in /tmp/ftpct-split-loop/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "split-loop.sh: run as root (network namespaces)" >&2; exit 1; }
runs=${1:-20} delay=${2:-0.3}
shift 2 2>/dev/null || shift $# 
servers=("$@")
[ ${#servers[@]} -gt 0 ] || servers=(vsftpd pure-ftpd pyftpdlib)
bin=${FTPCT_BIN:-}
if [ -z "$bin" ]; then
    # the newer of the release and debug builds
    for b in target/release/ftpct target/debug/ftpct; do
        [ -x "$b" ] && { [ -z "$bin" ] || [ "$b" -nt "$bin" ]; } && bin=$PWD/$b
    done
fi
echo "split-loop: $bin"
[ -x "$bin" ] || { echo "split-loop.sh: no ftpct binary (cargo build, or FTPCT_BIN=...)" >&2; exit 1; }
L=tests/lab/lab.sh
P=splitloop$$
keep=/tmp/ftpct-split-loop
mkdir -p "$keep"
trap '$L down $P >/dev/null 2>&1 || true' EXIT
total=0 failed=0
for kind in "${servers[@]}"; do
    $L down $P >/dev/null 2>&1 || true
    $L up $P --topology masq >/dev/null
    $L server $P --kind "$kind" >/dev/null
    S=/run/ftpct-lab/$P
    printf 'ports = 21\n' >"$S/ftpct.conf"
    ip netns exec $P-gw "$bin" rules --config "$S/ftpct.conf" --queue 7 --ports 21 --apply >/dev/null
    ip netns exec $P-gw "$bin" run --queue 7 --socket "$S/ftpct.sock" --config "$S/ftpct.conf" \
        >"$S/ftpct.log" 2>&1 &
    echo $! >"$S/ftpct.pid"
    for _ in $(seq 1 50); do [ -S "$S/ftpct.sock" ] && break; sleep 0.1; done
    ok=0
    for i in $(seq 1 "$runs"); do
        total=$((total + 1))
        if $L split $P port small.txt "$delay" >"$S/run.log" 2>&1; then
            ok=$((ok + 1))
        else
            failed=$((failed + 1))
            cp "$S/run.log" "$keep/$kind-$i.log"
            echo "FAIL $kind run $i: $(grep -a 'FAIL' "$S/run.log" | head -1) (log: $keep/$kind-$i.log)"
        fi
    done
    stats=$(ip netns exec $P-gw "$bin" stats --socket "$S/ftpct.sock" 2>/dev/null |
        grep -E '^(lines_held|hold_acked|hold_timeouts|hold_gave_up|rewrites) ' | tr '\n' ' ' || true)
    echo "$kind: $ok/$runs ok (pause $delay s); ftpct: $stats"
    ip netns exec $P-gw "$bin" rules --config "$S/ftpct.conf" --queue 7 --ports 21 --delete >/dev/null 2>&1 || true
    $L down $P >/dev/null
done
echo "split-loop: $((total - failed))/$total runs ok, $failed failed (pause $delay s, servers ${servers[*]})"
[ "$failed" = 0 ]
