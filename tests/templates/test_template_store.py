"""TemplateStore lookups without building anything (fast)."""

from __future__ import annotations

import json

import pytest

from hutch.errors import NotFoundError
from hutch.templates import BASE, Catalog, Recipe, TemplateStore


@pytest.fixture
def cas(tmp_path):
    d = tmp_path / "cas"
    d.mkdir()
    (d / "one.crt").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (d / "ignored.pem").write_text("not a .crt")
    return d


def test_empty_store(tmp_path, cas):
    store = TemplateStore(tmp_path / "root", ca_dir=cas)
    assert store.get("base") is None
    assert store.list() == []
    assert store.metadata("base") is None
    assert store.resolve("base") == "base"
    assert list(store.ca_files) == ["one.crt"]


def test_unknown_template(tmp_path, cas):
    store = TemplateStore(tmp_path, ca_dir=cas)
    for call in (store.get, store.resolve, store.digest):
        with pytest.raises(NotFoundError, match="unknown template 'nope'; known templates: base"):
            call("nope")


async def test_ensure_and_remove_of_unknown_template_raise(tmp_path, cas):
    store = TemplateStore(tmp_path, ca_dir=cas)
    with pytest.raises(NotFoundError):
        await store.ensure("nope")
    with pytest.raises(NotFoundError):
        await store.remove("nope")
    assert not (tmp_path / "nope").exists()


def test_digest_depends_on_build_inputs(tmp_path, cas):
    plain = TemplateStore(tmp_path, ca_dir=cas).digest("base")
    assert TemplateStore(tmp_path, ca_dir=cas).digest("base") == plain
    assert TemplateStore(tmp_path, ca_dir=cas, uid_base=200000).digest("base") != plain
    assert TemplateStore(tmp_path, ca_dir=cas, trust_host_cas=False).digest("base") != plain
    (cas / "one.crt").write_text("changed")
    assert TemplateStore(tmp_path, ca_dir=cas).digest("base") != plain
    # No CA files and not trusting any build the same bytes, hence the same digest.
    empty = tmp_path / "none"
    empty.mkdir()
    assert TemplateStore(tmp_path, ca_dir=empty).digest("base") == \
        TemplateStore(tmp_path, ca_dir=cas, trust_host_cas=False).digest("base")


def _fake_build(store, name):
    """Lay out a finished build the way the store writes one (meta.json last)."""
    d = store.root / name / store.digest(name)
    (d / "rootfs").mkdir(parents=True)
    recipe = store.catalog.recipe(name)
    meta = {"name": name, "digest": store.digest(name), "env": dict(recipe.env),
            "user": recipe.user, "workdir": recipe.workdir}
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def test_a_tree_without_metadata_is_not_a_template(tmp_path, cas):
    store = TemplateStore(tmp_path, ca_dir=cas)
    (tmp_path / "base" / store.digest("base") / "rootfs" / "usr").mkdir(parents=True)
    assert store.get("base") is None


def test_get_reads_a_finished_build(tmp_path, cas):
    store = TemplateStore(tmp_path, ca_dir=cas)
    d = _fake_build(store, "base")
    template = store.get("base")
    assert template.name == "base" and template.digest == store.digest("base")
    assert template.layers == (d / "rootfs",)
    assert template.env["LANG"] == "C.UTF-8" and template.user == "user"
    assert template.workdir == "/home/user"
    assert store.get("base") is template          # cached, still checked against the disk
    assert store.list() == [template]
    (d / "meta.json").unlink()
    assert store.get("base") is None


def test_an_outdated_build_is_not_current(tmp_path, cas):
    old = TemplateStore(tmp_path, ca_dir=cas, uid_base=200000)
    _fake_build(old, "base")
    assert old.get("base") is not None
    assert TemplateStore(tmp_path, ca_dir=cas).get("base") is None


def test_layered_templates_stack_their_parent(tmp_path, cas):
    child = Recipe(name="code-interpreter", parent="base", packages=(),
                   aliases=("code-interpreter-v1",), env=BASE.env)
    store = TemplateStore(tmp_path, ca_dir=cas, catalog=Catalog([BASE, child]))
    top = _fake_build(store, "code-interpreter")
    assert store.get("code-interpreter-v1") is None     # its parent is not built
    bottom = _fake_build(store, "base")
    template = store.get("code-interpreter-v1")
    assert template.name == "code-interpreter"
    assert template.layers == (top / "rootfs", bottom / "rootfs")
    # A new parent makes the layer stale.
    other = TemplateStore(tmp_path, ca_dir=cas, uid_base=1, catalog=Catalog([BASE, child]))
    assert other.digest("code-interpreter") != store.digest("code-interpreter")


async def test_remove_deletes_every_build(tmp_path, cas):
    store = TemplateStore(tmp_path, ca_dir=cas)
    await store.remove("base")                          # nothing there: fine
    _fake_build(store, "base")
    (tmp_path / "base" / "0123456789abcdef").mkdir()    # an older build
    assert store.get("base") is not None
    await store.remove("base")
    assert store.get("base") is None
    assert not (tmp_path / "base").exists()
    assert list((tmp_path / ".tmp").iterdir()) == []
