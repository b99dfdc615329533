#!/usr/bin/env python3
"""Run one leak scenario against a real stepwise engine and print a JSON report.

Used by test_release_guard_integration.py, one fresh process per run (the guard patches
classes process-wide, so "with" and "without" cannot share a process).

    python3 release_guard_scenario.py --src STEPWISE_SRC --workdir DIR \
        --scenario abandon|cancel [--guard] [--observe SECONDS]

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

Every adapter process the run spawned is listed with whether it was still alive after the
observation window. All of them are killed before exiting, whatever happened.
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
    """'R', 'S', 'Z'... from /proc, or None when the pid does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
        return data.rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    except OSError:
        return None


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
    os.environ["FAKE_ACP_MODE"] = "reply" if args.scenario == "abandon" else "hold"

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

    report: dict = {"scenario": args.scenario, "guard": args.guard}
    loop_task = asyncio.create_task(engine.run())
    try:
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
        kill_all(recorded_adapters(record_dir))
        loop_task.cancel()
        try:
            await engine.shutdown()
        except Exception:
            pass
    return report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--scenario", choices=("abandon", "cancel"), required=True)
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
