"""Key changes broadcast over Redis pub/sub (channel `<redis_namespace>:keys`).

Every worker of every instance subscribes; a management call publishes the changed row
(its hash and limits, never a secret), so a deletion or a limit change reaches all
caches in milliseconds. Pub/sub drops messages while a subscriber is disconnected, so
each (re)subscription is followed by a refresh from the database.

Shutdown does not rely on cancelling the listener alone: redis-py can lose a cancellation
that lands in a pub/sub read (seen after a Redis restart), and the listener would then
loop on. `close` also sets a flag the loop checks and closes its connection, which ends
a pending read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger("proxy.keys")
_RETRY_S: Final = 0.5


class KeyEvents:
    def __init__(self, redis_url: str, namespace: str) -> None:
        self.channel = f"{namespace}:keys"
        # Publishing must not hang a management call on a dead Redis.
        self._pub = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        # The subscriber blocks on reads by design: no socket timeout on its connection.
        self._sub = redis.Redis.from_url(redis_url, socket_connect_timeout=1.0)
        self.connected = False
        self.errors = 0  # for metrics
        self._closing = False

    async def publish(self, message: bytes) -> bool:
        try:
            await self._pub.publish(self.channel, message)
            return True
        except (RedisError, OSError) as e:
            self.errors += 1
            log.warning("keys: could not publish a key change (%s); other workers will see it "
                        "at their next refresh", type(e).__name__)
            return False

    async def listen(
        self,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], Awaitable[None]],
    ) -> None:
        """Run until cancelled or closed: subscribe, catch up, apply messages; resubscribe
        on failure."""
        while not self._closing:
            pubsub = self._sub.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self.connected = True
                try:
                    await on_subscribed()
                except Exception as e:  # noqa: BLE001 - the periodic refresh will catch up
                    log.warning("keys: catch-up refresh failed (%s)", type(e).__name__)
                while not self._closing:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if msg is not None and msg.get("type") == "message":
                        on_message(msg["data"])
            except (RedisError, OSError) as e:
                if self._closing:
                    break
                self.errors += 1
                if self.connected:
                    log.warning("keys: lost the Redis subscription (%s); refreshing from the "
                                "database every second until it is back", type(e).__name__)
                self.connected = False
            finally:
                self.connected = False
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            if not self._closing:
                await asyncio.sleep(_RETRY_S)

    async def close(self) -> None:
        """Stop the listener (its pending read fails as the connection closes) and disconnect."""
        self._closing = True
        await self._pub.aclose()
        await self._sub.aclose()
