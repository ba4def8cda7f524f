#!/usr/bin/env python3
"""A small, deliberately tolerant FTP server for the hostile-input tests.

Runs in the lab's server namespace instead of vsftpd (tests/common calls it through
`ip netns exec`), on the lab's control port, and serves the files of --root:

  fakeftpd.py --listen IP --port P --root DIR [--seconds S] [--hostile FILE] [--split227 S]

What vsftpd does not do and the tests need:
- a line of any length is read (only its first 4 KiB kept) and answered with
  "500 Line too long (N bytes)." — the session goes on (vsftpd closes it);
- HELP answers with the text of --hostile verbatim (escapes \\r \\n \\xHH decoded); a line
  "--pause--" in that file flushes what came before as its own TCP segment (TCP_NODELAY) and
  waits 0.2 s, so a test decides where segments begin. That is how messages a server must never
  be trusted with (PORT/EPRT in the server-to-client direction, a 227 inside another reply, a 227
  at a segment start that is the middle of a line) are sent.

With --split227 S every 227 reply is written in two parts S seconds apart (TCP_NODELAY), cut
inside the address after its second number: a server behind NAT whose reply ftpct must hold.

Commands: USER, PASS, TYPE, NOOP, SIZE, SYST, HELP, PORT, EPRT, PASV, EPSV, RETR, QUIT (anything else:
500), and AUTH, answered with "234 ..." after which the session ends (no TLS is spoken: enough
for a test of what an ALG does once a session announces TLS). Active-mode data connections come from an ephemeral port. Sessions are served one after the
other; the server stops after --seconds.
"""

import argparse
import codecs
import os
import socket
import sys
import time

KEEP = 4096


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Session:
    def __init__(self, conn, args):
        self.c = conn
        self.c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c.settimeout(args.idle)
        self.args = args
        self.buf = b""
        self.active = None
        self.pasv = None

    def send(self, text):
        self.c.sendall(text.encode("latin-1") + b"\r\n")

    def readline(self):
        """One line (first KEEP bytes) and its full length, or None at EOF."""
        kept = b""
        total = 0
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                part, self.buf = self.buf[:i], self.buf[i + 1:]
                total += len(part)
                if len(kept) < KEEP:
                    kept += part[:KEEP - len(kept)]
                return kept.rstrip(b"\r").decode("latin-1"), total
            total += len(self.buf)
            if len(kept) < KEEP:
                kept += self.buf[:KEEP - len(kept)]
            self.buf = b""
            d = self.c.recv(1 << 16)
            if not d:
                return None, total
            self.buf = d

    def hostile(self):
        with open(self.args.hostile, "rb") as f:
            text = f.read().decode("latin-1")
        for chunk in text.split("--pause--\n"):
            data = codecs.decode(chunk.replace("\n", "").encode("latin-1"), "unicode_escape").encode("latin-1")
            if data:
                self.c.sendall(data)
            time.sleep(0.2)

    def data_conn(self):
        if self.pasv is not None:
            self.pasv.settimeout(self.args.idle)
            d, _ = self.pasv.accept()
            self.pasv.close()
            self.pasv = None
            return d
        if self.active is not None:
            d = socket.create_connection(self.active, self.args.idle)
            self.active = None
            return d
        return None

    def run(self):
        self.send("220 fake ftpd for the ftpct lab")
        while True:
            line, total = self.readline()
            if line is None:
                return
            if total > KEEP:
                log("line of %d bytes" % total)
                self.send("500 Line too long (%d bytes)." % total)
                continue
            log("<<< " + line[:200])
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "USER":
                self.send("331 Any password.")
            elif verb == "PASS":
                self.send("230 Logged in.")
            elif verb in ("TYPE", "NOOP"):
                self.send("200 OK.")
            elif verb == "SIZE":
                path = os.path.join(self.args.root, os.path.basename(arg))
                if os.path.isfile(path):
                    self.send("213 %d" % os.path.getsize(path))
                else:
                    self.send("550 No such file.")
            elif verb == "SYST":
                self.send("215 UNIX Type: L8")
            elif verb == "HELP" and self.args.hostile:
                self.hostile()
            elif verb == "PORT":
                try:
                    p = [int(x) for x in arg.split(",")]
                    if len(p) != 6 or any(x < 0 or x > 255 for x in p):
                        raise ValueError
                    self.active = ("%d.%d.%d.%d" % tuple(p[:4]), p[4] * 256 + p[5])
                    self.send("200 PORT OK.")
                except ValueError:
                    self.send("501 Bad PORT.")
            elif verb == "EPRT":
                try:
                    f = arg.split(arg[0])
                    self.active = (f[2], int(f[3]))
                    self.send("200 EPRT OK.")
                except (ValueError, IndexError):
                    self.send("501 Bad EPRT.")
            elif verb in ("PASV", "EPSV"):
                local = self.c.getsockname()[0]
                self.pasv = socket.create_server((local, 0), backlog=1)
                port = self.pasv.getsockname()[1]
                if verb == "PASV":
                    text = "227 Entering Passive Mode (%s,%d,%d).\r\n" % (local.replace(".", ","), port >> 8, port & 255)
                    if self.args.split227 is not None:
                        cut = text.index("(") + 1 + len(",".join(local.split(".")[:2]))
                        self.c.sendall(text[:cut].encode("latin-1"))
                        time.sleep(self.args.split227)
                        self.c.sendall(text[cut:].encode("latin-1"))
                    else:
                        self.c.sendall(text.encode("latin-1"))
                else:
                    self.send("229 Entering Extended Passive Mode (|||%d|)" % port)
            elif verb == "RETR":
                path = os.path.join(self.args.root, os.path.basename(arg))
                if not os.path.isfile(path):
                    self.send("550 No such file.")
                    continue
                self.send("150 Opening data connection.")
                try:
                    d = self.data_conn()
                except OSError as e:
                    self.send("425 Cannot open data connection: %s." % e)
                    continue
                if d is None:
                    self.send("425 Use PORT or PASV first.")
                    continue
                with open(path, "rb") as f:
                    d.sendall(f.read())
                d.close()
                self.send("226 Transfer complete.")
            elif verb == "AUTH":
                self.send("234 AUTH %s accepted (no TLS follows: fake server)." % arg)
                return
            elif verb == "QUIT":
                self.send("221 Bye.")
                return
            else:
                self.send("500 Unknown command.")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--root", required=True)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--idle", type=float, default=10)
    p.add_argument("--hostile")
    p.add_argument("--split227", type=float)
    a = p.parse_args()
    ls = socket.create_server((a.listen, a.port), backlog=16)
    ls.settimeout(0.2)
    print("READY", flush=True)
    t_end = time.monotonic() + a.seconds
    while time.monotonic() < t_end:
        try:
            conn, peer = ls.accept()
        except socket.timeout:
            continue
        log("session from %s" % (peer,))
        try:
            Session(conn, a).run()
        except OSError as e:
            log("session error: %s" % e)
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
