#!/usr/bin/env bash
# A stand-in for the ftpct binary, to check the e2e harness's daemon handling (rules --apply,
# run until SIGTERM with a control socket, rules --delete), written before the real daemon
# existed. Its "ALG" is the kernel helper: the downloads of the Alg::Ftpct scenarios succeed with
# it (except the split-command ones: the kernel helper stalls on a split PORT/EPRT), but those
# tests fail on their daemon-specific checks (`ftpct stats`, ftpct's NFQUEUE counter), which
# shows that they test ftpct and not just any ALG. Usage:
#   FTPCT_E2E_BIN=$PWD/tests/lab/fake-ftpct.sh cargo test --test e2e ftpct
# Contract mimicked: ftpct rules [--queue N] [--ports 21,...] [--apply|--delete]
#                    ftpct run [--queue N] [--config FILE] [--socket PATH]
#                    ftpct list|sessions --socket PATH
set -euo pipefail
cmd=${1:-}; shift || true
queue=0 ports=21 action="" sock=""
while [ $# -gt 0 ]; do
    case $1 in
    --queue) queue=$2; shift 2 ;;
    --ports) ports=$2; shift 2 ;;
    --apply | --delete) action=$1; shift ;;
    --socket) sock=$2; shift 2 ;;
    --config) shift 2 ;;
    *) echo "fake-ftpct: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $cmd in
rules)
    for p in ${ports//,/ }; do
        for t in iptables ip6tables; do
            if [ "$action" = --apply ]; then
                $t -t raw -A PREROUTING -p tcp --dport "$p" -j CT --helper ftp
            elif [ "$action" = --delete ]; then
                while $t -t raw -D PREROUTING -p tcp --dport "$p" -j CT --helper ftp 2>/dev/null; do :; done
            fi
        done
    done
    echo "fake-ftpct: rules $action queue $queue ports $ports"
    ;;
run)
    [ -n "$sock" ] || { echo "fake-ftpct: --socket needed" >&2; exit 2; }
    trap 'rm -f "$sock"; kill "$child" 2>/dev/null; echo "fake-ftpct: stopped"; exit 0' TERM INT
    : >"$sock"
    echo "fake-ftpct: running, queue $queue, socket $sock"
    sleep 3600 &
    child=$!
    wait "$child"
    ;;
list) conntrack -L expect ;;
sessions) [ -e "$sock" ] && echo "fake-ftpct: no sessions (socket $sock)" ;;
*) echo "fake-ftpct: $cmd not implemented" >&2; exit 2 ;;
esac
