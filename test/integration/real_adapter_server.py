#!/usr/bin/env python3
"""The REAL stepwise engine driving the REAL claude-agent-acp adapter, for
test/integration/real-adapter.test.ts.

Like real_engine_server.py, it runs stepwise's own AsyncEngine + SQLiteStore + the server's
executor registry (``create_default_registry``) in-process, with cwd = the project root (the
engine writes ``.stepwise/pids/`` relative to its cwd) and ``.stepwise/server.pid`` written by
stepwise's own ``write_pidfile``. Unlike it, every agent step uses stepwise's BUILTIN ``claude``
agent: ``npx @agentclientprotocol/claude-agent-acp --model opus --allowedPaths <ws>``. The test
puts Node 22 first on PATH and points npm at a prefix holding claude-agent-acp 0.101.0 (offline),
so npx resolves that adapter, which starts its native ``claude`` CLI per session; the CLI talks
to the Messages-API stand-in (ANTHROPIC_BASE_URL). Each scenario has its own workspace (its
own working_dir, hence its own adapter); the two jobs of a shared scenario share one.

A prompt containing ``[hold:<name>]`` keeps its turn open (the stand-in holds the stream) so the
job stays running; ``release`` commands ask the stand-in to finish it.

Scenarios (``--scenarios``, comma-separated, in this order of setup):
  top-killed-running  a held turn; once its CLI is up, SIGTERM to the top (npm exec) only. The
                      engine's liveness check fails the job >30 s after the run started
                      ("Script process died"), removes the pid file; its killpg misses.
  abandon             exit rule "always" -> abandon: the job fails, the adapter is never released.
  shared              job <prefix>-running (held turn) then job <prefix>-abandoned (abandon) in
                      the same workspace: one adapter, two sessions (two CLIs).
  paused              exit rule "always" -> escalate: the job is paused, its adapter kept.
  top-killed-paused   escalate, then SIGTERM to the top only: node + CLI live on, job paused.

Protocol: one JSON object per line on stdout (logging goes to stderr).
  -> {"event": "ready", "serverPid", "scenarios": {name: {...}}, "setupSeconds", "guard"}
Commands on stdin, one JSON object per line:
  {"cmd": "jobs"}                 -> {"event": "jobs", "jobs": {id: {"name","status","runs":[...]}}}
  {"cmd": "wait", "jobId", "statuses": [...], "timeout": s}
                                  -> {"event": "waited", "jobId", "status"} (status may not match on timeout)
  {"cmd": "exit"}                 clean up and exit (stdin EOF or SIGTERM does the same).
Whatever happens, every adapter group this run saw is SIGKILLed before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import sys
import time
import traceback
import urllib.request

_proto = None  # the real stdout, for protocol lines only
_groups: set[int] = set()  # every adapter pgid seen (each top leads its own group)
ADAPTER_MARK = "claude-agent-acp"


def emit(obj: dict) -> None:
    _proto.write(json.dumps(obj, default=str) + "\n")
    _proto.flush()


def proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def argv_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def alive(pid: int) -> bool:
    s = proc_stat(pid)
    return s is not None and s[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = proc_stat(int(name))
            if s and int(s[2]) == pgid and s[0] not in ("Z", "X"):
                out.append(int(name))
    return out


def cli_of_session(pgid: int, session_id: str) -> int | None:
    """The live `claude` CLI of `session_id` in adapter group `pgid`."""
    for pid in group_members(pgid):
        argv = argv_of(pid)
        if f"--session-id={session_id}" in argv or any(
                a == "--session-id" and i + 1 < len(argv) and argv[i + 1] == session_id
                for i, a in enumerate(argv)):
            return pid
    return None


def kill_groups() -> None:
    """SIGKILL every adapter group this run saw, only while a member still runs the adapter/CLI."""
    try:  # and every adapter the engine wrote a pid file for (pgid = pid: start_new_session)
        for name in os.listdir(os.path.join(".stepwise", "pids")):
            if name.startswith("acp-") and name.endswith(".json") and name[4:-5].isdigit():
                _groups.add(int(name[4:-5]))
    except OSError:
        pass
    for pgid in list(_groups):
        members = group_members(pgid)
        if any(ADAPTER_MARK in " ".join(argv_of(m)) or "claude-agent-sdk" in " ".join(argv_of(m))
               for m in members):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass


async def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Harness:
    def __init__(self, args):
        self.args = args
        self.standin = args.standin.rstrip("/")

    def setup(self):
        from stepwise.config import StepwiseConfig
        from stepwise.engine import AsyncEngine
        from stepwise.registry_factory import create_default_registry
        from stepwise.store import SQLiteStore

        dot = os.path.join(self.args.project, ".stepwise")
        self.store = SQLiteStore(os.path.join(dot, "stepwise.db"))
        self.registry = create_default_registry(StepwiseConfig())
        self.engine = AsyncEngine(self.store, self.registry,
                                  jobs_dir=os.path.join(self.args.project, "jobs"),
                                  project_dir=pathlib.Path(dot))
        self.engine._agent_stagger_seconds = 0.0

    def workspace(self, name: str) -> str:
        ws = os.path.join(self.args.project, "ws", name)
        os.makedirs(ws, exist_ok=True)
        return ws

    def workflow(self, prompt: str, exit_action: str | None):
        from stepwise.models import ExecutorRef, ExitRule, StepDefinition, WorkflowDefinition
        executor = ExecutorRef("agent", {"prompt": prompt, "agent": "claude", "output_mode": "effect"})
        step = StepDefinition(name="work", outputs=[], executor=executor)
        if exit_action:
            step.exit_rules = [ExitRule(name=f"always_{exit_action}", type="always",
                                        config={"action": exit_action})]
        return WorkflowDefinition(steps={"work": step})

    def start(self, name: str, ws: str, prompt: str, exit_action: str | None = None) -> str:
        job = self.engine.create_job(objective=f"real-adapter {name}",
                                     workflow=self.workflow(prompt, exit_action),
                                     workspace_path=ws, name=name)
        self.engine.start_job(job.id)
        return job.id

    def status(self, job_id: str) -> str:
        return self.store.load_job(job_id).status.value

    def state(self, job_id: str) -> dict:
        runs = [r for r in self.store.runs_for_job(job_id) if r.executor_state]
        return dict(runs[-1].executor_state) if runs else {}

    def runs(self, job_id: str) -> list[dict]:
        return [{"id": r.id, "step": r.step_name, "attempt": r.attempt, "status": r.status.value,
                 "error": r.error, "executorState": r.executor_state}
                for r in self.store.runs_for_job(job_id)]

    async def wait_status(self, job_id: str, statuses, timeout: float = 90) -> str:
        return await wait_for(lambda: self.status(job_id) in statuses and self.status(job_id),
                              timeout, f"job {job_id} to become one of {statuses}")

    async def wait_session(self, job_id: str, timeout: float = 90) -> dict:
        """The run's adapter pid and session id, and the session's CLI pid once it is up."""
        st = await wait_for(lambda: (s := self.state(job_id)).get("pid") and s.get("session_id") and s,
                            timeout, f"job {job_id}'s executor_state with pid and session_id")
        pid, sid = st["pid"], st["session_id"]
        pgid = st.get("pgid") or pid
        _groups.add(pgid)
        cli = await wait_for(lambda: cli_of_session(pgid, sid), timeout,
                             f"the CLI of session {sid} in group {pgid}")
        return {"adapterPid": pid, "pgid": pgid, "sessionId": sid, "cliPid": cli}

    def held(self) -> dict:
        with urllib.request.urlopen(f"{self.standin}/_standin/requests", timeout=5) as r:
            return json.load(r)["held"]

    async def wait_held(self, name: str, timeout: float = 90) -> None:
        await wait_for(lambda: self.held().get(name), timeout, f"the stand-in to hold turn {name}", 0.2)

    def info(self, job_id: str, **extra) -> dict:
        return {"jobId": job_id, "status": self.status(job_id), **extra}

    async def sc_abandon(self, name: str) -> dict:
        job = self.start(name, self.workspace(name), "finish the task", "abandon")
        await self.wait_status(job, ("failed", "completed", "cancelled"))
        return {name: self.info(job, **await self.wait_session(job))}

    async def sc_shared(self, name: str) -> dict:
        ws = self.workspace(name)
        running = self.start(f"{name}-running", ws, f"[hold:{name}-running] keep working")
        r = await self.wait_session(running)
        await self.wait_held(f"{name}-running")
        # Every CLI that shows up in the shared group, by session id, while the second job runs:
        # with the release guard its CLI may be closed a few ms after its turn, before the run's
        # executor_state is read here.
        seen: dict[str, dict] = {}
        stop = asyncio.Event()

        async def watch_clis():
            while not stop.is_set():
                for pid in group_members(r["pgid"]):
                    argv = argv_of(pid)
                    sid = next((a.split("=", 1)[1] for a in argv if a.startswith("--session-id=")), None)
                    if sid and sid not in seen:
                        seen[sid] = {"pid": pid, "seenAt": time.time()}
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch_clis())
        try:
            abandoned = self.start(f"{name}-abandoned", ws, "finish the task", "abandon")
            await self.wait_status(abandoned, ("failed", "completed", "cancelled"))
            st = await wait_for(lambda: (s := self.state(abandoned)).get("session_id") and s, 30,
                                f"job {abandoned}'s executor_state.session_id")
            sid = st["session_id"]
            if self.args.guard_dir:
                await wait_for(lambda: sid in seen or not alive(r["adapterPid"]), 5, f"a CLI for {sid}")
            else:
                await wait_for(lambda: cli_of_session(r["pgid"], sid), 30, f"the CLI of session {sid}")
                seen.setdefault(sid, {"pid": cli_of_session(r["pgid"], sid), "seenAt": time.time()})
        finally:
            stop.set()
            await watcher
        a = {"adapterPid": st["pid"], "pgid": st.get("pgid") or st["pid"], "sessionId": sid,
             "cliPid": (seen.get(sid) or {}).get("pid"), "cliAliveAtReady": bool(cli_of_session(r["pgid"], sid))}
        return {f"{name}-running": self.info(running, **r), f"{name}-abandoned": self.info(abandoned, **a)}

    async def sc_paused(self, name: str) -> dict:
        job = self.start(name, self.workspace(name), "finish the task", "escalate")
        await self.wait_status(job, ("paused", "failed", "completed", "cancelled"))
        return {name: self.info(job, **await self.wait_session(job))}

    async def sc_top_killed_paused(self, name: str) -> dict:
        job = self.start(name, self.workspace(name), "finish the task", "escalate")
        await self.wait_status(job, ("paused", "failed", "completed", "cancelled"))
        s = await self.wait_session(job)
        top = s["adapterPid"]
        os.kill(top, signal.SIGTERM)
        await wait_for(lambda: not alive(top), 15, f"top {top} to die")
        await asyncio.sleep(1.0)
        return {name: self.info(job, **s, topKilledAt=time.time(),
                                survivors=group_members(s["pgid"]))}

    async def start_top_killed_running(self, name: str) -> tuple:
        job = self.start(name, self.workspace(name), f"[hold:{name}] keep working")
        s = await self.wait_session(job)
        await self.wait_held(name)
        os.kill(s["adapterPid"], signal.SIGTERM)
        return job, s, time.time()

    async def finish_top_killed_running(self, name: str, job: str, s: dict, killed_at: float) -> dict:
        top = s["adapterPid"]
        await wait_for(lambda: not alive(top), 15, f"top {top} to die")
        status = await self.wait_status(job, ("failed", "completed", "cancelled"), timeout=120)
        failed_at = time.time()
        pid_file = os.path.join(".stepwise", "pids", f"acp-{top}.json")
        await wait_for(lambda: not os.path.exists(pid_file), 30, f"pid file {pid_file} removed")
        await asyncio.sleep(1.0)
        return {name: self.info(job, **s, topKilledAt=killed_at, failedAfter=round(failed_at - killed_at, 1),
                                survivors=group_members(s["pgid"]), jobStatusSeen=status)}

    async def scenarios(self) -> dict:
        t0 = time.monotonic()
        out: dict = {}
        timings: dict = {}
        names = [n for n in self.args.scenarios.split(",") if n]
        prefix = self.args.prefix
        pending_tkr = None
        if "top-killed-running" in names:
            t = time.monotonic()
            pending_tkr = await self.start_top_killed_running(f"{prefix}top-killed-running")
            timings["top-killed-running(start)"] = round(time.monotonic() - t, 1)
        for n in names:
            t = time.monotonic()
            full = f"{prefix}{n}"
            if n == "abandon":
                out.update(await self.sc_abandon(full))
            elif n == "shared":
                out.update(await self.sc_shared(full))
            elif n == "paused":
                out.update(await self.sc_paused(full))
            elif n == "top-killed-paused":
                out.update(await self.sc_top_killed_paused(full))
            elif n == "top-killed-running":
                continue
            else:
                raise ValueError(f"unknown scenario {n}")
            timings[n] = round(time.monotonic() - t, 1)
        if pending_tkr:
            t = time.monotonic()
            out.update(await self.finish_top_killed_running(f"{prefix}top-killed-running", *pending_tkr))
            timings["top-killed-running(wait)"] = round(time.monotonic() - t, 1)
        for info in out.values():
            info["status"] = self.status(info["jobId"])
        return {"scenarios": out, "setupSeconds": round(time.monotonic() - t0, 1), "timings": timings}

    async def serve(self) -> None:
        loop_task = asyncio.create_task(self.engine.run())
        try:
            try:
                ready = await self.scenarios()
            except Exception as exc:
                emit({"event": "error", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()})
                return
            guard = None
            if "stepwise_release_guard" in sys.modules:
                try:
                    guard = sys.modules["stepwise_release_guard"].status()
                except Exception as exc:  # report, never fail the harness on it
                    guard = {"error": repr(exc)}
            emit({"event": "ready", "serverPid": os.getpid(), "guard": guard, **ready})
            while True:
                line = await asyncio.to_thread(sys.stdin.readline)
                if not line:
                    return
                try:
                    cmd = json.loads(line)
                except ValueError:
                    emit({"event": "error", "error": f"bad command {line!r}"})
                    continue
                try:
                    c = cmd.get("cmd")
                    if c == "exit":
                        return
                    if c == "jobs":
                        emit({"event": "jobs", "jobs": {
                            j.id: {"name": j.name, "status": j.status.value, "runs": self.runs(j.id)}
                            for j in self.store.all_jobs()}})
                    elif c == "wait":
                        job_id = str(cmd["jobId"])
                        try:
                            status = await self.wait_status(job_id, tuple(cmd["statuses"]),
                                                            float(cmd.get("timeout", 60)))
                        except TimeoutError:
                            status = self.status(job_id)
                        emit({"event": "waited", "jobId": job_id, "status": status,
                              "runs": self.runs(job_id)})
                    else:
                        emit({"event": "error", "error": f"unknown command {cmd!r}"})
                except Exception as exc:
                    emit({"event": "error", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()})
        finally:
            kill_groups()
            loop_task.cancel()
            try:
                await asyncio.wait_for(self.engine.shutdown(), 10)
            except Exception:
                pass
            kill_groups()


def main() -> int:
    global _proto
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--standin", required=True, help="the stand-in's base URL")
    parser.add_argument("--scenarios", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--guard-dir", default=None,
                        help="load the release guard from this directory (site.addsitedir)")
    args = parser.parse_args()
    args.project = os.path.abspath(args.project)

    _proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    if args.guard_dir:
        import site
        site.addsitedir(os.path.abspath(args.guard_dir))  # runs its .pth like site-packages would
    sys.path.insert(0, os.path.join(os.path.abspath(args.src), "src"))
    os.makedirs(os.path.join(args.project, ".stepwise"), exist_ok=True)
    os.chdir(args.project)  # the engine writes .stepwise/pids/ relative to its cwd

    import logging
    logging.basicConfig(level=getattr(logging, os.environ.get("SCENARIO_LOG_LEVEL", "WARNING")),
                        stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    from stepwise.server_detect import write_pidfile
    write_pidfile(pathlib.Path(".stepwise"), 0)

    def on_term(signum, frame):
        # Not an exception: asyncio.run would then wait for the thread blocked on stdin.
        kill_groups()
        try:
            os.unlink(os.path.join(".stepwise", "server.pid"))
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    harness = Harness(args)
    try:
        harness.setup()
        asyncio.run(harness.serve())
    except KeyboardInterrupt:
        pass
    finally:
        kill_groups()
        try:
            os.unlink(os.path.join(".stepwise", "server.pid"))
        except OSError:
            pass
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
