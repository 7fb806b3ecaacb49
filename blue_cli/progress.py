"""The progress sink that shows nothing, for library use and tests.

Long phases take a ``progress`` object with ``track(description, total)``, a context
manager yielding ``update(done, new_total=None)``; the console's is
``reporting.console.RichProgress``. Every stage that runs without a console uses this one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class NullProgress:
    """A progress sink that shows nothing (tests, library use)."""

    def started(self) -> None:
        pass

    @contextmanager
    def track(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        yield lambda done, new_total=None: None
