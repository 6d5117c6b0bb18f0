"""A method callable on the class (with a sandbox id) and on an instance, as in e2b.

``Sandbox.kill(sandbox_id)`` and ``sbx.kill()`` are one function: it receives either the
class or the instance first and tells them apart with ``isinstance(x, type)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable


class hybridmethod:  # noqa: N801 - reads like classmethod/staticmethod at the use site
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __get__(self, obj: Any, cls: type) -> Callable[..., Any]:
        bound = functools.partial(self.fn, cls if obj is None else obj)
        functools.update_wrapper(bound, self.fn)
        return bound
