"""Background work that never dies: the deployment follower and the arm-stats refresh.

Each task runs its step, sleeps its interval, and runs it again, forever. A step that raises
anything (a locked SQLite file, a dropped PostgreSQL connection, a bug) is logged, with its
traceback the first time a new error appears, and the task backs off (doubling up to
`MAX_BACKOFF_S`) and tries again; it never ends until the gateway stops. `/health` shows each
task's last success, its last error while it lasts, and how long the step in progress has run;
a step still running after `SLOW_STEP_S` (a store that hangs without an error) is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ownlm.errors import OwnlmError

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0  # also how long a task may lag behind a store that is back
SLOW_STEP_S = 60.0  # a model load by the deployment follower may take most of this


@dataclass
class TaskHealth:
    """What `/health` says of one background task."""

    last_ok: float | None = None  # unix time of the last step that ran to its end
    last_error: str | None = None  # the last step's error; None once a step succeeds again
    errors: int = 0
    started: float | None = None  # monotonic start of the step in progress

    def report(self) -> dict[str, Any]:
        ago = None if self.last_ok is None else round(time.time() - self.last_ok, 1)
        out = {"last_ok_s_ago": ago, "errors": self.errors, "last_error": self.last_error}
        if self.started is not None:
            out["running_s"] = round(time.monotonic() - self.started, 1)
        return out


async def run_forever(
    name: str, step: Callable[[], Awaitable[None]], interval_s: float, health: TaskHealth
) -> None:
    """Run `step` every `interval_s` seconds until cancelled, whatever it raises."""
    delay = interval_s
    while True:
        try:
            health.started = time.monotonic()
            await _warn_if_slow(name, step())
        except Exception as err:  # noqa: BLE001 - the point: no error ends the task (a
            # cancel, when the gateway stops, is no Exception and still ends it)
            message = str(err) if isinstance(err, OwnlmError) else f"{type(err).__name__}: {err}"
            health.errors += 1
            if message != health.last_error:
                log.exception("%s failed; retrying in %.1f s", name, delay)
            health.last_error = message
            health.started = None
            await asyncio.sleep(delay)
            delay = min(MAX_BACKOFF_S, max(delay, 0.5) * 2)
            continue
        health.last_ok, health.last_error, delay = time.time(), None, interval_s
        health.started = None
        await asyncio.sleep(interval_s)


async def _warn_if_slow(name: str, step: Awaitable[None]) -> None:
    """Await the step; log once if it is still running after SLOW_STEP_S (it is not cut off:
    its thread may hold a database call that cannot be cancelled)."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=SLOW_STEP_S)
    if not done:
        log.warning("%s: a step has run for %.0f s and goes on (a hung store?)", name, SLOW_STEP_S)
    await task
