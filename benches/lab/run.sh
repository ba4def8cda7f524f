#!/usr/bin/env bash
# ftpct vs the kernel's FTP helper (nf_conntrack_ftp + nf_nat_ftp), measured in one run on the
# namespace lab of the end-to-end tests (tests/lab/lab.sh: client behind MASQUERADE, strict
# stateful firewall, vsftpd). Prints a table and writes it into docs/benchmarks.md.
#
#   sudo benches/lab/run.sh [--quick] [--reps N] [--only PHASES] [--no-build] [--no-doc]
#                           [--doc FILE] [--results DIR] [--concurrency N (default 32)]
#
#   --quick        ~2-3 minutes instead of ~12: 1 GiB instead of 2 GiB, 3 s of load instead of
#                  10 s, scale steps up to 10 k sessions / 100 k expectations
#   --reps N       repetitions of every measurement (default 5; the medians are reported)
#   --only LIST    comma-separated subset of: bulk,rate,latency,scale (default: all four), or
#                  profile (perf cpu-clock + callgrind of the daemon under load), sweep (session
#                  rate against concurrency without ALG: is the client a bottleneck?); these two
#                  are not in the default
#   --no-build     use the binaries already built in the target directory
#   --no-doc       print the table only; do not touch docs/benchmarks.md
#   --results DIR  keep the raw results there (default: a fresh directory under /tmp)
#   --cpus N       CPU budget of the whole lab (vsftpd, clients, daemon, and the kernel work done
#                  in their context), in CPUs (default 1; 0 = no budget). See docs/benchmarks.md:
#                  on a machine shared with other work, the scheduler gives every runnable task
#                  a share, so without a budget the daemon brings CPU of its own to the lab and
#                  ftpct looks cheaper than it is.
#
# Method (see docs/benchmarks.md): every figure is a ratio against the kernel helper measured in
# the same run, on the same namespaces, with the variants interleaved within each repetition
# (ftpct, kernel, and "none" = no ALG with the firewall open, the ceiling); ratios are the median
# of the per-repetition ratios. The lab is torn down on exit, also on failure or Ctrl-C.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB=$REPO/tests/lab/lab.sh

QUICK=0 REPS=5 ONLY="bulk,rate,latency,scale" BUILD=1 DOC=$REPO/docs/benchmarks.md WRITE_DOC=1
RESULTS="" CONC=32 CPUS=1
while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1; shift ;;
    --reps) REPS=${2:?}; shift 2 ;;
    --only) ONLY=${2:?}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --no-doc) WRITE_DOC=0; shift ;;
    --doc) DOC=${2:?}; shift 2 ;;
    --results) RESULTS=${2:?}; shift 2 ;;
    --concurrency) CONC=${2:?}; shift 2 ;;
    --cpus) CPUS=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $REPS =~ ^[0-9]+$ ]] && [ "$REPS" -ge 1 ] && [ "$REPS" -le 50 ] || { echo "run.sh: --reps 1..50" >&2; exit 2; }
