"""The embedded nats-server takes a random token: another local user cannot read or drive it (review L7)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import nats
import pytest
from nats.errors import NoServersError

from station_wf.bus.nats_server import EmbeddedNats
from station_wf.daemon import _without_credentials


def test_the_embedded_server_refuses_clients_without_its_token(tmp_path: Path) -> None:
    async def main() -> None:
        server = EmbeddedNats(tmp_path / "nats")
        await server.start()
        try:
            conf = tmp_path / "nats" / "nats-server.conf"
            assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # the token is readable by the daemon's user only
            with pytest.raises((NoServersError, nats.errors.Error, OSError)):
                await nats.connect(server.public_url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0)
            nc = await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)
            assert nc.is_connected
            await nc.close()
            assert server.token not in _without_credentials(server.url)
        finally:
            await server.stop()

    asyncio.run(main())
