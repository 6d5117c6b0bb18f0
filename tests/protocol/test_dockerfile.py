"""Dockerfiles into template definitions: what is understood, and a clear error naming the
line for everything else."""

from __future__ import annotations

import shlex

import pytest

from hutch.errors import InvalidArgumentError
from hutch.protocol import dockerfile
from hutch.protocol.template import Definition, Step

FULL = """\
# syntax=docker/dockerfile:1
ARG PY=3.12
FROM python:${PY}-slim AS app
ARG PY
ARG VERSION=1.0
ENV APP_HOME=/opt/app \\
    MODE="prod mode"
WORKDIR $APP_HOME
COPY --chown=user:user requirements.txt setup.py ./
COPY ["src dir/", "lib/*.py", "/opt/app/src/"]
ADD --chmod=755 tools.tar.gz bin/
RUN pip install -r requirements.txt && \\
    echo v=$VERSION
RUN ["python3", "-c", "print('hi there')"]
USER user:user
WORKDIR data
LABEL org.example.version="${VERSION:-0}" team=ai
ENTRYPOINT ["python3", "-m", "app"]
CMD ["--port", "8000"]
"""


def test_a_full_dockerfile():
    d = dockerfile.parse(FULL, {"VERSION": "2.0"})
    assert d.base == "python:3.12-slim"
    run_env = (("PY", "3.12"), ("VERSION", "2.0"))
    assert d.steps == (
        Step("env", ("APP_HOME", "/opt/app")),
        Step("env", ("MODE", "prod mode")),
        Step("workdir", ("/opt/app",)),
        Step("copy", ("requirements.txt", "setup.py", "/opt/app/"), (("chown", "user:user"),)),
        Step("copy", ("src dir/", "lib/*.py", "/opt/app/src/")),
        Step("add", ("tools.tar.gz", "/opt/app/bin/"), (("chmod", "755"),)),
        Step("run", ("pip install -r requirements.txt &&  echo v=$VERSION",), env=run_env),
        Step("run", (shlex.join(["python3", "-c", "print('hi there')"]),), env=run_env),
        Step("user", ("user:user",)),
        Step("workdir", ("/opt/app/data",)),
    )
    assert d.labels == (("org.example.version", "2.0"), ("team", "ai"))
    assert d.start_cmd == "python3 -m app --port 8000"


def test_several_sources_are_all_kept():
    d = dockerfile.parse("FROM base\nCOPY a.txt b.txt c/ d*.py /dst/\n")
    assert d.steps[0].args == ("a.txt", "b.txt", "c/", "d*.py", "/dst/")


def test_start_commands_follow_dockers_rules():
    assert dockerfile.parse("FROM base\nCMD python3 app.py\n").start_cmd == "python3 app.py"
    assert dockerfile.parse('FROM base\nCMD ["node", "a b.js"]\n').start_cmd == "node 'a b.js'"
    # A shell-form ENTRYPOINT ignores CMD.
    assert dockerfile.parse("FROM base\nENTRYPOINT run.sh\nCMD x\n").start_cmd == "run.sh"
    assert dockerfile.parse('FROM base\nENTRYPOINT ["run"]\nCMD echo hi\n').start_cmd == \
        "run /bin/sh -c 'echo hi'"
    assert dockerfile.parse("FROM base\n").start_cmd is None


def test_variables():
    d = dockerfile.parse("FROM base\nARG A\nARG B=b\nENV C=${A:-dflt} D=${B:+yes} E=$B$B\n")
    assert [s.args for s in d.steps] == [("C", "dflt"), ("D", "yes"), ("E", "bb")]
    # ARGs before FROM serve FROM only.
    d = dockerfile.parse("ARG V=1\nFROM base\nRUN echo $V\n")
    assert d.steps[0].env == ()
    assert dockerfile.parse("ENV\tX=1\n".join(["FROM base\n", ""])).steps[0].args == ("X", "1")
    assert dockerfile.parse("FROM base\nENV LEGACY some value here\n").steps[0].args == \
        ("LEGACY", "some value here")


@pytest.mark.parametrize("text, line, words", [
    ("RUN true\n", 1, "first instruction must be FROM"),
    ("FROM base\nFROM other\n", 2, "one stage only"),
    ("FROM base\nCOPY --from=build /a /b\n", 2, "no --from"),
    ("FROM base\nEXPOSE 8000\n", 2, "EXPOSE is not supported"),
    ("FROM base\n\nHEALTHCHECK CMD true\n", 3, "ready command"),
    ("FROM base\nCOPY a b c\n", 2, "must be a directory ending in '/'"),
    ("FROM base\nADD https://example.com/x.tgz /x\n", 2, "URL"),
    ("FROM base\nCOPY onlyone\n", 2, "source and a destination"),
    ("FROM base\nFROBNICATE x\n", 2, "unknown instruction"),
    ("FROM scratch\n", 1, "scratch"),
    ("FROM base\nENV A=\"unclosed\n", 2, "unbalanced quotes"),
    ("FROM base\nCOPY --chmod=rwx a /b\n", 2, "octal"),
    ("# escape=`\nFROM base\n", 1, "escape"),
    ("FROM base\nUSER a b\n", 2, "USER name"),
])
def test_errors_name_the_line(text, line, words):
    with pytest.raises(InvalidArgumentError, match=f"line {line}: .*{words}"):
        dockerfile.parse(text)


def test_no_from_at_all():
    with pytest.raises(InvalidArgumentError, match="no FROM"):
        dockerfile.parse("# only a comment\n")


def test_round_trip_through_dockerfile_text():
    d = dockerfile.parse(FULL, {"VERSION": "2.0"})
    again = dockerfile.parse(d.to_dockerfile())
    assert again.base == d.base and again.labels == d.labels
    assert [s for s in again.steps if s.kind != "run"] == [s for s in d.steps if s.kind != "run"]
    assert [(s.args, s.env) for s in again.steps if s.kind == "run"] == \
        [(s.args, s.env) for s in d.steps if s.kind == "run"]
    assert Definition.from_json(d.to_json()) == d