[[ $CPUS =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "run.sh: --cpus N (e.g. 1, 1.5, 0 for none)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run.sh: must run as root (network namespaces, iptables): sudo $0 $*" >&2; exit 1; }
for t in ip iptables conntrack vsftpd tcpdump python3 cargo; do
    if [ "$t" = cargo ] && { [ "$BUILD" = 0 ] || [ -n "${SUDO_USER:-}" ]; }; then continue; fi
    command -v "$t" >/dev/null || { echo "run.sh: '$t' not found (see tests/lab/requirements.txt)" >&2; exit 1; }
done

if [ "$QUICK" = 1 ]; then
    BULK_SIZE=1G BULK_XFERS=2 RATE_SECS=3 LAT_SESSIONS=100
    SCALE_SESSIONS=1000,10000 SCALE_EXPECT=1000,10000,100000 SCALE_NOOPS=5000 SCALE_PROBES=3
else
    BULK_SIZE=2G BULK_XFERS=3 RATE_SECS=10 LAT_SESSIONS=300
    SCALE_SESSIONS=1000,10000,100000 SCALE_EXPECT=1000,10000,100000,1000000 SCALE_NOOPS=20000 SCALE_PROBES=5
fi
has() { [[ ",$ONLY," == *",$1,"* ]]; }

# ---------------------------------------------------------------------------------------------
# Build (release), as the invoking user when run through sudo.
# ---------------------------------------------------------------------------------------------
TGT=${CARGO_TARGET_DIR:-$REPO/target}
if [ "$BUILD" = 1 ]; then
    echo "== building ftpct and the load generator (release) in $TGT"
    build=(cargo build --release --quiet --manifest-path "$REPO/Cargo.toml" --bin ftpct --example loadgen)
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        runuser -u "$SUDO_USER" -- env CARGO_TARGET_DIR="$TGT" bash -lc '"$@"' _ "${build[@]}"
    else
        CARGO_TARGET_DIR=$TGT "${build[@]}"
    fi
fi
BIN=$TGT/release/ftpct
LG=$TGT/release/examples/loadgen
[ -x "$BIN" ] && [ -x "$LG" ] || { echo "run.sh: $BIN or $LG missing (build first)" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# State, cleanup
# ---------------------------------------------------------------------------------------------
P=fb$(( $$ % 100000 ))      # the masq lab
P6=${P}s                    # the v6 lab of the scale test
QUEUE=7
if [ -z "$RESULTS" ]; then RESULTS=$(mktemp -d /tmp/ftpct-bench.XXXXXX); else mkdir -p "$RESULTS"; fi
OUT=$RESULTS/results.jsonl
: >"$OUT"
S="" S6="" FTPCT_PID="" BG_PIDS=()

# ---------------------------------------------------------------------------------------------
# CPU budget: this script (and so everything it starts from then on: vsftpd, clients, daemons)
# moves into a cpu cgroup of its own with a quota of $CPUS CPUs and the highest weight, so that
# every variant gets the same CPU, whatever else runs on the machine. cgroup v1 (cpu controller)
# or v2 (if its root offers the cpu controller). Removed on exit.
# ---------------------------------------------------------------------------------------------
CG="" CG_ROOT="" CGA="" CGA_ROOT=""
cg_setup() {
    [ "$CPUS" != 0 ] && [ "$CPUS" != 0.0 ] || return 0
    local quota
    quota=$(awk -v c="$CPUS" 'BEGIN { printf "%d", c * 10000 }')
    if [ -d /sys/fs/cgroup/cpu ] && [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
        CG_ROOT=/sys/fs/cgroup/cpu
        CG=$CG_ROOT/ftpct-bench-$$
        mkdir "$CG"
        echo 10000 >"$CG/cpu.cfs_period_us"
        echo "$quota" >"$CG/cpu.cfs_quota_us"
        echo 262144 >"$CG/cpu.shares"
        # SCHED_FIFO tasks (the ftpct_rt variant) need real-time runtime in their group.
        [ -f "$CG/cpu.rt_runtime_us" ] && echo 100000 >"$CG/cpu.rt_runtime_us" 2>/dev/null || true
    elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        CG_ROOT=/sys/fs/cgroup
        CG=$CG_ROOT/ftpct-bench-$$
        grep -qw cpu "$CG_ROOT/cgroup.subtree_control" || echo +cpu >"$CG_ROOT/cgroup.subtree_control"
        mkdir "$CG"
        echo "$quota 10000" >"$CG/cpu.max"
        echo 10000 >"$CG/cpu.weight"
    else
        echo "run.sh: no cpu cgroup controller: running without a CPU budget (--cpus 0)" >&2
        CPUS=0
        return 0
    fi
    echo $$ >"$CG/cgroup.procs"
    # cgroup v1 keeps CPU accounting in its own hierarchy: a group there too, for the lab's CPU
    # time (the cost of a transfer or a session on the whole lab, kernel work included).
    if [ "$CG_ROOT" = /sys/fs/cgroup/cpu ] && [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then
        CGA_ROOT=/sys/fs/cgroup/cpuacct
        CGA=$CGA_ROOT/ftpct-bench-$$
        mkdir "$CGA"
        echo $$ >"$CGA/cgroup.procs"
    fi
}

# CPU time used by the lab so far, in ns (empty without a budget).
cg_usage() {
    if [ -n "$CGA" ]; then
        cat "$CGA/cpuacct.usage"
    elif [ -n "$CG" ] && [ -f "$CG/cpu.stat" ] && grep -q '^usage_usec' "$CG/cpu.stat"; then
        awk '$1 == "usage_usec" {printf "%d000", $2}' "$CG/cpu.stat"
    fi
}
# The budget's throttling counters as JSON fields: how often the lab hit its quota.
cg_stat() {
    [ -n "$CG" ] || return 0
    if [ -f "$CG/cpu.stat" ]; then
        awk '$1 ~ /^(nr_periods|nr_throttled|throttled_time|throttled_usec|usage_usec)$/ {printf ",\"cg_%s\":%s", $1, $2}' "$CG/cpu.stat"
    fi
}
cg_remove() {
    [ -n "$CG" ] || return 0
    echo $$ >"$CG_ROOT/cgroup.procs" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do
        [ -s "$CG/cgroup.procs" ] || break
        sleep 0.1
    done
    rmdir "$CG" 2>/dev/null || echo "run.sh: could not remove $CG (processes left: $(cat "$CG/cgroup.procs" 2>/dev/null | tr '\n' ' '))" >&2
    CG=""
    if [ -n "$CGA" ]; then
        echo $$ >"$CGA_ROOT/cgroup.procs" 2>/dev/null || true
        for i in $(seq 1 50); do [ -s "$CGA/cgroup.procs" ] || break; sleep 0.1; done
        rmdir "$CGA" 2>/dev/null || echo "run.sh: could not remove $CGA" >&2
        CGA=""
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_ftpct 2>/dev/null || true
    local p
    for p in "${BG_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    "$LAB" down "$P" >/dev/null 2>&1 || true
    "$LAB" down "$P6" >/dev/null 2>&1 || true
    cg_remove
    [ "$rc" = 0 ] || echo "run.sh: failed (exit $rc); raw results in $RESULTS" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

jget() { echo "$2" | sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" | head -1; }
log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
loadavg() { cut -d' ' -f1 /proc/loadavg; }
# Appends one JSON record: record PHASE ALG REP JSON-OBJECT-FIELDS...
record() { echo "{\"phase\":\"$1\",\"alg\":\"$2\",\"rep\":$3,\"load1\":$(loadavg)$4}" >>"$OUT"; }

# ---------------------------------------------------------------------------------------------
# The ALG variants in the gateway of lab $P
# ---------------------------------------------------------------------------------------------
gw() { ip netns exec "$P-gw" "$@"; }

start_ftpct() {   # start_ftpct NS SOCKET CONF LOG [ARGS...]
    local ns=$1 sock=$2 conf=$3 logf=$4 i; shift 4
    rm -f "$sock"
    # FTPCT_WRAP: e.g. "chrt -f 10" (exec's the daemon: the PID stays the daemon's)
    ip netns exec "$ns" ${FTPCT_WRAP:-} "$BIN" run --queue "$QUEUE" --socket "$sock" --config "$conf" "$@" >"$logf" 2>&1 &
    FTPCT_PID=$!
    for i in $(seq 1 100); do
        [ -S "$sock" ] && return 0
        kill -0 "$FTPCT_PID" 2>/dev/null || { cat "$logf" >&2; echo "run.sh: ftpct exited at start" >&2; return 1; }
        sleep 0.05
    done
    echo "run.sh: ftpct did not create $sock within 5 s" >&2
    return 1
}

stop_ftpct() {
    [ -n "$FTPCT_PID" ] || return 0
    local i
    kill -TERM "$FTPCT_PID" 2>/dev/null || true
    for i in $(seq 1 60); do kill -0 "$FTPCT_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$FTPCT_PID" 2>/dev/null || true
    wait "$FTPCT_PID" 2>/dev/null || true
    FTPCT_PID=""
}

ftpct_stats_json() {   # the counters of `ftpct stats` as JSON fields (",k":v ...)
    ip netns exec "$1" "$BIN" stats --socket "$2" | awk '{printf ",\"ftpct_%s\":%s", $1, $2}'
}

# CPU time of a process and its threads, in ns (/proc/PID/task/*/schedstat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s+=$1} END {printf "%d", s}'; }

alg_on() {
    case $1 in
    ftpct | ftpct_rt)
        gw "$BIN" rules --queue "$QUEUE" --ports 21 --apply >/dev/null
        # ftpct_rt: the same daemon under SCHED_FIFO, so that other processes on the machine
        # cannot preempt it (shows what its own latency is, without the scheduler's share).
        local wrap=""
        [ "$1" = ftpct_rt ] && wrap="chrt -f 10"
        FTPCT_WRAP=$wrap start_ftpct "$P-gw" "$S/ftpct.sock" "$S/ftpct.conf" "$S/ftpct.log"
        ;;
    kernel) "$LAB" helper "$P" on >/dev/null ;;
    none)
        # Plain routing, no ALG: the firewall lets everything through and the server can reach
        # the client's private address (the unrewritten PORT). The ceiling of the lab.
        gw iptables -P FORWARD ACCEPT
        ip -n "$P-srv" route add 10.77.100.0/24 via 203.0.113.1
        ;;
    esac
}

alg_off() {
    case $1 in
    ftpct | ftpct_rt)
        stop_ftpct
        gw "$BIN" rules --queue "$QUEUE" --ports 21 --delete >/dev/null
        ;;
    kernel) "$LAB" helper "$P" off >/dev/null ;;
    none)
        gw iptables -P FORWARD DROP
        ip -n "$P-srv" route del 10.77.100.0/24 via 203.0.113.1 2>/dev/null || true
        ;;
    esac
    # Every measurement starts from an empty conntrack table.
    gw conntrack -F >/dev/null 2>&1 || true
    gw conntrack -F expect >/dev/null 2>&1 || true
}

