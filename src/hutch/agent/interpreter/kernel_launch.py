# The kernels' main script (kernelspecs.LAUNCH executes it, in the kernel's own process, on
# the template's Python, after importing ipykernel): ipykernel's own kernel, its IOPub made to
# lose no message, and with costs that buy the interpreter nothing taken out before it starts
# (those for IPython's kernel only; bash's and JavaScript's get the IOPub changes alone).
# Each change first checks that ipykernel (or IPython) still has the shape it expects and
# otherwise leaves it as it is, so another version runs unchanged rather than broken. It all
# happens inside functions, and the user's namespace (IPython's own __main__) sees none of
# their names.
#
# A warm `1+1` cost the kernel's main thread 3.5 ms of CPU, nearly all of it Python, on a
# shared two-core host before the changes below; the comment that opens each function says
# what it took off.
def _hutch_launch():
    import sys

    from ipykernel.kernelapp import IPKernelApp

    _publish_without_loss(IPKernelApp)
    _publish_from_the_sender()
    kernel_class = _named_kernel_class(sys.argv)
    if kernel_class is not None:
        # Another language's kernel built on ipykernel (bash_kernel, the JavaScript kernel)
        # needs IOPub to lose nothing as much as IPython's does, and its sends made where the
        # output is made, so that a kernel waiting for room to send stops reading its
        # language's output (rather than queueing it in memory for the IOPub thread). The
        # changes below were measured on IPython's kernel alone and stay with it.
        _send_to_the_shell_at_once()
        IPKernelApp.launch_instance(kernel_class=kernel_class)
        return

    # Subshells (ipykernel 7) put a thread of their own in front of the shell channel: each
    # request is received there and handed to the main thread over an in-process socket, and
    # its reply handed back, two thread switches per request. No client of the interpreter
    # asks for a subshell, and without the thread the kernel reads the shell channel on its
    # main thread, as ipykernel 6 did (the kernel reports no "kernel subshells" feature then).
    # In the thread's place goes a stand-in that is false where ipykernel tests for the
    # thread, and names the main thread where a top-level `await` cell asks which thread
    # requests run on (with None there, such a cell failed before it ran).
    import threading

    from ipykernel.kernelbase import Kernel

    init_control = getattr(IPKernelApp, "init_control", None)
    if (init_control is not None and hasattr(IPKernelApp, "shell_channel_thread")
            and isinstance(getattr(Kernel, "_supports_kernel_subshells", None), property)):
        class NoShellChannelThread:
            parent_thread = threading.main_thread()

            def __bool__(self):
                return False

        def init_control_without_subshells(self, context):
            init_control(self, context)
            self.shell_channel_thread = NoShellChannelThread()

        IPKernelApp.init_control = init_control_without_subshells
        # ipykernel tests `is not None` here, and truth everywhere else.
        Kernel._supports_kernel_subshells = property(lambda self: bool(self.shell_channel_thread))

    _flush_only_what_was_written()
    _reply_at_once(IPKernelApp)
    _log_only_what_is_kept(IPKernelApp)
    _prepare_each_cell_once()
    _set_handlers_without_enums()
    _pack_with_one_encoder(IPKernelApp)
    _keep_no_copy_of_outputs(IPKernelApp)
    IPKernelApp.launch_instance()


def _named_kernel_class(argv):
    # `--hutch-kernel=module:Class` (kernelspecs.py) picks the kernel to launch instead of
    # IPython's; it is taken out of argv before ipykernel reads its own options.
    import importlib

    for i, arg in enumerate(argv):
        if arg.startswith("--hutch-kernel="):
            del argv[i]
            module, _, name = arg.partition("=")[2].partition(":")
            return getattr(importlib.import_module(module), name)
    return None


def _send_to_the_shell_at_once():
    # bash_kernel drives bash through pexpect, whose every send first sleeps 50 ms (so that
    # a password prompt has time to turn echo off), and it sends a cell line by line, waiting
    # for bash's prompt after each: a one-line cell took 50 ms more than it needed, and the
    # kernel's start (40 lines of set-up) 2.3 s. The prompt is what keeps the two in step;
    # the kernel turns echo off when it spawns bash, before any send. Spawns made here
    # (bash_kernel's; user code in a bash kernel is bash) send at once.
    try:
        from pexpect import spawn
    except ImportError:
        return
    init = spawn.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if getattr(self, "delaybeforesend", None) == 0.05:
            self.delaybeforesend = None

    spawn.__init__ = __init__


