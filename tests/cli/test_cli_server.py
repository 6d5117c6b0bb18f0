"""The `hutch` command against a real server, run as a subprocess like a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

TIMEOUT = 180


@pytest.fixture
def hutch(hutch_server):
    env = {**os.environ, "HUTCH_URL": hutch_server.url, "HUTCH_API_KEY": hutch_server.api_key}

    def run(*args: str, stdin: str | bytes | None = None, check: bool = True):
        feed = ({"input": stdin.encode() if isinstance(stdin, str) else stdin}
                if stdin is not None else {"stdin": subprocess.DEVNULL})
        result = subprocess.run([sys.executable, "-m", "hutch", *args], env=env,
                                capture_output=True, timeout=TIMEOUT, **feed)
        if check and result.returncode != 0:
            raise AssertionError(f"hutch {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr.decode(errors='replace')}")
        return result

    return run


@pytest.fixture
def sandbox_id(hutch):
    sandbox_id = hutch("sandbox", "create", "--timeout", "300", "-m", "suite=cli",
                       "-e", "FROM_CREATE=1").stdout.decode().strip()
    try:
        yield sandbox_id
    finally:
        hutch("kill", sandbox_id, check=False)


def test_create_ls_info_kill(hutch, sandbox_id):
    listed = json.loads(hutch("ls", "--json", "-m", "suite=cli").stdout)
    assert sandbox_id in [s["sandboxID"] for s in listed]
    assert sandbox_id in hutch("sandbox", "ls", "-q").stdout.decode().split()
    table = hutch("ls").stdout.decode()
    assert table.startswith("ID") and sandbox_id in table
    info = json.loads(hutch("sandbox", "info", sandbox_id).stdout)
    assert info["sandboxID"] == sandbox_id and info["metadata"]["suite"] == "cli"
    hutch("sandbox", "timeout", sandbox_id, "3000")
    later = json.loads(hutch("sandbox", "info", sandbox_id).stdout)
    assert later["endAt"] > info["endAt"]
    assert hutch("sandbox", "kill", sandbox_id).returncode == 0
    gone = hutch("kill", sandbox_id, check=False)
    assert gone.returncode == 1 and b"not found" in gone.stderr
    missing = hutch("sandbox", "info", sandbox_id, check=False)
    assert missing.returncode == 1 and missing.stderr.startswith(b"error: SandboxNotFoundError")


def test_exec_streams_and_passes_the_exit_code(hutch, sandbox_id):
    result = hutch("exec", sandbox_id, "--", "echo $FROM_CREATE; echo oops >&2; exit 7",
                   check=False)
    assert (result.returncode, result.stdout, result.stderr) == (7, b"1\n", b"oops\n")
    quoted = hutch("exec", sandbox_id, "--", "printf", "%s|", "a b", "$HOME")
    assert quoted.stdout == b"a b|$HOME|"
    as_root = hutch("exec", "-u", "root", "-w", "/tmp", "-e", "X=y", sandbox_id, "--",
                    "echo $(whoami) $PWD $X")
    assert as_root.stdout == b"root /tmp y\n"
    late = hutch("exec", "--timeout", "1", sandbox_id, "--", "sleep 60", check=False)
    assert late.returncode == 124
    piped = hutch("exec", sandbox_id, "--", "tr a-z A-Z", stdin="shout\n" * 10000)
    assert piped.stdout == b"SHOUT\n" * 10000


def test_cp_both_ways(hutch, sandbox_id, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    hutch("cp", str(source), f"{sandbox_id}:/tmp/copied.bin")
    hutch("cp", f"{sandbox_id}:/tmp/copied.bin", str(tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    hutch("cp", "-", f"{sandbox_id}:/tmp/from-stdin.txt", stdin="piped\n")
    assert hutch("cp", f"{sandbox_id}:/tmp/from-stdin.txt", "-").stdout == b"piped\n"
    hutch("cp", str(source), f"{sandbox_id}:/tmp/")  # into a directory: keeps the name
    assert hutch("exec", sandbox_id, "--", "stat -c %s /tmp/in.bin").stdout == \
        f"{source.stat().st_size}\n".encode()
    missing = hutch("cp", f"{sandbox_id}:/tmp/none", str(tmp_path / "none"), check=False)
    assert missing.returncode == 1 and b"FileNotFound" in missing.stderr
    assert not (tmp_path / "none").exists()


def test_cp_directories(hutch, sandbox_id, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "top.txt").write_text("top")
    (tree / "sub" / "deeper" / "leaf.bin").write_bytes(bytes(range(256)))
    refused = hutch("cp", str(tree), f"{sandbox_id}:/tmp/tree", check=False)
    assert refused.returncode == 2 and b"-r" in refused.stderr
    hutch("cp", "-r", str(tree), f"{sandbox_id}:/tmp/tree")
    listing = hutch("exec", sandbox_id, "--", "cd /tmp/tree && find . -type f | sort; stat -c %U top.txt")
    assert listing.stdout == b"./sub/deeper/leaf.bin\n./top.txt\nuser\n"
    hutch("cp", "-r", str(tree), f"{sandbox_id}:/tmp/tree")  # onto a directory: goes inside
    assert hutch("exec", sandbox_id, "--", "cat /tmp/tree/tree/top.txt").stdout == b"top"
    back = tmp_path / "back"
    hutch("cp", "-r", f"{sandbox_id}:/tmp/tree", str(back))
    assert (back / "top.txt").read_text() == "top"
    assert (back / "sub" / "deeper" / "leaf.bin").read_bytes() == bytes(range(256))
    assert (back / "tree" / "top.txt").exists()
    assert hutch("exec", sandbox_id, "--", "ls /tmp | grep -c hutch-cp", check=False).stdout == b"0\n"


def test_shell_with_piped_input(hutch, sandbox_id):
    result = hutch("shell", sandbox_id, stdin="echo $((40+2))\nexit 5\n", check=False)
    assert result.returncode == 5
    assert b"42" in result.stdout


def test_shell_on_a_terminal(hutch_server, sandbox_id):
    """`hutch shell` with a real TTY: raw mode, keystrokes forwarded, the exit status kept.

    The keys are typed at once, before the sandbox's prompt: typed-ahead input must reach
    the shell however the start races with the switch to raw mode.
    """
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    env = {**os.environ, "HUTCH_URL": hutch_server.url, "HUTCH_API_KEY": hutch_server.api_key}
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    before = termios.tcgetattr(terminal)
    proc = subprocess.Popen([sys.executable, "-m", "hutch", "shell", sandbox_id], env=env,
                            stdin=terminal, stdout=terminal, stderr=terminal)
    output = bytearray()
    try:
        deadline = time.monotonic() + TIMEOUT
        os.write(controller, b"stty size; echo $((40+2)); exit 3\r")
        while proc.poll() is None or select.select([controller], [], [], 0)[0]:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            if select.select([controller], [], [], 0.1)[0]:
                try:
                    output += os.read(controller, 65536)
                except OSError:
                    break
        assert proc.wait(TIMEOUT) == 3
        assert b"42" in output
        assert b"33 101" in output  # our terminal's size became the sandbox terminal's
        # raw mode was undone on the way out
        assert termios.tcgetattr(terminal)[3] == before[3]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
        os.close(terminal)


def _listed(hutch, tag: str) -> list:
    return json.loads(hutch("ls", "--json", "-m", f"tag={tag}").stdout)


def test_create_shortcut_with_resources_and_network(hutch):
    tag = uuid.uuid4().hex
    created = hutch("create", "--timeout", "120", "--network", "none", "-m", f"tag={tag}",
                    "-e", "K=v", "--cpu", "1", "--memory", "320", "--disk", "1200", "--json")
    info = json.loads(created.stdout)
    try:
        assert info["allowInternetAccess"] is False
        assert (info["cpuCount"], info["memoryMB"], info["diskSizeMB"]) == (1, 320, 1200)
        assert info["metadata"] == {"tag": tag}
        assert [s["sandboxID"] for s in _listed(hutch, tag)] == [info["sandboxID"]]
        assert hutch("exec", info["sandboxID"], "--", "echo $K").stdout == b"v\n"
    finally:
        hutch("kill", info["sandboxID"], check=False)
    bad = hutch("create", "--network", "wifi", check=False)
    assert bad.returncode == 2 and b"--network" in bad.stderr
    clash = hutch("create", "--network", "internet", "--no-internet", check=False)
    assert clash.returncode == 2 and _listed(hutch, tag) == []


def test_run_streams_passes_the_exit_code_and_kills(hutch):
    tag = uuid.uuid4().hex
    result = hutch("run", "-m", f"tag={tag}", "-e", "FROM_RUN=1", "--",
                   "echo $FROM_RUN; echo oops >&2; exit 7", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (7, b"1\n", b"oops\n")
    as_argv = hutch("run", "-m", f"tag={tag}", "-w", "/tmp", "--", "printf", "%s|", "a b", "$PWD")
    assert as_argv.stdout == b"a b|$PWD|"
    piped = hutch("run", "-m", f"tag={tag}", "--", "wc -c", stdin="x" * 5000)
    assert piped.stdout.strip() == b"5000"
    assert _listed(hutch, tag) == []
    missing = hutch("run", "-t", "no-such-template", "--", "true", check=False)
    assert missing.returncode == 1 and missing.stderr.startswith(b"error: TemplateError")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_kills_the_sandbox_when_interrupted(hutch_server, hutch, signum):
    tag = uuid.uuid4().hex
    env = {**os.environ, "HUTCH_URL": hutch_server.url, "HUTCH_API_KEY": hutch_server.api_key}
    # As from a terminal: a suite started in the background (`cmd &` without job control)
    # runs with SIGINT ignored, and a child would inherit that and never see the interrupt.
    saved = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hutch", "run", "-m", f"tag={tag}", "--",
             "echo started; exec sleep 600"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGINT, saved)
    try:
        assert proc.stdout.readline() == b"started\n"  # the command runs: the sandbox exists
        assert len(_listed(hutch, tag)) == 1
        proc.send_signal(signum)
        assert proc.wait(TIMEOUT) == 128 + signum
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert _listed(hutch, tag) == []


def test_run_code_prints_text_saves_images_and_fails_on_errors(code_interpreter, hutch, tmp_path):
    tag = uuid.uuid4().hex
    script = tmp_path / "plot.py"
    script.write_text("import matplotlib.pyplot as plt\nprint('computing')\n"
                      "plt.plot([1, 2]); plt.show()\n6 * 7\n")
    out = tmp_path / "out"
    r = hutch("run-code", "-m", f"tag={tag}", "-o", str(out), str(script))
    assert r.stdout.decode() == "computing\n42\n"
    assert (out / "result-1.png").read_bytes().startswith(b"\x89PNG")
    assert f"saved {out / 'result-1.png'}" in r.stderr.decode()
    failed = hutch("run-code", "-l", "bash", "-m", f"tag={tag}", "-", stdin="echo hi; false",
                   check=False)
    assert failed.returncode == 1 and failed.stdout.decode() == "hi\n"
    assert _listed(hutch, tag) == []              # both sandboxes are gone


def test_run_code_in_an_existing_sandbox_keeps_state(code_interpreter, hutch):
    sid = hutch("create", "-t", "code-interpreter").stdout.decode().strip()
    try:
        hutch("run-code", "--sandbox", sid, "-", stdin="kept = 'across calls'")
        r = hutch("run-code", "--sandbox", sid, "--var", "X=1", "-",
                  stdin="import os\nprint(kept, os.environ['X'])")
        assert r.stdout.decode() == "across calls 1\n"
    finally:
        hutch("kill", sid)