# Variant order of repetition $1: the list (default: ftpct kernel none) rotated by the
# repetition number, so no variant always runs first or last.
order() {
    local rep=$1; shift
    local v=("$@")
    [ ${#v[@]} -gt 0 ] || v=(ftpct kernel none)
    local n=${#v[@]} i out=()
    for i in $(seq 0 $((n - 1))); do out+=("${v[$(( (i + rep) % n ))]}"); done
    echo "${out[@]}"
}

# Involuntary context switches of a process (preemptions).
nvcsw() { awk '/^nonvoluntary_ctxt_switches/{print $2}' /proc/"$1"/status 2>/dev/null || echo 0; }

lg_cli() { ip netns exec "$P-cli" "$LG" "$@"; }

# ---------------------------------------------------------------------------------------------
# Lab setup (masq topology, bench vsftpd)
# ---------------------------------------------------------------------------------------------
setup_masq() {
    log "lab $P up (masq)"
    "$LAB" up "$P" --topology masq >/dev/null
    S=/run/ftpct-lab/$P
    mkdir -p "$S/bench-root" /var/run/vsftpd/empty
    printf 'ftpct lab test file\nline two\n' >"$S/bench-root/small.txt"
    # Sparse: created instantly, vsftpd serves it with sendfile (holes read as zeros).
    truncate -s "$BULK_SIZE" "$S/bench-root/bulk.bin"
    chmod 755 "$S/bench-root"; chmod 644 "$S/bench-root"/*
    sed -e "s#@ROOT@#$S/bench-root#" -e "s#@LISTEN@#203.0.113.2#" -e "s#@PORT@#21#" \
        -e "s#@LOG@#$S/vsftpd.log#" "$HERE/vsftpd.conf.in" >"$S/vsftpd-bench.conf"
    ip netns exec "$P-srv" vsftpd "$S/vsftpd-bench.conf" >"$S/vsftpd.out" 2>&1 &
    echo $! >"$S/vsftpd.pid"    # lab.sh down kills it
    local i
    for i in $(seq 1 50); do
        ip netns exec "$P-srv" ss -Hltn "sport = :21" | grep -q LISTEN && break
        [ "$i" -lt 50 ] || { cat "$S/vsftpd.out" >&2; echo "run.sh: vsftpd did not start" >&2; exit 1; }
        sleep 0.1
    done
    printf '# written by benches/lab/run.sh\nports = 21\n' >"$S/ftpct.conf"
    # Warm the page cache with the bulk file (the first read of a sparse file allocates pages).
    alg_on kernel
    lg_cli get --target 203.0.113.2:21 --mode pasv --file bulk.bin >/dev/null
    alg_off kernel
}

# ---------------------------------------------------------------------------------------------
# 1. Bulk data
# ---------------------------------------------------------------------------------------------
phase_bulk() {
    local rep alg mode j q0 q1 queued all x u0 u1 usage
    for rep in $(seq 1 "$REPS"); do
        for alg in $(order "$rep"); do
            alg_on "$alg"
            for mode in port pasv; do
                q0=0
                [ "$alg" = ftpct ] && q0=$(gw "$BIN" stats --socket "$S/ftpct.sock" | awk '/^latency_count/{print $2}')
                # BULK_XFERS transfers back to back; the median is this repetition's figure.
                all=""
                u0=$(cg_usage)
                for x in $(seq 1 "$BULK_XFERS"); do
                    j=$(lg_cli get --target 203.0.113.2:21 --mode "$mode" --file bulk.bin)
                    all+="${all:+,}$j"
                done
                queued=null
                if [ "$alg" = ftpct ]; then
                    q1=$(gw "$BIN" stats --socket "$S/ftpct.sock" | awk '/^latency_count/{print $2}')
                    queued=$(( (q1 - q0) / BULK_XFERS ))
                fi
                u1=$(cg_usage)
                usage=null
                [ -n "$u0" ] && usage=$((u1 - u0))
                record bulk "$alg" "$rep" ",\"mode\":\"$mode\",\"queued\":$queued,\"lab_cpu_ns\":$usage,\"xfers\":[$all]"
                log "bulk rep $rep $alg $mode: $(echo "$all" | grep -o '"mbps":[0-9.]*' | cut -d: -f2 | tr '\n' ' ')MB/s, queued $queued per transfer"
            done
            alg_off "$alg"
        done
    done
}

# ---------------------------------------------------------------------------------------------
# 2 + 3. Session rate, and the latency figures under that load
# ---------------------------------------------------------------------------------------------
phase_rate() {
    local rep alg j c0 c1 v0 st
    for rep in $(seq 1 "$REPS"); do
        for alg in $(order "$rep"); do
            alg_on "$alg"
            c0=0 v0=0
            [ "$alg" = ftpct ] && { c0=$(cpu_ns "$FTPCT_PID"); v0=$(nvcsw "$FTPCT_PID"); }
            # Control connections from source ports used in turn (see loadgen --ctl-ports and
            # docs/benchmarks.md, "ftpct bugs found"): no port comes back within a run.
            local cg0 cg1 u0 u1 usage
            cg0=$(cg_stat)
            u0=$(cg_usage)
            j=$(lg_cli rate --target 203.0.113.2:21 --mode active --concurrency "$CONC" \
                --duration "$RATE_SECS" --ctl-ports 1024-32767)
            cg1=$(cg_stat)
            u1=$(cg_usage)
            usage=null
            [ -n "$u0" ] && usage=$((u1 - u0))
            st=",\"lab_cpu_ns\":$usage"
            if [ "$alg" = ftpct ]; then
                c1=$(cpu_ns "$FTPCT_PID")
                st+="$(ftpct_stats_json "$P-gw" "$S/ftpct.sock"),\"ftpct_cpu_ns\":$((c1 - c0)),\"ftpct_nvcsw\":$(( $(nvcsw "$FTPCT_PID") - v0 ))"
            fi
            record rate "$alg" "$rep" ",\"r\":$j$st,\"cg_before\":{${cg0#,}},\"cg_after\":{${cg1#,}}"
            log "rate rep $rep $alg: $(jget rate "$j") sessions/s, $(jget failures "$j") failures, client CPU $(jget cpu_frac "$j")"
            alg_off "$alg"
        done
    done
}

# Gateway transit of data SYNs from `tcpdump -i any -tt` in the gateway: one line per SYN
# (time, interface, In|Out, ..., seq N); transit = first Out - first In of each sequence number.
# Prints {"n":..,"p50":..,"p90":..,"p99":..,"max":..} in microseconds.
syn_transit() {
    awk '{
            s = ""
            for (i = 1; i <= NF; i++) if ($i == "seq") { s = $(i+1); sub(",", "", s) }
            if (s == "") next
            if ($3 == "In" && !(s in tin)) tin[s] = $1
            if ($3 == "Out" && !(s in tout)) tout[s] = $1
        } END { for (s in tin) if (s in tout) printf "%.1f\n", (tout[s] - tin[s]) * 1e6 }' "$1" |
        sort -n | awk '{ d[NR] = $1 } END {
            n = NR
            if (n == 0) { printf "{\"n\":0}"; exit }
            i50 = int(n * 0.5 + 0.5); i90 = int(n * 0.9 + 0.5); i99 = int(n * 0.99 + 0.5)
            if (i50 < 1) i50 = 1; if (i90 < 1) i90 = 1; if (i99 < 1) i99 = 1
            printf "{\"n\":%d,\"p50\":%s,\"p90\":%s,\"p99\":%s,\"max\":%s}", n, d[i50], d[i90], d[i99], d[n]
        }'
}

# Unloaded data-connection setup: one session at a time, and the gateway's transit time of each
# data SYN from tcpdump in the gateway (in on to-srv -> out on to-cli, matched by sequence number).
phase_latency() {
    local rep alg j tp tpid transit st v0
    for rep in $(seq 1 "$REPS"); do
        for alg in $(order "$rep" $LAT_VARIANTS); do
            alg_on "$alg"
            v0=0
            [ -n "$FTPCT_PID" ] && v0=$(nvcsw "$FTPCT_PID")
            tp=$RESULTS/syn-$alg-$rep.txt
            gw timeout 120 tcpdump -i any -nn -tt -l -Q inout \
                'tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn and not port 21' >"$tp" 2>/dev/null &
            tpid=$!
            BG_PIDS+=("$tpid")
            sleep 0.5   # tcpdump needs a moment before it captures
            j=$(lg_cli rate --target 203.0.113.2:21 --mode active --concurrency 1 \
                --duration 60 --warmup 0 --max-sessions "$LAT_SESSIONS" --ctl-ports 33000-60999)
            sleep 0.2
            kill -TERM "$tpid" 2>/dev/null || true
            wait "$tpid" 2>/dev/null || true
            # One line per SYN: time, iface, In|Out, ..., seq N. Transit = first Out - first In.
            transit=$(syn_transit "$tp")
            st=""
            [ -n "$FTPCT_PID" ] && st="$(ftpct_stats_json "$P-gw" "$S/ftpct.sock"),\"ftpct_nvcsw\":$(( $(nvcsw "$FTPCT_PID") - v0 ))"
            record latency "$alg" "$rep" ",\"r\":$j,\"syn_transit_us\":$transit$st"
            log "latency rep $rep $alg: setup $(echo "$j" | sed 's/.*"setup_us":{[^}]*"p50":\([0-9]*\).*/\1/') us, gateway SYN transit $transit"
            alg_off "$alg"
        done
    done
}

# ---------------------------------------------------------------------------------------------
# 4. Scale: idle control sessions and expectations in the daemon (v6 lab, stub server)
# ---------------------------------------------------------------------------------------------
phase_scale() {
    log "lab $P6 up (v6) for the scale test"
    "$LAB" up "$P6" --topology v6 >/dev/null
    S6=/run/ftpct-lab/$P6
    local nsrc=32 i srcs="" max_s max_e es per
    # The client gets 32 addresses (EPRT must announce the session's own address; the port
    # space of one address holds 64 k expectations at most).
    for i in $(seq 0 $((nsrc - 1))); do
        ip -n "$P6-cli" addr add "fd77:1::$(printf '%x' $((0x1000 + i)))/64" dev eth0 nodad
        srcs+="${srcs:+,}fd77:1::$(printf '%x' $((0x1000 + i)))"
    done
    ip netns exec "$P6-cli" sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
    max_s=$(echo "$SCALE_SESSIONS" | tr ',' '\n' | sort -n | tail -1)
    max_e=$(echo "$SCALE_EXPECT" | tr ',' '\n' | sort -n | tail -1)
    es=1000
    per=$(( (max_e + es - 1) / es ))
    cat >"$S6/ftpct.conf" <<EOF
# written by benches/lab/run.sh (scale test)
ports = 21
max_sessions = $((max_s * 2))
max_expect_per_session = $per
max_expectations = $((max_e + 1000))
expect_timeout = 1800
EOF
    # Stub servers sharing the port (SO_REUSEPORT): one process holds at most RLIMIT_NOFILE
    # sockets (the loadgen raises its soft limit to the hard one; 20 000 on the reference machine).
    local nserve=$(( max_s / 12000 + 1 ))
    for i in $(seq 1 "$nserve"); do
        ip netns exec "$P6-srv" "$LG" serve --listen "[fd77:2::2]:21" >>"$S6/serve.log" 2>&1 &
        BG_PIDS+=($!)
        disown $!
    done
    for i in $(seq 1 50); do
        ip netns exec "$P6-srv" ss -Hltn "sport = :21" | grep -q LISTEN && break
        [ "$i" -lt 50 ] || { cat "$S6/serve.log" >&2; exit 1; }
        sleep 0.1
    done
    ip netns exec "$P6-gw" "$BIN" rules --queue "$QUEUE" --ports 21 --apply >/dev/null
    # Logging off: filling 1 M expectations would otherwise write ~2 M log lines.
    start_ftpct "$P6-gw" "$S6/ftpct.sock" "$S6/ftpct.conf" "$S6/ftpct.log" --log off
    local out=$RESULTS/scale.jsonl lgpid
    : >"$out"
    ip netns exec "$P6-cli" "$LG" scale --target "[fd77:2::2]:21" \
        --src "$srcs" --sessions "$SCALE_SESSIONS" --expectations "$SCALE_EXPECT" \
        --expect-sessions "$es" --noops "$SCALE_NOOPS" --daemon-pid "$FTPCT_PID" \
        --socket "$S6/ftpct.sock" --per-worker 15000 --probe-reps "$SCALE_PROBES" --linger 900 >"$out" 2>"$RESULTS/scale.err" &
    lgpid=$!
    disown "$lgpid"     # killed below: no "Killed" notice
    BG_PIDS+=("$lgpid")
    # Bounded wait for the last line; the daemon is stopped before the client closes its
    # 100 k connections (closing them through the queue would take longer than the test).
    local limit=900 t=0 seen=0
    while [ "$t" -lt "$limit" ]; do
        if grep -q '"phase":"done"' "$out" 2>/dev/null; then break; fi
        kill -0 "$lgpid" 2>/dev/null || break
        local n
        n=$(wc -l <"$out")
        if [ "$n" != "$seen" ]; then
            seen=$n
            log "scale: $(tail -1 "$out" | sed 's/.*"phase":"\([a-z_]*\)","n":\([0-9]*\),"rss_kb":\([0-9]*\).*/\1 n=\2 rss=\3 kB/')"
        fi
        sleep 1; t=$((t + 1))
    done
    stop_ftpct
    kill -KILL "$lgpid" 2>/dev/null || true
    grep -q '"phase":"done"' "$out" || { cat "$RESULTS/scale.err" >&2; echo "run.sh: the scale test did not finish" >&2; }
    while read -r line; do
        [ -n "$line" ] && record scale ftpct 1 ",\"r\":$line"
    done <"$out"
    "$LAB" down "$P6" >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
# Client check (--only sweep, not in the default run): session rate against concurrency with no
# ALG, and the load generator's CPU. If the rate stops growing while the client's CPU stays far
# below one CPU, the client is not what limits the session rate.
# ---------------------------------------------------------------------------------------------
phase_sweep() {
    local c j
    alg_on none
    for c in 1 4 8 16 32 64; do
        j=$(lg_cli rate --target 203.0.113.2:21 --mode active --concurrency "$c" \
            --duration "$RATE_SECS" --ctl-ports 1024-32767)
        record sweep none 1 ",\"r\":$j"
        log "sweep: concurrency $c: $(jget rate "$j") sessions/s, client CPU $(jget cpu_frac "$j") of one CPU"
    done
    alg_off none
}

# ---------------------------------------------------------------------------------------------
# 5. Profile of the daemon under the session-rate load (not part of the default run: --only
#    profile). perf with hardware counters is not available in every VM (`perf stat -e
#    instructions true` says "not supported" on the reference machine), so:
#    - callgrind: user-space instructions by function, inclusive and exclusive (the daemon runs
#      ~50x slower under valgrind, so the load is light: 4 clients);
#    - perf record -e cpu-clock (a software event, always available): where the daemon's time
#      goes, kernel included (recv, verdicts, netlink requests, reinjection), at full load.
# ---------------------------------------------------------------------------------------------
phase_profile() {
    local d=$RESULTS/profile j i
    mkdir -p "$d"
    gw "$BIN" rules --queue "$QUEUE" --ports 21 --apply >/dev/null
    # perf: full load, the daemon as in the rate test
    start_ftpct "$P-gw" "$S/ftpct.sock" "$S/ftpct.conf" "$S/ftpct.log"
    perf record -e cpu-clock -F 2999 -g -p "$FTPCT_PID" -o "$d/perf.data" -- sleep "$RATE_SECS" \
        >"$d/perf-record.log" 2>&1 &
    local perf_pid=$!
    j=$(lg_cli rate --target 203.0.113.2:21 --mode active --concurrency "$CONC" \
        --duration "$RATE_SECS" --ctl-ports 1024-32767)
    wait "$perf_pid" || true
    echo "$j" >"$d/perf-load.json"
    ftpct_stats_json "$P-gw" "$S/ftpct.sock" >"$d/perf-stats.txt"
    stop_ftpct
    gw conntrack -F >/dev/null 2>&1 || true
    # (perf pads its columns very wide: squeeze the blanks)
    perf report -i "$d/perf.data" --stdio --no-children --sort dso,symbol --percent-limit 0.7 \
        2>/dev/null | grep -E '^ +[0-9]' | sed 's/  */ /g; s/ - - *$//' >"$d/perf-self.txt" || true
    perf report -i "$d/perf.data" --stdio --no-children --sort dso 2>/dev/null |
        grep -E '^ +[0-9]' | sed 's/  */ /g' >"$d/perf-dso.txt" || true
    perf report -i "$d/perf.data" --stdio --children --sort symbol --percent-limit 2 -g none \
        2>/dev/null | grep -E '^ +[0-9]' | sed 's/  */ /g; s/ - - *$//' | head -60 >"$d/perf-children.txt" || true
    log "perf (cpu-clock) of the daemon at $(jget rate "$j") sessions/s: top self time"
    head -25 "$d/perf-self.txt" >&2
    # callgrind: light load
    rm -f "$S/ftpct.sock"
    ip netns exec "$P-gw" valgrind --tool=callgrind --callgrind-out-file="$d/callgrind.out" \
        "$BIN" run --queue "$QUEUE" --socket "$S/ftpct.sock" --config "$S/ftpct.conf" \
        >"$d/callgrind.log" 2>&1 &
    FTPCT_PID=$!
    for i in $(seq 1 300); do [ -S "$S/ftpct.sock" ] && break; sleep 0.1; done
    j=$(lg_cli rate --target 203.0.113.2:21 --mode active --concurrency 4 --duration "$RATE_SECS" \
        --ctl-ports 1024-32767 --timeout 20)
    echo "$j" >"$d/callgrind-load.json"
    stop_ftpct
    gw "$BIN" rules --queue "$QUEUE" --ports 21 --delete >/dev/null
    gw conntrack -F >/dev/null 2>&1 || true
    # Without the paths, and for the inclusive view only the project's and its I/O crates'
    # functions (the rest is the call chain from main down to the event loop).
    callgrind_annotate --inclusive=yes "$d/callgrind.out" 2>/dev/null |
        sed -E 's#[^ ]*/([^/ ]+\.rs):#\1:#; s# \[[^]]*\]$##' |
        grep -E '^ *[0-9,]+ \(|PROGRAM TOTALS' | grep -v '=>' |
        grep -E 'PROGRAM TOTALS|ftpct::(engine|daemon::(Shell|log_event)|packet|session|parser|seqadj|expect|ctnetlink|ipset|netlink|nfqueue)|nfq::|tracing_core::event::Event::dispatch|hashbrown|write_all' |
        head -40 >"$d/callgrind-inclusive.txt" || true
    callgrind_annotate "$d/callgrind.out" 2>/dev/null | sed -E 's#[^ ]*/([^/ ]+\.[rsS]+):#\1:#; s# \[[^]]*\]$##' |
        grep -E '^ *[0-9,]+ \(' | head -30 >"$d/callgrind-self.txt" || true
    log "callgrind of the daemon at $(jget rate "$j") sessions/s ($(jget sessions_ok "$j") sessions): inclusive"
    cat "$d/callgrind-inclusive.txt" >&2
    log "callgrind: exclusive"
    head -20 "$d/callgrind-self.txt" >&2
    log "profile files in $d"
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------
cg_setup
LAT_VARIANTS="ftpct kernel none ftpct_rt"
if ! chrt -f 10 true 2>/dev/null; then
    echo "run.sh: SCHED_FIFO not allowed here: the latency phase runs without the ftpct_rt variant" >&2
    LAT_VARIANTS="ftpct kernel none"
fi
T0=$(date +%s)
{
    echo "{\"phase\":\"env\",\"alg\":\"-\",\"rep\":0,\"load1\":$(loadavg),\"quick\":$QUICK,\"reps\":$REPS,\"concurrency\":$CONC,\"cpus\":$CPUS,\"bulk_size\":\"$BULK_SIZE\",\"rate_secs\":$RATE_SECS,\"lat_sessions\":$LAT_SESSIONS,\"nproc\":$(nproc),\"cpu\":\"$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1 | tr -d '"')\",\"mem_gib\":$(awk '/MemTotal/{printf "%.1f", $2/1048576}' /proc/meminfo),\"kernel\":\"$(uname -r)\",\"vsftpd\":\"vsftpd $(dpkg-query -W -f '${Version}' vsftpd 2>/dev/null || echo '?')\",\"commit\":\"$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)\",\"date\":\"$(date -u +%Y-%m-%dT%H:%MZ)\"}"
} >>"$OUT"

if has bulk || has rate || has latency || has profile || has sweep; then
    setup_masq
    has bulk && { log "== 1. bulk data ($BULK_SIZE, $REPS reps)"; phase_bulk; }
    has rate && { log "== 2. session rate ($RATE_SECS s x $REPS reps, concurrency $CONC)"; phase_rate; }
    has latency && { log "== 3. data-connection setup, unloaded ($LAT_SESSIONS sessions x $REPS reps)"; phase_latency; }
    has sweep && { log "== client check: rate against concurrency, no ALG"; phase_sweep; }
    has profile && { log "== 5. profile of the daemon"; phase_profile; }
    "$LAB" down "$P" >/dev/null
fi
if has scale; then
    log "== 4. scale (sessions $SCALE_SESSIONS; expectations $SCALE_EXPECT)"
    phase_scale
fi
echo "{\"phase\":\"end\",\"alg\":\"-\",\"rep\":0,\"load1\":$(loadavg),\"elapsed_s\":$(( $(date +%s) - T0 ))}" >>"$OUT"

args=("$OUT")
[ "$WRITE_DOC" = 1 ] && args+=(--doc "$DOC")
python3 "$HERE/report.py" "${args[@]}"
if [ "$WRITE_DOC" = 1 ] && [ -n "${SUDO_USER:-}" ]; then chown "$SUDO_USER": "$DOC" 2>/dev/null || true; fi
log "raw results: $RESULTS"