def _publish_without_loss(IPKernelApp):
    # IOPub is a ZeroMQ publisher, and a publisher silently drops each message for a
    # subscriber that is a high-water mark (1000 messages) behind. The interpreter is that
    # subscriber, and it falls that far behind whenever a cell outputs faster than the
    # client reads (the interpreter stops reading a kernel past zmtp.BACKLOG of unread
    # messages) or faster than a sandbox short of CPU relays: results went missing from the
    # middle of a cell's output, and when the `idle` that ends a cell was among them, the
    # cell never ended. With XPUB_NODROP a send waits for room instead: a kernel outputting
    # faster than its output is read slows to the reader's pace, and its queue stays at
    # the mark rather than growing. (A send is not cut short by an interrupt: the main
    # thread's sends defer SIGINT until the message is out, see _whole_message_sender, and
    # the interpreter reads on after interrupting.)
    try:
        import zmq
    except ImportError:
        return
    bind = getattr(IPKernelApp, "_bind_socket", None)
    nodrop = getattr(zmq, "XPUB_NODROP", None)
    if bind is None or nodrop is None:
        return

    def _bind_socket(self, s, port):
        if s.getsockopt(zmq.TYPE) == zmq.XPUB:
            s.setsockopt(nodrop, 1)
        return bind(self, s, port)

    IPKernelApp._bind_socket = _bind_socket


def _reply_at_once(IPKernelApp):
    # ipykernel sends its shell replies through a ZMQStream, which queues the message, asks
    # the event loop to watch the socket for room to write, and sends it when the loop (or
    # the flush ipykernel makes after publishing `idle`) gets to it: several loop callbacks
    # and socket polls per reply, and the reply left only after `idle`. The main thread
    # sends it on the socket at once instead (a ROUTER socket never blocks a send), then lets
    # the stream look at the socket again, as it does after each of its own sends (a send can
    # take the wake-up that would have told it a request is waiting). Anything sent from
    # another thread, with a callback, or while the stream still has a queue goes the usual
    # way. About 0.3 ms of a small cell's round trip, a tenth of the kernel's CPU.
    import threading

    whole = _whole_message_sender()
    frames = _frame_sender()

    def reply_at_once(self):
        if getattr(self, "shell_channel_thread", None):
            return                      # subshells: replies come from the shell channel thread
        stream = getattr(getattr(self, "kernel", None), "shell_stream", None)
        if not all(hasattr(stream, name) for name in (
                "socket", "sending", "_rebuild_io_state", "send_multipart")):
            return
        queued = stream.send_multipart
        loop_thread = threading.get_ident()     # the main thread, which runs the shell loop

        def send_multipart(msg, flags=0, copy=True, track=False, callback=None, **kwargs):
            socket = stream.socket
            if (threading.get_ident() != loop_thread or callback is not None or kwargs
                    or socket is None or stream.sending()):
                return queued(msg, flags=flags, copy=copy, track=track, callback=callback,
                              **kwargs)
            whole(frames, socket, msg, flags, copy, track)
            stream._rebuild_io_state()

        send_multipart.__doc__ = getattr(queued, "__doc__", None)
        stream.send_multipart = send_multipart

    _after_init_kernel(IPKernelApp, reply_at_once)


def _after_init_kernel(IPKernelApp, step):
    # Several changes need the kernel that init_kernel makes: each runs as a step after it,
    # in the order they were added. An ipykernel without init_kernel gets none of them.
    init_kernel = getattr(IPKernelApp, "init_kernel", None)
    if init_kernel is None:
        return

    def init_kernel_then(self, *args, **kwargs):
        init_kernel(self, *args, **kwargs)
        step(self)

    IPKernelApp.init_kernel = init_kernel_then


