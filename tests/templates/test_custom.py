"""Templates users describe, built for real: each step in a build sandbox of a real runtime
over the real ``base`` template, its changes kept as a layer; then a sandbox started from the
result sees them. Cache hits, rebuilds from the changed step up, failing steps reported with
their output and exit code, and unused layers collected."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
from pathlib import Path

import pytest

from hutch.errors import InvalidArgumentError, TemplateError
from hutch.protocol import dockerfile
from hutch.runtime.local import LocalRuntime
from hutch.runtime.spec import SandboxSpec
from hutch.templates.custom import CustomTemplates

from ..oci import push_tiny_image, running_registry
from .conftest import UID_BASE

pytestmark = pytest.mark.timeout(900)

INSTANCE = "hutchk"
SUBNET = "10.183.0.0/24"
STATE = Path("/var/lib/hutch-test-k")


@pytest.fixture(scope="module")
async def runtime():
    if os.geteuid() != 0:
        pytest.skip("builds need root")
    lock = os.open(f"/run/hutch-test-{INSTANCE}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                   0o600)
    await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
    try:
        rt = LocalRuntime(STATE / "runtime", instance=INSTANCE, subnet=SUBNET,
                          uid_base=UID_BASE, dns_upstreams=[])
        await rt.teardown()
        await rt.start()
        try:
            yield rt
        finally:
            await rt.teardown()
            shutil.rmtree(STATE, ignore_errors=True)
    finally:
        os.close(lock)


@pytest.fixture(scope="module")
async def custom(runtime, shared_store, base):
    root = STATE / "custom"
    root.mkdir(parents=True, exist_ok=True)
    for d in (STATE, root):
        os.chmod(d, 0o711)       # the sandbox's mapped root walks down to its layers
    return CustomTemplates(shared_store, runtime, root=root, cpu=1, memory_mb=512, disk_mb=1024)


async def in_sandbox(runtime, tmpl, command: str, user: str = "root") -> str:
    """Start a sandbox from ``tmpl`` running ``command``; its output."""
    sid = "t" + os.urandom(6).hex()
    wrapper = (f"{{ {command} ; }} >/run/hutch/out 2>&1; echo $? >/run/hutch/rc.tmp; "
               "mv /run/hutch/rc.tmp /run/hutch/rc")
    if user != "root":
        wrapper = f"runuser -u {user} -- sh -c '{command}' >/run/hutch/out 2>&1; " \
                  "echo $? >/run/hutch/rc.tmp; mv /run/hutch/rc.tmp /run/hutch/rc"
    handle = await runtime.create(SandboxSpec(
        id=sid, layers=tmpl.layers, args=("/bin/sh", "-c", wrapper),
        env=tuple(tmpl.env.items()), network="none", memory_mb=256, disk_mb=256))
    try:
        for _ in range(600):
            if (handle.run_dir / "rc").exists():
                return (handle.run_dir / "out").read_text()
            await asyncio.sleep(0.05)
        raise TimeoutError(command)
    finally:
        await runtime.destroy(sid)


DOCKERFILE = """\
FROM base
RUN echo made-by-root | tee /made.txt && rm -f /etc/motd
ENV GREETING="hello there"
WORKDIR /opt/app
COPY --chown=user:user app/ ./
USER user
WORKDIR /srv/empty
RUN echo "$GREETING from $(whoami) in $(pwd)" > /tmp/greeting && cp /tmp/greeting ~/greeting
CMD python3 -m http.server 8000
"""


@pytest.fixture
def context(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    return tmp_path


async def test_a_dockerfile_builds_and_its_sandboxes_see_it(custom, runtime, context):
    events: list[dict] = []
    definition = dockerfile.parse(DOCKERFILE)
    tmpl = await custom.build("owner1", "webapp", definition, context, events.append)
    steps = [e for e in events if e["type"] == "step"]
    assert [s["step"]["kind"] for s in steps] == ["run", "copy", "run"]
    assert tmpl.env["GREETING"] == "hello there" and tmpl.user == "user"
    assert tmpl.workdir == "/srv/empty" and len(tmpl.layers) == 3 + 1
    out = await in_sandbox(runtime, tmpl, "cat /made.txt ~user/greeting /opt/app/main.py; "
                                          "stat -c %U /opt/app/main.py; "
                                          "test -e /etc/motd || echo motd-gone")
    assert out.split("\n")[:5] == ["made-by-root", "hello there from user in /srv/empty",
                                   "print('hi')", "user", "motd-gone"], out
    rec = custom.record("owner1", "webapp")
    assert rec["start_cmd"] == "python3 -m http.server 8000"
    assert {"type": "log", "text": "made-by-root"} in events

    # Unchanged: every step a cache hit. A changed file: its COPY and what follows rebuilt.
    events.clear()
    await custom.build("owner1", "webapp", definition, context, events.append)
    assert [e["cached"] for e in events if e["type"] == "step"] == [True, True, True]
    (context / "app" / "main.py").write_text("print('changed')\n")
    events.clear()
    previous = set(custom.record("owner1", "webapp")["layers"])
    custom.collect_age = 0          # (a running build's layers are younger than the default)
    tmpl = await custom.build("owner1", "webapp", definition, context, events.append)
    custom.collect_age = 3600
    assert [e["cached"] for e in events if e["type"] == "step"] == [True, False, False]
    assert "changed" in await in_sandbox(runtime, tmpl, "cat /opt/app/main.py")
    # The rebuild collected the two layers of the previous build that nothing lists now.
    replaced = previous - set(custom.record("owner1", "webapp")["layers"])
    assert len(replaced) == 2
    assert not any((custom.root / "layers" / key).exists() for key in replaced)

    # A template on top of another of the same owner's.
    child = dockerfile.parse("FROM webapp\nUSER root\nRUN echo child > /opt/app/child.txt\n")
    kid = await custom.build("owner1", "child", child, None)
    assert kid.layers[1:] == tmpl.layers and kid.user == "root"
    assert (await in_sandbox(runtime, kid, "cat /opt/app/child.txt /made.txt")).split() == \
        ["child", "made-by-root"]
    assert custom.get("owner2", "webapp") is None          # owners do not share

    # Removing: the layers nothing else uses are collected.
    await custom.remove("owner1", "child")
    await custom.remove("owner1", "webapp")
    removed = await custom.collect(min_age=0)
    assert len(removed) >= 4 and not list((custom.root / "layers").iterdir())


async def test_a_failing_step_names_itself_with_its_output(custom):
    definition = dockerfile.parse("FROM base\nRUN echo fine\nRUN echo about to fail; exit 7\n")
    with pytest.raises(TemplateError, match=r"(?s)exit code 7.*about to fail"):
        await custom.build("owner1", "broken", definition, None)
    assert custom.record("owner1", "broken") is None
    await custom.collect(min_age=0)


async def test_bad_requests(custom):
    with pytest.raises(InvalidArgumentError, match="built-in"):
        await custom.build("owner1", "base", dockerfile.parse("FROM base\n"), None)
    with pytest.raises(InvalidArgumentError, match="needs a context"):
        await custom.build("owner1", "x", dockerfile.parse("FROM base\nCOPY a /a\n"), None)
    with pytest.raises(InvalidArgumentError, match="nor an image"):
        await custom.build("owner1", "x", dockerfile.parse("FROM python:3.12\n"), None)
    with pytest.raises(InvalidArgumentError, match="bad template name"):
        await custom.build("owner1", "Bad Name", dockerfile.parse("FROM base\n"), None)


async def test_layers_under_a_running_sandbox_are_not_collected(custom, runtime):
    tmpl = await custom.build("owner1", "inuse", dockerfile.parse(
        f"FROM base\nRUN echo {os.urandom(4).hex()} > /marker\n"), None)
    sid = "t" + os.urandom(6).hex()
    await runtime.create(SandboxSpec(id=sid, layers=tmpl.layers, args=("sleep", "600"),
                                     network="none", memory_mb=256, disk_mb=256))
    try:
        await custom.remove("owner1", "inuse")
        assert await custom.collect(min_age=0) == []        # the sandbox still stands on it
        assert tmpl.layers[0].is_dir()
    finally:
        await runtime.destroy(sid)
    assert len(await custom.collect(min_age=0)) == 1


# -- OCI images from a registry ---------------------------------------------------------------

@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with running_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


async def test_an_image_from_a_registry_with_whiteouts_users_and_its_config(
        runtime, custom, registry, tmp_path):
    from hutch.templates.images import Images

    ref = push_tiny_image(registry, tmp_path, "hutch-test/tiny:1")

    images = Images(STATE / "images", uid_base=UID_BASE, insecure=(registry,))
    tmpl = await images.ensure(ref)
    rootfs = tmpl.layers[0]
    assert not (rootfs / "gone.txt").exists() and (rootfs / "new.txt").exists()
    assert not (rootfs / ".wh.gone.txt").exists()
    assert os.stat(rootfs / "home/app/data.txt").st_uid == UID_BASE + 1234
    assert tmpl.env["GREETING"] == "hi there" and tmpl.user == "app"
    assert tmpl.default_cwd == "/home/app" and tmpl.start_cmd == "/bin/sh -c 'echo started'"
    mtime = os.stat(rootfs).st_mtime
    assert (await images.ensure(ref)).digest == tmpl.digest           # cached: no new unpack
    assert os.stat(rootfs).st_mtime == mtime

    out = await in_sandbox(runtime, tmpl, "cat /new.txt; test -e /gone.txt || echo gone; "
                                          "stat -c %u /home/app/data.txt")
    assert out.split("\n")[:3] == ["from layer two", "gone", "1234"], out

    # And as the base of a template of one's own: its steps run over it.
    custom.images = images
    built = await custom.build("owner1", "on-image", dockerfile.parse(
        f"FROM {ref}\nUSER root\nRUN echo built-over-it > /built.txt\n"), None)
    assert built.layers[-1] == rootfs and built.env["GREETING"] == "hi there"
    assert (await in_sandbox(runtime, built, "cat /built.txt /new.txt")).split("\n")[:2] == \
        ["built-over-it", "from layer two"]
    assert custom.runnable(tmpl) is False        # no python3 there for hutch's agent
    await custom.remove("owner1", "on-image")


async def test_concurrent_builds_of_one_template_share_their_layers(custom):
    text = f"FROM base\nRUN echo {os.urandom(4).hex()} > /one\nRUN echo two > /two\n"
    events: list[list[dict]] = [[], []]
    first, second = await asyncio.gather(
        *(custom.build("owner1", "twice", dockerfile.parse(text), None, events[i].append)
          for i in range(2)))
    assert first.layers == second.layers
    # Each layer was made once: the other build waited for it and found it made.
    made = [[e["cached"] for e in ev if e["type"] == "step"] for ev in events]
    assert sorted(made) == [[False, False], [True, True]] or \
        all(sum(not c for c in pair) == 1 for pair in zip(*made)), made
    assert len(list((custom.root / "templates" / "owner1").glob("twice*"))) == 1
    await custom.remove("owner1", "twice")


async def test_a_private_registry_with_credentials(tmp_path):
    import base64
    import json

    from hutch.errors import TemplateError
    from hutch.templates.images import Images

    (tmp_path / "reg").mkdir()
    with running_registry(tmp_path / "reg", users={"agent": "s3cret-pass"}) as registry:
        ref = push_tiny_image(registry, tmp_path, "private/tiny:2", creds="agent:s3cret-pass")
        anonymous = Images(STATE / "images", uid_base=UID_BASE, insecure=(registry,))
        with pytest.raises(TemplateError, match="(?i)unauthorized|authentication"):
            await anonymous.ensure(ref)
        auth = tmp_path / "auth.json"
        auth.write_text(json.dumps({"auths": {registry: {
            "auth": base64.b64encode(b"agent:s3cret-pass").decode()}}}))
        signed_in = Images(STATE / "images", uid_base=UID_BASE, insecure=(registry,),
                           auth_file=auth)
        tmpl = await signed_in.ensure(ref)
        assert (tmpl.layers[0] / "new.txt").read_text() == "from layer two\n"
