"""The shell script that finishes a bootstrapped root filesystem.

mmdebstrap runs it on the host as a customize hook with the new root as ``$1``; everything
that has to happen inside runs through ``chroot``. Generating it from the recipe (a pure
function) keeps the whole configuration visible in one place and covered by the digest.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .recipe import Recipe

CA_DIR_INSIDE = "/usr/local/share/ca-certificates/hutch-host"

_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "127.0.1.1\tsandbox\n"
)


def script(recipe: Recipe, *, ca_source: Path | None) -> str:
    """The script text. ``ca_source`` is a host directory of ``*.crt`` files to trust inside
    (None: trust only Debian's CA bundle)."""
    q = shlex.quote
    user, uid, home = recipe.user, recipe.uid, recipe.workdir
    lines = [
        'root="$1"',
        "in_root() { chroot \"$root\" \"$@\"; }",
        # Name resolution is the runtime's job per sandbox; the build host's resolver address
        # must not leak into every sandbox, so these are neutral defaults it can bind over.
        'printf "" > "$root/etc/resolv.conf"',
        f'printf {q(_HOSTS)} > "$root/etc/hosts"',
        'printf "sandbox\\n" > "$root/etc/hostname"',
        'chmod 0644 "$root/etc/resolv.conf" "$root/etc/hosts" "$root/etc/hostname"',
        'printf "LANG=C.UTF-8\\n" > "$root/etc/default/locale"',
        # Every command arrives as a login shell (`bash -l -c`), and Debian's /etc/profile
        # forks `id -u` to pick a PATH: bash knows $EUID without a fork (sh falls back).
        "sed -i 's/\"$(id -u)\"/\"${EUID:-$(id -u)}\"/g' \"$root/etc/profile\"",
        "in_root usermod --shell /bin/bash root",
        f"in_root useradd --create-home --home-dir {q(home)} --uid {uid} --user-group"
        f" --shell /bin/bash {q(user)}",
    ]
    if "sudo" in recipe.packages:
        # Passwordless sudo for the default user: the sandbox boundary is the namespace and
        # the runtime's policy, not the password of an account nobody can type into.
        lines += [
            f'printf "%s\\n" {q(f"{user} ALL=(ALL:ALL) NOPASSWD: ALL")}'
            ' > "$root/etc/sudoers.d/hutch-user"',
            'chmod 0440 "$root/etc/sudoers.d/hutch-user"',
        ]
    if ca_source is not None:
        lines += [
            f'mkdir -p "$root{CA_DIR_INSIDE}"',
            f'cp {q(str(ca_source))}/*.crt "$root{CA_DIR_INSIDE}/"',
            f'chmod 0644 "$root{CA_DIR_INSIDE}"/*.crt',
            "in_root update-ca-certificates --fresh > /dev/null",
        ]
    for command in recipe.run:
        lines.append(f"in_root sh -euc {q(command)}")
    return "set -eu\n" + "\n".join(lines) + "\n"
