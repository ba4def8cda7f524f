#!/usr/bin/env bash
# ftpct end-to-end lab: three network namespaces (client, gateway, server) joined by veth pairs,
# a strict stateful firewall with NAT in the gateway, vsftpd on the server and FTP clients that do
# not hide a broken ALG. Everything lives inside namespaces this script creates; nothing is
# configured in the root namespace and no traffic leaves the namespaces.
#
#   lab.sh up PREFIX [--topology masq|dnat|v6] [--port N]
#   lab.sh down PREFIX
#   lab.sh server PREFIX [--port N] [--port20 yes|no] [--kind vsftpd|pure-ftpd|pyftpdlib|fake]
#                        [--split227 SECONDS]   (fake only: each 227 written in two parts)
#   lab.sh helper PREFIX on|off
#   lab.sh fetch PREFIX curl|lftp|ftplib port|eprt|pasv|epsv FILE
#   lab.sh probe PREFIX                       control connection only (login + SIZE), no data
#   lab.sh many PREFIX port|eprt|pasv|epsv|active|passive [COUNT [DELAY]]  (DELAY s between files)
#   lab.sh split PREFIX [port|eprt] [FILE [DELAY [CUT [nagle]]]]
#                        PORT/EPRT sent in two writes DELAY s apart (default 0.05), the first
#                        CUT bytes of the line first (default: inside the address), then RETR
#   lab.sh status PREFIX                      rules, conntrack table and logs of the gateway
#   lab.sh exec PREFIX cli|gw|srv|att CMD...  run a command in one of the namespaces
#   lab.sh env PREFIX                         print the lab's variables (addresses, port, ...)
#   lab.sh attacker PREFIX                    add an attacker namespace PREFIX-att on its own veth
#                                             into the gateway (IPv4; see tests/lab/README.md)
#   lab.sh gc                                 remove labs made with --owner PID whose PID is gone
#
# See tests/lab/README.md for the addresses and what each command checks.
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE_ROOT=${FTPCT_LAB_STATE_ROOT:-/run/ftpct-lab}
# Client-side timeout in seconds for every network wait: a broken ALG must fail fast.
TMO=${FTPCT_LAB_TIMEOUT:-3}
# Hard bound for one client run (kills a client that ignores its own timeouts).
HARD_TMO=${FTPCT_LAB_HARD_TIMEOUT:-25}
PASV_MIN=30000
PASV_MAX=30999

if [ -x /usr/bin/python3 ]; then PY=${FTPCT_LAB_PYTHON:-/usr/bin/python3}; else PY=${FTPCT_LAB_PYTHON:-python3}; fi

die() { echo "lab.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

check_prefix() {
    [[ ${1:-} =~ ^[A-Za-z0-9][A-Za-z0-9_]{0,23}$ ]] ||
        die "bad PREFIX '${1:-}': letters, digits and _ only, at most 24 characters"
}

# ---------------------------------------------------------------------------------------------
# Topologies. Interface names are the same in every lab (they live in the lab's own namespaces):
#   PREFIX-cli: eth0           PREFIX-gw: to-cli, to-srv           PREFIX-srv: eth0
# ---------------------------------------------------------------------------------------------
topo_vars() {
    case $1 in
    masq)
        # Private client behind the gateway's MASQUERADE; public server.
        # PORT 10,77,100,102,.. becomes 203,0,113,1,.. : the rewrite SHORTENS the line by 2.
        FAMILY=4
        CLI_IP=10.77.100.102 CLI_PLEN=24 GW_CLI_IP=10.77.100.1
        SRV_IP=203.0.113.2 SRV_PLEN=24 GW_SRV_IP=203.0.113.1
        GW_PUBLIC_IP=203.0.113.1
        TARGET=$SRV_IP          # what the client connects to
        CLI_ROUTE=default SRV_ROUTE=none
        ;;
    dnat)
        # Public client; server on a private net behind the gateway, only the control port is
        # DNATed from the gateway's public address. vsftpd advertises its private address in 227:
        # 10,77,2,2,.. becomes 203,0,113,1,.. : the rewrite LENGTHENS the line by 2.
        FAMILY=4
        CLI_IP=203.0.113.2 CLI_PLEN=24 GW_CLI_IP=203.0.113.1
        SRV_IP=10.77.2.2 SRV_PLEN=24 GW_SRV_IP=10.77.2.1
        GW_PUBLIC_IP=203.0.113.1
        TARGET=$GW_PUBLIC_IP
        # The client is "on the internet": no route to the private net at all.
        CLI_ROUTE=none SRV_ROUTE=default
        ;;
    v6)
        # IPv6 only, routed, no NAT (EPRT/EPSV need no rewrite, only admission).
        FAMILY=6
        CLI_IP=fd77:1::2 CLI_PLEN=64 GW_CLI_IP=fd77:1::1
        SRV_IP=fd77:2::2 SRV_PLEN=64 GW_SRV_IP=fd77:2::1
        GW_PUBLIC_IP=
        TARGET=$SRV_IP
        CLI_ROUTE=default SRV_ROUTE=default
        ;;
    *) die "unknown topology '$1' (masq|dnat|v6)" ;;
    esac
}

