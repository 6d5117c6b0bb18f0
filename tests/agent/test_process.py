"""process.Process against the real agent: output, exit, users, env, timeouts, stdin, PTY."""

from __future__ import annotations

import base64
import os
import threading
import time

import httpx

from hutch.protocol.envelope import EnvelopeDecoder, encode_end_stream, encode_envelope

from .conftest import Client, run_cmd


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_start_streams_start_data_end_in_order(client: Client):
    res = run_cmd(client, "echo out; echo err >&2; exit 0")
    events = [next(iter(e["event"])) for e in res["events"][:-1]]
    assert events[0] == "start" and events[-1] == "end"
    assert events.count("end") == 1 and set(events[1:-1]) == {"data"}
    assert res["events"][0]["event"]["start"]["pid"] > 0
    assert res["stdout"] == b"out\n" and res["stderr"] == b"err\n"
    assert res["end"] == {"exited": True, "status": "exit status 0"}  # exitCode 0 omitted
    assert res["events"][-1] == {}


def test_nonzero_exit_and_signal_status(client: Client):
    assert run_cmd(client, "exit 7")["end"] == {"exitCode": 7, "exited": True, "status": "exit status 7"}
    killed = run_cmd(client, "kill -9 $$")["end"]
    assert killed["exitCode"] == -1 and killed["status"] == "signal: killed" and "exited" not in killed


def test_big_output_is_complete(client: Client):
    # 8 MiB on stdout, more than any pipe buffer: backpressure and draining must lose nothing.
    res = run_cmd(client, "head -c 8388608 /dev/zero | tr '\\0' 'x'; echo tail >&2")
    assert len(res["stdout"]) == 8 * 1024 * 1024 and set(res["stdout"]) == {ord("x")}
    assert res["stderr"] == b"tail\n"


def test_output_written_just_before_exit_is_not_lost(client: Client):
    for _ in range(20):
        res = run_cmd(client, "printf abc; printf def >&2")
        assert (res["stdout"], res["stderr"]) == (b"abc", b"def")


def test_env_user_and_cwd(client: Client, workdir):
    res = run_cmd(client, 'echo "$HOME|$USER|$LOGNAME|$FOO|$(pwd)|$(id -u)"',
                  process={"envs": {"FOO": "bar"}, "cwd": str(workdir)})
    assert res["stdout"].decode().strip() == f"/root|root|root|bar|{workdir}|0"
    res = run_cmd(client, 'echo "$USER|$(id -u)|$(id -g)|$(pwd)"', user="nobody")
    assert res["stdout"].decode().strip() == "nobody|65534|65534|/"


def test_user_command_holds_every_id_of_the_user_and_no_capability(client: Client):
    # A user's commands start from an agent thread that already is the user (processes.py):
    # the command must hold the user's ids everywhere (real, effective, saved, filesystem),
    # the user's groups only, and no capability, exactly as a setuid in the child gave.
    for user in ("nobody", "nobody", "root"):
        res = run_cmd(client, "grep -E '^(Uid|Gid|Groups|Cap...):' /proc/self/status", user=user)
        status = dict(line.split(":", 1) for line in res["stdout"].decode().splitlines())
        status = {k: v.split() for k, v in status.items()}
        if user == "root":
            assert status["Uid"] == ["0"] * 4 and status["CapEff"] != ["0000000000000000"]
            continue
        assert status["Uid"] == ["65534"] * 4 and status["Gid"] == ["65534"] * 4
        assert status["Groups"] == [str(g) for g in os.getgrouplist("nobody", 65534)]
        for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert status[cap] == ["0000000000000000"], (cap, status)


def test_user_cannot_start_in_a_directory_closed_to_them(client: Client, workdir):
    closed = workdir / "closed"
    closed.mkdir(mode=0o700)
    events = client.stream("process.Process/Start",
                           {"process": {"cmd": "/bin/true", "cwd": str(closed)}}, user="nobody")
    assert events[-1]["error"]["code"] == "invalid_argument"
    assert "Permission denied" in events[-1]["error"]["message"]
    assert run_cmd(client, "pwd", user="root", process={"cwd": str(closed)})["stdout"] == f"{closed}\n".encode()


