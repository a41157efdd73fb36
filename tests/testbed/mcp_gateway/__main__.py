"""``python -m tests.testbed.mcp_gateway --config FILE``: the router/broker STAND-IN, one process
serving the router (ext_authz HTTP) and the broker (``/mcp``) on their own ports, sharing one tool
catalogue, as the upstream ``mcp-broker-router`` binary does. Stops on SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.testbed.mcp_gateway.broker import Broker, create_broker_app
from tests.testbed.mcp_gateway.config import Catalogue, ConfigError, GatewayConfig, load_config
from tests.testbed.mcp_gateway.router import Router, create_router_app


async def serve(config: GatewayConfig, stop: asyncio.Event) -> None:
    catalogue = Catalogue(ttl_s=config.catalogue_ttl_s)
    timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        router = Router(config, catalogue, session)
        broker = Broker(config, catalogue, session)
        runners = []
        for app, listen in (
            (create_router_app(router), config.router),
            (create_broker_app(broker), config.broker),
        ):
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
            await runner.setup()
            await web.TCPSite(runner, listen.host, listen.port).start()
            runners.append(runner)
        logging.getLogger("mcp_gateway").info(
            "router on %s:%d, broker on %s:%d, server %s at %s",
            config.router.host,
            config.router.port,
            config.broker.host,
            config.broker.port,
            config.primary.name,
            config.primary.url,
        )
        try:
            await stop.wait()
        finally:
            for runner in runners:
                await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.testbed.mcp_gateway",
        description="Testbed stand-in for the MCP Gateway router (ext_authz) and broker.",
    )
    parser.add_argument("--config", type=Path, required=True, help="YAML settings file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mcp-gateway stand-in: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s",'
        '"message":"%(message)s"}',
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
