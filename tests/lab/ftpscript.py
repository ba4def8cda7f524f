#!/usr/bin/env python3
"""A scripted raw FTP control connection for the fault and hostile-input tests.

Runs inside the lab's client namespace (tests/common calls it through `ip netns exec`):

  ftpscript.py --host H --port P [--timeout S] [--root DIR] STEP...

Steps, executed in order (TEXT may use \\r, \\n, \\t and \\xHH escapes):

  login                      read the banner, USER anonymous / PASS, TYPE I
  cmd:TEXT[=>CODES]          send TEXT\\r\\n, read the whole reply; with =>CODES the reply code
                             must start with one of the comma-separated prefixes (e.g. =>2 or
                             =>500,501)
  send:TEXT                  send TEXT as it is, in one write (TCP_NODELAY is on)
  reply[=>CODES]             read one reply
  sleep:S                    pause S seconds (a fractional number)
  retr:MODE:FILE[:PORT[:PAD]]
                             a whole transfer of FILE in MODE (port, eprt, pasv, epsv), checked
                             with sha256 against --root/FILE; PORT (empty = any) fixes the local
                             data port of the active modes; PAD sends "NOOP " + PAD x's and the
                             PORT/EPRT line in one write (to place a segment boundary inside it)
  retrpause:MODE:FILE:BYTES:MARK:GO
                             the same as retr (any local port, sha256-checked), but after BYTES
                             bytes of data it creates the empty file MARK, waits (at most 30 s)
                             until GO exists and only then reads the rest: the test acts while
                             the transfer runs (the data connection open, the final reply due)
  retrfail:MODE:FILE[:PORT][=>CODES]
                             the same, but the transfer must FAIL: no data connection and a reply
                             with one of CODES (default 4,5); the session goes on
  mark:PATH                  create the empty file PATH (tells the test a point was reached)
  waitfor:PATH[:SECONDS]     wait until PATH exists (default at most 10 s)
  longline:BYTES[:PREFIX]    send PREFIX followed by BYTES-len(PREFIX) bytes of 'x' and no newline,
                             in 64 KiB writes, then read nothing (the next step decides)
  drain[:SECONDS]            read and discard whatever the server sends for SECONDS (default 1)
  portflood:N[:K]            N PORT commands to the local address (ports 20000..), each answered
                             with 200 by the server; K commands per write (pipelined, default 1)
  quit                       QUIT, expecting 221

--max-transfer-seconds S fails the run when one retr/retrfail step (PORT/PASV, RETR, the data and
the final reply) takes longer than S seconds: a stalled control connection, not a slow one.

Exit status 0 when every step succeeded; the last stdout line is then "OK ...".
"""

import argparse
import codecs
import hashlib
import os
import select
import socket
import sys
import time


T0 = time.monotonic()