load_state() {
    P=$1
    S=$STATE_ROOT/$P
    [ -f "$S/env" ] || die "lab '$P' is not up (no $S/env); run: lab.sh up $P"
    # shellcheck disable=SC1091
    . "$S/env"
    topo_vars "$TOPO"
    NS_CLI=$P-cli NS_GW=$P-gw NS_SRV=$P-srv
}

save_state() {
    cat >"$S/env.tmp" <<EOF
TOPO=$TOPO
PORT=$PORT
OWNER=${OWNER:-}
EOF
    mv "$S/env.tmp" "$S/env"
}

nsx() { local n=$1; shift; ip netns exec "$n" "$@"; }
ipt() { if [ "$FAMILY" = 6 ]; then echo ip6tables; else echo iptables; fi; }
url_host() { if [ "$FAMILY" = 6 ]; then echo "[$1]"; else echo "$1"; fi; }

# ---------------------------------------------------------------------------------------------
# up / down
# ---------------------------------------------------------------------------------------------
cmd_up() {
    local P=${1:-}; shift || true
    check_prefix "$P"
    TOPO=masq PORT=21 OWNER=
    while [ $# -gt 0 ]; do
        case $1 in
        --owner) OWNER=${2:?}; shift 2 ;;
        --topology) TOPO=${2:?}; shift 2 ;;
        --topology=*) TOPO=${1#*=}; shift ;;
        --port) PORT=${2:?}; shift 2 ;;
        --port=*) PORT=${1#*=}; shift ;;
        *) die "up: unknown argument '$1'" ;;
        esac
    done
    topo_vars "$TOPO"
    [[ $PORT =~ ^[0-9]+$ ]] && [ "$PORT" -gt 0 ] && [ "$PORT" -lt 65536 ] || die "bad port '$PORT'"
    S=$STATE_ROOT/$P
    NS_CLI=$P-cli NS_GW=$P-gw NS_SRV=$P-srv
    local n
    for n in "$NS_CLI" "$NS_GW" "$NS_SRV" "$P-att"; do
        [ ! -e "/run/netns/$n" ] || die "namespace $n already exists: run 'lab.sh down $P' first"
    done
    [ ! -e "$S" ] || die "state dir $S already exists: run 'lab.sh down $P' first"

    # From here on, any failure tears down what was made.
    trap "rc=\$?; if [ \$rc -ne 0 ]; then echo 'lab.sh: up failed, tearing down $P' >&2; down_impl '$P'; fi" EXIT

    mkdir -p "$S/dl" "$S/root"
    save_state

    for n in "$NS_CLI" "$NS_GW" "$NS_SRV"; do
        ip netns add "$n"
        # No duplicate address detection in the lab (also for link-local addresses): a tentative
        # address delays neighbour discovery by ~2 s on the first IPv6 connection.
        nsx "$n" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
        ip -n "$n" link set lo up
    done
    # veth pairs are created directly inside the lab's namespaces: no name in the root namespace.
    ip -n "$NS_CLI" link add eth0 type veth peer name to-cli netns "$NS_GW"
    ip -n "$NS_SRV" link add eth0 type veth peer name to-srv netns "$NS_GW"

    local nodad=""
    [ "$FAMILY" = 6 ] && nodad=nodad
    ip -n "$NS_CLI" addr add "$CLI_IP/$CLI_PLEN" dev eth0 $nodad
    ip -n "$NS_GW" addr add "$GW_CLI_IP/$CLI_PLEN" dev to-cli $nodad
    ip -n "$NS_GW" addr add "$GW_SRV_IP/$SRV_PLEN" dev to-srv $nodad
    ip -n "$NS_SRV" addr add "$SRV_IP/$SRV_PLEN" dev eth0 $nodad
    for n in "$NS_CLI:eth0" "$NS_GW:to-cli" "$NS_GW:to-srv" "$NS_SRV:eth0"; do
        ip -n "${n%%:*}" link set "${n#*:}" up
    done
    local fam=-4
    [ "$FAMILY" = 6 ] && fam=-6
    [ "$CLI_ROUTE" = default ] && ip -n "$NS_CLI" $fam route add default via "$GW_CLI_IP"
    [ "$SRV_ROUTE" = default ] && ip -n "$NS_SRV" $fam route add default via "$GW_SRV_IP"

    # Gateway: forwarding and the default (strict) TCP window tracking, checked after setting.
    nsx "$NS_GW" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
        net.netfilter.nf_conntrack_tcp_be_liberal=0
    local v
    v=$(nsx "$NS_GW" sysctl -n net.netfilter.nf_conntrack_tcp_be_liberal)
    [ "$v" = 0 ] || die "nf_conntrack_tcp_be_liberal is '$v' in $NS_GW, expected 0"
    [ "$(nsx "$NS_GW" sysctl -n net.ipv4.ip_forward)" = 1 ] || die "ip_forward not set in $NS_GW"

    install_firewall
    set_ctl_port "$PORT"

    trap - EXIT
    echo "lab $P up: topology $TOPO, client $CLI_IP in $NS_CLI, gateway $NS_GW, server $SRV_IP in $NS_SRV, control port $PORT, client connects to $TARGET"
}

