#!/usr/bin/env python3
"""pyftpdlib as the lab's server (Debian's python3-pyftpdlib), for the split-line tests.

Runs in the lab's server namespace (lab.sh server PREFIX --kind pyftpdlib):

  pyftpd.py --listen IP --port P --root DIR --log FILE [--pasv 30000-30999]

Anonymous, read-only, serving DIR; passive ports in the given range; PORT/EPRT to an address
other than the control peer's are refused (pyftpdlib's default permit_foreign_addresses=False:
"501 Rejected data connection to foreign address"), the symptom of a missing ALG. Every command
received is appended to FILE as `<<< LINE`, so a test can read what the server really got.
Prints READY once listening; runs until killed.
"""

import argparse
import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--root", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--pasv", default="30000-30999")
    a = p.parse_args()
    log = open(a.log, "a", buffering=1)

    class Handler(FTPHandler):
        def pre_process_command(self, line, cmd, arg):
            log.write("<<< %s\n" % line)
            return super().pre_process_command(line, cmd, arg)

    auth = DummyAuthorizer()
    auth.add_anonymous(a.root)
    Handler.authorizer = auth
    lo, hi = (int(x) for x in a.pasv.split("-"))
    Handler.passive_ports = range(lo, hi + 1)
    Handler.permit_foreign_addresses = False
    Handler.timeout = 60
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    server = FTPServer((a.listen, a.port), Handler)
    print("READY", flush=True)
    server.serve_forever(timeout=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
