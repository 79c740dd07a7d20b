"""What makes a `ficus run` process worker k of a supervisor (`workers` > 1; router/workers.py).

Kept apart from the supervisor so the command line reads it without loading the service.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from router.config import FicusConfig, worker_suffix

STARTED = b"1"
"""What a worker writes on its ready pipe once its Service has started."""


@dataclass(frozen=True)
class Role:
    """What makes a `ficus run` process worker `number` of a supervisor."""

    number: int
    base: str
    """The supervisor's `cluster.instance`; the worker is `<base>-w<number>`."""
    nats_url: str | None = None
    """The supervisor's embedded server, else None (the config's NATS)."""
    ready_fd: int | None = None

    @property
    def instance(self) -> str:
        return self.base + worker_suffix(self.number)


def worker_config(cfg: FicusConfig, role: Role) -> FicusConfig:
    """The config as worker `role` runs it: its own instance name, the supervisor's NATS."""
    cluster = cfg.cluster.model_copy(update={"instance": role.instance})
    update: dict[str, object] = {"cluster": cluster}
    if role.nats_url is not None:
        update["nats"] = cfg.nats.model_copy(update={"url": role.nats_url})
    return cfg.model_copy(update=update)


def siblings(cfg: FicusConfig, role: Role) -> list[str]:
    """The other workers' instance names, which worker 1's /readyz answers for."""
    if role.number != 1:
        return []
    return [role.base + worker_suffix(k) for k in range(2, cfg.workers + 1)]


def signal_started(role: Role) -> None:
    """Tells the supervisor this worker has started (its ready pipe), once."""
    if role.ready_fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(role.ready_fd, STARTED)
    with contextlib.suppress(OSError):
        os.close(role.ready_fd)
