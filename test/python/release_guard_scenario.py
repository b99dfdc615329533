#!/usr/bin/env python3
"""Run one leak scenario against a real stepwise engine and print a JSON report.

Used by test_release_guard_integration.py, one fresh process per run (the guard patches
classes process-wide, so "with" and "without" cannot share a process).

    python3 release_guard_scenario.py --src STEPWISE_SRC --workdir DIR \
        --scenario abandon|cancel|shared|steps [--guard] [--observe SECONDS]

The engine is stepwise's own AsyncEngine over a real SQLiteStore in DIR/.stepwise, with
the executor registry stepwise's server builds (create_default_registry), and one
user-defined agent, "fakeacp", whose command is fake_acp_adapter.py. DIR/.stepwise/server.pid
names this process, as a stepwise server's does, so the guard writes its marker there.

Scenarios
  abandon  one agent step whose exit rule ("always" -> abandon) fails the job.
  cancel   one agent step whose prompt never returns; the job is cancelled while it runs;
           the step sees "Transport closed", counts it transient, and retries (backoff
           shortened to RETRY_BACKOFF through the step's own retry decorator) on a new
           adapter.
  shared   two jobs in one working dir, so one adapter: job A's turn is held ("[hold]"),
           job B (one step in the named session "main") is abandoned by its exit rule.
  steps    one job: s1 (no session) -> s2, s3 (named session "main") -> hold (held turn);
           observed while "hold" runs.

Every adapter process the run spawned is listed with whether it was still alive after the
observation window, and with the session events it recorded (new/load/fork/close/prompt).
All of them are killed before exiting, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import site
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GUARD_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "deploy", "stepwise")
ADAPTER = os.path.join(HERE, "fake_acp_adapter.py")
RETRY_BACKOFF = 2.0  # seconds before the first retry (stepwise's default: 30)


def proc_state(pid: int) -> str | None:
    """'R', 'S', 'Z'... or None when the pid does not exist (/proc, else ps: macOS)."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                data = fh.read()
            return data.rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None
        except OSError:
            return None
    import subprocess
    try:
        out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[:1] or None


def alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X")


def recorded_adapters(record_dir: str) -> list[int]:
    pids = []
    for name in os.listdir(record_dir):
        if name.endswith(".json"):
            try:
                pids.append(int(name[:-5]))
            except ValueError:
                pass
    return sorted(pids)


