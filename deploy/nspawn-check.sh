#!/bin/sh
# Checks the Debian package under a real systemd, on a machine whose PID 1 is not systemd:
# boots this machine's own OS tree in systemd-nspawn (read-only, with a tmpfs overlay that
# is thrown away, private network, private mount namespace), installs the package there and
# goes through its life as a gateway admin would: enabled-not-started, start (Type=notify,
# READY=1), rules, the daemon's privileges, the metrics endpoint on 127.0.0.1, reload, an
# FTP session across kill -9 (rules kept, state file restored, the transfer completes
# after the automatic restart), the iptables-legacy backend from ftpct.conf, upgrade, stop
# (rules, sets and /run/ftpct removed), remove, purge.
#
#   deploy/nspawn-check.sh target/debian/ftpct_*.deb
#
# Needs root and systemd-nspawn (apt-get install systemd-container); tests/package.rs
# (nspawn_install_start_crash_stop) runs it on the package it builds. The FTP steps need
# vsftpd, curl, python3 and useradd in the OS tree (scripts/setup.sh installs them); they
# are skipped when one is missing, unless FTPCT_NSPAWN_REQUIRE_FTP=1, which makes that a
# failure. Everything the container wrote is gone when it stops; the cgroups and the
# /run/systemd/nspawn directory nspawn leaves on a host without systemd are removed.
# Takes about 30 seconds.
set -eu

deb=${1:?usage: $0 PACKAGE.deb}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 2; }
command -v systemd-nspawn >/dev/null || {
	echo "needs systemd-nspawn: apt-get install systemd-container" >&2
	exit 2
}
deb=$(readlink -f "$deb")
machine=ftpctcheck$$
work=$(mktemp -d /tmp/ftpct-nspawn.XXXXXX)
mkdir "$work/debs" "$work/root"
cp "$deb" "$work/debs/ftpct.deb"
had_nspawn_dir=no
[ -d /run/systemd/nspawn ] && had_nspawn_dir=yes
had_cgroups=
for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
	for d in payload supervisor; do
		[ -d "$h/$d" ] && had_cgroups="$had_cgroups $h/$d"
	done
done
log=$work/boot.log

unshare -m --propagation private sh -c "
	mount --bind / '$work/root'
	exec systemd-nspawn -D '$work/root' --volatile=overlay --private-network \
		--register=no --keep-unit --bind-ro='$work/debs:/debs' --machine=$machine -b
" >"$log" 2>&1 </dev/null &
launcher=$!

leader=
cleanup() {
	if [ -n "$leader" ] && kill -0 "$leader" 2>/dev/null; then
		cx systemctl poweroff >/dev/null 2>&1 || kill "$leader" 2>/dev/null || true
	fi
	i=0
	while kill -0 "$launcher" 2>/dev/null && [ $i -lt 30 ]; do
		sleep 1
		i=$((i + 1))
	done
	kill "$launcher" 2>/dev/null || true
	for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
		for d in payload supervisor; do
			[ -d "$h/$d" ] || continue
			case " $had_cgroups " in *" $h/$d "*) continue ;; esac
			find "$h/$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		done
	done
	if [ $had_nspawn_dir = no ]; then
		rmdir /run/systemd/nspawn/locks /run/systemd/nspawn/propagate \
			/run/systemd/nspawn 2>/dev/null || true
	fi
	rmdir "$work/root" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

cx() {
	nsenter -t "$leader" -m -u -i -n -p -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		TERM=dumb SYSTEMD_PAGER= "$@"
}

fail() {
	echo "FAIL: $*" >&2
	cx journalctl -u ftpct --no-pager -n 30 -o cat >&2 || true
	exit 1
}

check() { # description, expected, actual
	if [ "$2" = "$3" ]; then
		echo "ok: $1 ($3)"
	else
		fail "$1: expected '$2', got '$3'"
	fi
}

# ftpct's rules in the kernel, for one backend (iptables-nft by default).
rule_count() {
	b=${1:-iptables-nft}
	cx sh -c "$b-save; ip6${b#ip}-save" 2>/dev/null |
		grep -c -- '--comment ftpct$\|--comment ftpct ' || true
}

journal() { cx journalctl -u ftpct -o cat --no-pager; }

# Waits until systemd has restarted the daemon whose PID was $1.
wait_restarted() {
	i=0
	until [ "$(cx systemctl is-active ftpct || true)" = active ] &&
		[ "$(cx systemctl show ftpct -p MainPID --value)" != "$1" ]; do
		sleep 0.5
		i=$((i + 1))
		[ $i -lt 30 ] || fail "not restarted after kill -9"
	done
}

