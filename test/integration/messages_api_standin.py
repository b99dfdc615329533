#!/usr/bin/env python3
"""A stand-in for the Anthropic Messages API, for test/integration/real-adapter.test.ts.

The real ``claude`` CLI (started by the real claude-agent-acp adapter) talks to it through
``ANTHROPIC_BASE_URL``. It listens on 127.0.0.1 only (port 0 = any free one), prints
``{"event": "listening", "port": N, "pid": P}`` on stdout, and serves:

``POST /v1/messages[?beta=true]``  the Messages API. A streaming request gets the SSE events
    ``message_start``, ``content_block_start``, ``content_block_delta``, ``content_block_stop``,
    ``message_delta`` (``stop_reason: end_turn``) and ``message_stop``; a non-streaming one
    the same message as one JSON object. A turn request (one that carries ``tools``) whose
    text contains ``[hold:<name>]`` is HELD after ``message_start``: pings every second until
    ``<name>`` is released, then the rest of the message. (Each turn makes two requests: a
    title request without tools, answered at once, then the turn.)
``POST /_standin/release`` body ``{"name": N}`` (or ``{}`` for every hold): release held turns,
    now and later ones too. Answers ``{"released": [...], "held": [...]}``.
``GET /_standin/requests``  every request seen: method, path, whether it carried tools,
    stream, hold name, when, and when answered.
Anything else: 404 with an API-style error body.

It exits on stdin EOF (its parent is gone) or SIGTERM, and after ``--max-lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD_RE = re.compile(r"\[hold:([A-Za-z0-9_.-]+)\]")
MODEL = "claude-stand-in"

_lock = threading.Condition()
_released: set[str] = set()
_release_all = False
_held: dict[str, int] = {}  # hold name -> streams currently held
_log: list[dict] = []


def _texts(obj) -> str:
    """Every string inside a JSON value, joined (to find the hold marker anywhere in the prompt)."""
    out: list[str] = []

    def walk(v):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(obj)
    return "\n".join(out)


def _is_released(name: str) -> bool:
    return _release_all or name in _released


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "messages-api-standin/1"

    def log_message(self, fmt, *args):  # quiet: the test reads /_standin/requests
        pass

    def _json(self, code: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path.startswith("/_standin/requests"):
            with _lock:
                self._json(200, {"requests": list(_log), "held": dict(_held)})
            return
        self._not_found()

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def _not_found(self):
        with _lock:
            _log.append({"method": self.command, "path": self.path, "at": time.time(), "status": 404})
        self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"stand-in: no {self.path}"}})

    def do_POST(self):
        global _release_all
        raw = self._body()
        if self.path.startswith("/_standin/release"):
            try:
                name = (json.loads(raw or b"{}") or {}).get("name")
            except ValueError:
                name = None
            with _lock:
                if name:
                    _released.add(str(name))
                else:
                    _release_all = True
                _lock.notify_all()
                self._json(200, {"released": sorted(_released) if not _release_all else ["*"],
                                 "held": dict(_held)})
            return
        if not self.path.startswith("/v1/messages") or self.path.startswith("/v1/messages/"):
            self._not_found()
            return
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            self._json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad json"}})
            return
        has_tools = bool(req.get("tools"))
        stream = bool(req.get("stream"))
        m = HOLD_RE.search(_texts(req.get("messages")))
        hold = m.group(1) if (m and has_tools) else None
        entry = {"method": "POST", "path": self.path, "tools": has_tools, "stream": stream,
                 "hold": hold, "at": time.time(), "status": 200}
        with _lock:
            _log.append(entry)
        text = "Stand-in title" if not has_tools else "done"
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        usage = {"input_tokens": 12, "output_tokens": 3, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        if not stream:
            self._json(200, {"id": msg_id, "type": "message", "role": "assistant", "model": MODEL,
                             "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                             "stop_sequence": None, "usage": usage})
            entry["answeredAt"] = time.time()
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(name: str, data: dict) -> None:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        try:
            event("message_start", {"type": "message_start", "message": {
                "id": msg_id, "type": "message", "role": "assistant", "model": MODEL, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": usage}})
            if hold:
                with _lock:
                    _held[hold] = _held.get(hold, 0) + 1
                try:
                    while True:
                        with _lock:
                            if _is_released(hold):
                                break
                            _lock.wait(1.0)
                            if _is_released(hold):
                                break
                        event("ping", {"type": "ping"})
                finally:
                    with _lock:
                        _held[hold] -= 1
                        if _held[hold] <= 0:
                            del _held[hold]
                entry["releasedAt"] = time.time()
            event("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}})
            event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": text}})
            event("content_block_stop", {"type": "content_block_stop", "index": 0})
            event("message_delta", {"type": "message_delta",
                                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                    "usage": {"output_tokens": 3}})
            event("message_stop", {"type": "message_stop"})
            entry["answeredAt"] = time.time()
        except (BrokenPipeError, ConnectionResetError):
            entry["clientGone"] = time.time()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-lifetime", type=float, default=3600)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
    signal.alarm(max(1, int(args.max_lifetime)))

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(json.dumps({"event": "listening", "port": server.server_address[1], "pid": os.getpid()}), flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
