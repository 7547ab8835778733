"""A TCP listener that accepts and closes as fast as it can: the far end of the TCP phase.

`python -m bench.listener --port P` listens on 0.0.0.0:P (every 127.x.y.z of the namespace)
and prints `ready` once listening. Accepted connections are closed at once.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
from collections.abc import Sequence

__all__ = ["main", "serve"]


def serve(port: int, ready: bool = True) -> None:
    """Accept and close forever (until killed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))  # noqa: S104  # inside the bench's own namespace
        listener.listen(4096)
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        if ready:
            print("ready", flush=True)
        accept = listener.accept
        while True:
            selector.select()
            for _ in range(1024):
                try:
                    conn, _addr = accept()
                except BlockingIOError:
                    break
                conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.listener", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args(argv).port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
