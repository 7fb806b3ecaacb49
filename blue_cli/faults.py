"""Named points where a test stops the process: a kill or a Ctrl-C at a chosen moment.

Tests of crash safety need a kill that lands inside a given step (the statistics
pass, target optimisation, the checkpoint's write, an evaluation point, the final
writes), every time, on any machine. A signal sent after a sleep lands wherever
the process happens to be; a named point does not.

``BLUE_FAULT=<point>[@<n>][:<action>]`` acts the ``n``-th time (1-based, default 1)
the process passes ``point``:

- ``kill`` (default): SIGKILL, as ``kill -9`` or a lost machine;
- ``interrupt``: KeyboardInterrupt, as Ctrl-C;
- ``hold=<file>``: create ``<file>.held``, then wait until ``<file>`` exists (a test
  holds the process at that point while it checks something, then releases it);
- ``enospc``: OSError(ENOSPC), as a write that found its disk full (at a ``write:``
  point the temp file is already written, so its size is what the write needed).

Points are plain strings: ``stats`` (a statistics batch), ``target`` (a target
optimisation step), ``batch`` (a batch saved), ``eval`` (an evaluation point),
``write:<file name>`` (a file fully written to its temp path, before the rename).
Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

ENV = "BLUE_FAULT"


# How often each point was passed in this process; only written while BLUE_FAULT is set.
_HITS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Mark point ``name``; act if ``BLUE_FAULT`` names it and this is the chosen pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, nth, action = parse_fault(spec)
    if point != name:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    if _HITS[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "interrupt":
        raise KeyboardInterrupt
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
    else:
        _hold(Path(action.split("=", 1)[1]))


def reset_counts() -> None:
    """Forget the passes counted so far (a command run again in the same process, as tests do)."""
    _HITS.clear()


def parse_fault(spec: str) -> tuple[str, int, str]:
    """``"write:summary.json@2:interrupt"`` -> (``"write:summary.json"``, 2, ``"interrupt"``)."""
    head, _, action = spec.partition("@")
    nth = 1
    if action:
        count, _, action = action.partition(":")
        nth = int(count)
    else:
        for known in ("kill", "interrupt", "enospc", "hold="):
            cut = head.rfind(":" + known)
            if cut > 0:
                head, action = head[:cut], head[cut + 1 :]
                break
    return head, nth, action or "kill"


def _hold(release: Path) -> None:
    """Announce the hold with ``<release>.held`` and wait for the test to create ``release``."""
    Path(f"{release}.held").touch()
    while not release.exists():
        time.sleep(0.01)
