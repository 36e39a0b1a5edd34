"""`python -m agent start|dev|console|...` (livekit's CLI) and `python -m agent ray --replicas N`.

Exit codes of `ray`: 0 after a graceful drain (first SIGINT/SIGTERM); 128 + signal number
(130 SIGINT, 143 SIGTERM) when a second signal forces the exit. `start`/`dev` exit as
livekit's CLI does (it drains jobs on the first signal, too).
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from config.logging import configure_from_settings

    if argv and argv[0] == "ray":
        parser = argparse.ArgumentParser(prog="python -m agent ray", description=__doc__)
        parser.add_argument("--replicas", type=int, default=1, help="number of agent worker actors")
        parser.add_argument("--address", default=None, help="Ray address (default: start or join local)")
        args = parser.parse_args(argv[1:])
        if args.replicas < 1:
            parser.error("--replicas must be >= 1")
        configure_from_settings()
        from agent.worker import run_ray

        return asyncio.run(run_ray(args.replicas, address=args.address))

    from livekit.agents import cli

    from agent.worker import build_server

    configure_from_settings()
    sys.argv = [sys.argv[0], *argv]
    cli.run_app(build_server())
    return 0


if __name__ == "__main__":
    sys.exit(main())
