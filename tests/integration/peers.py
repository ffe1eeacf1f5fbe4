"""Local HTTP servers standing in for Slack (incoming webhooks), Jira (REST v2) and ServiceNow (Table API).

They record every request (method, path, query, headers, JSON body) so tests assert exactly what was sent,
and answer like the real services (shapes from their public API docs). ``fail_paths`` makes a path prefix
answer 500 (an outage) until it is cleared.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    status: int = 0


@dataclass
class PeerState:
    requests: list[Request] = field(default_factory=list)
    fail_paths: set[str] = field(default_factory=set)
    jira_issues: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def find(self, method: str, prefix: str, status: int | None = 200) -> list[Request]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r.method == method and r.path.startswith(prefix) and (status is None or r.status == status)
            ]


def make_handler(state: PeerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:  # quiet
            pass

        def _reply(self, req: Request, status: int, body: Any) -> None:
            req.status = status
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _handle(self) -> None:
            u = urlparse(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            req = Request(self.command, u.path, parse_qs(u.query), dict(self.headers), body)
            with state.lock:
                state.requests.append(req)
                failing = any(u.path.startswith(p) for p in state.fail_paths)
            if failing:
                return self._reply(req, 500, "internal_error")
            if u.path.startswith(("/services/", "/outage/")) and self.command == "POST":
                return self._reply(req, 200, "ok")
            if u.path == "/rest/api/2/search":
                jql = req.query.get("jql", [""])[0]
                m = re.search(r'labels = "([^"]+)"', jql)
                with state.lock:
                    hits = [i for i in state.jira_issues if m and m.group(1) in i["fields"].get("labels", [])]
                return self._reply(req, 200, {"startAt": 0, "maxResults": 1, "total": len(hits), "issues": hits[:1]})
            if u.path == "/rest/api/2/issue" and self.command == "POST":
                with state.lock:
                    key = f"{body['fields']['project']['key']}-{len(state.jira_issues) + 1}"
                    state.jira_issues.append({"id": str(10000 + len(state.jira_issues)), "key": key, **body})
                return self._reply(req, 201, {"id": "10000", "key": key, "self": f"http://jira/rest/api/2/issue/{key}"})
            if u.path == "/api/now/table/incident":
                if self.command == "GET":
                    q = req.query.get("sysparm_query", [""])[0]
                    with state.lock:
                        hits = [i for i in state.incidents if f"correlation_id={i['correlation_id']}" == q]
                    return self._reply(req, 200, {"result": hits[:1]})
                with state.lock:
                    inc = {**body, "sys_id": f"sys{len(state.incidents)}", "number": f"INC00{len(state.incidents) + 1}"}
                    state.incidents.append(inc)
                return self._reply(req, 201, {"result": inc})
            return self._reply(req, 404, {"error": "not found"})

        do_GET = do_POST = do_PATCH = do_PUT = _handle

    return Handler


class Peers:
    """One threaded HTTP server on 127.0.0.1 (free port) serving all three stand-ins."""

    def __init__(self) -> None:
        self.state = PeerState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
