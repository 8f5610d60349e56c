"""What the daemon builds for integrations: the services the API uses and the delivery loop.

Kept here so `daemon.py` gains a few lines only: `Integrations(...)`, `await start()` (the
environment's `integrations.yaml` read and its subscriptions stored), and the loop handed to the lease
keeper as a singleton.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from station_wf.config import Settings
from station_wf.integrations.delivery import DeliveryConfig, WebhookDeliveries
from station_wf.integrations.subscriptions import (
    Defaults,
    SubscriptionService,
    env_subscriptions,
    integrations_file,
)
from station_wf.integrations.triggers import TriggerService, load_hooks
from station_wf.services.runs import RunService
from station_wf.store.db import Readers, Writer
from station_wf.store.leases import FencedWriter

log = logging.getLogger(__name__)


class Integrations:
    def __init__(self, settings: Settings, writer: Writer, readers: Readers, fenced: FencedWriter, runs: RunService,
                 api_tokens: bool) -> None:
        self.settings = settings
        self.defaults = Defaults(max(1, settings.webhook_attempts), settings.webhook_timeout_seconds,
                                 max(1, settings.webhook_concurrency))
        self.loop = WebhookDeliveries(fenced, readers, DeliveryConfig(
            settings.webhook_backoff_seconds, settings.webhook_max_backoff_seconds, keep_days=settings.retention_days))
        self.subscriptions = SubscriptionService(writer, readers, self.defaults, on_change=self.loop.kick)
        self.triggers = TriggerService(runs, {}, settings.hook_replay_window_seconds, api_tokens)
        self.bundles: Any = None  # set by the daemon (integrations/bundles.py)
        self.errors: list[str] = []

    def file(self) -> Path | None:
        return integrations_file(Path(self.settings.environments_dir), self.settings.environment)

    async def start(self) -> list[str]:
        """Read the environment's integrations file: hooks in memory, subscriptions into the store. A
        bad entry is logged and skipped (FILE: webhooks[i].field: message); the rest load."""
        path = self.file()
        subs, sub_errors = env_subscriptions(path, self.defaults)
        hooks, hook_errors = load_hooks(path)
        self.triggers.hooks = hooks
        await self.subscriptions.sync_env(subs)
        self.errors = sub_errors + hook_errors
        for err in self.errors:
            log.error("integrations: %s", err)
        if path is not None:
            log.info("integrations: %d webhook subscription(s) and %d hook(s) from %s", len(subs), len(hooks), path)
        return self.errors
