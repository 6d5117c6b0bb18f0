"""The built-in templates and the names they answer to.

``base`` is a Debian bootstrap. Richer templates are *layers* on top of it rather than full
builds of their own (see ``layer.py``): ``code-interpreter`` is meant to be
``Recipe(name="code-interpreter", parent="base", aliases=("code-interpreter-v1",),
packages=(...apt...), run=("pip install ...", ...))``, built as one more read-only layer whose
``Template.layers`` is ``(its own rootfs, base's rootfs)``. Sandboxes of both templates then
share base's files on disk and in the page cache, and rebuilding the upper layer does not redo
the bootstrap. A layer's digest includes its parent's, so a new ``base`` makes it stale."""

from __future__ import annotations

from types import MappingProxyType

from hutch.errors import NotFoundError

from .recipe import Recipe

# Every template sees the same search path; ~/.local/bin comes first so that tools installed
# with a plain `pip install` as the default user (pip falls back to a user install) just run.
PATH = "/home/user/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BASE_ENV: tuple[tuple[str, str], ...] = (
    ("PATH", PATH),
    ("LANG", "C.UTF-8"),
    # Agents run apt without a terminal to answer debconf questions.
    ("DEBIAN_FRONTEND", "noninteractive"),
    # Point TLS clients that bring their own CA bundle (requests and pip from PyPI, certifi)
    # at the system store, the one that holds any CA the operator chose to trust.
    ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
    ("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"),
)

BASE = Recipe(
    name="base",
    description="Debian 12 (bookworm) with python3, pip, venv, sudo, curl, git; user `user`",
    suite="bookworm",
    variant="minbase",
    packages=(
        "bash", "ca-certificates", "curl", "git", "iproute2", "less", "ncurses-bin",
        "netbase", "procps", "python-is-python3", "python3", "python3-pip", "python3-venv",
        "sudo",
    ),
    env=BASE_ENV,
    user="user",
    uid=1000,
    workdir="/home/user",
    run=(
        # A sandbox is disposable, so system-wide `pip install` is allowed (PEP 668's marker
        # would otherwise refuse it and send agents round in circles).
        "rm -f /usr/lib/python3*/EXTERNALLY-MANAGED",
    ),
    dpkg_exclude=(
        "/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
        "/usr/share/locale/*", "/usr/share/lintian/*", "/usr/share/linda/*",
    ),
    # Licence texts stay with the binaries they cover.
    dpkg_include=("/usr/share/doc/*/copyright", "/usr/share/locale/locale.alias"),
)

# What agents reach for first: the data stack, plotting, HTTP, spreadsheets, symbolic maths.
DATA_STACK = (
    "numpy", "pandas", "matplotlib", "scipy", "scikit-learn", "seaborn", "plotly", "requests",
    "openpyxl", "pillow", "sympy", "tabulate", "beautifulsoup4", "pyarrow",
)
# The kernels' machinery: IPython's kernel and the client library the interpreter drives them
# with; bash_kernel is the bash language (the JavaScript kernel ships with the agent).
JUPYTER = ("ipykernel", "ipython", "jupyter_client", "bash_kernel")

CODE_INTERPRETER = Recipe(
    name="code-interpreter",
    parent="base",
    aliases=("code-interpreter-v1",),
    description="base plus Jupyter kernels (Python, bash, JavaScript), Node.js and the data "
                "stack (numpy, pandas, matplotlib, scipy, scikit-learn, seaborn, plotly, ...)",
    packages=("nodejs", "npm", "fonts-dejavu-core"),
    env=BASE_ENV + (
        # Plots render without a display; the kernel swaps in its inline backend.
        ("MPLBACKEND", "Agg"),
    ),
    run=(
        "pip install --no-cache-dir --no-warn-script-location "
        + " ".join(JUPYTER + DATA_STACK),
        # Fonts and caches that the first plot would otherwise build (several seconds) are
        # made once here, for every sandbox.
        "python3 -c 'import matplotlib.pyplot as plt; plt.figure(); plt.close()'",
        "mkdir -p /home/user/.cache && cp -a /root/.cache/matplotlib /home/user/.cache/ && "
        "chown -R user:user /home/user/.cache",
        "find /usr/local/lib -name __pycache__ -prune -o -name '*.py' -print0 | "
        "xargs -0 -n 200 python3 -m compileall -q -j 0 >/dev/null || true",
    ),
    services=("code-interpreter",),
)

BUILTIN: MappingProxyType[str, Recipe] = MappingProxyType(
    {r.name: r for r in (BASE, CODE_INTERPRETER)})


def _aliases(recipes) -> dict[str, str]:
    table: dict[str, str] = {}
    for recipe in recipes:
        table[recipe.name] = recipe.name
        for alias in recipe.aliases:
            table[alias] = recipe.name
    return table


class Catalog:
    """Recipes by canonical name plus their aliases; resolving a name is a dict lookup."""

    def __init__(self, recipes=BUILTIN.values()) -> None:
        self._recipes = {r.name: r for r in recipes}
        self._names = _aliases(self._recipes.values())
        for r in self._recipes.values():
            if r.parent is not None and r.parent not in self._recipes:
                raise ValueError(f"template {r.name!r} sits on unknown template {r.parent!r}")

    def resolve(self, name: str) -> str:
        try:
            return self._names[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._names))
            raise NotFoundError(f"unknown template {name!r}; known templates: {known}") from None

    def recipe(self, name: str) -> Recipe:
        return self._recipes[self.resolve(name)]

    def names(self) -> list[str]:
        return sorted(self._recipes)

    def chain(self, name: str) -> list[Recipe]:
        """The recipe and the ones below it, topmost first."""
        out = [self.recipe(name)]
        while out[-1].parent is not None:
            out.append(self._recipes[out[-1].parent])
        return out