install_firewall() {
    # The same strict policy for both families, in every topology: FORWARD drops everything that
    # is not ESTABLISHED/RELATED, INVALID is dropped first, and NEW is allowed only towards the
    # server's control port (chain lab-ctl, filled by set_ctl_port). No CT --helper anywhere.
    # The comments tag the rules whose counters the tests read: lab-invalid (must stay at 0 with
    # an ALG that keeps strict TCP tracking consistent), lab-related-tcp (a counting rule with no
    # target: the first packet of each data connection admitted through an expectation) and
    # lab-established.
    # nat PREROUTING and POSTROUTING base chains always exist (a counting rule with no target):
    # with iptables-nft a NAT binding on a conntrack entry is applied only at hooks that have a nat
    # base chain (see shared/notes/kernel-mechanisms.md).
    local tool masq_rule=""
    for tool in iptables ip6tables; do
        if [ "$tool" = iptables ] && [ "$TOPO" = masq ]; then
            masq_rule="-A POSTROUTING -o to-srv -j MASQUERADE"
        else
            masq_rule=""
        fi
        nsx "$NS_GW" "$tool-restore" <<EOF
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:lab-dnat - [0:0]
-A PREROUTING -m comment --comment "ftpct-lab: nat PREROUTING base chain must exist"
-A PREROUTING -j lab-dnat
-A POSTROUTING -m comment --comment "ftpct-lab: nat POSTROUTING base chain must exist"
$masq_rule
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:lab-ctl - [0:0]
-A FORWARD -m conntrack --ctstate INVALID -m comment --comment lab-invalid -j DROP
-A FORWARD -p tcp -m conntrack --ctstate RELATED -m comment --comment lab-related-tcp
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -m comment --comment lab-established -j ACCEPT
-A FORWARD -m conntrack --ctstate NEW -j lab-ctl
COMMIT
EOF
    done
}

# (Re)fill the chains that name the control port: NEW only client->server on that port, and in
# the dnat topology the DNAT of that port (and only that port) to the server.
set_ctl_port() {
    local port=$1 tool
    tool=$(ipt)
    nsx "$NS_GW" iptables -F lab-ctl
    nsx "$NS_GW" ip6tables -F lab-ctl
    nsx "$NS_GW" iptables -t nat -F lab-dnat
    nsx "$NS_GW" ip6tables -t nat -F lab-dnat
    nsx "$NS_GW" "$tool" -A lab-ctl -i to-cli -o to-srv -d "$SRV_IP" -p tcp --syn --dport "$port" -j ACCEPT
    if [ "$TOPO" = dnat ]; then
        nsx "$NS_GW" iptables -t nat -A lab-dnat -i to-cli -d "$GW_PUBLIC_IP" -p tcp --dport "$port" \
            -j DNAT --to-destination "$SRV_IP"
    fi
    PORT=$port
    save_state
}