def _prepare_each_cell_once():
    # For each cell ipykernel transforms the text (IPython's %magic, !command and ? syntax),
    # compiles the result to see whether it needs an event loop (top-level await), and reads
    # run_cell's signature with inspect; then IPython's run_cell transforms and compiles the
    # same text again. Together about a fifth of the kernel's CPU for a small cell (0.25 ms).
    # The transform ipykernel made is handed to the one call that repeats it: IPython's
    # _run_cell asking for the very same text object within the same request (same parent
    # message), right after ipykernel's do_execute asked; nothing runs in between, and any
    # other call to transform_cell works as before. Whether a text needs an event loop
    # depends on the text alone: the answer for the last text asked about is kept. The
    # signature check is kept per method.
    import inspect
    import sys

    try:
        from ipykernel import ipkernel
        from IPython.core import interactiveshell
        from IPython.core.interactiveshell import InteractiveShell
    except ImportError:
        return

    transform = getattr(InteractiveShell, "transform_cell", None)
    asker = getattr(getattr(getattr(ipkernel, "IPythonKernel", None), "do_execute", None),
                    "__code__", None)
    repeater = getattr(getattr(InteractiveShell, "_run_cell", None), "__code__", None)
    if transform is not None and asker is not None and repeater is not None:
        kept = []       # (text, parent message, transformed) from ipykernel's call

        def transform_cell(self, raw_cell):
            caller = sys._getframe(1).f_code
            parent = getattr(self, "parent_header", None)
            if caller is repeater and kept and kept[0] is raw_cell and kept[1] is parent:
                cell = kept[2]
                kept.clear()
                return cell
            kept.clear()
            cell = transform(self, raw_cell)
            if caller is asker:
                kept.extend((raw_cell, parent, cell))
            return cell

        transform_cell.__doc__ = transform.__doc__
        InteractiveShell.transform_cell = transform_cell

    should_be_async = getattr(interactiveshell, "_should_be_async", None)
    if should_be_async is not None:
        last = []       # (text, answer)

        def _should_be_async(cell):
            if last and last[0] == cell:
                return last[1]
            answer = should_be_async(cell)
            last[:] = (cell, answer)
            return answer

        interactiveshell._should_be_async = _should_be_async

    accepts = getattr(ipkernel, "_accepts_parameters", None)
    if accepts is not None:
        known = {}

        def _accepts_parameters(meth, param_names):
            # Bound methods only: their function is the class's, so the cache stays small.
            if not inspect.ismethod(meth):
                return accepts(meth, param_names)
            key = (meth.__func__, tuple(param_names))
            if key not in known:
                known[key] = accepts(meth, param_names)
            return dict(known[key])

        ipkernel._accepts_parameters = _accepts_parameters


def _log_only_what_is_kept(IPKernelApp):
    # The kernel's logger is left at DEBUG with its handler at the app's level (WARNING), so
    # each of the four debug lines ipykernel logs per request built a record (walking the
    # stack for its caller) that the handler then dropped: 0.15 ms of CPU per cell. The
    # logger is set to the lowest level any handler it reaches keeps (so --debug, which
    # lowers the handler, still logs everything); a handler that keeps everything, or none
    # at all, leaves it as it is.
    import logging

    start = getattr(IPKernelApp, "start", None)
    if start is None:
        return

    def handlers(log):
        while log is not None:
            yield from log.handlers
            log = log.parent if log.propagate else None

    def start_logging_what_is_kept(self, *args, **kwargs):
        log = getattr(self, "log", None)
        if isinstance(log, logging.Logger):
            levels = [h.level for h in handlers(log)]
            if levels and min(levels) > log.level > logging.NOTSET:
                log.setLevel(min(levels))
        return start(self, *args, **kwargs)

    IPKernelApp.start = start_logging_what_is_kept


