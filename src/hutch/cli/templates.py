"""``hutch template build | ls | logs | rm``: templates of your own, from a Dockerfile.

    hutch template build -f Dockerfile -n webapp .     # context: the current directory
    hutch create webapp                                 # a sandbox from it

The build streams each step (``CACHED`` when an unchanged step was built before) and its
output; a failing step ends the command with its output and exit code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import quote

import click

from hutch.cli._common import Context, api, parse_pairs, pass_ctx, run_guarded
from hutch.sdk._template import Template


@click.group("template")
def template() -> None:
    """Build, list and remove templates (yours: other API keys do not see them)."""


@template.command("build")
@click.option("-f", "--file", "dockerfile", default="Dockerfile", show_default=True,
              type=click.Path(dir_okay=False), help="the Dockerfile")
@click.option("-n", "--name", required=True, help="the template's name")
@click.option("--build-arg", "build_args", multiple=True, metavar="NAME=VALUE",
              help="a value for an ARG (repeatable)")
@click.option("--cpu", type=float, default=None, help="its sandboxes' default cores")
@click.option("--memory", "memory_mb", type=int, default=None,
              help="its sandboxes' default memory (MiB)")
@click.option("-q", "--quiet", is_flag=True, help="no step output, only the result")
@click.argument("context", default=".", type=click.Path(file_okay=False))
@pass_ctx
def build(ctx: Context, dockerfile: str, name: str, build_args: Tuple[str, ...],
          cpu: Optional[float], memory_mb: Optional[int], quiet: bool, context: str) -> None:
    """Build template NAME from a Dockerfile, with CONTEXT holding what it copies."""
    def step(event: dict) -> None:
        s = event["step"]
        cached = "  CACHED" if event["cached"] else ""
        shown = " ".join(s["args"])
        click.echo(f"[{event['index']}/{event['total']}] {s['kind'].upper()} {shown}{cached}",
                   err=True)

    def line(text: str) -> None:
        click.echo(f"    {text}", err=True)

    def go() -> dict:
        tpl = Template.from_dockerfile(Path(dockerfile).read_text(),
                                       parse_pairs(build_args, "--build-arg"))
        return tpl.build(name, cpu=cpu, memory_mb=memory_mb, context_dir=context,
                         on_log=None if quiet else line, on_step=None if quiet else step,
                         **ctx.opts)

    built = run_guarded(go)
    click.echo(f"built {built['templateID']} ({built['layers']} layers)")


@template.command("ls")
@click.option("--json", "as_json", is_flag=True, help="the descriptions as JSON")
@pass_ctx
def ls(ctx: Context, as_json: bool) -> None:
    """The built-in templates and yours."""
    listed = run_guarded(lambda: api(ctx, "GET", "/templates"))
    if as_json:
        click.echo(json.dumps(listed, indent=1))
        return
    for t in listed:
        kind = "built-in" if t["builtin"] else f"from {t['base']}, {t['layers']} layers"
        click.echo(f"{t['templateID']:<24} {kind}")


@template.command("logs")
@click.argument("name")
@pass_ctx
def logs(ctx: Context, name: str) -> None:
    """The output of each build step that made one of your templates."""
    from hutch.cli._common import api_text

    click.echo(run_guarded(lambda: api_text(ctx, "/templates/" + quote(name, safe="") +
                                            "/logs")), nl=False)


@template.command("rm")
@click.argument("name")
@pass_ctx
def rm(ctx: Context, name: str) -> None:
    """Remove one of your templates (sandboxes running from it are not affected)."""
    run_guarded(lambda: api(ctx, "DELETE", "/templates/" + quote(name, safe="")))
