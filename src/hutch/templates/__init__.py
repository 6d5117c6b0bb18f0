"""Templates: the read-only root filesystems sandboxes start from.

``TemplateStore`` builds (``ensure``) and finds (``get``) them; ``Template`` is what the
server hands the runtime; ``Progress``/``TerminalProgress`` report a build as it runs.
"""

from .catalog import BASE, Catalog
from .progress import Progress, TerminalProgress
from .recipe import Recipe
from .store import Template, TemplateStore

__all__ = ["BASE", "Catalog", "Progress", "Recipe", "Template", "TemplateStore", "TerminalProgress"]
