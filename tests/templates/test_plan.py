"""Build plans: one cached layer per file-changing step, keys that change exactly when what a
layer would hold can change, and the scripts' COPY/ADD semantics run for real (in a scratch
directory, as root would run them in a build sandbox)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from hutch.protocol import dockerfile
from hutch.protocol.template import Step
from hutch.templates.plan import State, plan, script


def test_layers_and_the_state_they_run_in():
    d = dockerfile.parse("FROM base\nRUN a\nENV X=1\nWORKDIR /w\nUSER user\nRUN b\n"
                         "COPY f /g\nCMD serve\n")
    p = plan(d, "basekey", start=State((("PATH", "/usr/bin"),), "user", "/home/user"))
    assert [layer.step.kind for layer in p.layers] == ["run", "run", "copy"]
    assert p.layers[0].state == State((("PATH", "/usr/bin"),), "user", "/home/user")
    assert p.layers[1].state == State((("PATH", "/usr/bin"), ("X", "1")), "user", "/w")
    assert p.final == p.layers[1].state and p.start_cmd == "serve"
    assert "runuser -u user -- sh -euc 'cd /w && b'" in p.layers[1].script
    assert "export X=1" in p.layers[1].script


def test_keys_change_with_what_a_layer_could_hold():
    def keys(text, base="k", inputs=None):
        return [layer.key for layer in plan(dockerfile.parse(text), base, inputs).layers]

    one = keys("FROM base\nRUN a\nRUN b\n")
    assert one == keys("FROM base\nRUN a\nRUN b\n")               # unchanged: a cache hit
    assert keys("FROM base\nRUN a\nRUN c\n")[0] == one[0]          # below the change: kept
    assert keys("FROM base\nRUN z\nRUN b\n")[1] != one[1]          # above it: rebuilt
    assert keys("FROM base\nRUN a\nRUN b\n", base="k2") != one     # a new base: all
    assert keys("FROM base\nENV X=1\nRUN a\n")[0] != one[0]        # same RUN, other env
    assert keys("FROM base\nUSER user\nRUN a\n")[0] != one[0]      # same RUN, other user
    copy = "FROM base\nCOPY f /g\n"
    assert keys(copy, inputs={0: (("f", "d1"),)}) != keys(copy, inputs={0: (("f", "d2"),)})


def _run(step: Step, context, root) -> None:
    """The step's script, as root, with its destination moved under ``root``."""
    relocated = Step(step.kind, step.args[:-1] + (f"{root}{step.args[-1]}",), step.options)
    text = script(relocated, State(), context_dir=str(context))
    subprocess.run(["sh", "-c", text], check=True, capture_output=True)


@pytest.fixture
def context(tmp_path):
    c = tmp_path / "context"
    (c / "dir" / "sub").mkdir(parents=True)
    (c / "dir" / "sub" / "deep.txt").write_text("deep")
    (c / "dir" / ".hidden").write_text("h")
    (c / "a.txt").write_text("a")
    (c / "lib dir").mkdir()
    for name in ("x.py", "y.py", "z.txt"):
        (c / "lib dir" / name).write_text(name)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("packed/inner.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"inner"))
    (c / "t.tgz").write_bytes(buf.getvalue())
    return c


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_copy_semantics(context, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "opt").mkdir(mode=0o755)
    os.chmod(root / "opt", 0o755)
    (root / "opt" / "existing").write_text("keep")
    # Several sources into a directory: files by name, directories by their contents.
    _run(Step("copy", ("a.txt", "dir/", "lib dir/*.py", "/opt/"), (("chown", "1000:1000"),)),
         context, root)
    assert sorted(os.listdir(root / "opt")) == [".hidden", "a.txt", "existing", "sub", "x.py",
                                                "y.py"]
    assert (root / "opt" / "sub" / "deep.txt").read_text() == "deep"
    assert os.stat(root / "opt" / "x.py").st_uid == 1000
    assert os.stat(root / "opt" / "existing").st_uid == 0     # what was there is untouched
    assert oct(os.stat(root / "opt").st_mode & 0o777) == "0o755"   # the directory itself too
    # One file to a new name, parents made.
    _run(Step("copy", ("a.txt", "/etc/deep/conf.txt"), (("chmod", "600"),)), context, root)
    assert (root / "etc" / "deep" / "conf.txt").read_text() == "a"
    assert oct(os.stat(root / "etc" / "deep" / "conf.txt").st_mode & 0o777) == "0o600"
    # ADD unpacks a local archive; COPY does not.
    _run(Step("add", ("t.tgz", "/srv/")), context, root)
    assert (root / "srv" / "packed" / "inner.txt").read_text() == "inner"
    _run(Step("copy", ("t.tgz", "/raw/")), context, root)
    assert (root / "raw" / "t.tgz").exists()


def test_a_missing_source_fails_the_step(context, tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as info:
        _run(Step("copy", ("nope.txt", "/x/")), context, tmp_path)
    assert b"no such file in the build context" in info.value.stderr


def test_package_steps():
    s = script(Step("apt", ("ffmpeg", "jq")), State())
    assert "apt-get install -y --no-install-recommends ffmpeg jq" in s
    assert "rm -rf /var/lib/apt/lists/*" in s
    assert "pip install --no-cache-dir 'numpy<2'" in script(Step("pip", ("numpy<2",)), State())
    assert "npm install -g typescript" in script(Step("npm", ("typescript",)), State())
