"""Recipes, digests and names: pure, no I/O."""

from __future__ import annotations

import dataclasses

import pytest

from hutch.errors import NotFoundError
from hutch.templates import BASE, Catalog, Recipe
from hutch.templates.recipe import digest


def test_digest_is_stable_for_equal_recipes():
    copy = dataclasses.replace(BASE)
    assert digest(BASE) == digest(copy)
    assert len(digest(BASE)) == 16 and int(digest(BASE), 16) >= 0


@pytest.mark.parametrize("change", [
    {"packages": BASE.packages + ("vim-tiny",)},
    {"suite": "trixie"},
    {"env": BASE.env + (("FOO", "1"),)},
    {"uid": 1001},
    {"run": BASE.run + ("true",)},
    {"dpkg_exclude": ()},
    {"workdir": "/root"},
])
def test_digest_changes_with_the_recipe(change):
    assert digest(dataclasses.replace(BASE, **change)) != digest(BASE)


def test_digest_ignores_aliases_and_description():
    other = dataclasses.replace(BASE, aliases=("foo",), description="something else")
    assert digest(other) == digest(BASE)


def test_digest_covers_parent_and_build_inputs():
    plain = digest(BASE)
    assert digest(BASE, parent_digest="abc") != plain
    assert digest(BASE, inputs={"uid_base": 100000}) != digest(BASE, inputs={"uid_base": 200000})
    assert digest(BASE, inputs={"a": 1, "b": 2}) == digest(BASE, inputs={"b": 2, "a": 1})


def test_builtin_catalog_has_base_and_the_code_interpreter_over_it():
    catalog = Catalog()
    assert catalog.names() == ["base", "code-interpreter"]
    assert catalog.resolve("base") == "base"
    assert catalog.recipe("base") is BASE
    assert catalog.chain("base") == [BASE]
    ci = catalog.recipe("code-interpreter-v1")
    assert catalog.chain("code-interpreter") == [ci, BASE]
    assert ci.services == ("code-interpreter",) and BASE.services == ()
    # What the template promises: Jupyter's machinery, bash and the data stack.
    installed = ci.run[0]
    for package in ("ipykernel", "jupyter_client", "bash_kernel", "numpy", "pandas",
                    "matplotlib", "scipy", "scikit-learn", "seaborn", "plotly", "requests",
                    "openpyxl", "pillow", "sympy"):
        assert f" {package}" in installed
    assert "nodejs" in ci.packages
    # Services shape what runs, not the bytes: they stay out of the digest.
    from dataclasses import replace
    assert digest(replace(ci, services=())) == digest(ci)


def test_aliases_resolve_to_canonical_names():
    child = Recipe(name="code-interpreter", parent="base", packages=("python3-numpy",),
                   aliases=("code-interpreter-v1",))
    catalog = Catalog([BASE, child])
    assert catalog.resolve("code-interpreter-v1") == "code-interpreter"
    assert catalog.resolve("code-interpreter") == "code-interpreter"
    assert catalog.chain("code-interpreter-v1") == [child, BASE]
    assert catalog.names() == ["base", "code-interpreter"]


@pytest.mark.parametrize("name", ["nope", "", "BASE", "base ", None])
def test_unknown_name_lists_known_ones(name):
    with pytest.raises(NotFoundError) as info:
        Catalog().resolve(name)
    assert "known templates: base" in str(info.value)
    assert info.value.status == 404


def test_a_recipe_on_an_unknown_parent_is_rejected():
    with pytest.raises(ValueError, match="unknown template 'nothing'"):
        Catalog([BASE, Recipe(name="x", parent="nothing", packages=())])


def test_base_recipe_has_what_sandboxes_rely_on():
    for pkg in ("python3", "python3-pip", "python3-venv", "python-is-python3", "sudo", "curl",
                "git", "ca-certificates", "procps", "iproute2", "ncurses-bin", "less", "bash"):
        assert pkg in BASE.packages
    env = dict(BASE.env)
    assert env["LANG"] == "C.UTF-8"
    assert "/usr/bin" in env["PATH"].split(":")
    assert (BASE.user, BASE.uid, BASE.workdir) == ("user", 1000, "/home/user")
