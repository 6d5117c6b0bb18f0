"""The kernels the interpreter starts, written as Jupyter kernel specs at start-up.

The specs live in a directory of the interpreter's own rather than in the template, so the
kernel command lines always match the agent copy that is running (the JavaScript kernel and
the Python kernel's start-up file ship with it), and a template only has to provide packages.
Kernels a template installs the usual way (IRkernel's ``ir``, say) are found as well.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional

HERE = Path(__file__).resolve().parent
#: The directory that holds the ``hutch`` package, put on the JavaScript kernel's path.
LIB = str(HERE.parent.parent.parent)
STARTUP = HERE / "kernel_startup.py"
DEFAULT_CWD = "/home/user"
#: The kernel of the default Python context, launched as the interpreter starts.
DEFAULT_PYTHON = "hutch-python"

LAUNCH = ("import sys; sys.modules['debugpy'] = None; "
          "from ipykernel.kernelapp import launch_new_instance; launch_new_instance()")

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


def specs(python: str = sys.executable) -> Dict[str, dict]:
    """The kernel.json documents for hutch's own kernels."""
    return {
        "hutch-python": {
            # History in memory: a sandbox is thrown away, and the SQLite write per cell is a
            # third of a small cell's round trip.
            # ipykernel imports the debugger's bundle (debugpy, ~4 MiB and tens of ms) at
            # start for a feature no client of the interpreter uses: it is held off while the
            # kernel starts (the start-up file lets user code import it again).
            "argv": [python, "-c", LAUNCH, "-f", "{connection_file}",
                     f"--IPKernelApp.exec_files={STARTUP}",
                     "--HistoryManager.hist_file=:memory:"],
            "display_name": "Python 3", "language": "python",
            "interrupt_mode": "signal",
            # Plots go to the notebook-style inline backend (the template's default for
            # scripts is Agg); the start-up file reads charts.py from here, then drops it.
            "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
                    "HUTCH_CHARTS_MODULE": str(HERE / "charts.py")},
        },
        "hutch-bash": {
            "argv": [python, "-m", "bash_kernel", "-f", "{connection_file}"],
            "display_name": "Bash", "language": "bash", "interrupt_mode": "signal",
        },
        "hutch-javascript": {
            "argv": [python, "-m", "hutch.agent.interpreter.js_kernel", "-f",
                     "{connection_file}"],
            "display_name": "JavaScript (Node.js)", "language": "javascript",
            "interrupt_mode": "signal", "env": {"PYTHONPATH": LIB},
        },
    }


def write(directory: Path, python: str = sys.executable) -> Path:
    """Write the specs under ``directory/kernels`` and return that directory."""
    root = directory / "kernels"
    for name, spec in specs(python).items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "kernel.json.tmp"
        tmp.write_text(json.dumps(spec, indent=1))
        os.replace(tmp, d / "kernel.json")
    return root


def canonical(language: Optional[str]) -> Optional[str]:
    """The canonical name of a language the API accepts, or None."""
    if language is None:
        return "python"
    return LANGUAGES.get(str(language).strip().lower())
