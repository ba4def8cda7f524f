#!/usr/bin/env python3
"""FTP clients for the ftpct lab that do NOT hide a broken ALG.

Runs inside the lab's client namespace (lab.sh calls it through `ip netns exec`):

  ftpclient.py fetch --host H --port P --mode port|eprt|pasv|epsv --file F --out PATH
  ftpclient.py probe --host H --port P --file F          control connection only
  ftpclient.py many  --host H --port P --mode M --count N --root DIR
                     M: port|eprt|pasv|epsv, or active (PORT/EPRT alternating, IPv4) /
                     passive (PASV/EPSV alternating, IPv4); on IPv6 active=eprt, passive=epsv
  ftpclient.py split --host H --port P --mode port|eprt --file F --root DIR [--delay S]
                     [--cut N] [--nagle]
                     the PORT/EPRT line in two writes S seconds apart: its first N bytes
                     (default -1: "PORT a,b,c" / EPRT cut inside the address), then the rest;
                     TCP_NODELAY unless --nagle (then the kernel sends the rest only once the
                     first part is acknowledged, or in a tail loss probe)

The exact data command of the mode is always used (never the client library's choice), the
address in 227 is trusted (ftplib ignores it by default), and every wait is bounded by --timeout.
Exit status 0 only if every file arrived byte for byte (sha256 against the server's file).
"""

import argparse
import ftplib
import hashlib
import os
import socket
import sys
import time

# the raw control connection of the split command (same directory, run as a script)
from ftpscript import Ctl, Fail


RESULT = sys.stdout


def result(msg):
    print(msg, file=RESULT, flush=True)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class LabFTP(ftplib.FTP):
    """ftplib.FTP that uses exactly the data command it is told to use."""

    mode = "pasv"

    def makeport(self):
        # Same as ftplib's, but PORT or EPRT as asked (ftplib picks by address family).
        sock = socket.create_server(("", 0), family=self.af, backlog=1)
        port = sock.getsockname()[1]
        host = self.sock.getsockname()[0]
        if self.mode == "eprt":
            self.sendeprt(host, port)
        elif self.mode == "port":
            if self.af != socket.AF_INET:
                raise ValueError("PORT is IPv4 only")
            self.sendport(host, port)
        else:
            raise ValueError("makeport in mode %s" % self.mode)
        sock.settimeout(self.timeout)
        return sock

    def makepasv(self):
        if self.mode == "epsv":
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        if self.mode == "pasv":
            if self.af != socket.AF_INET:
                raise ValueError("PASV is IPv4 only")
            host, port = ftplib.parse227(self.sendcmd("PASV"))
            # trust_server_pasv_ipv4_address is set: connect where the 227 says, so a 227
            # that was not rewritten behind DNAT fails instead of being silently "fixed".
            return host, port
        raise ValueError("makepasv in mode %s" % self.mode)


def connect(args):
    ftp = LabFTP(timeout=args.timeout)
    ftp.trust_server_pasv_ipv4_address = True
    ftp.set_debuglevel(1)
    ftp.connect(args.host, args.port)
    ftp.login("anonymous", "lab@")
    ftp.voidcmd("TYPE I")
    return ftp


def set_mode(ftp, mode):
    if mode not in ("port", "eprt", "pasv", "epsv"):
        raise ValueError("mode %s" % mode)
    ftp.mode = mode
    ftp.set_pasv(mode in ("pasv", "epsv"))


def retr(ftp, name):
    h = hashlib.sha256()
    n = [0]

    def cb(b):
        h.update(b)
        n[0] += len(b)

    ftp.retrbinary("RETR " + name, cb, blocksize=65536)
    return h.hexdigest(), n[0]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cmd_fetch(args):
    ftp = connect(args)
    set_mode(ftp, args.mode)
    with open(args.out, "wb") as out:
        ftp.retrbinary("RETR " + args.file, out.write, blocksize=65536)
    ftp.quit()
    result("downloaded %s (%d bytes) with %s" % (args.file, os.path.getsize(args.out), args.mode.upper()))
    return 0


def cmd_probe(args):
    ftp = connect(args)
    size = ftp.size(args.file)
    ftp.quit()
    result("OK control connection: logged in, SIZE %s = %s" % (args.file, size))
    return 0


def cmd_many(args):
    ftp = connect(args)
    v6 = ftp.af == socket.AF_INET6
    if args.mode == "active":
        cycle = ["eprt"] if v6 else ["port", "eprt"]
    elif args.mode == "passive":
        cycle = ["epsv"] if v6 else ["pasv", "epsv"]
    else:
        cycle = [args.mode]
    t0 = time.monotonic()
    total = 0
    for i in range(1, args.count + 1):
        name = "f%02d.bin" % i
        mode = cycle[(i - 1) % len(cycle)]
        set_mode(ftp, mode)
        want = sha256_file(os.path.join(args.root, name))
        got, n = retr(ftp, name)
        if got != want:
            log("FAIL: file %d/%d %s with %s: sha256 %s, server's %s" % (i, args.count, name, mode, got, want))
            return 1
        total += n
        if args.delay:
            # a pause between transfers, with the control connection open (restart tests)
            time.sleep(args.delay)
    ftp.quit()
    result("OK %d files (%d bytes) in one session, modes %s, %.2f s"
          % (args.count, total, "/".join(m.upper() for m in cycle), time.monotonic() - t0))
    return 0