def _publish_from_the_sender():
    # ipykernel hands every IOPub message (status, execute_input, results, displays, errors)
    # to its IOPub thread and returns: the thread is woken through an in-process socket and
    # then needs the GIL, which the main thread holds until it next blocks, so each message
    # left up to a millisecond after it was made, and the hand-off cost more than the send
    # itself (a small cell's round trip was about 1 ms longer, its CPU 1 ms more). Here the
    # thread that makes a message sends it (see _whole_message_sender), under a lock that
    # every use of the socket takes (a ZeroMQ socket must never be used by two threads at
    # once). The IOPub thread stays for all else it does: stream flushes, the pipe from
    # forked subprocesses, and reading subscriptions, which it now does under the same lock
    # (told to look after any send, as a send may have taken the socket's wake-up for it).
    # Ordering is unchanged: ipykernel flushes stdout and stderr (waiting for the IOPub
    # thread) before it sends anything that must follow them. A forked child, or a kernel
    # whose IOPub thread has stopped, sends the way ipykernel does.
    import os
    import threading

    try:
        import zmq
        from ipykernel.iostream import IOPubThread
    except ImportError:
        return
    init = getattr(IOPubThread, "__init__", None)
    setup = getattr(IOPubThread, "_setup_xpub_listener", None)
    send = getattr(IOPubThread, "send_multipart", None)
    really_send = getattr(IOPubThread, "_really_send", None)
    handle = getattr(IOPubThread, "_handle_subscription", None)
    names = set(getattr(getattr(init, "__code__", None), "co_names", ()))
    if None in (setup, send, really_send, handle) or not {
            "_setup_xpub_listener", "io_loop", "_master_pid", "thread", "socket"} <= names:
        return

    whole = _whole_message_sender()
    frames = _frame_sender()

    def __init__(self, *args, **kwargs):
        # Before __init__, which sets up the subscription reader.
        self._hutch_socket_lock = threading.RLock()
        init(self, *args, **kwargs)

    def mine(self):
        """This process's own IOPub thread is running (not a forked child, not stopped)."""
        return (os.getpid() == self._master_pid and self.thread.is_alive()
                and getattr(self, "_hutch_socket_lock", None) is not None)

    def read_subscriptions(self, *_):
        lock = getattr(self, "_hutch_socket_lock", None)
        if lock is None or os.getpid() != self._master_pid:
            return
        with lock:
            socket = self.socket
            while socket is not None and socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._handle_subscription(socket.recv_multipart(zmq.NOBLOCK))

    def _setup_xpub_listener(self):
        socket = self.socket
        if not hasattr(socket, "getsockopt") or socket.getsockopt(zmq.TYPE) != zmq.XPUB:
            return setup(self)
        self.io_loop.add_handler(socket.getsockopt(zmq.FD),
                                 lambda *_: read_subscriptions(self), self.io_loop.READ)

    def _really_send(self, msg, *args, **kwargs):
        lock = getattr(self, "_hutch_socket_lock", None)
        if lock is None or os.getpid() != self._master_pid:
            return really_send(self, msg, *args, **kwargs)
        with lock:
            socket = self.socket
            if socket is None or args or not set(kwargs) <= {"flags", "copy", "track"}:
                whole(really_send, self, msg, *args, **kwargs)
            else:
                try:
                    whole(frames, socket, msg, **kwargs)
                except zmq.ZMQError as e:
                    if e.errno != zmq.ENOTSOCK:     # closed as the kernel stops, as ipykernel
                        raise
            try:
                waiting = self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN
            except (AttributeError, zmq.ZMQError):     # closed as the kernel stops
                waiting = False
        if waiting:
            self.io_loop.add_callback(read_subscriptions, self)

    def send_multipart(self, *args, **kwargs):
        if not mine(self):
            return send(self, *args, **kwargs)
        _really_send(self, *args, **kwargs)

    send_multipart.__doc__ = send.__doc__
    IOPubThread.__init__ = __init__
    IOPubThread._setup_xpub_listener = _setup_xpub_listener
    IOPubThread._really_send = _really_send
    IOPubThread.send_multipart = send_multipart


def _whole_message_sender():
    # A message is several ZeroMQ frames, and a KeyboardInterrupt (how an interrupt of the
    # running cell arrives in the main thread) raised between two of them would leave the
    # message cut short: ZeroMQ joins the next message sent to it, and the client drops both.
    # ipykernel's own sends only handed the message to another thread, which no interrupt
    # reaches; a send made by the main thread itself is called through this: while SIGINT
    # has a Python handler there (during a request, the one raising KeyboardInterrupt), the
    # handler is swapped for one that notes the signal, and the real one gets it once the
    # message is out. (The handlers are read and set with _signal: see
    # _set_handlers_without_enums.)
    import signal
    import threading

    import _signal

    main = threading.main_thread().ident
    sigint = int(signal.SIGINT)

    def whole(send, *args, **kwargs):
        if threading.get_ident() != main:
            return send(*args, **kwargs)
        handler = _signal.getsignal(sigint)
        if not callable(handler):
            return send(*args, **kwargs)
        noted = []
        _signal.signal(sigint, lambda signum, frame: noted.append(frame))
        try:
            return send(*args, **kwargs)
        finally:
            _signal.signal(sigint, handler)
            if noted:
                handler(sigint, noted[0])

    return whole