def test_unknown_user_is_unauthenticated(client: Client):
    r = client.unary("process.Process/List", {}, user="no-such-user-here")
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"


def test_missing_binary_ends_stream_with_error(client: Client):
    events = client.stream("process.Process/Start", {"process": {"cmd": "/nonexistent/bin"}})
    assert events[-1]["error"]["code"] == "invalid_argument"


def test_deadline_kills_process_group(client: Client, workdir):
    marker = workdir / "late"
    t0 = time.monotonic()
    res = run_cmd(client, f"(sleep 3; touch {marker}) & sleep 30", headers={"Connect-Timeout-Ms": "500"})
    assert time.monotonic() - t0 < 10
    assert res["error"]["code"] == "deadline_exceeded"
    time.sleep(3.5)
    assert not marker.exists()  # the background child in the group died too


def test_keepalive_on_idle_stream(client: Client):
    res = run_cmd(client, "sleep 2.5; echo done", headers={"Keepalive-Ping-Interval": "1"})
    kinds = [next(iter(e["event"])) for e in res["events"][:-1]]
    assert "keepalive" in kinds and kinds[-1] == "end" and res["stdout"] == b"done\n"


def _start_background(client: Client, cmd: str, **msg):
    """Open a Start stream in a thread; return (pid, thread, collected events)."""
    events: list = []
    started = threading.Event()

    process = {"cmd": "/bin/bash", "args": ["-c", cmd], **msg.pop("process", {})}

    def reader():
        with client.open_stream("process.Process/Start", {"process": process, **msg}) as frames:
            for end, m in frames:
                events.append(m)
                started.set()
                if end:
                    break

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert started.wait(10)
    return events[0]["event"]["start"]["pid"], t, events


