# The Python kernel's main script (kernelspecs.LAUNCH executes it, in the kernel's own process,
# on the template's Python, after importing ipykernel): ipykernel's own kernel, with two costs
# that buy the interpreter nothing taken out before it starts. Each change first checks that
# ipykernel still has the shape it expects and otherwise leaves it as it is, so another
# ipykernel version runs unchanged rather than broken. It all happens inside a function, so
# the kernel's __main__ gets no names of ours but that one.
def _hutch_launch():
    from ipykernel.kernelapp import IPKernelApp

    # Subshells (ipykernel 7) put a thread of their own in front of the shell channel: each
    # request is received there and handed to the main thread over an in-process socket, and
    # its reply handed back, two thread switches per request. No client of the interpreter
    # asks for a subshell, and without the thread the kernel reads the shell channel on its
    # main thread, as ipykernel 6 did (the kernel reports no "kernel subshells" feature then).
    init_control = getattr(IPKernelApp, "init_control", None)
    if init_control is not None and hasattr(IPKernelApp, "shell_channel_thread"):
        def init_control_without_subshells(self, context):
            init_control(self, context)
            self.shell_channel_thread = None
        IPKernelApp.init_control = init_control_without_subshells

    _flush_only_what_was_written()
    IPKernelApp.launch_instance()


def _flush_only_what_was_written():
    # sys.stdout.flush() in the kernel is a round trip to the IOPub thread (schedule the send,
    # then wait for that thread to get to it), and ipykernel flushes both streams three times
    # per cell, nearly always with nothing to send: six thread hand-offs, a third of a small
    # cell's time in the kernel. A flush with nothing buffered can return at once, with one
    # catch: output of subprocesses reaches a stream through a pipe (fd 1 and 2 are pipes a
    # thread of the stream reads), and bytes that thread has read but not yet buffered would
    # be missed. So that thread reads only while holding a lock of the stream's, and only
    # once the pipe is readable (it waits in poll(), holding nothing), and a flush takes
    # the same lock and first moves whatever the pipe holds into the buffer itself: nothing
    # is ever between the pipe and the buffer while a flush looks. (ipykernel's own flush
    # only gave that thread time to catch up, and lost such output now and then.)
    import os
    import select
    import sys
    import threading

    try:
        from ipykernel import iostream
        from ipykernel.iostream import OutStream
    except ImportError:
        return
    init = OutStream.__init__
    watch = getattr(OutStream, "_watch_pipe_fd", None)
    names = set(getattr(getattr(init, "__code__", None), "co_names", ()))
    names |= set(getattr(getattr(watch, "__code__", None), "co_names", ()))
    if watch is None or not {"_buffers", "_buffer_lock", "_flush_pending", "_fid", "_master_pid",
                             "_should_watch", "_original_stdstream_copy", "echo"} <= names:
        return
    # More than a pipe holds (64 KiB), so one read empties it.
    size = max(getattr(iostream, "PIPE_BUFFER_SIZE", 0), 1 << 17)
    flush = OutStream.flush

    def __init__(self, *args, **kwargs):
        self._hutch_pipe_lock = threading.Lock()     # before __init__ starts the thread
        init(self, *args, **kwargs)

    def transfer(self):
        """Move what the pipe holds into the buffer (the caller holds the pipe lock);
        False once the pipe is closed."""
        try:
            data = os.read(self._fid, size)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.write(data.decode(errors="replace"))
        os.write(self._original_stdstream_copy, data)
        return True

    def _watch_pipe_fd(self):
        if getattr(self, "_fid", None) is None:
            return
        try:
            os.set_blocking(self._fid, False)
            readable = select.poll()
            readable.register(self._fid, select.POLLIN)
            while True:
                readable.poll()
                if not self._should_watch:
                    return
                with self._hutch_pipe_lock:
                    if not transfer(self):
                        return
        except Exception:
            self._exc = sys.exc_info()

    def flush_if_written(self):
        lock = getattr(self, "_hutch_pipe_lock", None)
        # In a forked child (multiprocessing) the pipe is the parent's and the lock a copy
        # that may have been taken when it forked: ipykernel's own flush there.
        if lock is not None and self.echo is None and getattr(self, "_master_pid", None) == os.getpid():
            with lock:
                # What the pipe holds now (a writer that never stops is not waited out).
                fid = getattr(self, "_fid", None)
                if fid is not None and getattr(self, "_should_watch", False):
                    readable = select.poll()
                    readable.register(fid, select.POLLIN)
                    if readable.poll(0):
                        transfer(self)
                with self._buffer_lock:
                    idle = not self._flush_pending and not self._buffers
            if idle:
                return
        flush(self)

    flush_if_written.__doc__ = flush.__doc__
    OutStream.__init__ = __init__
    OutStream._watch_pipe_fd = _watch_pipe_fd
    OutStream.flush = flush_if_written


_hutch_launch()
