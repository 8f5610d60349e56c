"""Bundles (placeholder until the installer lands)."""

from __future__ import annotations

from typing import Any

from station_wf.store.db import Readers


class BundleService:
    def __init__(self, readers: Readers) -> None:
        self.readers = readers

    async def list(self) -> list[dict[str, Any]]:
        return []
