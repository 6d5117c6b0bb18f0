# The kernels' zygote (zygote.py starts it, on the template's Python, with kernelspecs.ZYGOTE):
# one process of the sandbox that has made the imports every kernel the interpreter starts
# begins with (ipykernel, IPython, pyzmq, tornado: about 100 ms of a kernel's 150 ms start),
# and forks a copy of itself for each kernel instead of a new Python making them again. The
# copy becomes exactly the process `python -c LAUNCH ARGS` would have been: its own session,
# the kernel's environment, working directory and argv, `__main__` as `-c` leaves it, then
# the launch code run as `-c` runs it, so the kernel's end is Python's own.
#
# The zygote lives in the sandbox, as root there, like the kernels (nothing here crosses a
# boundary the kernels do not). It runs only while the agent does: it ends when its requests
# pipe closes, and a kernel's parent poller (JPY_PARENT_PID, set to the zygote) ends the
# kernels with it.
#
# Protocol. In, on stdin, one JSON line per kernel: {"code", "args", "env", "cwd"}; or
# {"retire": true}, after which it forks no more and ends with its last kernel (a new zygote
# took its place, and the kernels it forked keep running). Out, on
# the file descriptor named by argv[1]: {"ready": ...} once the imports are done, then for
# each request {"pid": n}, {"error": text} (nothing forked: start the kernel instead), or
# {"stale": path} (a package it imported changed on disk since: start a new zygote); and, at
# any time after a {"pid"}, {"exited": pid, "status": code} as the zygote reaps a kernel
# (the agent cannot wait for a process it did not fork).
#
# Everything happens inside a function that takes itself out of `__main__` in the kernel.
def _hutch_zygote():
    import gc
    import importlib
    import json
    import os
    import signal
    import sys
    import threading
    import time

    def stat(path):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    # The path's directories as this Python's start found them (see `changed` below), taken
    # before the imports: anything installed from here on is a change.
    import site

    watched = {p: stat(p) for p in [p for p in sys.path if p] + [site.getusersitepackages()]}

    # The imports of kernelspecs.LAUNCH and those IPKernelApp.launch_instance makes first.
    sys.modules.setdefault("debugpy", None)
    for module in ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "IPython"):
        importlib.import_module(module)

    out = int(sys.argv[1])
    os.set_inheritable(out, False)
    started_env = dict(os.environ)

    def send(message):
        # One write per line, below PIPE_BUF: a line written by the SIGCHLD handler never
        # lands inside another.
        os.write(out, (json.dumps(message) + "\n").encode())

    def python_path(env, cwd):
        # The entries PYTHONPATH puts after sys.path[0], as Python's start makes them.
        value = env.get("PYTHONPATH", "")
        return [os.path.abspath(os.path.join(cwd, p)) for p in value.split(os.pathsep)] \
            if value else []

    own_path = python_path(started_env, os.getcwd())
    if sys.path[1:1 + len(own_path)] != own_path:
        own_path = None                 # not as expected: kernels asking another path start

    # What a kernel started now would find on disk, as the zygote found it. The path's
    # directories, the user's site directory among them whether it exists or not: a package
    # installed there, or a .pth file that adds to the path, is seen by a new Python's start
    # and not by a fork. And where the imported code lives: pip replacing a package renames
    # its files out of (and new ones into) these directories, which changes their
    # modification time, and a kernel forked after that would run the old code the zygote
    # holds. A request after any such change gets {"stale"} instead.
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.dirname(path) not in watched:
            watched[os.path.dirname(path)] = stat(os.path.dirname(path))

    def changed():
        for path, seen in watched.items():
            if stat(path) != seen:
                return path
        return None

    kernels = set()
    retired = []

    def reap(*_):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            kernels.discard(pid)
            send({"exited": pid, "status": os.waitstatus_to_exitcode(status)})
        if retired and not kernels:
            sys.exit(0)

    # If memory runs out, the kernels (1000, holding the user's data and replaced when lost)
    # go before the zygote, whose loss takes every kernel forked from it along.
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("500")
    except OSError:
        pass
    signal.signal(signal.SIGCHLD, reap)
    # The imported modules' objects go to a generation the collector never scans, so a
    # kernel's collections do not write to (and so copy) the pages it shares with this one.
    gc.collect()
    gc.freeze()
    send({"ready": True, "pid": os.getpid()})

    pending = b""
    while True:
        while b"\n" not in pending:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                sys.exit(0)             # the agent went away
            pending += chunk
        line, _, pending = pending.partition(b"\n")
        try:
            request = json.loads(line)
            if request.get("retire"):
                retired.append(True)
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
                if not kernels:
                    sys.exit(0)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                continue
            code, args = str(request["code"]), [str(a) for a in request["args"]]
            env = {str(k): str(v) for k, v in request["env"].items()}
            cwd = str(request["cwd"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            send({"error": f"bad request: {exc}"})
            continue
        if retired:
            send({"error": "retired"})
            continue
        stale = changed()
        if stale is not None:
            send({"stale": stale})
            continue
        if threading.active_count() != 1:
            send({"error": "the zygote has threads; a fork would not be whole"})
            continue
        if own_path is None and python_path(env, cwd):
            send({"error": "the zygote's sys.path is not as PYTHONPATH made it"})
            continue
        # SIGCHLD waits until the pid is sent: a kernel's exit is never told before its pid.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            send({"error": f"fork failed: {exc}"})
            continue
        if pid == 0:
            break
        kernels.add(pid)
        send({"pid": pid})
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})

    # The kernel. What `python -c` would have set up differently from the zygote, in order:
    # signals and session, descriptors, environment, directory, path, argv, `__main__`.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    for fd in [int(n) for n in os.listdir("/proc/self/fd")]:
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass                    # the directory's own descriptor, already closed
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    env["JPY_PARENT_PID"] = str(os.getppid())     # ends with the zygote, as with its parent
    os.environ.clear()
    os.environ.update(env)
    time.tzset()                        # TZ, read when the zygote imported time
    os.chdir(cwd)
    if own_path is not None:
        sys.path[1:1 + len(own_path)] = python_path(env, cwd)
    sys.argv[:] = ["-c", *args]
    main = sys.modules["__main__"]
    for name in [n for n in vars(main) if n not in ("__name__", "__doc__", "__package__",
                                                    "__loader__", "__spec__",
                                                    "__annotations__", "__builtins__")]:
        delattr(main, name)
    return code


exec(compile(_hutch_zygote(), "<string>", "exec"))
