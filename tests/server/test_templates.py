"""Templates of your own through the API, the SDK and the CLI: built by the session's real
server in build sandboxes, started by creates, private to their key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from hutch import Sandbox, Template, errors

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def context(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('from the context')\n")
    (tmp_path / "notes.txt").write_text("notes\n")
    return tmp_path


def test_build_with_the_sdk_then_create_from_it(server_env, context):
    run = uuid.uuid4().hex[:8]           # in a step too: a cold build, whatever was cached
    name = f"webapp-{run}"
    lines, steps = [], []
    tpl = (Template.from_template("base")
           .run(f"echo building {run} as $(whoami)")
           .copy(["app/", "notes.txt"], "/opt/app/", chown="user:user")
           .env(GREETING="hi")
           .workdir("/opt/app"))
    built = tpl.build(name, context_dir=context, on_log=lines.append, on_step=steps.append)
    try:
        assert built["templateID"] == name and built["layers"] == 2
        assert f"building {run} as root" in lines
        assert [s["cached"] for s in steps] == [False, False]
        with Sandbox.create(template=name) as sbx:
            try:
                # The template's WORKDIR is where commands start.
                r = sbx.commands.run("pwd; echo $GREETING; python3 main.py; cat notes.txt; "
                                     "stat -c %U main.py")
                assert r.stdout.split("\n")[:5] == ["/opt/app", "hi", "from the context",
                                                    "notes", "user"], r.stdout
            finally:
                sbx.kill()
        # Again, unchanged: all from the cache.
        steps.clear()
        tpl.build(name, context_dir=context, on_step=steps.append)
        assert [s["cached"] for s in steps] == [True, True]
        listed = httpx.get(f"{server_env['HUTCH_URL']}/templates",
                           headers={"X-API-KEY": server_env["HUTCH_API_KEY"]}).json()
        assert {"base", name} <= {t["templateID"] for t in listed}
    finally:
        httpx.delete(f"{server_env['HUTCH_URL']}/templates/{name}",
                     headers={"X-API-KEY": server_env["HUTCH_API_KEY"]})


def test_other_keys_do_not_see_it(server_env):
    url, admin = server_env["HUTCH_URL"], server_env["HUTCH_API_KEY"]
    name = f"private-{uuid.uuid4().hex[:8]}"
    Template.from_template("base").run("touch /mine").build(name)
    other = httpx.post(f"{url}/keys", json={"name": "tpl-test"},
                       headers={"X-API-KEY": admin}).json()
    try:
        # Answered exactly as a template that never existed.
        with pytest.raises(errors.TemplateError, match=f"unknown template '{name}'"):
            Sandbox.create(template=name, api_key=other["key"])
        r = httpx.get(f"{url}/templates/{name}", headers={"X-API-KEY": other["key"]})
        assert r.status_code == 404
        assert name not in {t["templateID"] for t in
                            httpx.get(f"{url}/templates",
                                      headers={"X-API-KEY": other["key"]}).json()}
    finally:
        httpx.delete(f"{url}/keys/{other['id']}", headers={"X-API-KEY": admin})
        httpx.delete(f"{url}/templates/{name}", headers={"X-API-KEY": admin})


def test_a_failing_step_and_bad_requests(server_env, tmp_path):
    with pytest.raises(errors.TemplateError, match=r"(?s)exit code 3.*going down"):
        Template.from_template("base").run("echo going down; exit 3").build(
            f"broken-{uuid.uuid4().hex[:8]}")
    with pytest.raises(errors.InvalidArgumentError, match="matches nothing"):
        Template.from_template("base").copy("missing.txt", "/x").build("x", context_dir=tmp_path)
    with pytest.raises(errors.InvalidArgumentError, match="built-in"):
        Template.from_template("base").run("true").build("base")
    r = httpx.post(f"{server_env['HUTCH_URL']}/templates/contexts", content=b"not a tar",
                   headers={"X-API-KEY": server_env["HUTCH_API_KEY"]})
    assert r.status_code == 400 and "gzipped tar" in r.json()["message"]


def test_user_and_workdir_are_the_defaults_of_its_sandboxes(server_env):
    name = f"rooted-{uuid.uuid4().hex[:8]}"
    Template.from_template("base").workdir("/srv").user("root").build(name)
    try:
        with Sandbox.create(template=name) as sbx:
            try:
                assert sbx.commands.run("whoami; pwd").stdout == "root\n/srv\n"
                # Asking still wins.
                assert sbx.commands.run("whoami; pwd", user="user", cwd="/tmp").stdout == \
                    "user\n/tmp\n"
            finally:
                sbx.kill()
    finally:
        httpx.delete(f"{server_env['HUTCH_URL']}/templates/{name}",
                     headers={"X-API-KEY": server_env["HUTCH_API_KEY"]})


def test_the_cli_builds_from_a_dockerfile(server_env, context):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    (context / "Dockerfile").write_text("FROM base\nARG WHO=world\nCOPY notes.txt /srv/\n"
                                        f"RUN echo hello $WHO > /srv/hello # {name}\n")
    env = {**os.environ, **server_env}

    def hutch(*args):
        return subprocess.run([sys.executable, "-m", "hutch", *args], env=env,
                              capture_output=True, text=True, timeout=600)

    built = hutch("template", "build", "-f", str(context / "Dockerfile"), "-n", name,
                  "--build-arg", "WHO=cli", str(context))
    assert built.returncode == 0, built.stderr
    assert f"built {name} (2 layers)" in built.stdout
    assert "[1/2] COPY notes.txt /srv/" in built.stderr
    try:
        listed = json.loads(hutch("template", "ls", "--json").stdout)
        assert any(t["templateID"] == name for t in listed)
        with Sandbox.create(template=name) as sbx:
            try:
                assert sbx.commands.run("cat /srv/hello /srv/notes.txt").stdout == \
                    "hello cli\nnotes\n"
            finally:
                sbx.kill()
    finally:
        assert hutch("template", "rm", name).returncode == 0
    assert hutch("template", "rm", name).returncode != 0


def test_a_start_command_is_up_before_the_create_returns(server_env, tmp_path):
    name = f"served-{uuid.uuid4().hex[:8]}"
    (tmp_path / "index.html").write_text("hello from the template\n")
    Template.from_template("base").copy("index.html", "/srv/www/").start_cmd(
        "cd /srv/www && python3 -m http.server 8000",
        ready_cmd="curl -sf http://127.0.0.1:8000/ >/dev/null").build(name, context_dir=tmp_path)
    try:
        with Sandbox.create(template=name) as sbx:
            try:
                # No waiting here: the create returned once the ready command succeeded.
                r = sbx.commands.run("curl -s http://127.0.0.1:8000/index.html")
                assert r.stdout == "hello from the template\n"
            finally:
                sbx.kill()
        # A ready command that never succeeds fails the create, saying so, leaving nothing.
        never = f"never-{uuid.uuid4().hex[:8]}"
        Template.from_template("base").start_cmd("sleep 1000", ready_cmd="exit 1").build(never)
        try:
            before = {s.sandbox_id for s in Sandbox.list().next_items()}
            with pytest.raises(errors.HutchError, match="ready command 'exit 1' did not succeed"):
                Sandbox.create(template=never)
            assert {s.sandbox_id for s in Sandbox.list().next_items()} <= before
        finally:
            httpx.delete(f"{server_env['HUTCH_URL']}/templates/{never}",
                         headers={"X-API-KEY": server_env["HUTCH_API_KEY"]})
    finally:
        httpx.delete(f"{server_env['HUTCH_URL']}/templates/{name}",
                     headers={"X-API-KEY": server_env["HUTCH_API_KEY"]})


def test_build_logs(server_env):
    name = f"logged-{uuid.uuid4().hex[:8]}"
    Template.from_template("base").run(f"echo first {name}").run("echo second; echo third") \
        .build(name)
    env = {**os.environ, **server_env}
    try:
        out = subprocess.run([sys.executable, "-m", "hutch", "template", "logs", name],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout == (f"## RUN echo first {name}\nfirst {name}\n"
                              "## RUN echo second; echo third\nsecond\nthird\n"), out.stdout
        missing = subprocess.run([sys.executable, "-m", "hutch", "template", "logs", "nope"],
                                 env=env, capture_output=True, text=True, timeout=60)
        assert missing.returncode != 0 and "not found" in missing.stderr
    finally:
        httpx.delete(f"{server_env['HUTCH_URL']}/templates/{name}",
                     headers={"X-API-KEY": server_env["HUTCH_API_KEY"]})


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from ..oci import running_registry

    with running_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


def test_a_template_from_an_image_in_a_registry(server_env, registry, tmp_path):
    """The session's server trusts plain-HTTP registries on 127.0.0.1 (tests/conftest.py)."""
    from ..oci import push_tiny_image

    ref = push_tiny_image(registry, tmp_path, f"hutch-test/tiny-{uuid.uuid4().hex[:6]}:1")
    name = f"imaged-{uuid.uuid4().hex[:8]}"
    lines: list[str] = []
    built = Template.from_image(ref).user("root").run("cat /new.txt; ls /").build(
        name, on_log=lines.append)
    try:
        assert built["base"] == ref and built["env"]["GREETING"] == "hi there"
        assert built["workdir"] == "/home/app" and built["user"] == "root"
        assert "from layer two" in lines and "gone.txt" not in lines
        # This image has no python3 for hutch's agent, nor a sleep for the process a forked
        # agent's sandbox waits on: a create says so at once.
        with pytest.raises(errors.InvalidArgumentError, match="has no python3"):
            Sandbox.create(template=name)
        # With a sleep the agent is forked in from the host, and python3 is not needed.
        Template.from_image(ref).user("root").run("ln -s busybox /bin/sleep").build(
            f"{name}-s")
        sbx = Sandbox.create(template=f"{name}-s")
        try:
            assert sbx.files.read("/new.txt") == "from layer two\n"
            p = sbx.exec("/bin/busybox", "echo", "no python here")
            assert p.stdout.read() == "no python here\n" and p.wait() == 0
        finally:
            sbx.kill()
    finally:
        for each in (name, f"{name}-s"):
            httpx.delete(f"{server_env['HUTCH_URL']}/templates/{each}",
                         headers={"X-API-KEY": server_env["HUTCH_API_KEY"]})
    with pytest.raises(errors.HutchError, match="skopeo"):
        Template.from_image(f"{registry}/hutch-test/missing:1").build(f"x-{name}")


def test_a_templates_size_is_its_sandboxes_default(server_env):
    name = f"sized-{uuid.uuid4().hex[:8]}"
    Template.from_template("base").run("true").build(name, cpu=2, memory_mb=384)
    try:
        with Sandbox.create(template=name) as sbx:
            try:
                info = sbx.get_info()
                assert (info.cpu_count, info.memory_mb) == (2, 384)
            finally:
                sbx.kill()
        with Sandbox.create(template=name, memory_mb=512) as sbx:   # asking still wins
            try:
                assert sbx.get_info().memory_mb == 512
            finally:
                sbx.kill()
    finally:
        httpx.delete(f"{server_env['HUTCH_URL']}/templates/{name}",
                     headers={"X-API-KEY": server_env["HUTCH_API_KEY"]})
