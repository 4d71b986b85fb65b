"""ProxyStore's Redis connector for a server that asks for a password: ProxyStore 1.1's
RedisConnector connects without one. The store's configuration, and so every proxy, names
this class by its import path; imported only where --proxystore redis runs."""
from __future__ import annotations

import redis
from proxystore.connectors.redis import RedisConnector


class PasswordRedisConnector(RedisConnector):
    def __init__(self, hostname: str, port: int, password: str, clear: bool = False) -> None:
        super().__init__(hostname, port, clear)
        self.password = password
        self._redis_client = redis.StrictRedis(host=hostname, port=port, password=password)

    def config(self) -> dict:
        return {**super().config(), "password": self.password}
