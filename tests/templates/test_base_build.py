"""The real base template: built once into the shared root, then inspected from the outside
and from inside a user namespace that maps it the way a sandbox does."""

from __future__ import annotations

import os
import ssl
import stat

import pytest

from hutch.templates import TemplateStore
from hutch.templates.mmdebstrap import PHASES, OutputParser

from .conftest import BUILD_TIMEOUT, SHARED_ROOT, UID_BASE, in_template

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT)]


def owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


async def test_base_is_built_and_current(base, shared_store):
    assert base.name == "base"
    assert base.digest == shared_store.digest("base")
    (rootfs,) = base.layers
    assert rootfs == SHARED_ROOT / "base" / base.digest / "rootfs"
    assert base.user == "user" and base.workdir == "/home/user"
    assert base.env["LANG"] == "C.UTF-8" and "/usr/bin" in base.env["PATH"]
    # Current: ensure and get answer from disk without building, also for a fresh store.
    class Never:
        def start(self, template):
            raise AssertionError("rebuilt a current template")
    again = await TemplateStore(SHARED_ROOT, uid_base=UID_BASE).ensure("base", Never())
    assert again == base
    assert shared_store.list() == [base] or base in shared_store.list()
    # Only the current build is kept.
    assert [p.name for p in (SHARED_ROOT / "base").iterdir()] == [base.digest]


def test_metadata_records_the_build(base, shared_store):
    meta = shared_store.metadata("base")
    assert meta["digest"] == base.digest and meta["uid_base"] == UID_BASE
    assert 100 * 2**20 < meta["size_bytes"] < 600 * 2**20
    assert meta["build_seconds"] > 0 and meta["entries"] > 5000
    for pkg in ("python3", "sudo", "git", "curl", "python-is-python3", "ca-certificates"):
        assert pkg in meta["packages"], pkg


def test_owners_are_shifted_into_the_sandbox_range(base):
    (rootfs,) = base.layers
    assert owner(rootfs) == (UID_BASE, UID_BASE)
    assert owner(rootfs / "home/user") == (UID_BASE + 1000, UID_BASE + 1000)
    assert owner(rootfs / "etc/shadow") == (UID_BASE, UID_BASE + 42)   # group shadow
    sudo = os.stat(rootfs / "usr/bin/sudo")
    assert (sudo.st_uid, sudo.st_gid) == (UID_BASE, UID_BASE)
    assert sudo.st_mode & stat.S_ISUID
    assert os.stat(rootfs / "usr/sbin/unix_chkpwd").st_mode & stat.S_ISGID
    for name in ("proc", "sys", "dev", "tmp", "run"):
        assert stat.S_ISDIR(os.lstat(rootfs / name).st_mode)
    # Nothing below the id range is left (a sample: the whole /etc tree).
    for dirpath, dirnames, filenames in os.walk(rootfs / "etc"):
        for n in dirnames + filenames:
            assert os.lstat(os.path.join(dirpath, n)).st_uid >= UID_BASE


def test_host_cas_are_trusted_inside(base, shared_store):
    (rootfs,) = base.layers
    assert shared_store.ca_files, "this host has extra CAs to test with"
    bundle = (rootfs / "etc/ssl/certs/ca-certificates.crt").read_text()
    for name, data in shared_store.ca_files.items():
        inside = rootfs / "usr/local/share/ca-certificates/hutch-host" / name
        assert inside.read_bytes() == data
        der = ssl.PEM_cert_to_DER_cert(data.decode())
        assert ssl.DER_cert_to_PEM_cert(der).split("-----")[2].strip().replace("\n", "") in \
            bundle.replace("\n", "")
    # Python inside loads them into its default trust store.
    wanted = {ssl.PEM_cert_to_DER_cert(d.decode()).hex() for d in shared_store.ca_files.values()}
    code = ("import ssl; c = ssl.create_default_context(); "
            "print('\\n'.join(x.hex() for x in c.get_ca_certs(binary_form=True)))")
    r = in_template(rootfs, "python3", "-c", code, user="user")
    assert r.returncode == 0, r.stderr
    assert wanted <= set(r.stdout.split())