# Wait for the container's systemd.
i=0
while [ -z "$leader" ] && [ $i -lt 30 ]; do
	sleep 1
	i=$((i + 1))
	# unshare and sh exec into systemd-nspawn, whose child is the container's systemd.
	leader=$(pgrep -P "$launcher" -x systemd || true)
done
[ -n "$leader" ] || { cat "$log" >&2; fail "the container did not boot"; }
i=0
until state=$(cx systemctl is-system-running 2>/dev/null) &&
	{ [ "$state" = running ] || [ "$state" = degraded ]; }; do
	sleep 1
	i=$((i + 1))
	[ $i -lt 60 ] || fail "the container's systemd did not finish booting ($state)"
done
echo "ok: container booted ($state)"
# Container images often forbid service starts from maintainer scripts.
cx sh -c 'rm -f /usr/sbin/policy-rc.d'

cx dpkg -i /debs/ftpct.deb >/dev/null
check "enabled on install" enabled "$(cx systemctl is-enabled ftpct)"
check "not started on install" inactive "$(cx systemctl is-active ftpct || true)"

# The admin's edit: the opt-in metrics endpoint.
cx sh -c 'echo "metrics = \"127.0.0.1:9477\"" >> /etc/ftpct/ftpct.conf'
cx systemctl start ftpct || fail "start"
check "active after start (READY=1)" active "$(cx systemctl is-active ftpct)"
cx systemctl show ftpct -p StatusText --value | grep -q '^queue 0' || fail "no STATUS="
main=$(cx systemctl show ftpct -p MainPID --value)
check "runs as the dynamic user" ftpct "$(cx ps -o user= -p "$main")"
check "capability bounding set: CAP_NET_ADMIN only" 0000000000001000 \
	"$(cx sed -n 's/^CapBnd:[[:space:]]*//p' "/proc/$main/status")"
check "rules applied" 20 "$(rule_count)"
cx ftpct stats >/dev/null || fail "control socket"
cx curl -sS -m 5 http://127.0.0.1:9477/metrics | grep -q '^ftpct_sessions ' ||
	fail "metrics endpoint on 127.0.0.1:9477 unreachable"
echo "ok: metrics endpoint on 127.0.0.1:9477"
if journal | grep -q 'cannot read /proc'; then
	fail "the daemon cannot see /proc/sys/kernel/random/boot_id or /proc/net"
fi
echo "ok: boot_id and /proc/net visible to the daemon"

ftp=no
if cx sh -c 'command -v vsftpd && command -v curl && command -v python3 && command -v useradd' >/dev/null; then
	ftp=yes
elif [ "${FTPCT_NSPAWN_REQUIRE_FTP:-0}" = 1 ]; then
	fail "vsftpd, curl, python3 and useradd are needed for the FTP steps (scripts/setup.sh)"
else
	echo "skipped: FTP steps (vsftpd, curl, python3 or useradd missing)"
fi
if [ $ftp = yes ]; then
	cx systemctl start vsftpd || fail "vsftpd does not start"
	cx sh -c 'useradd -m ftpcheck && echo ftpcheck:check | chpasswd && echo hello > /home/ftpcheck/f'
	check "FTP (PASV) through the daemon" hello "$(cx curl -sS --disable-epsv -u ftpcheck:check ftp://127.0.0.1/f)"
	check "FTP (active, IPv6) through the daemon" hello "$(cx curl -sS -P - -u ftpcheck:check 'ftp://[::1]/f')"
	cx ftpct stats | grep -q '^expect_used [1-9]' || fail "no expectation used"
	echo "ok: expectations used"
fi

esc=$(printf '\033')
if journal | grep -q "$esc"; then
	fail "escape codes in the journal"
fi
echo "ok: plain log lines in the journal"
journal | grep 'ftpct running' | head -1

cx systemctl reload ftpct || fail "reload"
check "active after reload" active "$(cx systemctl is-active ftpct)"
journal | grep -q 'configuration reloaded\|reload' || fail "no reload in the journal"
check "same process after reload" "$main" "$(cx systemctl show ftpct -p MainPID --value)"

# A session waiting for its data connection while the daemon is killed: systemd restarts it,
# the rules stay meanwhile, the state file in /run/ftpct survives, and the transfer
# completes through the restored expectation.
if [ $ftp = yes ]; then
	cx sh -c 'cat > /tmp/held.py' <<'PY'
import ftplib, os, socket, sys, time
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", 21, timeout=30)
ftp.login("ftpcheck", "check")
ftp.voidcmd("TYPE I")
lsock = socket.create_server(("127.0.0.1", 0))
port = lsock.getsockname()[1]
ftp.sendcmd("PORT 127,0,0,1,%d,%d" % (port >> 8, port & 255))
open("/tmp/held.ready", "w").close()
while not os.path.exists("/tmp/held.go"):
    time.sleep(0.1)
