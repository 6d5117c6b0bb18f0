"""What a template is made of, as plain data, and the content hash that names a build.

A recipe says *what* goes into a template; the builder decides *how*. Keeping it frozen data
means its digest is a pure function: the same recipe and build inputs always hash the same,
and any change that could change the bytes on disk changes the digest, which is what makes
the store rebuild an outdated template.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

# Bumped whenever the builder changes what it writes for the same recipe (post-processing,
# layout, configuration script), so templates built by an older hutch are rebuilt.
BUILDER_VERSION = 2


@dataclass(frozen=True)
class Recipe:
    """A root filesystem: either a Debian bootstrap (``parent`` is None) or a layer on top of
    another template (``parent`` names it; its layers sit below this one). A layer installs
    ``packages`` with apt and runs ``run`` over its parent; ``suite``, ``variant`` and the dpkg
    path rules are the parent's (they live in its dpkg config), and its ``env``, ``user`` and
    ``workdir`` are its own, so a layer repeats what it keeps from the parent."""

    name: str
    packages: tuple[str, ...]
    suite: str = "bookworm"
    variant: str = "minbase"
    parent: str | None = None
    aliases: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    user: str = "user"
    uid: int = 1000
    workdir: str = "/home/user"
    # Shell commands run as root inside the new root filesystem after the packages are in.
    run: tuple[str, ...] = ()
    # Paths dpkg leaves out (docs, man pages, translations): the image stays small and, since
    # the rule is written into the image's dpkg config, packages installed later obey it too.
    dpkg_exclude: tuple[str, ...] = ()
    dpkg_include: tuple[str, ...] = ()
    description: str = ""
    # In-sandbox services the agent starts with every sandbox of this template (for now only
    # "code-interpreter", the Jupyter-backed server behind port 49999). They shape what runs,
    # not the bytes on disk, so they stay out of the digest.
    services: tuple[str, ...] = ()

    def content(self) -> dict:
        """The fields that shape the bytes on disk (aliases and description do not)."""
        data = asdict(self)
        del data["aliases"], data["description"], data["services"]
        data["env"] = [list(kv) for kv in self.env]
        return data


def digest(recipe: Recipe, *, parent_digest: str | None = None,
           inputs: dict[str, object] | None = None) -> str:
    """Content hash of a build: the recipe, the parent's digest (a layer is stale when what it
    sits on changes) and the store's build inputs (uid shift, trusted CA certificates)."""
    doc = {
        "builder": BUILDER_VERSION,
        "recipe": recipe.content(),
        "parent": parent_digest,
        "inputs": inputs or {},
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