def test_list_connect_signal_and_tag(agent, client: Client):
    pid, t, events = _start_background(client, "echo first; sleep 60", tag="svc", process={"envs": {"A": "1"}})
    listed = client.ok("process.Process/List", {})["processes"]
    mine = [p for p in listed if p["pid"] == pid][0]
    assert mine["tag"] == "svc" and mine["config"]["cmd"] == "/bin/bash" and mine["config"]["envs"] == {"A": "1"}
    other = Client(agent.url)
    got = []
    with other.open_stream("process.Process/Connect", {"process": {"tag": "svc"}}) as frames:
        end, first = next(frames)
        assert first["event"]["start"]["pid"] == pid
        assert client.ok("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"}) == {}
        for end, m in frames:
            got.append(m)
            if end:
                break
    other.close()
    assert got[-2]["event"]["end"]["status"] == "signal: terminated"
    t.join(10)
    assert events[-2]["event"]["end"]["status"] == "signal: terminated"
    r = client.unary("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_connect_unknown_pid_is_not_found(client: Client):
    events = client.stream("process.Process/Connect", {"process": {"pid": 999999}})
    assert events[-1]["error"]["code"] == "not_found"


def test_stdin_send_and_close(client: Client):
    pid, t, events = _start_background(client, "cat; echo closed", stdin=True)
    client.ok("process.Process/SendInput", {"process": {"pid": pid}, "input": {"stdin": b64(b"hello\n")}})
    client.ok("process.Process/CloseStdin", {"process": {"pid": pid}})
    t.join(10)
    out = b"".join(base64.b64decode(e["event"]["data"]["stdout"]) for e in events if "data" in e.get("event", {}))
    assert out == b"hello\nclosed\n"


def test_stdin_is_devnull_unless_asked(client: Client):
    assert run_cmd(client, "cat; echo end")["stdout"] == b"end\n"


def test_stream_input_acts_on_each_envelope(agent, client: Client):
    pid, t, events = _start_background(client, "read a; echo got:$a; read b; echo got:$b", stdin=True)
    sent_second = threading.Event()

    def body():
        yield encode_envelope({"start": {"process": {"pid": pid}}})
        yield encode_envelope({"data": {"input": {"stdin": b64(b"one\n")}}})
        # The agent must deliver "one" before the request body ends.
        deadline = time.monotonic() + 10
        while not any(b"got:one" in base64.b64decode(e["event"]["data"].get("stdout", ""))
                      for e in list(events) if "data" in e.get("event", {})):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        sent_second.set()
        yield encode_envelope({"keepalive": {}})
        yield encode_envelope({"data": {"input": {"stdin": b64(b"two\n")}}})
        yield encode_end_stream()

    h = client.headers(extra={"Content-Type": "application/connect+json"})
    r = httpx.post(agent.url + "/process.Process/StreamInput", content=body(), headers=h, timeout=30)
    assert r.status_code == 200 and sent_second.is_set()
    frames = EnvelopeDecoder().feed(r.content)
    assert frames[0].json() == {} and frames[-1].end_stream and frames[-1].json() == {}
    t.join(10)
    out = b"".join(base64.b64decode(e["event"]["data"]["stdout"]) for e in events if "data" in e.get("event", {}))
    assert out == b"got:one\ngot:two\n"


def test_pty_mode_resize_and_input(client: Client):
    pid, t, events = _start_background(
        client, "stty size; tty; read x; stty size; echo x=$x",
        pty={"size": {"cols": 100, "rows": 30}}, process={"envs": {"TERM": "xterm-256color"}},
    )
    deadline = time.monotonic() + 10

    def output():
        return b"".join(base64.b64decode(e["event"]["data"]["pty"]) for e in list(events) if "data" in e.get("event", {}))

    while b"/dev/pts/" not in output():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.ok("process.Process/Update", {"process": {"pid": pid}, "pty": {"size": {"cols": 120, "rows": 40}}})
    client.ok("process.Process/SendInput", {"process": {"pid": pid}, "input": {"pty": b64(b"hi\n")}})
    t.join(10)
    text = output().decode()
    assert "30 100" in text and "40 120" in text and "x=hi" in text
    assert events[-2]["event"]["end"]["exited"] is True


def test_client_disconnect_leaves_process_running(agent, client: Client):
    c2 = Client(agent.url)
    with c2.open_stream("process.Process/Start", {"process": {"cmd": "/bin/sleep", "args": ["30"]}}) as frames:
        pid = next(frames)[1]["event"]["start"]["pid"]
    c2.close()
    assert pid in [p["pid"] for p in client.ok("process.Process/List", {})["processes"]]
    client.ok("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
    deadline = time.monotonic() + 10
    while pid in [p["pid"] for p in client.ok("process.Process/List", {})["processes"]]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Reaped by the agent: no zombie left behind.
    assert not os.path.exists(f"/proc/{pid}") or "Z" not in open(f"/proc/{pid}/stat").read().split()[2]


def test_keep_alive_connection_reused(agent):
    with httpx.Client(base_url=agent.url) as http:
        for _ in range(5):
            assert http.get("/health").status_code == 204
        r = http.post("/process.Process/List", content=b"{}", headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.headers.get("connection") != "close"


def test_pty_as_another_user(client: Client):
    res = run_cmd(client, 'tty >/dev/null && echo "$(id -un) $(stat -c %U $(tty))"', user="nobody",
                  msg={"pty": {"size": {"cols": 80, "rows": 24}}})
    assert res["pty"].replace(b"\r\n", b"\n") == b"nobody nobody\n"
    assert res["end"]["exited"] is True


def test_many_concurrent_commands_lose_nothing(agent):
    import concurrent.futures

    def one(i):
        c = Client(agent.url)
        try:
            res = run_cmd(c, f"seq 1 {2000 + i}; echo e{i} >&2; exit {i % 3}")
            return i, res
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for i, res in pool.map(one, range(32)):
            assert res["stdout"] == "".join(f"{n}\n" for n in range(1, 2001 + i)).encode()
            assert res["stderr"] == f"e{i}\n".encode()
            assert res["end"].get("exitCode", 0) == i % 3


def test_login_shell_like_commands_run(client: Client):
    res = run_cmd(client, "shopt -q login_shell && echo login", login=True)
    assert res["stdout"] == b"login\n" and res["end"]["exited"] is True
