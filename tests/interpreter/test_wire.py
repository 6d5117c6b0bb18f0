"""The interpreter's connection to its kernels (zmtp.py, client.py) and its kernel spec lookup
(kernelspecs.py), on the host, against peers written here from ZeroMQ's RFC 23 (ZMTP 3.0) and
Jupyter's messaging spec. Real kernels (libzmq) are the other end in the sandbox tests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import struct

import pytest

from hutch.agent.interpreter import kernelspecs, zmtp
from hutch.agent.interpreter.client import DELIMITER, Empty, KernelClient


# -- a ZMTP 3.0 peer, written from the RFC -------------------------------------------------------

def greeting(major: int = 3, mechanism: bytes = b"NULL") -> bytes:
    return b"\xff" + b"\0" * 8 + b"\x7f" + bytes((major, 0)) + mechanism.ljust(20, b"\0") + b"\0" * 32


def frame(body: bytes, more: bool = False, cmd: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if cmd else 0)
    if len(body) > 255:
        return bytes((flags | 2,)) + struct.pack(">Q", len(body)) + body
    return bytes((flags, len(body))) + body


def message(parts) -> bytes:
    return b"".join(frame(p, more=i < len(parts) - 1) for i, p in enumerate(parts))


def ready_command(socket_type: bytes) -> bytes:
    props = bytes((11,)) + b"Socket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return frame(bytes((5,)) + b"READY" + props, cmd=True)


async def read_frame(reader):
    flags = (await reader.readexactly(1))[0]
    if flags & 2:
        size = struct.unpack(">Q", await reader.readexactly(8))[0]
    else:
        size = (await reader.readexactly(1))[0]
    return flags, await reader.readexactly(size)


async def read_message(reader):
    parts = []
    while True:
        flags, body = await read_frame(reader)
        if flags & 4:
            continue                    # a command: not part of any message
        parts.append(body)
        if not flags & 1:
            return parts


class Listener:
    """A unix socket at ``path`` whose connections are handed to ``handler(reader, writer)``
    after the greeting and READY exchange (``peer_type`` is what it says it is)."""

    def __init__(self, path, handler, peer_type=b"ROUTER", raw=False):
        self.path, self.handler, self.peer_type, self.raw = path, handler, peer_type, raw
        self.seen_ready = []

    async def __aenter__(self):
        self.server = await asyncio.start_unix_server(self._conn, path=self.path)
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _conn(self, reader, writer):
        try:
            if self.raw:
                await self.handler(reader, writer)
                return
            writer.write(greeting())
            theirs = await reader.readexactly(64)
            assert theirs[0] == 0xFF and theirs[9] == 0x7F and theirs[10] == 3
            assert theirs[12:16] == b"NULL"
            flags, body = await read_frame(reader)
            assert flags & 4 and body[1:6] == b"READY"
            self.seen_ready.append(body)
            writer.write(ready_command(self.peer_type))
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


@pytest.fixture
def sock_dir(tmp_path_factory):
    # Unix socket paths are short: a directory of our own under /tmp.
    d = tmp_path_factory.mktemp("zmtp", numbered=True)
    return str(d)


# -- zmtp ------------------------------------------------------------------------------------------

async def test_handshake_names_our_socket_type_and_frames_both_ways(sock_dir):
    got = asyncio.get_running_loop().create_future()
    big = os.urandom(70000)

    async def peer(reader, writer):
        got.set_result(await read_message(reader))
        # One reply, its bytes trickled one at a time: frames are whole however they arrive.
        data = message([b"id", b"", big]) + message([b"second"])
        for i in range(0, len(data), 997):
            writer.write(data[i:i + 997])
            await writer.drain()
        await asyncio.sleep(0.5)

    path = os.path.join(sock_dir, "s")
    async with Listener(path, peer) as listener:
        conn = await zmtp.connect(path, "DEALER")
        conn.send([b"a", b"", b"x" * 300])
        assert await asyncio.wait_for(got, 5) == [b"a", b"", b"x" * 300]
        assert b"Socket-Type" in listener.seen_ready[0] and b"DEALER" in listener.seen_ready[0]
        assert await conn.recv(5) == [b"id", b"", big]
        assert await conn.recv(5) == [b"second"]
        conn.close()


async def test_recv_times_out_then_reports_the_closed_connection(sock_dir):
    closing = asyncio.Event()

    async def peer(reader, writer):
        writer.write(message([b"last words"]))
        await closing.wait()
        writer.close()

    path = os.path.join(sock_dir, "s")
    async with Listener(path, peer):
        conn = await zmtp.connect(path, "SUB")
        assert await conn.recv(5) == [b"last words"]
        with pytest.raises(asyncio.TimeoutError):
            await conn.recv(0.05)
        waiting = asyncio.ensure_future(conn.recv(5))
        await asyncio.sleep(0.05)
        closing.set()
        with pytest.raises(ConnectionError):
            await waiting
        assert conn.closed
        with pytest.raises(ConnectionError):
            conn.send([b"too late"])


async def test_a_ping_is_answered_with_its_context(sock_dir):
    pong = asyncio.get_running_loop().create_future()

    async def peer(reader, writer):
        writer.write(frame(bytes((4,)) + b"PING" + b"\x00\x0a" + b"ctx", cmd=True))
        flags, body = await read_frame(reader)
        pong.set_result((flags, body))

    path = os.path.join(sock_dir, "s")
    async with Listener(path, peer):
        conn = await zmtp.connect(path, "DEALER")
        flags, body = await asyncio.wait_for(pong, 5)
        assert flags & 4 and body == bytes((4,)) + b"PONG" + b"ctx"
        conn.close()


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 400 Bad Request\r\n\r\n",        # not ZeroMQ at all
    greeting(major=2),                          # too old
    greeting(mechanism=b"CURVE"),               # a security mechanism we do not speak
])
async def test_peers_we_cannot_talk_to_are_refused(sock_dir, reply):
    async def peer(reader, writer):
        writer.write(reply + b"\0" * 64)
        await asyncio.sleep(1)

    path = os.path.join(sock_dir, "s")
    async with Listener(path, peer, raw=True):
        with pytest.raises((zmtp.ProtocolError, ConnectionError)):
            await asyncio.wait_for(zmtp.connect(path, "DEALER"), 5)


async def test_an_error_command_ends_the_handshake(sock_dir):
    async def peer(reader, writer):
        writer.write(greeting())
        await reader.readexactly(64)
        writer.write(frame(bytes((5,)) + b"ERROR" + bytes((6,)) + b"denied", cmd=True))
        await asyncio.sleep(1)

    path = os.path.join(sock_dir, "s")
    async with Listener(path, peer, raw=True):
        with pytest.raises(zmtp.ProtocolError, match="denied"):
            await asyncio.wait_for(zmtp.connect(path, "DEALER"), 5)


async def test_unread_messages_pause_reading_until_drained(sock_dir, monkeypatch):
    monkeypatch.setattr(zmtp, "BACKLOG", 300_000)

    async def peer(reader, writer):
        for i in range(50):
            writer.write(message([b"%d" % i, b"y" * 100_000]))
        await writer.drain()
        await asyncio.sleep(2)

    path = os.path.join(sock_dir, "s")
    async with Listener(path, peer, peer_type=b"PUB"):
        conn = await zmtp.connect(path, "SUB")
        await asyncio.sleep(0.3)
        assert conn.pending() < 50              # reading stopped at the backlog
        for i in range(50):                     # and resumes as messages are taken: none lost
            assert (await conn.recv(5))[0] == b"%d" % i
        conn.close()


async def test_a_cancelled_recv_leaves_the_next_message_for_the_next_recv(sock_dir):
    go = asyncio.Event()

    async def peer(reader, writer):
        await go.wait()
        writer.write(message([b"kept"]))
        await asyncio.sleep(1)

    path = os.path.join(sock_dir, "s")
    async with Listener(path, peer, peer_type=b"PUB"):
        conn = await zmtp.connect(path, "SUB")
        waiting = asyncio.ensure_future(conn.recv(5))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        go.set()
        assert await conn.recv(5) == [b"kept"]
        conn.close()


# -- client ----------------------------------------------------------------------------------------

KEY = "secret-key"


def sign(parts) -> bytes:
    return hmac.new(KEY.encode(), b"".join(parts), hashlib.sha256).hexdigest().encode()


def jupyter(msg_type, content, parent=None, topic=None):
    header = {"msg_id": os.urandom(8).hex(), "msg_type": msg_type, "session": "k",
              "username": "k", "version": "5.3", "date": "2026-01-01T00:00:00Z"}
    parts = [json.dumps(header).encode(), json.dumps(parent or {}).encode(), b"{}",
             json.dumps(content).encode()]
    return ([topic] if topic else []) + [DELIMITER, sign(parts)] + parts


def parse_request(frames):
    i = frames.index(DELIMITER)
    parts = frames[i + 2:i + 6]
    assert frames[i + 1] == sign(parts), "requests are signed with the connection's key"
    return json.loads(parts[0]), json.loads(parts[3])


class FakeKernel:
    """A kernel's shell (ROUTER) and IOPub (PUB) sockets, like ipykernel's, where IOPub only
    starts reaching the client after ``lost`` kernel_info requests (a subscription that takes
    effect late, as ZeroMQ's do)."""

    def __init__(self, prefix, lost=1):
        self.prefix, self.lost = prefix, lost
        self.subscribers = []
        self.requests = []

    async def shell(self, reader, writer):
        while True:
            frames = await read_message(reader)
            header, content = parse_request(frames)
            self.requests.append((header, content))
            parent = header
            writer.write(message([b"<junk>"]))            # not a message: skipped
            reply = jupyter(header["msg_type"].replace("_request", "_reply"),
                            {"status": "ok"}, parent)
            if header["msg_type"] == "kernel_info_request" and self.lost > 0:
                self.lost -= 1
                writer.write(message(reply))
                continue
            for w in self.subscribers:
                w.write(message(jupyter("status", {"execution_state": "busy"}, parent, b"s")))
                if header["msg_type"] == "execute_request":
                    bad = jupyter("stream", {"name": "stdout", "text": "forged"}, parent, b"s")
                    bad[2] = b"0" * 64                      # a wrong signature: dropped
                    w.write(message(bad))
                    w.write(message(jupyter("stream", {"name": "stdout", "text": content["code"]},
                                            parent, b"s")))
                w.write(message(jupyter("status", {"execution_state": "idle"}, parent, b"s")))
            writer.write(message(reply))

    async def iopub(self, reader, writer):
        assert await read_message(reader) == [b"\x01"]      # subscribed to everything
        self.subscribers.append(writer)
        await asyncio.sleep(30)


async def test_the_client_waits_for_shell_and_iopub_then_executes(sock_dir):
    prefix = os.path.join(sock_dir, "k")
    info = {"transport": "ipc", "ip": prefix, "key": KEY, "signature_scheme": "hmac-sha256",
            "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
    kernel = FakeKernel(prefix, lost=2)
    kc = KernelClient(info)
    # The client starts before the kernel listens, as it does beside a starting kernel.
    connecting = asyncio.ensure_future(kc.connect(lambda: True, 10))
    await asyncio.sleep(0.05)
    assert not connecting.done()
    async with Listener(f"{prefix}-1", kernel.shell), \
            Listener(f"{prefix}-2", kernel.iopub, peer_type=b"XPUB"):
        await asyncio.wait_for(connecting, 10)
        kinds = [h["msg_type"] for h, _ in kernel.requests]
        assert kinds == ["kernel_info_request"] * 3    # asked again until IOPub answered

        msg_id = kc.execute("print(1)", stop_on_error=False)
        seen = []
        while True:
            msg = await kc.get_iopub_msg(5)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            seen.append((msg["msg_type"], msg["content"]))
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert seen == [("status", {"execution_state": "busy"}),
                        ("stream", {"name": "stdout", "text": "print(1)"}),
                        ("status", {"execution_state": "idle"})]
        header, content = kernel.requests[-1]
        assert header["msg_type"] == "execute_request" and header["session"] == kc.session
        assert content == {"code": "print(1)", "silent": False, "store_history": True,
                           "user_expressions": {}, "allow_stdin": False, "stop_on_error": False}
        reply = await kc.get_shell_msg(5)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = await kc.get_shell_msg(5)
        assert reply["msg_type"] == "execute_reply"
        with pytest.raises(Empty):
            await kc.get_iopub_msg(0.05)
        assert kc.connected()
        kc.close()
        assert not kc.connected()
        with pytest.raises(Empty):                       # closed: no message, no spin
            await kc.get_iopub_msg(0.01)


def test_text_a_kernel_could_not_encode_is_read_not_dropped():
    # ipykernel encodes text with surrogateescape: a lone surrogate (from bytes decoded the
    # same way) becomes a byte that is not UTF-8. The message is kept, the byte read as U+FFFD.
    kc = KernelClient({"key": KEY})
    frames = jupyter("stream", {"name": "stdout", "text": "a\udc80b"}, topic=b"s")
    frames[-1] = json.dumps({"name": "stdout", "text": "a\udc80b"},
                            ensure_ascii=False).encode("utf8", "surrogateescape")
    frames[2] = sign(frames[3:7])
    msg = kc._parse(frames)
    assert msg is not None and msg["content"]["text"] == "a\ufffdb"


async def test_a_kernel_that_exits_while_starting_is_reported(sock_dir):
    info = {"transport": "ipc", "ip": os.path.join(sock_dir, "gone"), "key": KEY,
            "shell_port": 1, "iopub_port": 2}
    with pytest.raises(RuntimeError, match="exited"):
        await KernelClient(info).connect(lambda: False, 10)
    with pytest.raises(RuntimeError, match="in time"):
        await KernelClient(info).connect(lambda: True, 0.05)


# -- kernel specs ----------------------------------------------------------------------------------

def write_spec(root, name, argv, env=None):
    d = os.path.join(root, name)
    os.makedirs(d)
    with open(os.path.join(d, "kernel.json"), "w") as f:
        json.dump({"argv": argv, "env": env or {}, "display_name": name}, f)
    return d


def test_kernel_specs_are_found_in_order_and_loaded(tmp_path):
    own, other = str(tmp_path / "own"), str(tmp_path / "other")
    write_spec(own, "hutch-python", ["python", "-f", "{connection_file}"])
    write_spec(other, "hutch-python", ["shadowed"])
    ir = write_spec(other, "IR", ["R", "--file={resource_dir}/main.R", "{connection_file}"],
                    {"R_HOME": "/usr/lib/R"})
    os.makedirs(os.path.join(other, "not-a-kernel"))     # no kernel.json: ignored
    found = kernelspecs.find([own, str(tmp_path / "missing"), other])
    assert found == {"hutch-python": os.path.join(own, "hutch-python"), "ir": ir}
    spec = kernelspecs.load("ir", [own, other])
    assert spec["argv"] == ["R", f"--file={ir}/main.R", "{connection_file}"]
    assert spec["env"] == {"R_HOME": "/usr/lib/R"}
    assert kernelspecs.load("hutch-python", [own, other])["argv"][0] == "python"
    with pytest.raises(KeyError):
        kernelspecs.load("java", [own, other])


def test_the_search_path_is_ours_then_jupyters(monkeypatch, tmp_path):
    monkeypatch.setenv("JUPYTER_PATH", f"{tmp_path}/a{os.pathsep}{tmp_path}/b")
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    path = kernelspecs.search_path("/own")
    assert path[:4] == ["/own", f"{tmp_path}/a/kernels", f"{tmp_path}/b/kernels",
                        f"{tmp_path}/data/kernels"]
    assert "/usr/local/share/jupyter/kernels" in path and "/usr/share/jupyter/kernels" in path
    assert len(path) == len(set(path))


def test_written_specs_point_at_the_launcher_and_start_up_file(tmp_path):
    root = kernelspecs.write(str(tmp_path), python="/usr/bin/python3")
    spec = kernelspecs.load("hutch-python", [root])
    assert spec["argv"][:2] == ["/usr/bin/python3", "-c"]
    assert kernelspecs.LAUNCHER in spec["argv"][2] and os.path.isfile(kernelspecs.LAUNCHER)
    assert f"--IPKernelApp.exec_files={kernelspecs.STARTUP}" in spec["argv"]
    assert set(kernelspecs.find([root])) == {"hutch-python", "hutch-bash", "hutch-javascript"}