down_impl() {
    local P=$1 S=$STATE_ROOT/$1 n pid pids
    # Processes this lab started: recorded PIDs first, then whatever still runs in its namespaces.
    if [ -d "$S" ]; then
        for f in "$S"/*.pid; do
            [ -f "$f" ] || continue
            pid=$(cat "$f" 2>/dev/null || true)
            [[ $pid =~ ^[0-9]+$ ]] && kill -TERM "$pid" 2>/dev/null || true
        done
    fi
    for n in "$P-cli" "$P-gw" "$P-srv" "$P-att"; do
        [ -e "/run/netns/$n" ] || continue
        pids=$(ip netns pids "$n" 2>/dev/null || true)
        [ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
    done
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        pids=""
        for n in "$P-cli" "$P-gw" "$P-srv" "$P-att"; do
            [ -e "/run/netns/$n" ] || continue
            pids="$pids $(ip netns pids "$n" 2>/dev/null || true)"
        done
        [ -n "${pids// /}" ] || break
        if [ "$i" -ge 5 ]; then kill -KILL $pids 2>/dev/null || true; fi
        sleep 0.1
    done
    # The attacker namespace (lab.sh attacker) goes first: deleting it also removes the
    # gateway's to-att, the other end of its veth.
    for n in "$P-att" "$P-cli" "$P-gw" "$P-srv"; do
        [ -e "/run/netns/$n" ] && ip netns del "$n" 2>/dev/null || true
    done
    rm -rf "$S"
    return 0
}

cmd_down() {
    local P=${1:-}
    check_prefix "$P"
    down_impl "$P"
}

# ---------------------------------------------------------------------------------------------
# attacker: a fourth namespace on its own link into the gateway, for the spoofing tests
# ---------------------------------------------------------------------------------------------
# PREFIX-att: eth0 198.18.0.2/24, default route via the gateway's to-att 198.18.0.1. Its
# spoofed packets (tests/lab/spoof.py, raw IPv4) enter the gateway on to-att, not on the
# interface of the peer whose address they carry. The gateway's reverse-path filter is turned
# off (all and to-att: the kernel uses the larger of the two), so that the kernel does not drop
# them at the routing decision: ftpct sees them in raw PREROUTING before that anyway, and
# without rp_filter they also reach conntrack's window check, the filter table and the kernel
# helper, the worst case for the gateway (an attacker on a link where rp_filter is loose, or
# one whose spoofed route matches). The FORWARD policy is unchanged: only ESTABLISHED/RELATED
# pass from to-att, INVALID is dropped.
ATT_IP=198.18.0.2
GW_ATT_IP=198.18.0.1
cmd_attacker() {
    load_state "${1:-}"
    local NS_ATT=$P-att
    [ "$FAMILY" = 4 ] || die "attacker: IPv4 topologies only (masq, dnat)"
    [ ! -e "/run/netns/$NS_ATT" ] || die "namespace $NS_ATT already exists"
    ip netns add "$NS_ATT"
    ip -n "$NS_ATT" link set lo up
    ip -n "$NS_ATT" link add eth0 type veth peer name to-att netns "$NS_GW"
    ip -n "$NS_ATT" addr add "$ATT_IP/24" dev eth0
    ip -n "$NS_GW" addr add "$GW_ATT_IP/24" dev to-att
    ip -n "$NS_ATT" link set eth0 up
    ip -n "$NS_GW" link set to-att up
    ip -n "$NS_ATT" route add default via "$GW_ATT_IP"
    nsx "$NS_GW" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.to-att.rp_filter=0
    local v
    v=$(nsx "$NS_GW" sysctl -n net.ipv4.conf.to-att.rp_filter)
    [ "$v" = 0 ] || die "rp_filter on to-att is '$v', expected 0"
    echo "attacker $NS_ATT up: $ATT_IP via $NS_GW to-att $GW_ATT_IP (rp_filter off in the gateway)"
}

# ---------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------
make_files() {
    local root=$1 i
    [ -f "$root/.made" ] && return 0
    printf 'ftpct lab test file\nline two\n' >"$root/small.txt"
    head -c 4194304 /dev/urandom >"$root/big.bin"
    for i in $(seq -w 1 30); do
        head -c $((1000 + 10#$i * 1777)) /dev/urandom >"$root/f$i.bin"
    done
    : >"$root/empty.bin"
    chmod 755 "$root"
    chmod 644 "$root"/*
    touch "$root/.made"
}

cmd_server() {
    load_state "${1:-}"; shift || true
    local port=$PORT port20=yes kind=vsftpd split227=
    while [ $# -gt 0 ]; do
        case $1 in
        --port) port=${2:?}; shift 2 ;;
        --port=*) port=${1#*=}; shift ;;
        --port20) port20=${2:?}; shift 2 ;;
        --port20=*) port20=${1#*=}; shift ;;
        --kind) kind=${2:?}; shift 2 ;;
        --split227) split227=${2:?}; shift 2 ;;
        *) die "server: unknown argument '$1'" ;;
        esac
    done
    case $kind in vsftpd | pure-ftpd | pyftpdlib | fake) ;; *) die "--kind vsftpd|pure-ftpd|pyftpdlib|fake" ;; esac
    [ -z "$split227" ] || [ "$kind" = fake ] || die "--split227 needs --kind fake"
    if [ "$kind" != vsftpd ]; then
        [[ $port =~ ^[0-9]+$ ]] || die "bad port '$port'"
        stop_server
        [ "$port" = "$PORT" ] || set_ctl_port "$port"
        make_files "$S/root"
        other_server "$kind" "$port" "$split227"
        return
    fi
    case $port20 in yes) port20=YES ;; no) port20=NO ;; *) die "--port20 yes|no" ;; esac
    [[ $port =~ ^[0-9]+$ ]] || die "bad port '$port'"
    stop_server
    [ "$port" = "$PORT" ] || set_ctl_port "$port"
    make_files "$S/root"
    local listen=YES listen6=NO addr="listen_address=$SRV_IP"
    if [ "$FAMILY" = 6 ]; then listen=NO listen6=YES addr="listen_address6=$SRV_IP"; fi
    # /var/run/vsftpd/empty comes with Debian's vsftpd package; make it if missing.
    mkdir -p /var/run/vsftpd/empty
    cat >"$S/vsftpd.conf" <<EOF
# generated by tests/lab/lab.sh for lab $P ($TOPO)
listen=$listen
listen_ipv6=$listen6
$addr
listen_port=$port
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root=$S/root
local_enable=NO
write_enable=NO
anon_upload_enable=NO
anon_mkdir_write_enable=NO
anon_other_write_enable=NO
dirmessage_enable=NO
hide_ids=YES
pasv_enable=YES
pasv_min_port=$PASV_MIN
pasv_max_port=$PASV_MAX
port_enable=YES
connect_from_port_20=$port20
pasv_promiscuous=NO
port_promiscuous=NO
seccomp_sandbox=NO
connect_timeout=3
accept_timeout=5
data_connection_timeout=15
idle_session_timeout=60
max_per_ip=0
secure_chroot_dir=/var/run/vsftpd/empty
ftp_username=ftp
syslog_enable=NO
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file=$S/vsftpd.log
EOF
    nsx "$NS_SRV" vsftpd "$S/vsftpd.conf" >"$S/vsftpd.out" 2>&1 &
    echo $! >"$S/vsftpd.pid"
    local i
    for i in $(seq 1 50); do
        if nsx "$NS_SRV" ss -Hltn "sport = :$port" | grep -q LISTEN; then
            echo "vsftpd running in $NS_SRV on $(url_host "$SRV_IP"):$port (pid $(cat "$S/vsftpd.pid"), connect_from_port_20=$port20, passive ports $PASV_MIN-$PASV_MAX)"
            return 0
        fi
        if ! kill -0 "$(cat "$S/vsftpd.pid")" 2>/dev/null; then
            cat "$S/vsftpd.out" >&2
            die "vsftpd exited at start"
        fi
        sleep 0.1
    done
    die "vsftpd did not listen on port $port within 5 s"
}

# pure-ftpd: Debian's package conflicts with vsftpd's (both provide ftp-server), so setup.sh
# unpacks it under /opt/ftpct-lab/pure-ftpd instead of installing it (FTPCT_LAB_PURE_FTPD
# overrides the path).
pure_ftpd_bin() {
    local b
    for b in "${FTPCT_LAB_PURE_FTPD:-}" /opt/ftpct-lab/pure-ftpd/usr/sbin/pure-ftpd "$(command -v pure-ftpd || true)"; do
        [ -n "$b" ] && [ -x "$b" ] && { echo "$b"; return 0; }
    done
    die "pure-ftpd not found (scripts/setup.sh unpacks Debian's package into /opt/ftpct-lab/pure-ftpd)"
}

# pure-ftpd, pyftpdlib or fakeftpd.py on the server, anonymous, serving STATE/root, passive
# ports $PASV_MIN-$PASV_MAX, foreign PORT/EPRT addresses refused (their defaults). What each
# received goes to STATE/server.log where the server can tell.
other_server() {
    local kind=$1 port=$2 split227=$3 bind listening
    : >"$S/server.log"
    case $kind in
    pure-ftpd)
        local bin
        bin=$(pure_ftpd_bin)
        local fam=-4
        [ "$FAMILY" = 6 ] && fam=-6
        # Anonymous users are chrooted into ftp's home: bind the lab's files there, in the
        # mount namespace of this `ip netns exec` only (it unshares one; nothing outside sees it).
        local home
        home=$(getent passwd ftp | cut -d: -f6)
        [ -n "$home" ] && [ -d "$home" ] || die "pure-ftpd needs the system user ftp with a home directory"
        nsx "$NS_SRV" sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh "$S/root" "$home" \
            "$bin" -S "$SRV_IP,$port" $fam -e -A -H -i -R -f none -p "$PASV_MIN:$PASV_MAX" \
            -O "clf:$S/server.log" >"$S/server.out" 2>&1 &
        ;;
    pyftpdlib)
        nsx "$NS_SRV" "$PY" "$LAB_DIR/pyftpd.py" --listen "$SRV_IP" --port "$port" --root "$S/root" \
            --log "$S/server.log" --pasv "$PASV_MIN-$PASV_MAX" >"$S/server.out" 2>&1 &
        ;;
    fake)
        local extra=()
        [ -z "$split227" ] || extra=(--split227 "$split227")
        nsx "$NS_SRV" "$PY" "$LAB_DIR/fakeftpd.py" --listen "$SRV_IP" --port "$port" --root "$S/root" \
            --seconds 86400 --idle 60 "${extra[@]}" >"$S/server.out" 2>"$S/server.log" &
        ;;
    esac
    echo $! >"$S/vsftpd.pid"
    local i
    for i in $(seq 1 50); do
        if nsx "$NS_SRV" ss -Hltn "sport = :$port" | grep -q LISTEN; then
            echo "$kind running in $NS_SRV on $(url_host "$SRV_IP"):$port (pid $(cat "$S/vsftpd.pid"), passive ports $PASV_MIN-$PASV_MAX)"
            return 0
        fi
        if ! kill -0 "$(cat "$S/vsftpd.pid")" 2>/dev/null; then
            cat "$S/server.out" "$S/server.log" >&2
            die "$kind exited at start"
        fi
        sleep 0.1
    done
    die "$kind did not listen on port $port within 5 s"
}

stop_server() {
    local pid
    [ -f "$S/vsftpd.pid" ] || return 0
    pid=$(cat "$S/vsftpd.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$S/vsftpd.pid"
    # Session processes vsftpd forked are killed too (they are in the server namespace only).
    local pids
    pids=$(ip netns pids "$NS_SRV" 2>/dev/null || true)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# kernel helper (the reference ALG)
# ---------------------------------------------------------------------------------------------
cmd_helper() {
    load_state "${1:-}"; shift || true
    local what=${1:-} tool rule
    for tool in iptables ip6tables; do
        rule=(PREROUTING -p tcp --dport "$PORT" -j CT --helper ftp)
        case $what in
        on)
            nsx "$NS_GW" "$tool" -t raw -C "${rule[@]}" 2>/dev/null ||
                nsx "$NS_GW" "$tool" -t raw -A "${rule[@]}"
            ;;
        off)
            # every port this lab may have used
            local p
            for p in $(nsx "$NS_GW" "$tool" -t raw -S PREROUTING | sed -n 's/.*--dport \([0-9]*\) .*--helper ftp.*/\1/p'); do
                while nsx "$NS_GW" "$tool" -t raw -D PREROUTING -p tcp --dport "$p" -j CT --helper ftp 2>/dev/null; do :; done
            done
            ;;
        *) die "helper: on|off" ;;
        esac
    done
    echo "kernel FTP helper $what in $NS_GW (control port $PORT)"
}

