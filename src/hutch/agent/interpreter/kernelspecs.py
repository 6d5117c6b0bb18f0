"""The kernels the interpreter starts, written as Jupyter kernel specs at start-up.

The specs live in a directory of the interpreter's own rather than in the template, so the
kernel command lines always match the agent copy that is running (the JavaScript kernel and
the Python kernel's start-up file ship with it), and a template only has to provide packages.
Kernels a template installs the usual way (IRkernel's ``ir``, say) are found as well, in
Jupyter's data directories (:func:`search_path`).
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
#: The directory that holds the ``hutch`` package, put on the JavaScript kernel's path.
LIB = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
STARTUP = os.path.join(HERE, "kernel_startup.py")
DEFAULT_CWD = "/home/user"
#: The kernel of the default Python context, launched as the interpreter starts.
DEFAULT_PYTHON = "hutch-python"

LAUNCHER = os.path.join(HERE, "kernel_launch.py")
#: The kernels' command (``python -c``): ipykernel, started by :data:`LAUNCHER` (with
#: ``--hutch-kernel=module:Class``, a kernel other than IPython's).
LAUNCH = ("import sys; sys.modules['debugpy'] = None; import ipykernel.kernelapp; "
          f"exec(compile(open({LAUNCHER!r}).read(), {LAUNCHER!r}, 'exec'))")

#: The kernels' zygote (``python -c``, see zygote.py): kernel_zygote.py, run as the launcher is.
ZYGOTE_PROGRAM = os.path.join(HERE, "kernel_zygote.py")
ZYGOTE = f"exec(compile(open({ZYGOTE_PROGRAM!r}).read(), {ZYGOTE_PROGRAM!r}, 'exec'))"

#: Language names the API accepts -> the canonical language.
LANGUAGES = {
    "python": "python", "python3": "python", "py": "python",
    "bash": "bash", "sh": "bash", "shell": "bash",
    "javascript": "javascript", "js": "javascript", "node": "javascript",
    "typescript": "typescript", "ts": "typescript",
    "r": "r",
    "java": "java",
}

#: Canonical language -> kernel spec names to try, in order.
KERNELS = {
    "python": ("hutch-python",),
    "bash": ("hutch-bash",),
    "javascript": ("hutch-javascript",),
    "typescript": ("tslab", "typescript"),
    "r": ("ir",),
    "java": ("java",),
}


def specs(python: str | None = None) -> dict[str, dict]:
    """The kernel.json documents for hutch's own kernels (``python``: the sandbox's, by
    default; read when called, since an agent forked in from the host sets it as it enters)."""
    python = python or sys.executable
    return {
        "hutch-python": {
            # No history database: a sandbox is thrown away, the SQLite write per cell was a
            # third of a small cell's round trip, and even in memory the database costs sqlite3
            # and start-up time. In, Out, _i<n> and %history of the session work without it;
            # only %history -g (a search of the database) then finds nothing.
            # ipykernel imports the debugger's bundle (debugpy, ~4 MiB and tens of ms) at
            # start for a feature no client of the interpreter uses: it is held off while the
            # kernel starts (the start-up file lets user code import it again).
            # ipykernel also sleeps half a millisecond after each execution, a workaround for
            # output racing the reply on the shell channel; the interpreter ends a cell on
            # IOPub's idle status, after all of its output.
            "argv": [python, "-c", LAUNCH, "-f", "{connection_file}",
                     f"--IPKernelApp.exec_files={STARTUP}",
                     "--HistoryManager.enabled=False",
                     "--IPythonKernel._execute_sleep=0"],
            "display_name": "Python 3", "language": "python",
            "interrupt_mode": "signal",
            # Plots go to the notebook-style inline backend (the template's default for
            # scripts is Agg); the start-up file reads charts.py from here, then drops it.
            "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
                    "HUTCH_CHARTS_MODULE": os.path.join(HERE, "charts.py")},
        },
        "hutch-bash": {
            "argv": [python, "-c", LAUNCH, "--hutch-kernel=bash_kernel.kernel:BashKernel",
                     "-f", "{connection_file}"],
            "display_name": "Bash", "language": "bash", "interrupt_mode": "signal",
        },
        "hutch-javascript": {
            "argv": [python, "-c", LAUNCH,
                     "--hutch-kernel=hutch.agent.interpreter.js_kernel:JavaScriptKernel",
                     "-f", "{connection_file}"],
            "display_name": "JavaScript (Node.js)", "language": "javascript",
            "interrupt_mode": "signal", "env": {"PYTHONPATH": LIB},
        },
    }


def write(directory: str, python: str | None = None) -> str:
    """Write the specs under ``directory/kernels`` and return that directory."""
    root = os.path.join(directory, "kernels")
    for name, spec in specs(python).items():
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, "kernel.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1)
        os.replace(tmp, os.path.join(d, "kernel.json"))
    return root


def search_path(own: str) -> list[str]:
    """Where kernel specs are looked for, first match wins: ``own`` (hutch's), then Jupyter's
    data directories in Jupyter's order (``JUPYTER_PATH``, the user's, the Python prefix's,
    the system's)."""
    dirs = [own]
    dirs += [os.path.join(d, "kernels") for d in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if d]
    data = os.environ.get("JUPYTER_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "jupyter")
    dirs.append(os.path.join(data, "kernels"))
    for prefix in (sys.prefix, "/usr/local", "/usr"):
        dirs.append(os.path.join(prefix, "share", "jupyter", "kernels"))
    out: list[str] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def find(dirs: list[str]) -> dict[str, str]:
    """Kernel spec name -> its directory, for every spec in ``dirs`` (the first of a name wins)."""
    found: dict[str, str] = {}
    for d in dirs:
        try:
            entries = sorted(os.listdir(d))
        except OSError:
            continue
        for entry in entries:
            path = os.path.join(d, entry)
            if entry.lower() not in found and os.path.isfile(os.path.join(path, "kernel.json")):
                found[entry.lower()] = path
    return found


def load(name: str, dirs: list[str]) -> dict[str, object]:
    """The spec ``name`` as ``{"argv", "env", "resource_dir"}``; KeyError if there is none."""
    path = find(dirs)[name]
    with open(os.path.join(path, "kernel.json"), encoding="utf-8") as f:
        spec = json.load(f)
    argv = [str(a).replace("{resource_dir}", path).replace("{prefix}", sys.prefix)
            for a in spec["argv"]]
    return {"argv": argv, "env": dict(spec.get("env") or {}), "resource_dir": path}


def canonical(language: str | None) -> str | None:
    """The canonical name of a language the API accepts, or None."""
    if language is None:
        return "python"
    return LANGUAGES.get(str(language).strip().lower())