ftp.putcmd("RETR f")
ftp.getresp()
lsock.settimeout(20)
conn, _ = lsock.accept()
data = conn.makefile("rb").read()
conn.close()
ftp.voidresp()
ftp.quit()
print(data.decode().strip())
PY
	cx sh -c 'python3 /tmp/held.py > /tmp/held.out 2>&1 &'
	i=0
	until cx test -e /tmp/held.ready; do
		sleep 0.2
		i=$((i + 1))
		[ $i -lt 50 ] || fail "the FTP client did not get to PORT: $(cx cat /tmp/held.out)"
	done
	cx ftpct sessions | grep -q 'client=127.0.0.1:' || fail "no session before the kill"
	check "expectation before the kill" 1 "$(cx ftpct list | grep -c .)"
fi
cx test -s /run/ftpct/ftpct.sock.state || fail "no state file"
cx kill -9 "$main"
# Between the kill and the restart (RestartSec=2s), the rules stay.
sleep 1
check "rules kept while systemd restarts the daemon" 20 "$(rule_count)"
wait_restarted "$main"
check "restarted after a crash" 1 "$(cx systemctl show ftpct -p NRestarts --value)"
check "rules not duplicated" 20 "$(rule_count)"
journal | grep -q 'its firewall rules stay for the restart' ||
	fail "ExecStopPost did not keep the rules"
if [ $ftp = yes ]; then
	journal | grep 'state restored' | tail -1 | grep -q 'expectations=1' ||
		fail "state not restored: $(journal | grep -i state | tail -3)"
	echo "ok: state file kept and restored (with the waiting expectation)"
	cx ftpct sessions | grep -q 'client=127.0.0.1:' || fail "session lost by the restart"
	check "expectation kept across the restart" 1 "$(cx ftpct list | grep -c .)"
	cx touch /tmp/held.go
	i=0
	until cx grep -q . /tmp/held.out 2>/dev/null; do
		sleep 0.2
		i=$((i + 1))
		[ $i -lt 100 ] || fail "the held transfer did not finish"
	done
	check "transfer announced before the kill completes after it" hello "$(cx cat /tmp/held.out)"
fi

cx systemctl restart ftpct || fail "restart"
check "active after systemctl restart" active "$(cx systemctl is-active ftpct)"
check "rules after systemctl restart" 20 "$(rule_count)"

# Another backend: changed in the file between stop and start (the stop removes the rules
# of the backend the file names then).
cx systemctl stop ftpct
check "rules removed on stop" 0 "$(rule_count)"
cx sh -c 'echo "backend = \"iptables-legacy\"" >> /etc/ftpct/ftpct.conf'
cx systemctl start ftpct || fail "start with backend = iptables-legacy"
check "iptables-legacy rules applied" 20 "$(rule_count iptables-legacy)"
check "no iptables-nft rules" 0 "$(rule_count)"
main=$(cx systemctl show ftpct -p MainPID --value)
cx kill -9 "$main"
sleep 1
check "iptables-legacy rules kept while systemd restarts the daemon" 20 "$(rule_count iptables-legacy)"
wait_restarted "$main"
cx systemctl stop ftpct
check "iptables-legacy rules removed on stop" 0 "$(rule_count iptables-legacy)"
cx sed -i '/^backend = "iptables-legacy"$/d' /etc/ftpct/ftpct.conf
# Six starts in a few seconds so far: clear systemd's start rate limit (5 in 10 s).
cx systemctl reset-failed ftpct

cx systemctl start ftpct || fail "start"
main=$(cx systemctl show ftpct -p MainPID --value)
cx dpkg -i /debs/ftpct.deb >/dev/null
check "upgrade restarts the running daemon" active "$(cx systemctl is-active ftpct)"
[ "$(cx systemctl show ftpct -p MainPID --value)" != "$main" ] || fail "not restarted"

cx systemctl stop ftpct
check "rules removed on stop" 0 "$(rule_count)"
if cx sh -c 'command -v ipset' >/dev/null; then
	check "ipsets removed on stop" 0 "$(cx ipset list -n | wc -l)"
fi
cx test ! -e /run/ftpct || fail "/run/ftpct left after stop"
echo "ok: /run/ftpct removed on stop"

cx systemctl start ftpct
cx dpkg -r ftpct >/dev/null
check "stopped on remove" inactive "$(cx systemctl is-active ftpct || true)"
check "rules removed on remove" 0 "$(rule_count)"
cx test -f /etc/ftpct/ftpct.conf || fail "conffile removed by remove"
cx dpkg --purge ftpct >/dev/null
cx test ! -e /etc/ftpct/ftpct.conf || fail "conffile left by purge"
echo "ok: purged"
echo "PASS"