# ---------------------------------------------------------------------------------------------
# clients
# ---------------------------------------------------------------------------------------------
# Every data-connection command the client sent must be the one of MODE: a client that falls
# back (curl EPRT->PORT or EPSV->PASV, lftp "Switching passive mode") hides a broken ALG.
check_dialog() {
    local log=$1 mode=$2 sent want
    want=$(echo "$mode" | tr a-z A-Z)
    sent=$(tr -d '\r' <"$log" | grep -aoE '^(> |---> )(PORT|EPRT|PASV|EPSV)( |$)' | awk '{print $2}' | sort -u | tr '\n' ' ')
    if [ "$sent" != "$want " ]; then
        echo "FAIL: data-connection commands sent: '${sent% }', expected only $want (client fell back or never tried)" >&2
        return 1
    fi
}

cmd_fetch() {
    load_state "${1:-}"; shift || true
    local client=${1:-} mode=${2:-} file=${3:-}
    [ -n "$file" ] || die "fetch PREFIX CLIENT MODE FILE"
    case $mode in port | eprt | pasv | epsv) ;; *) die "mode: port|eprt|pasv|epsv" ;; esac
    if [ "$FAMILY" = 6 ] && { [ "$mode" = port ] || [ "$mode" = pasv ]; }; then
        echo "unsupported: $mode is IPv4 only (v6 topology: eprt|epsv)" >&2; exit 2
    fi
    [ -f "$S/root/$file" ] || die "no such test file '$file' (start the server first)"
    local out=$S/dl/$client-$mode-$file log=$S/dl/$client-$mode-$file.log rc=0
    rm -f "$out" "$log"
    local host
    host=$(url_host "$TARGET")
    case $client in
    curl)
        local args=(-v -sS --no-ftp-skip-pasv-ip --connect-timeout "$TMO" --max-time $((TMO * 3))
            --user anonymous:lab@ -o "$out")
        case $mode in
        port) args+=(--ftp-port "$CLI_IP" --disable-eprt) ;;
        eprt) args+=(--ftp-port "$CLI_IP") ;;          # falls back to PORT if EPRT fails: see check_dialog
        pasv) args+=(--disable-epsv) ;;
        epsv) ;;                                       # falls back to PASV if EPSV fails: see check_dialog
        esac
        timeout -k 2 "$HARD_TMO" ip netns exec "$NS_CLI" curl "${args[@]}" "ftp://$host:$PORT/$file" >"$log" 2>&1 || rc=$?
        ;;
    lftp)
        local passive=on epsv=no
        case $mode in
        port) passive=off ;;
        eprt)
            [ "$FAMILY" = 6 ] || { echo "unsupported: lftp sends EPRT only over IPv6" >&2; exit 2; }
            passive=off ;;
        pasv) ;;
        epsv) epsv=yes ;;
        esac
        local script="set cmd:fail-exit yes; set net:timeout $TMO; set net:max-retries 1;
            set net:reconnect-interval-base 1; set net:persist-retries 0; set ftp:ssl-allow no;
            set ftp:fix-pasv-address no; set ftp:ignore-pasv-address no; set ftp:passive-mode $passive;
            set ftp:prefer-epsv $epsv; set xfer:clobber on; set xfer:use-temp-file no;
            open -u anonymous,lab@ ftp://$host:$PORT; get $file -o $out; bye"
        timeout -k 2 "$HARD_TMO" ip netns exec "$NS_CLI" lftp -d -c "$script" >"$log" 2>&1 || rc=$?
        ;;
    ftplib)
        timeout -k 2 "$HARD_TMO" ip netns exec "$NS_CLI" "$PY" "$LAB_DIR/ftpclient.py" fetch \
            --host "$TARGET" --port "$PORT" --mode "$mode" --timeout "$TMO" --file "$file" --out "$out" >"$log" 2>&1 || rc=$?
        ;;
    *) die "client: curl|lftp|ftplib" ;;
    esac
    cat "$log" >&2
    if [ "$rc" != 0 ]; then
        echo "FAIL: $client $mode $file: client exit status $rc" >&2
        exit 1
    fi
    if [ "$client" != ftplib ]; then check_dialog "$log" "$mode" || exit 1; fi
    verify "$S/root/$file" "$out" "$client $mode $file"
}

