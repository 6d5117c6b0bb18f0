"""Progress: reading mmdebstrap's output, and showing it on a terminal or in a log."""

from __future__ import annotations

import io

from hutch.templates import Progress, TerminalProgress
from hutch.templates.mmdebstrap import PHASES, OutputParser

# The shape of `mmdebstrap --verbose` output (1.3.x), cut down to two essential and three
# remaining packages.
SAMPLE = """\
I: automatically chosen mode: root
I: running apt-get update...
Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]
Fetched 9424 kB in 1s (9273 kB/s)
I: downloading packages with apt...
0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.
Need to get 1 MB of archives.
Get:1 http://deb.debian.org/debian bookworm/main amd64 libc6 amd64 2.36 [2 MB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 bash amd64 5.2 [1 MB]
Fetched 3 MB in 0s (249 MB/s)
I: extracting archives...
I: installing essential packages...
Unpacking libc6:amd64 (2.36) ...
Setting up libc6:amd64 (2.36) ...
Unpacking bash (5.2) ...
Setting up bash (5.2) ...
I: installing remaining packages inside the chroot...
0 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.
Get:1 http://deb.debian.org/debian bookworm/main amd64 sudo amd64 1.9 [1 MB]
Unpacking sudo (1.9) ...
Unpacking curl (7.88) ...
Unpacking git (2.39) ...
Setting up sudo (1.9) ...
Setting up curl (7.88) ...
Setting up git (2.39) ...
I: running --customize-hook in shell: sh -c 'sh -eu /x/configure.sh "$1"' exec /x/rootfs
I: cleaning package lists and apt cache...
I: success in 27.6 seconds
"""


def updates(text):
    parser = OutputParser()
    return parser, [u for line in text.splitlines() if (u := parser.feed(line)) is not None]


def test_parser_follows_phases_in_order_with_counts():
    parser, got = updates(SAMPLE)
    phases = []
    for u in got:
        if not phases or phases[-1] != u.phase:
            phases.append(u.phase)
    assert phases == [
        "updating package lists", "downloading essential packages",
        "extracting essential packages", "installing essential packages",
        "downloading packages", "installing packages", "configuring", "cleaning up",
    ]
    fractions = [u.fraction for u in got]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] < 1
    details = [u.detail for u in got]
    assert "2/2" in details                 # essential downloads, then installs, counted
    assert details.count("3/3") >= 1 and "1/3" in details
    essential_done = [u for u in got if u.phase == "installing essential packages"][-1]
    assert essential_done.fraction == PHASES["essential"][2]
    installed = [u for u in got if u.phase == "installing packages"][-1]
    assert installed.fraction == PHASES["install"][2]
    assert parser.errors == []


def test_parser_collects_apt_errors_and_ignores_noise():
    parser = OutputParser()
    assert parser.feed("dpkg: warning: ignoring pre-dependency problem!") is None
    assert parser.feed("Reading package lists...") is None
    parser.feed("E: Unable to locate package nosuchpackage")
    assert parser.errors == ["Unable to locate package nosuchpackage"]


def test_non_tty_prints_one_line_per_phase():
    out = io.StringIO()
    progress = TerminalProgress(out)
    assert isinstance(progress, Progress) and progress.tty is False
    progress.start("base")
    _, got = updates(SAMPLE)
    for u in got:
        progress.update(u.phase, u.fraction, u.detail)
    progress.finish(True, "252 MiB")
    lines = out.getvalue().splitlines()
    assert lines[0] == "hutch: building template base"
    assert lines[1] == "hutch: template base:   2% updating package lists"
    assert lines[-2] == "hutch: template base:  93% cleaning up"
    assert lines[-1].startswith("hutch: template base built in ")
    assert lines[-1].endswith("(252 MiB)")
    assert len(lines) == 2 + 8
    assert "\r" not in out.getvalue()


def test_failure_is_reported():
    out = io.StringIO()
    progress = TerminalProgress(out)
    progress.start("base")
    progress.finish(False, "mmdebstrap exited with status 1")
    last = out.getvalue().splitlines()[-1]
    assert last.endswith("FAILED in 0.0 s: mmdebstrap exited with status 1")


def test_tty_draws_a_bar_in_place():
    out = io.StringIO()
    progress = TerminalProgress(out, tty=True, width=10, interval=0)
    progress.start("base")
    progress.update("installing packages", 0.5, "40/87")
    progress.update("installing packages", 0.75, "60/87")
    progress.finish(True, "252 MiB")
    text = out.getvalue()
    assert "\rbase" not in text   # every redraw clears the line first
    assert "\r\x1b[2Kbase [#####-----]  50% installing packages 40/87" in text
    assert "\r\x1b[2Kbase [#######---]  75% installing packages 60/87" in text
    assert text.endswith("\n") and "built in" in text.splitlines()[-1]


def test_superseded_debs_are_pruned_from_the_cache():
    from hutch.templates.mmdebstrap import stale_debs
    cached = ["bash_5.2.15-2_amd64.deb", "bash_5.2.15-2+b13_amd64.deb",
              "libc6_2.36-9_amd64.deb", "vim_9.0_amd64.deb", "lock", "git_2.39_all.deb"]
    used = ["bash_5.2.15-2+b13_amd64.deb", "libc6_2.36-9+deb12u14_amd64.deb", "git_2.39_all.deb",
            "partial"]
    assert stale_debs(cached, used) == ["bash_5.2.15-2_amd64.deb", "libc6_2.36-9_amd64.deb"]
