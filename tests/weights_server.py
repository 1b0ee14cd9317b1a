"""A local HTTP server that emulates the Hugging Face Hub's file endpoint for tests.

It serves ``HEAD`` and ``GET`` on ``/{owner}/{name}/resolve/{revision}/{filename}``
with the headers ``huggingface_hub.hf_hub_download`` requires (``ETag``,
``X-Repo-Commit``, ``Content-Length``) and honours ``Range`` requests, so
downloads in tests run the library's real code path against 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_PATH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")


@dataclass
class FakeHub:
    """Files served by the fake hub and the requests it received.

    Attributes:
        files: ``(repo, filename) -> bytes``.
        truncate_first_get: ``filename -> bytes``: the first GET of that file
            sends only so many bytes and then closes the connection, as a
            dropped connection would.
        requests: ``(method, path, Range header or None)`` for every request.
    """

    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    truncate_first_get: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def gets(self, filename: str) -> list[str | None]:
        """Return the Range header of every GET of ``filename``."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + filename)]


def start_fake_hub(hub: FakeHub) -> ThreadingHTTPServer:
    """Start serving ``hub`` on 127.0.0.1 at a free port; set ``hub.url`` and return the server."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range")))
            match = _PATH.match(self.path.split("?")[0])
            data = hub.files.get((match["repo"], match["filename"])) if match else None
            if data is None:
                self.send_response(404)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return

            start = 0
            range_header = self.headers.get("Range")
            if body and range_header:
                start = int(re.match(r"bytes=(\d+)-", range_header).group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return

            filename = match["filename"]
            if filename in hub.truncate_first_get and not range_header:
                self.wfile.write(data[: hub.truncate_first_get.pop(filename)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data[start:])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server