verify() {
    local want got
    [ -f "$2" ] || { echo "FAIL: $3: no output file" >&2; exit 1; }
    want=$(sha256sum <"$1" | cut -d' ' -f1)
    got=$(sha256sum <"$2" | cut -d' ' -f1)
    if [ "$want" != "$got" ]; then
        echo "FAIL: $3: sha256 $got differs from the server's $want ($(stat -c %s "$2") of $(stat -c %s "$1") bytes)" >&2
        exit 1
    fi
    echo "OK $3 sha256=$got bytes=$(stat -c %s "$2")"
}

cmd_probe() {
    load_state "${1:-}"
    timeout -k 2 "$HARD_TMO" ip netns exec "$NS_CLI" "$PY" "$LAB_DIR/ftpclient.py" probe \
        --host "$TARGET" --port "$PORT" --timeout "$TMO" --file small.txt
}

cmd_many() {
    load_state "${1:-}"; shift || true
    local mode=${1:-active} count=${2:-30} delay=${3:-0}
    timeout -k 2 $((HARD_TMO + count)) ip netns exec "$NS_CLI" "$PY" "$LAB_DIR/ftpclient.py" many \
        --host "$TARGET" --port "$PORT" --mode "$mode" --timeout "$TMO" --count "$count" --root "$S/root" \
        --delay "$delay"
}

