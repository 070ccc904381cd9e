"""The viewer's server: the page, NiiVue and the given volumes, to this machine only.

As Jupyter does: it listens on 127.0.0.1 alone, every path starts with a random token (a web page
from elsewhere cannot guess it), and a request that names another host (DNS rebinding) or comes
from another address is refused. It serves exactly the page, the script and one volume per file
it was given, from memory: no path reaches the file system.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tumorfm.errors import TumorFMError
from tumorfm.viewer import assets
from tumorfm.viewer.layers import Scene
from tumorfm.viewer.page import page
from tumorfm.viewer.refine import MAX_BODY, Refiner

HOST = "127.0.0.1"
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_local(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a browser's open connection does not keep the command alive

    def handle_error(self, request, client_address):
        """A browser that closes a connection mid-answer (a reload, a closed tab) is no error;
        anything else is printed as the standard library does."""
        if not isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            super().handle_error(request, client_address)


class Viewer:
    """A running viewer of one scene: `url` opens it; `serve()` blocks, `start()` returns."""

    def __init__(self, scene: Scene, title: str, port: int = 0, refiner: Refiner | None = None):
        self.token, self.refiner = secrets.token_urlsafe(24), refiner
        prefix = f"/{self.token}/"
        if refiner is not None:  # the mask being refined: the last layer
            scene.layers.append(refiner.layer())
        refine = len(scene.layers) - 1 if refiner is not None else None
        self.files = {
            prefix: (
                "text/html; charset=utf-8",
                page(scene, title, embed=False, refine=refine).encode(),
            ),
            f"{prefix}niivue.umd.js": ("text/javascript; charset=utf-8", assets.script()),
        }
        for index, layer in enumerate(scene.layers):
            self.files[f"{prefix}volumes/{index}.nii.gz"] = (
                "application/octet-stream",
                layer.nifti,
            )
        try:
            self.server = _Server((HOST, port), self._handler())
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise TumorFMError(
                    f"--port {port}: in use by another program; pick another"
                ) from None
            raise TumorFMError(f"--port {port}: cannot listen on it ({error.strerror})") from None
        self.port = self.server.server_address[1]
        self.url = f"http://{HOST}:{self.port}{prefix}"
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def _handler(self):
        viewer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status, kind, body = viewer.answer(self.path, self.client_address[0], self.headers)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, MAX_BODY + 1))
                status, kind, answer = viewer.post(
                    self.path, self.client_address[0], self.headers, body
                )
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(answer)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format, *args):  # quiet: the terminal shows the URL only
                pass

        return Handler

    def _refused(self, path: str, client: str, headers) -> tuple[int, str, bytes] | None:
        """Why a request is not answered (another machine, another host name, no token)."""
        host = (headers.get("Host") or "").rsplit(":", 1)[0]
        if not is_local(client) or host not in LOCAL_NAMES:
            return HTTPStatus.FORBIDDEN, "text/plain", b"this viewer answers this machine only\n"
        if not path.startswith(f"/{self.token}/"):
            return HTTPStatus.FORBIDDEN, "text/plain", b"wrong or missing token\n"
        return None

    def post(self, path: str, client: str, headers, body: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) for a POST: a refine action of the page."""
        path = path.split("?", 1)[0]
        refused = self._refused(path, client, headers)
        if refused:
            return refused
        action = path.removeprefix(f"/{self.token}/refine/")
        if self.refiner is None or action == path:
            return HTTPStatus.NOT_FOUND, "text/plain", b"this viewer refines nothing\n"
        if len(body) > MAX_BODY:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "text/plain", b"too large\n"
        with self.lock:  # one prompt at a time: the session is not thread-safe
            return self.refiner.answer(action, body)

    def answer(self, path: str, client: str, headers) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path` from `client`."""
        path = path.split("?", 1)[0]
        refused = self._refused(path, client, headers)
        if refused:
            return refused
        if path not in self.files:
            return HTTPStatus.NOT_FOUND, "text/plain", b"not one of the viewer's files\n"
        kind, body = self.files[path]
        return HTTPStatus.OK, kind, body

    def start(self) -> Viewer:
        """Serve in a background thread (tests, notebooks)."""
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def serve(self) -> None:
        """Serve until interrupted (Ctrl-C, or SIGINT from another program: a process started in
        the background by a shell inherits SIGINT ignored, and would otherwise never stop)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.server.serve_forever()
        finally:
            self.server.server_close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