def session_events(record_dir: str, pid: int) -> list[dict]:
    path = os.path.join(record_dir, f"{pid}.sessions.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)  # adapters lead their own group
        except OSError:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


async def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    return predicate()


async def run(args) -> dict:
    from stepwise.agent_registry import AgentConfig, set_user_agents
    from stepwise.config import StepwiseConfig
    from stepwise.engine import AsyncEngine
    from stepwise.models import (
        DecoratorRef,
        ExecutorRef,
        ExitRule,
        StepDefinition,
        WorkflowDefinition,
    )
    from stepwise.registry_factory import create_default_registry
    from stepwise.store import SQLiteStore

    dot = os.path.join(args.workdir, ".stepwise")
    record_dir = os.path.join(args.workdir, "adapters")
    os.makedirs(record_dir, exist_ok=True)
    os.environ["FAKE_ACP_RECORD_DIR"] = record_dir
    os.environ["FAKE_ACP_MODE"] = "hold" if args.scenario == "cancel" else "reply"

    set_user_agents({"fakeacp": AgentConfig.from_dict(
        {"name": "fakeacp", "command": [sys.executable, ADAPTER]})})
    store = SQLiteStore(os.path.join(dot, "stepwise.db"))
    registry = create_default_registry(StepwiseConfig())
    engine = AsyncEngine(store, registry, jobs_dir=os.path.join(args.workdir, "jobs"),
                         project_dir=pathlib.Path(dot))
    engine._agent_stagger_seconds = 0.0  # no need to space out launches here

    executor = ExecutorRef(
        "agent",
        {"prompt": "do the thing", "agent": "fakeacp", "output_mode": "effect"},
        # The engine's default for agent steps is 5 transient retries, 30 s base backoff;
        # same policy, shorter delay. It must still outlast cancel_job's kill wait (stepwise
        # polls the SIGTERMed adapter every 0.5 s before releasing the job), as 30 s does:
        # a retry that acquires before that release is released by it and does not leak.
        decorators=[DecoratorRef("retry", {
            "max_retries": 5, "backoff": "exponential", "backoff_base": RETRY_BACKOFF,
            "transient_only": True})],
    )
    step = StepDefinition(name="work", outputs=[], executor=executor)
    if args.scenario == "abandon":
        step.exit_rules = [ExitRule(name="give_up", type="always", config={"action": "abandon"})]
    workflow = WorkflowDefinition(steps={"work": step})

    def agent_step(name, prompt="do the thing", **kw):
        return StepDefinition(name=name, outputs=[], executor=ExecutorRef(
            "agent", {"prompt": prompt, "agent": "fakeacp", "output_mode": "effect"}), **kw)

    report: dict = {"scenario": args.scenario, "guard": args.guard}
    loop_task = asyncio.create_task(engine.run())
    try:
        if args.scenario in ("shared", "steps"):
            await run_session_scenario(args, engine, store, agent_step, ExitRule,
                                       WorkflowDefinition, record_dir, report)
            return report
        job = engine.create_job(objective=f"release-guard {args.scenario}", workflow=workflow,
                                workspace_path=args.workdir)
        engine.start_job(job.id)
        report["job_id"] = job.id

        def job_status():
            return store.load_job(job.id).status.value

        if args.scenario == "abandon":
            await wait_for(lambda: job_status() in ("completed", "failed", "cancelled"), 30)
            report["terminal_at"] = time.monotonic()
        else:
            first = await wait_for(lambda: recorded_adapters(record_dir), 30)
            if not first:
                raise RuntimeError("no adapter was spawned")
            # Let the prompt be in flight (executor_state carries the pid) before cancelling.
            await wait_for(lambda: any((r.executor_state or {}).get("pid")
                                       for r in store.running_runs(job.id)), 30)
            await asyncio.sleep(0.3)
            engine.cancel_job(job.id)
            report["terminal_at"] = time.monotonic()
            report["first_adapter"] = first[0]
            # The retry comes after the backoff on a fresh adapter.
            retried = await wait_for(lambda: len(recorded_adapters(record_dir)) > 1,
                                     RETRY_BACKOFF + 20)
            report["retried"] = bool(retried)

        report["job_status"] = job_status()
        report["events"] = [e.type for e in store.load_events(job.id)]
        await asyncio.sleep(args.observe)
        pids = recorded_adapters(record_dir)
        report["adapters"] = [{"pid": pid, "alive": alive(pid)} for pid in pids]
        report["alive_after_terminal"] = [pid for pid in pids if alive(pid)]
        marker = os.path.join(dot, "release-guard.json")
        if os.path.exists(marker):
            with open(marker) as fh:
                report["marker"] = json.load(fh)
        guard = sys.modules.get("stepwise_release_guard")
        report["guard_status"] = guard.status() if guard else None
    finally:
        if args.scenario in ("shared", "steps"):
            report["adapters"] = [
                {"pid": pid, "alive": alive(pid), "sessions": session_events(record_dir, pid)}
                for pid in recorded_adapters(record_dir)]
            marker = os.path.join(dot, "release-guard.json")
            if os.path.exists(marker):
                with open(marker) as fh:
                    report["marker"] = json.load(fh)
            guard = sys.modules.get("stepwise_release_guard")
            report["guard_status"] = guard.status() if guard else None
        kill_all(recorded_adapters(record_dir))
        loop_task.cancel()
        try:
            await engine.shutdown()
        except Exception:
            pass
    return report


def _session_of(store, job_id, step_name):
    for run in store.runs_for_job(job_id):
        if run.step_name == step_name and (run.executor_state or {}).get("session_id"):
            return run.executor_state["session_id"], run.status.value
    return None, None


async def run_session_scenario(args, engine, store, agent_step, ExitRule, WorkflowDefinition,
                               record_dir, report):
    guard = sys.modules.get("stepwise_release_guard")

    async def settle():
        if guard is not None and guard.GUARD.state == "active":
            await asyncio.get_running_loop().run_in_executor(
                None, guard.GUARD.wait_for_session_closes, 5.0)
        await asyncio.sleep(args.observe)

    if args.scenario == "shared":
        job_a = engine.create_job(objective="shared: A runs", workspace_path=args.workdir,
                                  workflow=WorkflowDefinition(steps={
                                      "hold": agent_step("hold", "[hold] keep working")}))
        engine.start_job(job_a.id)
        a_sid = await wait_for(lambda: _session_of(store, job_a.id, "hold")[0], 30)
        b_step = agent_step("work", session="main")
        b_step.exit_rules = [ExitRule(name="give_up", type="always", config={"action": "abandon"})]
        job_b = engine.create_job(objective="shared: B abandoned", workspace_path=args.workdir,
                                  workflow=WorkflowDefinition(steps={"work": b_step}))
        engine.start_job(job_b.id)
        await wait_for(lambda: store.load_job(job_b.id).status.value in
                       ("completed", "failed", "cancelled"), 30)
        await settle()
        report["sessions"] = {"A": a_sid, "B": _session_of(store, job_b.id, "work")[0]}
        report["job_status"] = {"A": store.load_job(job_a.id).status.value,
                                "B": store.load_job(job_b.id).status.value}
        report["runs"] = {"A": _session_of(store, job_a.id, "hold")[1],
                          "B": _session_of(store, job_b.id, "work")[1]}
    else:
        steps = {
            "s1": agent_step("s1"),
            "s2": agent_step("s2", session="main", after=["s1"]),
            "s3": agent_step("s3", session="main", after=["s2"]),
            "hold": agent_step("hold", "[hold] keep working", after=["s3"]),
        }
        job = engine.create_job(objective="steps", workspace_path=args.workdir,
                                workflow=WorkflowDefinition(steps=steps))
        engine.start_job(job.id)
        await wait_for(lambda: _session_of(store, job.id, "hold")[0], 30)
        await settle()
        report["sessions"] = {name: _session_of(store, job.id, name)[0] for name in steps}
        report["runs"] = {name: _session_of(store, job.id, name)[1] for name in steps}
        report["job_status"] = store.load_job(job.id).status.value


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--scenario", choices=("abandon", "cancel", "shared", "steps"), required=True)
    parser.add_argument("--guard", action="store_true")
    parser.add_argument("--observe", type=float, default=3.0)
    parser.add_argument("--out")
    args = parser.parse_args()

    if args.guard:
        # Exactly what site-packages does with stepwise_release_guard.pth.
        site.addsitedir(GUARD_DIR)
    sys.path.insert(0, os.path.join(os.path.abspath(args.src), "src"))

    os.makedirs(os.path.join(args.workdir, ".stepwise"), exist_ok=True)
    os.chdir(args.workdir)  # the engine writes .stepwise/pids/ relative to its cwd
    with open(os.path.join(".stepwise", "server.pid"), "w") as fh:
        json.dump({"pid": os.getpid(), "port": 0, "url": "http://localhost:0",
                   "started_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}, fh)

    import logging
    logging.basicConfig(level=getattr(logging, os.environ.get("SCENARIO_LOG_LEVEL", "WARNING")), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
