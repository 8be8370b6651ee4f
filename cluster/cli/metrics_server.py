"""``ric serve``'s metrics port (Triton's ``:8002/metrics``): Prometheus's scrape target for the whole
application, answered by the statistics collector, which sums every replica on every node.

The port is bound before Ray starts (a busy port fails ``ric serve`` at once, naming it); requests are
answered once the application runs. ``serve deploy`` users scrape the same text at the HTTP ingress's
``/metrics``, or Ray's own metrics port (``ray_nv_*``, cluster/protocol/ray_metrics.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cluster.names import STATISTICS_NAME
from cluster.protocol.metrics import CONTENT_TYPE

#: How long a scrape waits for the collector.
SCRAPE_TIMEOUT_S = 10.0


class MetricsServer(ThreadingHTTPServer):
    """``GET /metrics`` on ``(host, port)``, once ``start(app)`` is called; 503 while the collector does not
    answer.

    The collector is called from an event loop of the server's own: ``ric serve``'s throughput-optimized
    Serve runs a handle's router in the loop of its caller, so a handle needs one.
    """

    daemon_threads = True

    def __init__(self, host: str, port: int):
        super().__init__((host, port), _Handler)
        self.app = ""
        self.loop = asyncio.new_event_loop()
        self._handle = None

    def start(self, app: str) -> None:
        self.app = app
        threading.Thread(target=self.loop.run_forever, name="ric-metrics-loop", daemon=True).start()
        threading.Thread(target=self.serve_forever, name="ric-metrics", daemon=True).start()

    def scrape(self) -> bytes:
        return asyncio.run_coroutine_threadsafe(self._scrape(), self.loop).result(SCRAPE_TIMEOUT_S)

    async def _scrape(self) -> bytes:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_deployment_handle(STATISTICS_NAME, app_name=self.app)
        return await self._handle.prometheus.remote()


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        if self.path.split("?", 1)[0] != "/metrics":
            return self._answer(404, json.dumps({"error": f"no route GET {self.path}; metrics are at /metrics"}))
        try:
            text = self.server.scrape()
        except Exception as exc:  # the collector restarting, or the application gone
            return self._answer(503, json.dumps({"error": f"the statistics collector did not answer: {exc!r}"}))
        self._answer(200, text, CONTENT_TYPE)

    def _answer(self, status: int, body: bytes | str, content_type: str = "application/json") -> None:
        body = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # scrapes every few seconds would flood the terminal
        pass
