#!/usr/bin/env python3
"""A long-lived "stepwise server" for the real-engine test: the REAL stepwise engine.

    python3 real_engine_server.py --src STEPWISE_SRC --project DIR --record-dir DIR

It runs stepwise's own ``AsyncEngine`` over its own ``SQLiteStore`` (``DIR/.stepwise/stepwise.db``)
with the executor registry stepwise's server builds (``create_default_registry``), from cwd
``DIR`` (the engine writes ``.stepwise/pids/acp-<pid>.json`` relative to its cwd), and writes
``.stepwise/server.pid`` with stepwise's own ``write_pidfile`` (port 0: no HTTP server). It
does not run stepwise's HTTP server: that one's startup sweep SIGTERMs every same-uid
``claude-agent-acp`` process not owned by a running job, which would kill the test's
orphan/foreign trees (and other programs' adapters on this machine).

Every agent step uses a user-defined agent whose command is ``fake_tree_adapter.py npm-exec
@agentclientprotocol/claude-agent-acp --agent <name>``: a three-level tree whose argv carries
the marker. Agents with equal config share one adapter, so each scenario gets its own agent
name (one adapter each), except "shared", whose two jobs use one.

Scenarios driven at start-up, in order:
  active        a prompt that never returns: the job stays running.
  shared        job "shared-running" (held prompt, stays running), then job "shared-abandoned"
                on the SAME adapter, whose exit rule abandons it (failed).
  leak-1/2      one agent step whose exit rule ("always" -> abandon) fails the job: the
                engine never releases the adapter (stepwise PR #12).
  paused        an exit rule "always" -> escalate: the job is paused, its adapter kept.
  completed     a plain step: the job completes and the engine releases (kills) its adapter
                and removes its pid file.
  cancel-retry  a held prompt; the job is cancelled while it runs; the step sees "Transport
                closed", counts it transient and, after its retry backoff (RETRY_BACKOFF s
                here, 30 s by default), re-runs on a NEW adapter that nothing releases.
                max_retries is CANCEL_MAX_RETRIES so the test stays bounded.

Protocol: one JSON object per line on stdout (the engine's logging goes to stderr).
  -> {"event": "ready", "serverPid", "scenarios": {name: {"jobId", "status", "adapterPid",
      ...}}, "setupSeconds", "retryBackoff", "cancelMaxRetries"}
Commands, one JSON object per line on stdin, each answered by one line:
  {"cmd": "abandon", "name": N}   a new exit-rule-abandon leak on a new agent
                                   -> {"event": "abandoned", "jobId", "status", "adapterPid"}
  {"cmd": "status"}               -> {"event": "status", "jobs": {id: status}}
  {"cmd": "exit"}                 clean up and exit (stdin EOF or SIGTERM does the same).
Whatever happens, every adapter tree this run spawned is killed before it exits.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ADAPTER = os.path.join(HERE, "fake_tree_adapter.py")
MARKER = "@agentclientprotocol/claude-agent-acp"
RETRY_BACKOFF = 2.0  # seconds before the first transient retry (stepwise's default: 30)
CANCEL_MAX_RETRIES = 2
HOLD = "[hold] keep working on the long task"
REPLY = "finish the task"

_proto = None  # the real stdout, for protocol lines only


def emit(obj: dict) -> None:
    _proto.write(json.dumps(obj, default=str) + "\n")
    _proto.flush()


def recorded_tops(record_dir: str) -> list[dict]:
    out = []
    for name in sorted(os.listdir(record_dir)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(record_dir, name)) as fh:
                out.append(json.load(fh))
        except (OSError, ValueError):
            pass
    return out


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    s = proc_state(pid)
    return s is not None and s not in ("Z", "X")


def kill_recorded(record_dir: str) -> None:
    """SIGKILL every tree this run spawned (each top leads its own group)."""
    for rec in recorded_tops(record_dir):
        pid = rec.get("pid")
        if not isinstance(pid, int) or pid <= 1 or rec.get("pgid") != pid:
            continue  # only groups our own spawns lead (never the editor's or the test's)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


async def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
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
        self.agents: dict = {}

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
        self.engine._agent_stagger_seconds = 0.0  # no need to space out launches here

    def add_agent(self, name: str) -> None:
        from stepwise.agent_registry import AgentConfig, set_user_agents
        self.agents[name] = AgentConfig.from_dict({
            "name": name,
            "command": [sys.executable, ADAPTER, "npm-exec", MARKER, "--agent", name],
        })
        set_user_agents(self.agents)

    def workflow(self, agent: str, prompt: str, exit_action: str | None = None,
                 max_retries: int = 5):
        from stepwise.models import (DecoratorRef, ExecutorRef, ExitRule, StepDefinition,
                                     WorkflowDefinition)
        executor = ExecutorRef(
            "agent", {"prompt": prompt, "agent": agent, "output_mode": "effect"},
            # The engine's default for agent steps: transient retries, 30 s base backoff.
            # Same policy, shorter delay; it must still outlast cancel_job's kill wait.
            decorators=[DecoratorRef("retry", {
                "max_retries": max_retries, "backoff": "exponential",
                "backoff_base": RETRY_BACKOFF, "transient_only": True})],
        )
        step = StepDefinition(name="work", outputs=[], executor=executor)
        if exit_action:
            step.exit_rules = [ExitRule(name=f"always_{exit_action}", type="always",
                                        config={"action": exit_action})]
        return WorkflowDefinition(steps={"work": step})

    def start(self, name: str, agent: str, prompt: str, exit_action: str | None = None,
              max_retries: int = 5) -> str:
        job = self.engine.create_job(objective=f"real-engine {name}",
                                     workflow=self.workflow(agent, prompt, exit_action, max_retries),
                                     workspace_path=self.args.project, name=name)
        self.engine.start_job(job.id)
        return job.id

    def status(self, job_id: str) -> str:
        return self.store.load_job(job_id).status.value

    def run_pids(self, job_id: str) -> list[int]:
        return [r.executor_state.get("pid") for r in self.store.runs_for_job(job_id)
                if r.executor_state and r.executor_state.get("pid")]

    def pid_of(self, job_id: str) -> int | None:
        pids = self.run_pids(job_id)
        return pids[-1] if pids else None

    async def wait_status(self, job_id: str, statuses, timeout: float = 30) -> str:
        return await wait_for(lambda: self.status(job_id) in statuses and self.status(job_id),
                              timeout, f"job {job_id} to become one of {statuses}")

    async def wait_pid(self, job_id: str, timeout: float = 30) -> int:
        return await wait_for(lambda: self.pid_of(job_id), timeout,
                              f"an adapter pid in job {job_id}'s step run")

    async def abandon(self, name: str) -> dict:
        self.add_agent(f"fake-{name}")
        job_id = self.start(name, f"fake-{name}", REPLY, exit_action="abandon")
        status = await self.wait_status(job_id, ("failed", "completed", "cancelled"))
        return {"jobId": job_id, "status": status, "adapterPid": self.pid_of(job_id)}

    async def scenarios(self) -> dict:
        t0 = time.monotonic()
        out: dict = {}
        for name in ("active", "shared", "leak-1", "leak-2", "paused", "completed",
                     "cancel-retry"):
            self.add_agent(f"fake-{name}")

        # active: a prompt in flight that never returns.
        job = self.start("active", "fake-active", HOLD)
        out["active"] = {"jobId": job, "adapterPid": await self.wait_pid(job)}

        # shared: a running job and an abandoned one on the same adapter.
        running = self.start("shared-running", "fake-shared", HOLD)
        shared_pid = await self.wait_pid(running)
        abandoned = self.start("shared-abandoned", "fake-shared", REPLY, exit_action="abandon")
        await self.wait_status(abandoned, ("failed", "completed", "cancelled"))
        out["shared-running"] = {"jobId": running, "adapterPid": shared_pid}
        out["shared-abandoned"] = {"jobId": abandoned, "adapterPid": self.pid_of(abandoned)}

        # two exit-rule-abandon leaks.
        for name in ("leak-1", "leak-2"):
            out[name] = await self.abandon(name)

        # paused: escalate.
        job = self.start("paused", "fake-paused", REPLY, exit_action="escalate")
        await self.wait_status(job, ("paused", "failed", "completed", "cancelled"))
        out["paused"] = {"jobId": job, "adapterPid": self.pid_of(job)}

        # completed: the engine releases the adapter (SIGTERM to its group, pid file removed).
        job = self.start("completed", "fake-completed", REPLY)
        await self.wait_status(job, ("completed", "failed", "cancelled"))
        pid = self.pid_of(job)
        pid_file = os.path.join(".stepwise", "pids", f"acp-{pid}.json")
        await wait_for(lambda: pid and not alive(pid) and not os.path.exists(pid_file), 15,
                       f"the completed job's adapter {pid} to be released")
        out["completed"] = {"jobId": job, "adapterPid": pid}

        # cancel-retry: cancel while the prompt is in flight; the step retries on a new adapter.
        job = self.start("cancel-retry", "fake-cancel-retry", HOLD,
                         max_retries=CANCEL_MAX_RETRIES)
        first = await self.wait_pid(job)
        await asyncio.sleep(0.3)
        cancel_at = time.time()
        self.engine.cancel_job(job)
        cancelled_at = time.time()
        retry = await wait_for(lambda: (p := self.pid_of(job)) and p != first and alive(p) and p,
                               RETRY_BACKOFF + 20, "the cancelled job's step to retry on a new adapter")
        await wait_for(lambda: os.path.exists(os.path.join(".stepwise", "pids", f"acp-{retry}.json")),
                       10, f"the retry adapter's pid file acp-{retry}.json")
        out["cancel-retry"] = {"jobId": job, "adapterPid": retry, "firstAdapterPid": first,
                               "firstAdapterAlive": alive(first), "cancelCalledAt": cancel_at,
                               "cancelReturnedAt": cancelled_at, "retrySeenAt": time.time()}

        for name, info in out.items():
            info["status"] = self.status(info["jobId"])
        return {"scenarios": out, "setupSeconds": round(time.monotonic() - t0, 2),
                "retryBackoff": RETRY_BACKOFF, "cancelMaxRetries": CANCEL_MAX_RETRIES}

    async def serve(self) -> None:
        loop_task = asyncio.create_task(self.engine.run())
        try:
            try:
                ready = await self.scenarios()
            except Exception as exc:
                emit({"event": "error", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(), "records": recorded_tops(self.args.record_dir)})
                return
            emit({"event": "ready", "serverPid": os.getpid(), **ready})
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
                    if cmd.get("cmd") == "exit":
                        return
                    if cmd.get("cmd") == "abandon":
                        emit({"event": "abandoned", **await self.abandon(str(cmd["name"]))})
                    elif cmd.get("cmd") == "status":
                        jobs = {j.id: j.status.value for j in self.store.all_jobs()}
                        emit({"event": "status", "jobs": jobs})
                    else:
                        emit({"event": "error", "error": f"unknown command {cmd!r}"})
                except Exception as exc:
                    emit({"event": "error", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()})
        finally:
            # No new adapter from here on (a retry sleeping in an executor thread would
            # otherwise spawn one after we are gone), then kill every tree we spawned.
            os.environ["FAKE_TREE_REFUSE"] = "1"
            kill_recorded(self.args.record_dir)
            loop_task.cancel()
            try:
                await asyncio.wait_for(self.engine.shutdown(), 10)
            except Exception:
                pass
            kill_recorded(self.args.record_dir)


def main() -> int:
    global _proto
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--record-dir", required=True)
    args = parser.parse_args()
    args.project = os.path.abspath(args.project)
    args.record_dir = os.path.abspath(args.record_dir)

    # Protocol lines go to the real stdout; anything else printing to fd 1 lands on stderr.
    _proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    sys.path.insert(0, os.path.join(os.path.abspath(args.src), "src"))
    os.makedirs(os.path.join(args.project, ".stepwise"), exist_ok=True)
    os.makedirs(args.record_dir, exist_ok=True)
    os.environ["FAKE_TREE_RECORD_DIR"] = args.record_dir
    os.chdir(args.project)  # the engine writes .stepwise/pids/ relative to its cwd

    import logging
    logging.basicConfig(level=getattr(logging, os.environ.get("SCENARIO_LOG_LEVEL", "WARNING")),
                        stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    from stepwise.server_detect import write_pidfile
    write_pidfile(pathlib.Path(".stepwise"), 0)  # {"pid","port","url","started_at"}, as stepwise does

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    harness = Harness(args)
    try:
        harness.setup()
        asyncio.run(harness.serve())
    except KeyboardInterrupt:
        pass
    finally:
        os.environ["FAKE_TREE_REFUSE"] = "1"
        kill_recorded(args.record_dir)
        try:
            os.unlink(os.path.join(".stepwise", "server.pid"))
        except OSError:
            pass
    # Executor threads may still sit in a held prompt or a retry backoff: do not wait for them.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