def _frame_sender():
    # pyzmq's send_multipart checks each frame's type, then sends it through two layers of
    # Python with the flags combined as enums: 14.7 microseconds for a message's seven frames
    # in a sandbox, against 3.3 handing them straight to the socket's own send. A message of
    # bytes only (ipykernel's all are, but those carrying binary buffers), untracked, on a
    # pyzmq socket, goes that way; anything else through send_multipart.
    import zmq

    socket_type = getattr(getattr(zmq, "backend", None), "Socket", None)
    send_frame = getattr(socket_type, "send", None)
    more = int(zmq.SNDMORE)

    def frames(socket, parts, flags=0, copy=True, track=False):
        if track or send_frame is None or not isinstance(socket, socket_type) or not parts:
            return socket.send_multipart(parts, flags=flags, copy=copy, track=track)
        for part in parts:
            if type(part) is not bytes:
                return socket.send_multipart(parts, flags=flags, copy=copy, track=track)
        flags = int(flags)
        last = len(parts) - 1
        for i in range(last):
            send_frame(socket, parts[i], more | flags, copy, False)
        send_frame(socket, parts[last], flags, copy, False)

    return frames


def _pack_with_one_encoder(IPKernelApp):
    # jupyter_client's packer calls json.dumps with options of its own, which builds a new
    # encoder each time, for each of a message's four parts: 40 microseconds a message in a
    # sandbox, 26 with the one C encoder made here with the same options (the same bytes).
    # A part it cannot encode (NaN, an object JSON does not know) goes to the packer itself,
    # which has its own way with them.
    try:
        from json.encoder import c_make_encoder, encode_basestring
        from jupyter_client import session as jsession
    except ImportError:
        return
    json_packer = getattr(jsession, "json_packer", None)
    json_default = getattr(jsession, "json_default", None)
    if None in (c_make_encoder, json_packer, json_default):
        return
    # json.dumps(default=json_default, ensure_ascii=False, allow_nan=False), without the
    # check for circular references, which makes an encoder hold state (and a circular
    # message fails here and then in json_packer, as it did before).
    encode = c_make_encoder(None, json_default, encode_basestring, None, ": ", ", ",
                            False, False, False)

    def pack(obj):
        if type(obj) is dict:
            try:
                return "".join(encode(obj, 0)).encode("utf8", errors="surrogateescape")
            except (TypeError, ValueError, RecursionError):
                pass
        return json_packer(obj)

    def pack_with_one_encoder(self):
        session = getattr(self, "session", None)
        if getattr(session, "pack", None) is json_packer:
            session.pack = pack

    _after_init_kernel(IPKernelApp, pack_with_one_encoder)


def _keep_no_copy_of_outputs(IPKernelApp):
    # IPython 9 keeps a copy of everything each cell prints, displays and returns (for
    # %notebook), in memory and for the kernel's life, history database or not: a cell that
    # printed 20 MB left 20 MB behind. Without the database (kernelspecs.py) the kernel
    # keeps none: the copies go to a dict that stores nothing, and %notebook exports the
    # inputs alone. Out, _ and _<n> keep the values, as before.
    class NoOutputs(dict):
        def __missing__(self, key):
            return []           # appended to, then dropped

    def keep_no_outputs(self):
        history = getattr(getattr(getattr(self, "kernel", None), "shell", None),
                          "history_manager", None)
        if (history is not None and getattr(history, "enabled", True) is False
                and isinstance(getattr(history, "outputs", None), dict)):
            history.outputs = NoOutputs()

    _after_init_kernel(IPKernelApp, keep_no_outputs)


def _set_handlers_without_enums():
    # signal.signal and signal.getsignal turn the handler they return into a Handlers enum by
    # trying, and when it is a function (as default_int_handler is) failing with an
    # exception. ipykernel sets SIGINT's handler twice per request (8.4 microseconds in a
    # sandbox, 0.75 with _signal; a swap around a message took 12 against 0.6): the same call
    # in _signal, the module signal wraps, returns the handler as it is (an int for SIG_IGN
    # and SIG_DFL, which signal() takes back just as well).
    import signal

    try:
        import _signal
        from ipykernel import kernelbase
    except ImportError:
        return
    if getattr(kernelbase, "signal", None) is signal.signal:
        kernelbase.signal = _signal.signal


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