def test_host_resolver_does_not_leak(base):
    (rootfs,) = base.layers
    assert (rootfs / "etc/resolv.conf").read_text() == ""
    assert "localhost" in (rootfs / "etc/hosts").read_text()


def test_python_and_tools_run_inside(base):
    (rootfs,) = base.layers
    script = (
        "set -e; python3 -c 'import sys, venv, ssl, sqlite3; print(sys.version_info[:2])';"
        " python --version; pip --version; git --version; curl --version | head -n1;"
        " command -v ps; ip -V; echo $0; tput -T xterm cols; less --version | head -n1;"
        " python3 -c 'print(\"h\\u00e9llo\")'"
    )
    r = in_template(rootfs, "bash", "-c", script, user="user")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "(3, 11)" in out and "Python 3.11" in out and "pip " in out
    assert "git version" in out and "curl " in out and "/usr/bin/ps" in out and "héllo" in out


def test_user_account_and_passwordless_sudo(base):
    (rootfs,) = base.layers
    r = in_template(rootfs, "sh", "-c", "id; echo $HOME; cd && pwd; sudo -n id -u",
                    user="user")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0].startswith("uid=1000(user) gid=1000(user)")
    assert lines[1:4] == ["/home/user", "/home/user", "0"]
    passwd = (rootfs / "etc/passwd").read_text().splitlines()
    assert "user:x:1000:1000::/home/user:/bin/bash" in passwd
    assert any(line.startswith("root:x:0:0:") and line.endswith(":/bin/bash") for line in passwd)
    sudoers = rootfs / "etc/sudoers.d/hutch-user"
    assert stat.S_IMODE(os.stat(sudoers).st_mode) == 0o440
    # A login shell for both users works and sets the locale.
    for user in ("root", "user"):
        r = in_template(rootfs, "su", "-", user, "-c", "echo $SHELL; locale")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("/bin/bash\n")


def test_pip_and_venv_work_without_network(base, tmp_path):
    (rootfs,) = base.layers
    r = in_template(rootfs, "sh", "-c",
                    "cd && python3 -m venv --without-pip v && v/bin/python -c 'import sys;"
                    " print(sys.prefix)' && rm -rf v && pip install --no-index nothing-here",
                    user="user")
    assert "/home/user/v" in r.stdout, r.stderr
    # pip gets as far as looking for the package: no PEP 668 refusal.
    assert "externally-managed-environment" not in r.stderr
    assert "No matching distribution found for nothing-here" in r.stderr


def test_apt_is_configured_for_use_inside(base):
    (rootfs,) = base.layers
    sources = (rootfs / "etc/apt/sources.list").read_text()
    assert "bookworm main" in sources and "bookworm-security" in sources
    r = in_template(rootfs, "apt-get", "check")
    assert r.returncode == 0, r.stderr
    # Lists are dropped to keep the image small: `apt-get update` comes first inside.
    assert not [p for p in (rootfs / "var/lib/apt/lists").iterdir() if p.is_file()
                and p.name not in ("lock",)]


def test_the_real_build_log_drives_progress_to_the_end(base):
    (rootfs,) = base.layers
    parser = OutputParser()
    got = []
    with open(rootfs.parent / "build.log", encoding="utf-8") as log:
        for line in log:
            if (u := parser.feed(line)) is not None:
                got.append(u)
    fractions = [u.fraction for u in got]
    assert fractions == sorted(fractions)
    assert fractions[-1] == PHASES["cleanup"][1]
    installs = [u for u in got if u.phase == "installing packages"]
    done, total = installs[-1].detail.split("/")
    assert done == total and int(total) > 30
    assert installs[-1].fraction == PHASES["install"][2]
