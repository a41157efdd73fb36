"""Several token-exchange replicas as real processes (the CLI), a round-robin Envoy in front.

Used by ``test_replicas.py`` and ``bench/scenario_replicas.py``. Each replica is
``python -m gateway_plugins.token_exchange serve --config <yaml>``, as a pod runs it; with
``shared_cache_settings`` they share a Redis (password and encryption key in files, as mounted
Secrets).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway_plugins.token_exchange.cache_config import CacheConfig, RedisCacheConfig
from gateway_plugins.token_exchange.config import Settings
from tests.testbed import envoy_proxy, paths, process
from tests.testbed.ports import free_port
from tests.testbed.redis_server import RedisServer

ROUND_ROBIN_TEMPLATE = envoy_proxy.TEMPLATES / "round_robin.yaml"
# A test-only encryption key (>= 32 characters): never used outside the testbed.
TEST_CACHE_KEY = "kmg-testbed-token-cache-key-0123456789abcdef"


def shared_cache_settings(
    settings: Settings, redis: RedisServer, secrets_dir: Path, *, prefix: str, **extra: Any
) -> Settings:
    """``settings`` with ``cache.backend: redis``; password and key written to files (0600)."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    key_file = secrets_dir / "token-cache-keys"
    key_file.write_text(TEST_CACHE_KEY + "\n")
    key_file.chmod(0o600)
    cache = CacheConfig(
        backend="redis",
        redis=RedisCacheConfig(
            url=redis.url,
            password_file=redis.write_password(secrets_dir / "redis-password"),
            encryption_keys_file=key_file,
            key_prefix=prefix,
            **extra,
        ),
    )
    return settings.model_copy(update={"cache": cache})


@dataclass
class Replica:
    name: str
    port: int
    proc: process.ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    async def metrics(self, http: aiohttp.ClientSession) -> str:
        async with http.get(f"{self.url}/metrics") as resp:
            return await resp.text()

    async def metric(self, http: aiohttp.ClientSession, prefix: str) -> float:
        return metric_sum(await self.metrics(http), prefix)


def metric_sum(text: str, prefix: str) -> float:
    """Sum of the samples whose line starts with ``prefix`` (name and, if given, labels)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and not line.startswith("#")
    )


def start_replicas(
    settings: Settings, run_dir: Path, count: int, *, label: str, log_level: str = "warning"
) -> list[Replica]:
    """``count`` processes of the service with ``settings`` (one config file), all ready."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / f"{label}.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    replicas = []
    for index in range(count):
        port = free_port()
        name = f"{label}-{index}"
        argv = [sys.executable, "-m", "gateway_plugins.token_exchange", "serve"]
        argv += ["--config", str(config), "--port", str(port), "--log-level", log_level]
        proc = process.ManagedProcess(
            name, argv, run_dir / f"{name}.log", cwd=paths.REPO_ROOT
        ).start()
        replicas.append(Replica(name, port, proc))
    for replica in replicas:
        replica.proc.wait_until(
            lambda r=replica: process.http_ok(f"{r.url}/readyz"), timeout=60, what="ready"
        )
    return replicas


def stop_replicas(replicas: list[Replica]) -> None:
    for replica in replicas:
        replica.proc.stop()


def endpoints(replicas: list[Replica]) -> str:
    """The template's ``$ENDPOINTS``: one lb_endpoint per replica, flow style."""
    items = [
        "{endpoint: {address: {socket_address: "
        + f"{{address: 127.0.0.1, port_value: {r.port}}}"
        + "}}}"
        for r in replicas
    ]
    return "[" + ", ".join(items) + "]"
