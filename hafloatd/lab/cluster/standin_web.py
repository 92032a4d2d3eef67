"""A node's stand-in web server (only where nginx is not installed), and a port wait.

``python3 -I standin_web.py HOST PORT PAGE`` answers every GET with 200 and PAGE, one
request per connection, until killed. ``python3 -I standin_web.py --wait HOST PORT`` exits 0
once something accepts connections on HOST:PORT (exit 1 after 10 s). Standard library only:
it runs inside a lab node with the system interpreter.
"""

from __future__ import annotations

import http.server
import socket
import sys
import time


def main(argv: list[str]) -> int:
    if argv[0] == "--wait":
        return wait_listening(argv[1], int(argv[2]))
    host, port, page = argv[0], int(argv[1]), argv[2]
    body = (page + "\n").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()
    return 0


def wait_listening(host: str, port: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            time.sleep(0.02)
            continue
        return 0
    print(f"nothing listens on {host}:{port} after {timeout:g}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