# --- split command: a raw control connection, the PORT/EPRT line in two TCP segments ---------

def cmd_split(args):
    c = Ctl(args.host, args.port, args.timeout)
    c.reply()
    if c.cmd("USER anonymous").startswith("3"):
        c.cmd("PASS lab@", ["2"])
    c.cmd("TYPE I", ["2"])
    local = c.s.getsockname()[0]
    fam = c.s.family
    lst = socket.create_server((local, 0), family=fam, backlog=1)
    lst.settimeout(args.timeout)
    dport = lst.getsockname()[1]
    if args.mode == "port":
        if fam != socket.AF_INET:
            raise ValueError("PORT is IPv4 only")
        a = local.split(".")
        # first segment "PORT a,b,c", second ",d,p1,p2\r\n"
        line = "PORT %s,%s,%s,%s,%d,%d\r\n" % (a[0], a[1], a[2], a[3], dport >> 8, dport & 255)
        cut = len("PORT %s,%s,%s" % (a[0], a[1], a[2]))
    else:
        af = 1 if fam == socket.AF_INET else 2
        line = "EPRT |%d|%s|%d|\r\n" % (af, local, dport)
        cut = line.index(local) + len(local) // 2  # inside the address
    if args.cut >= 0:
        if not 0 < args.cut < len(line):
            raise ValueError("--cut %d: the line has %d bytes" % (args.cut, len(line)))
        cut = args.cut
    first, second = line[:cut], line[cut:]
    if args.nagle:
        c.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    c.send(first.encode("latin-1"))
    time.sleep(args.delay)
    c.send(second.encode("latin-1"))
    t0 = time.monotonic()
    r = c.reply()
    if not r.startswith("2"):
        log("FAIL: server answered the split %s with: %s" % (args.mode.upper(), r))
        return 1
    log("(reply to the split command after %.3f s)" % (time.monotonic() - t0))
    c.send(("RETR %s\r\n" % args.file).encode("latin-1"))
    try:
        conn, peer = lst.accept()
    except socket.timeout:
        log("FAIL: no data connection from the server within %s s" % args.timeout)
        return 1
    log("data connection from %s" % (peer,))
    r = c.reply()
    if not r.startswith("1"):
        log("FAIL: RETR -> " + r)
        return 1
    conn.settimeout(args.timeout)
    h = hashlib.sha256()
    n = 0
    while True:
        d = conn.recv(65536)
        if not d:
            break
        h.update(d)
        n += len(d)
    conn.close()
    r = c.reply()
    if not r.startswith("2"):
        log("FAIL: after transfer -> " + r)
        return 1
    c.cmd("QUIT", ["2"])
    want = sha256_file(os.path.join(args.root, args.file))
    if h.hexdigest() != want:
        log("FAIL: sha256 %s, server's %s" % (h.hexdigest(), want))
        return 1
    result("OK split %s: %s (%d bytes) sha256=%s" % (args.mode.upper(), args.file, n, want))
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("fetch", "probe", "many", "split"):
        s = sub.add_parser(name)
        s.add_argument("--host", required=True)
        s.add_argument("--port", type=int, default=21)
        s.add_argument("--timeout", type=float, default=3.0)
        if name in ("fetch", "probe", "split"):
            s.add_argument("--file", default="small.txt")
        if name in ("fetch", "many", "split"):
            s.add_argument("--mode", required=True)
        if name == "fetch":
            s.add_argument("--out", required=True)
        if name in ("many", "split"):
            s.add_argument("--root", required=True)
        if name == "many":
            s.add_argument("--count", type=int, default=30)
            s.add_argument("--delay", type=float, default=0.0)
        if name == "split":
            s.add_argument("--delay", type=float, default=0.05)
            s.add_argument("--cut", type=int, default=-1)
            s.add_argument("--nagle", action="store_true")
    args = p.parse_args()
    fn = {"fetch": cmd_fetch, "probe": cmd_probe, "many": cmd_many, "split": cmd_split}[args.cmd]
    # ftplib's debug output (the control dialog) goes to stderr; stdout has only the result line.
    global RESULT
    RESULT = sys.stdout
    sys.stdout = sys.stderr
    try:
        return fn(args)
    except (OSError, EOFError, ftplib.Error, RuntimeError, ValueError, Fail) as e:
        log("FAIL: %s: %s" % (type(e).__name__, e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