cmd_split() {
    load_state "${1:-}"; shift || true
    local mode=${1:-} file=${2:-small.txt} delay=${3:-0.05} cut=${4:--1} nagle=${5:-}
    [ -n "$mode" ] || { if [ "$FAMILY" = 6 ]; then mode=eprt; else mode=port; fi; }
    local extra=()
    [ "$nagle" = nagle ] && extra=(--nagle)
    [ -z "$nagle" ] || [ "$nagle" = nagle ] || die "split: the 5th argument is 'nagle' or nothing"
    # the client's own waits start after the pause
    timeout -k 2 "$(awk -v h="$HARD_TMO" -v d="$delay" 'BEGIN { print int(h + d + 1) }')" \
        ip netns exec "$NS_CLI" "$PY" "$LAB_DIR/ftpclient.py" split \
        --host "$TARGET" --port "$PORT" --mode "$mode" --timeout "$TMO" --file "$file" --root "$S/root" \
        --delay "$delay" --cut "$cut" "${extra[@]}"
}

# Labs whose owner (the test process that made them, `up --owner PID`) no longer exists were left
# by a test run that was killed before its cleanup ran. Labs made without --owner (by hand) are
# never touched.
cmd_gc() {
    local d owner
    for d in "$STATE_ROOT"/*/; do
        [ -f "$d/env" ] || continue
        owner=$(sed -n 's/^OWNER=//p' "$d/env")
        [[ $owner =~ ^[0-9]+$ ]] || continue
        kill -0 "$owner" 2>/dev/null && continue
        echo "lab.sh gc: removing $(basename "$d") (owner $owner is gone)"
        down_impl "$(basename "$d")"
    done
}

cmd_status() {
    load_state "${1:-}"
    echo "== lab $P: topology $TOPO, control port $PORT, client $CLI_IP -> $TARGET, server $SRV_IP"
    local tool
    for tool in iptables ip6tables; do
        echo "== $tool (gw)"
        nsx "$NS_GW" "$tool-save" | grep -v '^#' || true
    done
    echo "== conntrack (gw)"
    nsx "$NS_GW" conntrack -L 2>/dev/null || true
    echo "== expectations (gw, kernel helper only)"
    nsx "$NS_GW" conntrack -L expect 2>/dev/null || true
    [ -f "$S/vsftpd.log" ] && { echo "== vsftpd.log (last 30 lines)"; tail -n 30 "$S/vsftpd.log"; }
    if [ -e "/run/netns/$P-att" ]; then
        echo "== attacker link (gw to-att)"
        ip -n "$NS_GW" -s link show to-att 2>/dev/null || true
    fi
    return 0
}

cmd_exec() {
    load_state "${1:-}"; shift || true
    local which=${1:-}; shift || true
    case $which in cli | gw | srv | att) ;; *) die "exec PREFIX cli|gw|srv|att CMD..." ;; esac
    exec ip netns exec "$P-$which" "$@"
}

cmd_env() {
    load_state "${1:-}"
    cat <<EOF
PREFIX=$P
STATE=$S
TOPO=$TOPO
FAMILY=$FAMILY
PORT=$PORT
NS_CLI=$NS_CLI
NS_GW=$NS_GW
NS_SRV=$NS_SRV
CLI_IP=$CLI_IP
SRV_IP=$SRV_IP
GW_CLI_IP=$GW_CLI_IP
GW_SRV_IP=$GW_SRV_IP
GW_PUBLIC_IP=$GW_PUBLIC_IP
TARGET=$TARGET
PASV_MIN=$PASV_MIN
PASV_MAX=$PASV_MAX
ATT_IP=$ATT_IP
GW_ATT_IP=$GW_ATT_IP
EOF
}

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, iptables)"
cmd=${1:-}; shift || true
case $cmd in
up) cmd_up "$@" ;;
down) cmd_down "$@" ;;
server) cmd_server "$@" ;;
helper) cmd_helper "$@" ;;
fetch) cmd_fetch "$@" ;;
probe) cmd_probe "$@" ;;
many) cmd_many "$@" ;;
split) cmd_split "$@" ;;
status) cmd_status "$@" ;;
exec) cmd_exec "$@" ;;
env) cmd_env "$@" ;;
attacker) cmd_attacker "$@" ;;
gc) cmd_gc ;;
-h | --help | help | "") usage ;;
*) echo "lab.sh: unknown command '$cmd'" >&2; usage ;;
esac
