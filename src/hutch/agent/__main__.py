"""``python3 -m hutch.agent [--socket PATH] [--listen HOST:PORT] [--ready-fd N] [--landlock]``.

Arguments are parsed by hand: argparse alone costs several milliseconds of the agent's
start-up, which sits on the path of every sandbox creation.
"""

from __future__ import annotations

import sys

USAGE = """usage: python3 -m hutch.agent [--socket PATH] [--listen HOST:PORT] [--ready-fd N]
                          [--interpreter PATH] [--landlock]

  --socket PATH       serve on this unix socket (created 0600; appears once it accepts)
  --listen HOST:PORT  serve on this TCP address as well (or instead)
  --ready-fd N        write "ready\\n" to file descriptor N once serving, then close it
  --interpreter PATH  run the code interpreter on this unix socket (started on /init)
  --landlock          first confine this process and all it starts to / with Landlock, then
                      drop CAP_SYS_ADMIN (how a sandbox's agent starts; exits if it fails)
"""


def parse(argv):
    opts = {"--socket": None, "--listen": None, "--ready-fd": None, "--interpreter": None,
            "--landlock": False}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if arg == "--landlock":
            opts[arg] = True
            continue
        name, eq, value = arg.partition("=")
        if name not in opts:
            raise SystemExit(f"hutch.agent: unknown argument {arg!r}\n{USAGE}")
        if not eq:
            if not args:
                raise SystemExit(f"hutch.agent: {name} needs a value")
            value = args.pop(0)
        opts[name] = value
    if not opts["--socket"] and not opts["--listen"]:
        raise SystemExit(f"hutch.agent: give --socket and/or --listen\n{USAGE}")
    ready = opts["--ready-fd"]
    return (opts["--socket"], opts["--listen"], int(ready) if ready is not None else None,
            opts["--interpreter"], opts["--landlock"])


def main(argv=None) -> int:
    socket_path, listen, ready_fd, interpreter, landlock = parse(
        sys.argv[1:] if argv is None else argv)
    if landlock:
        # Before anything else runs (and while the process has one thread): see landlock.py.
        from .landlock import restrict

        try:
            restrict()
        except OSError as exc:
            # Fail closed: a sandbox whose agent holds CAP_SYS_ADMIN unconfined must not serve.
            raise SystemExit(f"hutch.agent: Landlock confinement failed: {exc}") from None
    # The agent never speaks TLS, but asyncio imports ssl if it can, which loads OpenSSL:
    # about 4 MiB of every idle sandbox's memory and a good part of the agent's start-up.
    # A None entry makes that import fail, and asyncio then runs without TLS support.
    sys.modules.setdefault("ssl", None)
    import asyncio

    from .server import run

    try:
        asyncio.run(run(socket_path, listen, ready_fd, interpreter))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
