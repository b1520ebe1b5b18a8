"""The Prometheus client's basic auth: the password goes in a header, never in what is shown."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from farm.services.prometheus import PrometheusClient


def test_basic_auth_from_the_url_is_sent_as_a_header_and_hidden():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps(
                {
                    "status": "success",
                    "data": {
                        "resultType": "matrix",
                        "result": [{"metric": {"node": "n1"}, "values": [[1000, "12.5"], [1015, "NaN"]]}],
                    },
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = PrometheusClient(f"http://grafana:p%40ss@127.0.0.1:{server.server_port}/")
        result = client.query_range("worker_cpu_usage", 1000, 1015, 15)
    finally:
        server.shutdown()
        server.server_close()
    assert result[0]["metric"] == {"node": "n1"}
    path, auth = seen[0]
    assert path.startswith("/api/v1/query_range?query=worker_cpu_usage&")
    assert auth == "Basic " + base64.b64encode(b"grafana:p@ss").decode()
    assert "p%40ss" not in client.shown_url and "p%40ss" not in client.url
    assert client.shown_url == f"http://grafana:***@127.0.0.1:{server.server_port}"
