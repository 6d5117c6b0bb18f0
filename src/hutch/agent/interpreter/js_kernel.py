"""The JavaScript kernel: a Jupyter kernel whose cells run in one long-lived Node.js process.

Launched as ``kernelspecs.LAUNCH`` with ``--hutch-kernel=`` naming :class:`JavaScriptKernel`
(``python3 -m hutch.agent.interpreter.js_kernel -f CONNECTION_FILE`` runs it too, without
the launcher's IOPub change).
The kernel is the Jupyter side (ipykernel's messaging, on the template's Python); the
language side is ``node node_repl.js`` next to this file, started once and kept, so variables,
functions, required modules, ``process.chdir`` and ``process.env`` carry over between cells.

The two talk JSON lines over a Unix socket (a request per cell, a reply per cell, display
messages in between). Node's real stdout and stderr are pipes read as data arrives, so what
user code prints (``console.log``, child processes) becomes ``stream`` messages while the cell
still runs; before a reply is handled the pipes are drained, so a cell's output always precedes
its result and its idle status.

Interrupts: SIGINT reaches this process, and node too when the whole process group is
signalled (as Jupyter's kernel manager and hutch's interpreter do; a lone SIGINT to this
process is handled as well).
Node ends the cell itself: a synchronous loop is stopped by V8 (the cell runs with
``breakOnSigint``), a pending ``await`` is abandoned; the cell fails with ``Interrupted`` and
the state is kept. Node must get one SIGINT, not two (right after a ``breakOnSigint`` run a
second one can kill it or end the next cell), so the kernel passes the signal on only if the
cell has not ended :data:`FORWARD_AFTER` seconds later. After :data:`CHILDREN_AFTER` seconds
the processes node started and that share its process group (the child an ``execSync`` waits
for, say) get SIGINT, as from a terminal's Ctrl-C. After :data:`RESTART_AFTER` seconds (code
that spins after its first ``await`` or in a callback: JavaScript cannot be interrupted there)
node and those processes are killed and a new node is started, which the error says: the state
is lost.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ipykernel.kernelbase import Kernel

HERE = Path(__file__).resolve().parent
REPL = HERE / "node_repl.js"
#: The directory holding the ``hutch`` package: the kernel spec puts it on PYTHONPATH for us,
#: and it is no business of the user's programs.
LIB = str(HERE.parent.parent.parent)
#: Seconds after an interrupt before node gets SIGINT from us, before its child processes do,
#: and before it is replaced (well within the interpreter's grace of 5 s).
FORWARD_AFTER = 0.5
CHILDREN_AFTER = 1.5
RESTART_AFTER = 3.0
#: How long node may take to start and connect.
CONNECT_TIMEOUT = 30.0
CHUNK = 65536

RESTARTED = ("the Node.js process did not stop when interrupted (code that never yields, such "
             "as a loop after an await or in a callback) and was restarted with the processes "
             "it had started: variables, functions and modules from earlier cells are gone")


def node_executable() -> Optional[str]:
    return shutil.which("node") or shutil.which("nodejs")


def descendants(root: int) -> List[int]:
    """The processes ``root`` started, directly or not, that stayed in its process group (not
    the detached ones), read from /proc; [] where there is none."""
    try:
        pgid = os.getpgid(root)
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    children: Dict[int, List[int]] = {}
    for name in entries:
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            # The command name (2nd field) may hold spaces and parentheses: skip past it.
            fields = data[data.rindex(b")") + 2:].split()
            ppid, pgrp = int(fields[1]), int(fields[2])
        except (OSError, ValueError, IndexError):
            continue
        if pgrp == pgid:
            children.setdefault(ppid, []).append(int(name))
    found: List[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def signal_all(pids: List[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


class Node:
    """One node process running node_repl.js: its output pipes and its request socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_output: Callable[[str, str], None],
                 on_message: Callable[["Node", Dict[str, Any]], None],
                 on_exit: Callable[["Node"], None]) -> None:
        self.loop = loop
        self.on_output = on_output
        self.on_message = on_message
        self.on_exit = on_exit
        self.proc: Optional[subprocess.Popen] = None
        self.conn: Optional[socket.socket] = None
        self.outputs: Dict[int, tuple] = {}   # fd -> (stream name, incremental decoder)
        self.buffer = b""
        self.closed = False
        self.version = ""

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    async def start(self, cwd: str, env: Dict[str, str]) -> None:
        exe = node_executable()
        if exe is None:
            raise RuntimeError("Node.js (node) is not installed in this sandbox")
        # The socket lives in a private directory, removed as soon as node has connected.
        work = tempfile.mkdtemp(prefix="hutch-js-")
        path = os.path.join(work, "channel")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(1)
            listener.setblocking(False)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            try:
                self.proc = subprocess.Popen(
                    [exe, str(REPL), path], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=out_w, stderr=err_w, close_fds=True)
            except BaseException:
                for fd in (out_r, err_r):
                    os.close(fd)
                raise
            finally:
                os.close(out_w)
                os.close(err_w)
            for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
                os.set_blocking(fd, False)
                self.outputs[fd] = (name, codecs.getincrementaldecoder("utf-8")("replace"))
                self.loop.add_reader(fd, self._read_output, fd)
            accept = asyncio.ensure_future(self.loop.sock_accept(listener))
            deadline = self.loop.time() + CONNECT_TIMEOUT
            while not accept.done():
                await asyncio.wait({accept}, timeout=0.05)
                if not accept.done() and (self.proc.poll() is not None
                                          or self.loop.time() > deadline):
                    accept.cancel()
                    self.drain()
                    raise RuntimeError(f"node did not start (exit status {self.proc.poll()})")
            self.conn, _ = accept.result()
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()
            shutil.rmtree(work, ignore_errors=True)
        self.conn.setblocking(False)
        self.loop.add_reader(self.conn.fileno(), self._read_channel)

    def send(self, msg: Dict[str, Any]) -> None:
        """Send a request without waiting: a node that is busy and not reading must not block
        the event loop, or an interrupt could not be handled. A failed send shows as the
        socket's end (node gone)."""
        data = (json.dumps(msg) + "\n").encode()
        task = asyncio.ensure_future(self.loop.sock_sendall(self.conn, data))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # -- reading ---------------------------------------------------------------------------

    def _read_output(self, fd: int) -> None:
        self._read_fd(fd, once=True)

    def _read_fd(self, fd: int, once: bool) -> None:
        entry = self.outputs.get(fd)
        if entry is None:
            return
        name, decoder = entry
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                text = decoder.decode(b"", final=True)
                if text:
                    self.on_output(name, text)
                self.loop.remove_reader(fd)
                del self.outputs[fd]
                os.close(fd)
                return
            text = decoder.decode(data)
            if text:
                self.on_output(name, text)
            if once:
                return

    def drain(self) -> None:
        """Forward everything already written to node's stdout and stderr."""
        for fd in list(self.outputs):
            self._read_fd(fd, once=False)

    def _read_channel(self) -> None:
        try:
            data = self.conn.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.conn.fileno())
            self.drain()
            if not self.closed:
                self.on_exit(self)
            return
        self.buffer += data
        if b"\n" not in self.buffer:
            return
        *lines, self.buffer = self.buffer.split(b"\n")
        # Output node wrote before these messages is in the pipes already: forward it first.
        self.drain()
        for line in lines:
            if line.strip():
                msg = json.loads(line)
                if msg.get("type") == "ready":
                    self.version = str(msg.get("version", ""))
                self.on_message(self, msg)

    # -- ending ----------------------------------------------------------------------------

    def exit_status(self) -> Optional[int]:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Kill node (if still running) and let go of its pipes and socket."""
        if self.closed:
            return
        self.closed = True
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
        if self.conn is not None:
            try:
                self.loop.remove_reader(self.conn.fileno())
            except (ValueError, OSError):
                pass
            self.conn.close()
        self.drain()
        for fd in list(self.outputs):
            self.loop.remove_reader(fd)
            os.close(fd)
        self.outputs.clear()


class Cell:
    """The execution in progress: its id, the node it was sent to and its reply to come."""

    def __init__(self, cell_id: int, node: Node, future: "asyncio.Future") -> None:
        self.id = cell_id
        self.node = node
        self.future = future
        self.interrupted = False


class JavaScriptKernel(Kernel):
    implementation = "hutch-javascript"
    implementation_version = "1.0"
    language = "javascript"
    banner = "JavaScript (Node.js)"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._cwd = os.getcwd()
        self._node: Optional[Node] = None
        self._starting: Optional[asyncio.Future] = None
        self._cell: Optional[Cell] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._parent: Dict[str, Any] = {}
        self._version = ""
        self._next_id = 0
        #: Said on stderr at the start of the next cell: what happened to node between cells.
        self._note: Optional[str] = None

    @property
    def language_info(self) -> Dict[str, Any]:
        return {"name": "javascript", "version": self._version,
                "mimetype": "application/javascript", "file_extension": ".js",
                "codemirror_mode": "javascript", "pygments_lexer": "javascript"}

    # -- node's lifetime -------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        # Node starts while the client is still connecting, so the first cell finds it warm.
        self.io_loop.add_callback(self._start_soon)

    def _start_soon(self) -> None:
        fut = self._ensure_node()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _ensure_node(self) -> "asyncio.Future":
        if self._node is not None and not self._node.closed:
            done = asyncio.get_event_loop().create_future()
            done.set_result(self._node)
            return done
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._start_node())
        return self._starting

    async def _start_node(self) -> Node:
        self._loop = asyncio.get_running_loop()
        env = dict(os.environ)
        if env.get("PYTHONPATH") == LIB:
            del env["PYTHONPATH"]
        node = Node(self._loop, self._on_output, self._on_message, self._on_exit)
        await node.start(self._cwd, env)
        self._node = node
        return node

    def _on_output(self, name: str, text: str) -> None:
        self._stream(name, text)

    def _on_message(self, node: Node, msg: Dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "ready":
            self._version = node.version
        elif kind == "display":
            if self.session is not None:
                self.session.send(self.iopub_socket, "display_data",
                                  {"data": msg.get("data") or {},
                                   "metadata": msg.get("metadata") or {}, "transient": {}},
                                  parent=self._parent, ident=self._topic("display_data"))
        elif kind == "reply":
            cell = self._cell
            if cell is not None and cell.node is node and cell.id == msg.get("id") \
                    and not cell.future.done():
                cell.future.set_result(msg)

    def _on_exit(self, node: Node) -> None:
        status = node.exit_status()
        node.close()
        if self._node is node:
            self._node = None
        what = f"the Node.js process exited (status {status})"
        cell = self._cell
        if cell is not None and cell.node is node and not cell.future.done():
            cell.future.set_result({
                "status": "error", "ename": "NodeExited",
                "evalue": f"{what} while running this cell; the next cell starts a new one, "
                          "without the earlier variables, functions and modules",
                "traceback": []})
        else:
            self._note = f"[{what}; this cell runs in a new one, earlier state is gone]\n"

    def _stream(self, name: str, text: str) -> None:
        if text and self.session is not None:
            self.session.send(self.iopub_socket, "stream", {"name": name, "text": text},
                              parent=self._parent, ident=self._topic("stream"))

    # -- interrupts ------------------------------------------------------------------------

    def pre_handler_hook(self) -> None:
        # Instead of KeyboardInterrupt (which would land anywhere in the event loop), an
        # interrupt is an event the loop handles.
        self.saved_sigint_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def post_handler_hook(self) -> None:
        signal.signal(signal.SIGINT, self.saved_sigint_handler)

    def _on_sigint(self, signum, frame) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._interrupt)

    def _interrupt(self) -> None:
        cell = self._cell
        if cell is None or cell.future.done() or cell.interrupted:
            return
        cell.interrupted = True
        self._loop.call_later(FORWARD_AFTER, self._interrupt_node, cell)
        self._loop.call_later(CHILDREN_AFTER, self._interrupt_children, cell)
        self._loop.call_later(RESTART_AFTER, self._abandon, cell)

    def _interrupt_node(self, cell: Cell) -> None:
        if not cell.future.done() and cell.node.pid is not None:
            signal_all([cell.node.pid], signal.SIGINT)

    def _interrupt_children(self, cell: Cell) -> None:
        if not cell.future.done() and cell.node.pid is not None:
            signal_all(descendants(cell.node.pid), signal.SIGINT)

    def _abandon(self, cell: Cell) -> None:
        if cell.future.done():
            return
        node = cell.node
        if self._node is node:
            self._node = None
        # Once node is gone its children are init's and can no longer be told from others.
        children = descendants(node.pid) if node.pid is not None else []
        node.close()
        signal_all(children, signal.SIGKILL)
        self._stream("stderr", f"[{RESTARTED}]\n")
        self._note = ("[the Node.js process was restarted after an interrupt it could not "
                      "stop: variables, functions and modules from earlier cells are gone]\n")
        cell.future.set_result({"status": "error", "ename": "Interrupted",
                                "evalue": f"execution was interrupted; {RESTARTED}",
                                "traceback": []})
        self._start_soon()

    # -- requests --------------------------------------------------------------------------

    async def do_execute(self, code, silent, store_history=True, user_expressions=None,
                         allow_stdin=False, *, cell_meta=None, cell_id=None):
        self._loop = asyncio.get_running_loop()
        self._parent = self.get_parent("shell") or {}
        if self._note and not silent:
            self._stream("stderr", self._note)
        self._note = None
        if not code.strip():
            return self._ok()
        try:
            node = await asyncio.shield(self._ensure_node())
        except Exception as exc:  # noqa: BLE001 - reported as the cell's error
            return self._error("KernelStartError", f"Node.js did not start: {exc}", [], silent)
        self._next_id += 1
        cell = Cell(self._next_id, node, self._loop.create_future())
        self._cell = cell
        try:
            node.send({"type": "execute", "id": cell.id, "code": code, "silent": bool(silent),
                       "count": self.execution_count})
            reply = await cell.future
        finally:
            self._cell = None
        if reply.get("status") == "ok":
            data = reply.get("data")
            if data and not silent and self.session is not None:
                self.session.send(self.iopub_socket, "execute_result",
                                  {"execution_count": self.execution_count, "data": data,
                                   "metadata": {}},
                                  parent=self._parent, ident=self._topic("execute_result"))
            return self._ok()
        return self._error(str(reply.get("ename", "Error")), str(reply.get("evalue", "")),
                           [str(x) for x in reply.get("traceback") or []], silent)

    def _ok(self) -> Dict[str, Any]:
        return {"status": "ok", "execution_count": self.execution_count, "payload": [],
                "user_expressions": {}}

    def _error(self, ename: str, evalue: str, traceback: List[str],
               silent: bool) -> Dict[str, Any]:
        content = {"ename": ename, "evalue": evalue, "traceback": traceback}
        if not silent and self.session is not None:
            self.session.send(self.iopub_socket, "error", content, parent=self._parent,
                              ident=self._topic("error"))
        return {"status": "error", "execution_count": self.execution_count, **content}

    async def do_shutdown(self, restart):
        if self._node is not None:
            self._node.close()
            self._node = None
        return {"status": "ok", "restart": restart}


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=JavaScriptKernel)
