#!/usr/bin/env python3
"""A stand-in ACP adapter for the release-guard integration test.

It speaks just enough of the Agent Client Protocol (newline-delimited JSON-RPC 2.0
over stdin/stdout) for stepwise's ACP client: ``initialize``, ``session/new``,
``session/load``, ``session/set_mode``, ``session/set_model``, ``session/close``,
``session/prompt`` and the ``session/cancel`` notification.

Behaviour is chosen through the environment (the adapter inherits the server's):

``FAKE_ACP_MODE``
    ``reply`` (default): a prompt gets one ``agent_message_chunk`` update and then
    the result ``{"stopReason": "end_turn"}``.
    ``hold``: a prompt is never answered (the adapter just sits there, like an agent
    working on a long task) until a ``session/cancel`` arrives.
    A prompt whose text contains ``[hold]`` is held in any mode (so one adapter shared
    by two jobs can hold one job's turn and answer the other's).
``FAKE_ACP_RECORD_DIR``
    When set, the adapter writes ``<dir>/<pid>.json`` at start-up so a test can find
    every adapter process that was spawned, including retries, and appends one JSON line
    per session event to ``<dir>/<pid>.sessions.jsonl``:
    ``{"event": "new"|"load"|"fork"|"close"|"prompt", "sessionId": …, "ok": bool}``.
    Like the real adapter (one ``claude`` CLI per session), it keeps the set of open
    sessions: ``session/close`` of a session it does not have is an error, a prompt on a
    closed session is an error.
``FAKE_ACP_TERM_DELAY`` (seconds, default 0.3)
    Like a real adapter tree (npm -> node -> claude), it does not vanish the instant it
    gets SIGTERM: it closes its stdout (the client sees EOF, i.e. "Transport closed") and
    exits that long after. An adapter that dies instantly races stepwise's own teardown,
    which may cancel the pending prompt first; the step then fails non-transiently and
    never retries, which hides the cancel-then-retry leak the test is about.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid


def _send(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _result(req_id, result: dict) -> None:
    _send({"jsonrpc": "2.0", "id": req_id, "result": result})


def _error(req_id, code: int, message: str) -> None:
    _send({"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}})


def _record_session(event: str, session_id, ok: bool = True, **extra) -> None:
    record_dir = os.environ.get("FAKE_ACP_RECORD_DIR")
    if not record_dir:
        return
    line = json.dumps({"event": event, "sessionId": session_id, "ok": ok, "t": time.time(), **extra})
    with open(os.path.join(record_dir, f"{os.getpid()}.sessions.jsonl"), "a") as fh:
        fh.write(line + "\n")


def _record_start(mode: str) -> None:
    record_dir = os.environ.get("FAKE_ACP_RECORD_DIR")
    if not record_dir:
        return
    info = {"pid": os.getpid(), "ppid": os.getppid(), "mode": mode, "started": time.time()}
    path = os.path.join(record_dir, f"{os.getpid()}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(info, fh)
    os.replace(tmp, path)


def _on_sigterm(signum, frame) -> None:
    try:
        os.close(sys.stdout.fileno())  # EOF for the client right away
    except OSError:
        pass
    try:
        time.sleep(float(os.environ.get("FAKE_ACP_TERM_DELAY", "0.3")))
    finally:
        os._exit(128 + signum)


def main() -> int:
    mode = os.environ.get("FAKE_ACP_MODE", "reply")
    signal.signal(signal.SIGTERM, _on_sigterm)
    _record_start(mode)
    held_prompts: dict[str, object] = {}  # session id -> request id of the unanswered prompt
    open_sessions: set[str] = set()

    for raw in sys.stdin:
        raw = raw.strip()
        if not raw:
            continue
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        method = msg.get("method")
        req_id = msg.get("id")
        params = msg.get("params") or {}

        if method is None:
            continue  # a response to something we never asked: ignore
        if req_id is None:
            # Notifications.
            if method == "session/cancel":
                sid = params.get("sessionId")
                pending = held_prompts.pop(sid, None)
                if pending is not None:
                    _result(pending, {"stopReason": "cancelled"})
            continue

        if method == "initialize":
            _result(req_id, {
                "protocolVersion": 1,
                "agentCapabilities": {"loadSession": True},
                "authMethods": [],
            })
        elif method == "session/new":
            sid = f"fake-{uuid.uuid4()}"
            open_sessions.add(sid)
            _record_session("new", sid)
            _result(req_id, {"sessionId": sid})
        elif method == "session/load":
            sid = params.get("sessionId")
            open_sessions.add(sid)
            _record_session("load", sid)
            _result(req_id, {})
        elif method == "session/fork":
            sid = f"fake-{uuid.uuid4()}"
            open_sessions.add(sid)
            _record_session("fork", sid, source=params.get("sessionId"))
            _result(req_id, {"sessionId": sid})
        elif method == "session/close":
            sid = params.get("sessionId")
            if sid in open_sessions:
                open_sessions.discard(sid)
                pending = held_prompts.pop(sid, None)
                if pending is not None:
                    _result(pending, {"stopReason": "cancelled"})
                _record_session("close", sid)
                _result(req_id, {})
            else:
                _record_session("close", sid, ok=False)
                _error(req_id, -32602, f"Session not found: {sid}")
        elif method in ("session/set_mode", "session/set_model"):
            _result(req_id, {})
        elif method == "session/prompt":
            sid = params.get("sessionId", "")
            text = " ".join(str(block.get("text", "")) for block in params.get("prompt") or []
                            if isinstance(block, dict))
            if sid not in open_sessions:
                _record_session("prompt", sid, ok=False)
                _error(req_id, -32602, f"Session not found: {sid}")
                continue
            _record_session("prompt", sid, held=mode == "hold" or "[hold]" in text)
            if mode == "hold" or "[hold]" in text:
                held_prompts[sid] = req_id
                continue
            _send({
                "jsonrpc": "2.0",
                "method": "session/update",
                "params": {
                    "sessionId": sid,
                    "update": {
                        "sessionUpdate": "agent_message_chunk",
                        "content": {"type": "text", "text": "done"},
                    },
                },
            })
            _result(req_id, {"stopReason": "end_turn"})
        else:
            _error(req_id, -32601, f"Method not found: {method}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
