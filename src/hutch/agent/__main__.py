"""``python3 -m hutch.agent --socket PATH [--listen HOST:PORT] [--ready-fd N]``."""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hutch.agent", description="hutch in-sandbox agent (envd-compatible)")
    parser.add_argument("--socket", help="serve on this unix socket (created 0600)")
    parser.add_argument("--listen", help="serve on this TCP address, HOST:PORT")
    parser.add_argument("--ready-fd", type=int, help="write 'ready\\n' to this fd once serving")
    args = parser.parse_args(argv)
    if not args.socket and not args.listen:
        parser.error("give --socket and/or --listen")
    from .server import run

    try:
        asyncio.run(run(args.socket, args.listen, args.ready_fd))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
