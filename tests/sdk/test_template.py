"""The ``Template`` builder: each method one step, the same definition a Dockerfile gives,
and bad input refused where it is written."""

from __future__ import annotations

import pytest

from hutch import Template
from hutch.errors import InvalidArgumentError
from hutch.protocol.template import Definition, Step


def test_a_chain_builds_the_steps_in_order():
    tpl = (Template.from_template("base")
           .apt_install("ffmpeg", "jq")
           .pip_install(["yt-dlp", "openai==1.50"])
           .npm_install("typescript")
           .copy(["tools/", "*.cfg"], "/opt/tools/", chown="user", mode=0o755)
           .env({"TOOLS": "/opt/tools"}, DEBUG="1")
           .workdir("/opt/tools")
           .user("user")
           .run("make all", env={"JOBS": "2"})
           .start_cmd("python3 -m http.server 8000", ready_cmd="curl -sf localhost:8000"))
    d = tpl.definition
    assert d.base == "base"
    assert d.steps == (
        Step("apt", ("ffmpeg", "jq")),
        Step("pip", ("yt-dlp", "openai==1.50")),
        Step("npm", ("typescript",)),
        Step("copy", ("tools/", "*.cfg", "/opt/tools/"), (("chmod", "755"), ("chown", "user"))),
        Step("env", ("TOOLS", "/opt/tools")),
        Step("env", ("DEBUG", "1")),
        Step("workdir", ("/opt/tools",)),
        Step("user", ("user",)),
        Step("run", ("make all",), env=(("JOBS", "2"),)),
    )
    assert (d.start_cmd, d.ready_cmd) == ("python3 -m http.server 8000",
                                          "curl -sf localhost:8000")
    assert Definition.from_json(d.to_json()) == d


def test_bases():
    assert Template.debian().definition.base == "base"
    assert Template.debian("trixie").definition.base == "debian:trixie"
    assert Template.from_image("python:3.12-slim").definition.base == "python:3.12-slim"


def test_the_dockerfile_it_writes_parses_back_to_the_same_steps(tmp_path):
    tpl = (Template.from_image("python:3.12-slim").apt_install("git")
           .copy("app/", "/srv/app/").env(PORT="8000").workdir("/srv/app")
           .run("pip install -e .").start_cmd("python3 -m app"))
    text = tpl.to_dockerfile()
    assert text.splitlines()[0] == "FROM python:3.12-slim"
    assert "RUN apt-get update && apt-get install -y --no-install-recommends git" in text
    (tmp_path / "Dockerfile").write_text(text)
    again = Template.from_dockerfile(tmp_path / "Dockerfile").definition
    # The apt step comes back as the RUN line that does the same; the rest as they were.
    assert again.steps[0].kind == "run" and again.steps[1:] == tpl.definition.steps[1:]
    assert again.start_cmd == "/bin/sh -c 'python3 -m app'"


def test_from_dockerfile_text_or_path(tmp_path):
    text = "FROM base\nRUN echo $V\nARG V=1\nRUN echo $V\n"
    assert Template.from_dockerfile(text).definition.steps[1].env == (("V", "1"),)
    (tmp_path / "D").write_text(text)
    assert Template.from_dockerfile(str(tmp_path / "D"), {"V": "2"}).definition.steps[1].env \
        == (("V", "2"),)


@pytest.mark.parametrize("make, words", [
    (lambda: Template(""), "needs a base"),
    (lambda: Template().apt_install(), "at least 1"),
    (lambda: Template().copy(["a", "b"], "/dst"), "ending in '/'"),
    (lambda: Template().env({"A=B": "1"}), "bad variable name"),
    (lambda: Template().run("echo \x00"), "NUL"),
    (lambda: Definition.from_json({"base": "base", "steps": [{"kind": "sudo", "args": []}]}),
     "unknown step kind"),
    (lambda: Definition.from_json({"base": "base", "stepz": []}), "unknown template field"),
    (lambda: Definition.from_json({"base": "base", "ready_cmd": "true"}), "needs a start"),
])
def test_bad_input_is_refused_where_it_is_written(make, words):
    with pytest.raises(InvalidArgumentError, match=words):
        make()
