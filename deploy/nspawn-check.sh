#!/bin/sh
# Checks the Debian package under a real systemd, on a machine whose PID 1 is not systemd:
# boots this machine's own OS tree in systemd-nspawn (read-only, with a tmpfs overlay that
# is thrown away, private network, private mount namespace), installs the package there and
# goes through its life: enabled-not-started, start (Type=notify), rules, reload, crash and
# automatic restart, stop (rules removed), upgrade, remove, purge.
#
#   deploy/nspawn-check.sh target/debian/ftpct_*.deb
#
# Needs root and systemd-nspawn (apt-get install systemd-container). The package must be
# built from sources with the src/main.rs and src/daemon.rs parts of the deploy branch
# (ftpct rules --config; sd_notify READY=1): without them the start fails.
# If vsftpd, curl and useradd are there, an FTP transfer over loopback goes through the
# daemon too. Everything the container wrote is gone when it stops; the cgroups and the
# /run/systemd/nspawn directory nspawn leaves on a host without systemd are removed.
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

rule_count() {
	cx sh -c 'iptables-nft-save; ip6tables-nft-save' 2>/dev/null |
		grep -c -- '--comment ftpct$\|--comment ftpct ' || true
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

cx systemctl start ftpct || fail "start"
check "active after start (READY=1)" active "$(cx systemctl is-active ftpct)"
cx systemctl show ftpct -p StatusText --value | grep -q '^queue 0' || fail "no STATUS="
check "runs as the dynamic user" ftpct "$(cx ps -o user= -p "$(cx systemctl show ftpct -p MainPID --value)")"
check "rules applied" 20 "$(rule_count)"
cx ftpct stats >/dev/null || fail "control socket"

if cx sh -c 'command -v vsftpd && command -v curl && command -v useradd' >/dev/null &&
	cx systemctl is-active vsftpd >/dev/null 2>&1; then
	cx sh -c 'useradd -m ftpcheck && echo ftpcheck:check | chpasswd && echo hello > /home/ftpcheck/f'
	check "FTP (PASV) through the daemon" hello "$(cx curl -sS --disable-epsv -u ftpcheck:check ftp://127.0.0.1/f)"
	check "FTP (active, IPv6) through the daemon" hello "$(cx curl -sS -P - -u ftpcheck:check 'ftp://[::1]/f')"
	cx ftpct stats | grep -q '^expect_used [1-9]' || fail "no expectation used"
	echo "ok: expectations used"
fi

esc=$(printf '\033')
if cx journalctl -u ftpct -o cat --no-pager | grep -q "$esc"; then
	fail "escape codes in the journal"
fi
echo "ok: plain log lines in the journal"
cx journalctl -u ftpct -o cat --no-pager | grep 'ftpct running' | head -1

cx systemctl reload ftpct || fail "reload"
check "active after reload" active "$(cx systemctl is-active ftpct)"

main=$(cx systemctl show ftpct -p MainPID --value)
cx kill -9 "$main"
sleep 4
check "restarted after a crash" 1 "$(cx systemctl show ftpct -p NRestarts --value)"
check "active after the restart" active "$(cx systemctl is-active ftpct)"
check "rules not duplicated" 20 "$(rule_count)"

main=$(cx systemctl show ftpct -p MainPID --value)
cx dpkg -i /debs/ftpct.deb >/dev/null
check "upgrade restarts the running daemon" active "$(cx systemctl is-active ftpct)"
[ "$(cx systemctl show ftpct -p MainPID --value)" != "$main" ] || fail "not restarted"

cx systemctl stop ftpct
check "rules removed on stop" 0 "$(rule_count)"
check "ipsets removed on stop" 0 "$(cx ipset list -n | wc -l)"

cx systemctl start ftpct
cx dpkg -r ftpct >/dev/null
check "stopped on remove" inactive "$(cx systemctl is-active ftpct || true)"
check "rules removed on remove" 0 "$(rule_count)"
cx test -f /etc/ftpct/ftpct.conf || fail "conffile removed by remove"
cx dpkg --purge ftpct >/dev/null
cx test ! -e /etc/ftpct/ftpct.conf || fail "conffile left by purge"
echo "ok: purged"
echo "PASS"
