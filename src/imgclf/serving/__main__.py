"""``python -m imgclf.serving``: the API with the same server configuration as ``imgclf serve``.

The container has no CLI (no typer, no training code), yet it must run exactly what
``imgclf serve`` runs: :func:`imgclf.serving.processes.serve`, i.e. uvicorn behind the
edge's deadlines and limits (docs/serving-edge.md), in one process or one per CPU. A
plain ``uvicorn …`` command would skip the edge, so neither the Dockerfile nor the tests
use one.
"""

from __future__ import annotations

import argparse
import sys

from imgclf.serving.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgclf.serving", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-access-log", dest="access_log", action="store_false")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from imgclf.serving.processes import serve

    serve(settings, host=args.host, port=args.port, access_log=args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
