#!/usr/bin/env python3
"""A fake ACP adapter *tree* for the real-engine test (test/integration/real-engine.test.ts).

stepwise runs ``npx @agentclientprotocol/claude-agent-acp``: ``npm exec`` -> ``node
claude-agent-acp`` -> ``claude`` CLI, the top leading its own session and group. This script
plays every level, chosen by its first argument:

``npm-exec <marker> [args]``  level 0, the process stepwise spawns. Starts level 1 with the
    same stdin/stdout/stderr, then lets go of its own copies (it never speaks ACP itself) and
    waits for it. SIGTERM is forwarded; it exits once level 1 has gone, like npm exec.
``<marker> [args]``  level 1, the adapter: speaks just enough ACP (newline-delimited JSON-RPC
    on stdin/stdout) for stepwise's client and starts level 2. A ``session/prompt`` whose text
    contains ``[hold]`` is never answered (an agent working on a long task) until a
    ``session/cancel``; any other prompt gets one ``agent_message_chunk`` and ``end_turn``.
    On SIGTERM it closes its stdout at once (the client sees EOF: "Transport closed") and
    exits ``FAKE_TREE_TERM_DELAY`` seconds later (default 0.3), like a real tree that takes
    a moment to die. On stdin EOF it does NOT exit: leaked adapters outlive their server.
``claude``  level 2: ``sleep`` exec'd with argv[0] ``claude`` (no marker, like the CLI).
``editor``  a stand-in for an editor (e.g. Zed) that runs its own adapter: leads its own
    group, starts ``npm-exec`` inside that group (not a new session), keeps its stdin pipe
    open, prints ``{"editor": pid, "top": pid}`` and waits.
``orphan <pids-dir> <agent>``  starts an ``npm-exec`` tree in a new session, writes its pid
    file ``<pids-dir>/acp-<pid>.json`` like stepwise, prints ``{"top": pid}`` and exits at
    once, so the tree is reparented to pid 1 (or the nearest subreaper): the adapter of a
    previous server.

Every level exits after ``FAKE_TREE_MAX_LIFETIME`` seconds (default 900) whatever happens.
With ``FAKE_TREE_RECORD_DIR`` set, level 0 writes ``<dir>/<pid>.json`` (pid, ppid, argv,
start time) so the test can kill every tree ever spawned, retries included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

HOLD_TOKEN = "[hold]"
MARKER_DEFAULT = "@agentclientprotocol/claude-agent-acp"


def _lifetime() -> int:
    try:
        return max(1, int(float(os.environ.get("FAKE_TREE_MAX_LIFETIME", "900"))))
    except ValueError:
        return 900


def _arm_lifetime() -> None:
    signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
    signal.alarm(_lifetime())


def _record(kind: str) -> None:
    record_dir = os.environ.get("FAKE_TREE_RECORD_DIR")
    if not record_dir:
        return
    info = {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "kind": kind,
            "argv": sys.argv[1:], "started": time.time()}
    path = os.path.join(record_dir, f"{os.getpid()}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(info, fh)
    os.replace(tmp, path)


def _devnull_stdio(fds=(0, 1)) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        os.dup2(null, fd)
    os.close(null)


# ---------------------------------------------------------------------------- level 0

def npm_exec(rest: list[str]) -> int:
    if os.environ.get("FAKE_TREE_REFUSE"):
        return 1  # the harness is shutting down: no new adapter
    _arm_lifetime()
    _record("npm-exec")
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), *rest])
    got: list[int] = []

    def on_term(signum, frame):
        got.append(signum)
        try:
            os.kill(child.pid, signum)  # npm exec forwards the signal, then waits for its child
        except OSError:
            pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    _devnull_stdio()  # level 1 owns the ACP pipes: EOF for the client is level 1 closing them
    _, status = os.waitpid(child.pid, 0)  # retried after a signal handler (PEP 475)
    if got:
        os._exit(128 + got[0])
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


# ---------------------------------------------------------------------------- level 1

def _send(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _result(req_id, result: dict) -> None:
    _send({"jsonrpc": "2.0", "id": req_id, "result": result})


def adapter() -> int:
    _arm_lifetime()
    grandchild = subprocess.Popen([sys.executable, os.path.abspath(__file__), "claude"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    terminating: list[int] = []

    def on_term(signum, frame):
        if terminating:
            return  # the group's signal and the one npm exec forwards: act once
        terminating.append(signum)
        try:
            os.close(sys.stdout.fileno())  # EOF for the client right away
        except OSError:
            pass
        try:
            grandchild.send_signal(signum)
        except OSError:
            pass
        time.sleep(float(os.environ.get("FAKE_TREE_TERM_DELAY", "0.3")))
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    held: dict[str, object] = {}  # session id -> request id of the unanswered prompt

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
            continue
        if req_id is None:
            if method == "session/cancel":
                pending = held.pop(params.get("sessionId"), None)
                if pending is not None:
                    _result(pending, {"stopReason": "cancelled"})
            continue
        if method == "initialize":
            _result(req_id, {"protocolVersion": 1, "agentCapabilities": {"loadSession": True},
                             "authMethods": []})
        elif method == "session/new":
            _result(req_id, {"sessionId": f"fake-{uuid.uuid4()}"})
        elif method in ("session/load", "session/set_mode", "session/set_model", "session/close"):
            _result(req_id, {})
        elif method == "session/prompt":
            sid = params.get("sessionId", "")
            if HOLD_TOKEN in json.dumps(params.get("prompt")):
                held[sid] = req_id
                continue
            _send({"jsonrpc": "2.0", "method": "session/update", "params": {
                "sessionId": sid,
                "update": {"sessionUpdate": "agent_message_chunk",
                           "content": {"type": "text", "text": "done"}}}})
            _result(req_id, {"stopReason": "end_turn"})
        else:
            _send({"jsonrpc": "2.0", "id": req_id,
                   "error": {"code": -32601, "message": f"Method not found: {method}"}})
    # stdin closed (the server went away): a leaked adapter lives on.
    while True:
        signal.pause()


# ---------------------------------------------------------------------------- level 2

def claude() -> int:
    os.execv("/bin/sleep", ["claude", str(_lifetime())])
    return 1


# ---------------------------------------------------------------------------- stand-ins

def _npm_exec_argv() -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "npm-exec", MARKER_DEFAULT]


def editor() -> int:
    _arm_lifetime()
    os.setsid()  # the editor leads its own session and group; its adapter stays in that group
    child = subprocess.Popen(_npm_exec_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    print(json.dumps({"editor": os.getpid(), "top": child.pid}), flush=True)
    _devnull_stdio((0, 1))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    child.wait()
    while True:
        signal.pause()


def orphan(pids_dir: str, agent: str) -> int:
    child = subprocess.Popen(_npm_exec_argv(), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    os.makedirs(pids_dir, exist_ok=True)
    time.sleep(0.2)  # the engine writes the file after the ACP handshake
    with open(os.path.join(pids_dir, f"acp-{child.pid}.json"), "w") as fh:
        json.dump({"pid": child.pid, "agent": agent}, fh)
    print(json.dumps({"top": child.pid}), flush=True)
    os._exit(0)  # without waiting: the tree is reparented


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    role = sys.argv[1]
    if role == "npm-exec":
        return npm_exec(sys.argv[2:])
    if role == "claude":
        return claude()
    if role == "editor":
        return editor()
    if role == "orphan":
        return orphan(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "claude")
    return adapter()


if __name__ == "__main__":
    sys.exit(main())