def log(msg):
    """stderr, each line prefixed with the seconds since the start (to locate a stall)."""
    print("%7.3f %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


def unescape(s):
    return codecs.decode(s.encode("latin-1"), "unicode_escape").encode("latin-1")


class Fail(Exception):
    pass


class Ctl:
    def __init__(self, host, port, timeout):
        self.s = socket.create_connection((host, port), timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""

    def line(self):
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise EOFError("control connection closed by the server")
            self.buf += d
        ln, self.buf = self.buf.split(b"\n", 1)
        return ln.rstrip(b"\r").decode("latin-1")

    def reply(self, expect=None):
        first = self.line()
        log("<<< " + first[:200])
        if len(first) > 3 and first[3] == "-":
            code = first[:3]
            while True:
                ln = self.line()
                log("<<< " + ln[:200])
                if ln.startswith(code + " "):
                    break
        if expect is not None and not any(first.startswith(c) for c in expect):
            raise Fail("expected a reply %s, got: %s" % ("|".join(expect), first))
        return first

    def send(self, data):
        shown = data if len(data) <= 200 else data[:100] + b"...(%d bytes)" % len(data)
        log(">>> %r" % shown)
        self.s.sendall(data)

    def cmd(self, text, expect=None):
        self.send(text.encode("latin-1") + b"\r\n")
        return self.reply(expect)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wait_file(path, secs):
    t_end = time.monotonic() + secs
    while not os.path.exists(path):
        if time.monotonic() > t_end:
            raise Fail("%s did not appear" % path)
        time.sleep(0.02)


def recv_all(conn, timeout, pause=None):
    """Reads the data connection to its end; pause = (BYTES, MARK, GO): after BYTES bytes,
    create MARK and wait for GO before reading on."""
    conn.settimeout(timeout)
    h = hashlib.sha256()
    n = 0
    while True:
        want = 65536
        if pause is not None:
            want = max(1, min(want, pause[0] - n))
        d = conn.recv(want)
        if not d:
            break
        h.update(d)
        n += len(d)
        if pause is not None and n >= pause[0]:
            log("paused after %d bytes of data" % n)
            open(pause[1], "w").close()
            wait_file(pause[2], 30)
            log("resumed")
            pause = None
    conn.close()
    return h.hexdigest(), n


def parse_227(r):
    inner = r[r.index("(") + 1:r.index(")")]
    p = [int(x) for x in inner.split(",")]
    return "%d.%d.%d.%d" % tuple(p[:4]), p[4] * 256 + p[5]


def parse_229(r):
    inner = r[r.index("(") + 1:r.index(")")]
    return int(inner.strip(inner[0]))


def open_active(c, mode, fixed_port, timeout, pad=None):
    local = c.s.getsockname()[0]
    fam = c.s.family
    lst = socket.socket(fam, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((local, fixed_port or 0))
    lst.listen(1)
    lst.settimeout(timeout)
    dport = lst.getsockname()[1]
    if mode == "port":
        a = local.split(".")
        line = "PORT %s,%s,%s,%s,%d,%d" % (a[0], a[1], a[2], a[3], dport >> 8, dport & 255)
    else:
        af = 1 if fam == socket.AF_INET else 2
        line = "EPRT |%d|%s|%d|" % (af, local, dport)
    if pad is None:
        c.cmd(line, ["200"])
    else:
        # "NOOP <pad>" and the command in ONE write: with a small MSS the segment boundary
        # falls where the test wants it inside the command
        c.send(("NOOP %s\r\n%s\r\n" % ("x" * pad, line)).encode())
        c.reply(["200"])
        c.reply(["200"])
    return lst


def wait_accept(c, lst, timeout):
    """The server's data connection and the preliminary (1xx) reply if it came first; or
    (None, final reply) when the server gives up first (e.g. 425 because it could not connect),
    or (None, None) after the timeout."""
    t_end = time.monotonic() + timeout
    prelim = None
    while time.monotonic() < t_end:
        if b"\n" in c.buf:
            r = c.reply()
            if not r.startswith("1"):
                return None, r
            prelim = r
            continue
        r, _, _ = select.select([lst, c.s], [], [], max(0.0, t_end - time.monotonic()))
        if lst in r:
            conn, peer = lst.accept()
            log("data connection from %s" % (peer,))
            return conn, prelim
        if c.s in r:
            d = c.s.recv(65536)
            if not d:
                raise EOFError("control connection closed by the server")
            c.buf += d
    return None, None


def retr(c, args, mode, name, fixed_port, fail_codes=None, pad=None, pause=None):
    """A whole transfer. With fail_codes, the transfer must FAIL with one of these reply codes
    (and no data), and the session goes on."""
    if mode in ("port", "eprt"):
        lst = open_active(c, mode, fixed_port, args.timeout, pad)
        c.send(("RETR %s\r\n" % name).encode())
        conn, early = wait_accept(c, lst, args.timeout)
        lst.close()
        if conn is None:
            if early is None:
                raise Fail("no data connection and no reply from the server within %s s" % args.timeout)
            if fail_codes and any(early.startswith(x) for x in fail_codes):
                log("transfer failed as expected: %s" % early)
                return 0
            raise Fail("no data connection from the server (server: %s)" % early)
        if early is None:
            c.reply(["1"])
    else:
        if mode == "pasv":
            host, port = parse_227(c.cmd("PASV", ["227"]))
        else:
            host, port = c.s.getpeername()[0], parse_229(c.cmd("EPSV", ["229"]))
        try:
            conn = socket.create_connection((host, port), args.timeout)
        except OSError as e:
            if fail_codes:
                log("data connection to %s:%d failed as expected: %s" % (host, port, e))
                c.send(b"ABOR\r\n")
                c.reply()
                return 0
            raise
        c.send(("RETR %s\r\n" % name).encode())
        c.reply(["1"])
    if fail_codes:
        raise Fail("the transfer of %s in %s was expected to fail (%s) but a data connection came" % (name, mode, ",".join(fail_codes)))
    got, n = recv_all(conn, args.timeout, pause)
    c.reply(["226"])
    want = sha256_file(os.path.join(args.root, name))
    if got != want:
        raise Fail("%s with %s: sha256 %s, server's %s (%d bytes)" % (name, mode, got, want, n))
    log("OK %s %s sha256=%s bytes=%d" % (mode, name, got, n))
    return n


def portflood(c, n, per_write):
    a = c.s.getsockname()[0].split(".")
    sent = 0
    while sent < n:
        batch = min(per_write, n - sent)
        data = b"".join(
            ("PORT %s,%s,%s,%s,%d,%d\r\n" % (a[0], a[1], a[2], a[3], (20000 + i) >> 8, (20000 + i) & 255)).encode()
            for i in range(sent, sent + batch))
        c.s.sendall(data)
        for _ in range(batch):
            r = c.line()
            if not r.startswith("200"):
                raise Fail("PORT %d of the flood answered: %s" % (sent, r))
        sent += batch
    log("%d PORT commands answered with 200" % n)


def drain(c, seconds):
    c.s.settimeout(0.2)
    t_end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < t_end:
        try:
            d = c.s.recv(65536)
        except socket.timeout:
            continue
        if not d:
            break
        n += len(d)
    c.s.settimeout(c.timeout)
    c.buf = b""
    log("drained %d bytes" % n)


def codes(spec):
    return spec.split(",") if spec else None


def run(args):
    c = Ctl(args.host, args.port, args.timeout)
    done = []
    slowest = 0.0
    for step in args.steps:
        kind, _, rest = step.partition(":")
        if kind == "login":
            c.reply(["220"])
            if c.cmd("USER anonymous", ["2", "3"]).startswith("3"):
                c.cmd("PASS lab@", ["2"])
            c.cmd("TYPE I", ["200"])
        elif kind == "cmd":
            text, _, exp = rest.partition("=>")
            c.cmd(unescape(text).decode("latin-1"), codes(exp))
        elif kind.startswith("reply"):
            _, _, exp = step.partition("=>")
            c.reply(codes(exp))
        elif kind == "send":
            c.send(unescape(rest))
        elif kind == "sleep":
            time.sleep(float(rest))
        elif kind in ("retr", "retrfail"):
            t_step = time.monotonic()
            spec, _, exp = rest.partition("=>")
            parts = spec.split(":")
            fail = codes(exp or "4,5") if kind == "retrfail" else None
            fixed = int(parts[2]) if len(parts) > 2 and parts[2] else 0
            pad = int(parts[3]) if len(parts) > 3 else None
            retr(c, args, parts[0], parts[1], fixed, fail, pad)
            took = time.monotonic() - t_step
            slowest = max(slowest, took)
            if args.max_transfer_seconds and took > args.max_transfer_seconds:
                raise Fail("%s took %.2f s (at most %.2f s allowed): the control connection stalled"
                           % (step, took, args.max_transfer_seconds))
        elif kind == "retrpause":
            mode, name, nbytes, mark, go = rest.split(":")
            retr(c, args, mode, name, 0, pause=(int(nbytes), mark, go))
        elif kind == "mark":
            open(rest, "w").close()
        elif kind == "waitfor":
            path, _, secs = rest.partition(":")
            wait_file(path, float(secs or 10))
        elif kind == "longline":
            size, _, prefix = rest.partition(":")
            size = int(size)
            prefix = unescape(prefix)
            c.send(prefix)
            left = size - len(prefix)
            chunk = b"x" * 65536
            while left > 0:
                c.s.sendall(chunk[:left])
                left -= min(left, len(chunk))
            log("sent a %d-byte line without newline" % size)
        elif kind == "drain":
            drain(c, float(rest) if rest else 1.0)
        elif kind == "portflood":
            n, _, per_write = rest.partition(":")
            portflood(c, int(n), int(per_write or 1))
        elif kind == "quit":
            c.cmd("QUIT", ["221"])
        else:
            raise Fail("unknown step %r" % step)
        done.append(kind)
    log("slowest transfer: %.2f s" % slowest)
    print("OK %d steps: %s" % (len(done), " ".join(done)), flush=True)
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--root", default=".")
    p.add_argument("--max-transfer-seconds", type=float, default=0,
                   help="fail when one retr/retrfail step takes longer (0: no limit)")
    p.add_argument("steps", nargs="+")
    args = p.parse_args()
    try:
        return run(args)
    except (OSError, EOFError, Fail, ValueError) as e:
        log("FAIL: %s: %s" % (type(e).__name__, e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
