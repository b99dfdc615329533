"""Opt-in: the release guard against a real stepwise engine.

Set STEPWISE_SRC to a stepwise source tree (the directory holding pyproject.toml and
src/stepwise/); otherwise every test here is skipped. Each scenario runs twice, in fresh
processes (release_guard_scenario.py): once without the guard, where the adapter (or a
session inside a shared adapter) leaks, and once with it loaded the way site-packages loads
stepwise_release_guard.pth, where the adapter is gone within a few seconds of the job
becoming terminal, and the sessions nothing can resume are closed (ACP session/close, as
recorded by fake_acp_adapter.py) while the adapter and the other sessions stay.

    STEPWISE_SRC=/path/to/stepwise python3 -m unittest test_release_guard_integration -v
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIO = os.path.join(HERE, "release_guard_scenario.py")
STEPWISE_SRC = os.environ.get("STEPWISE_SRC", "").strip()
SKIP_MESSAGE = "set STEPWISE_SRC to a stepwise source tree to run the real-engine test"
OBSERVE_SECONDS = 3.0


def _kill_recorded(workdir: str) -> None:
    record_dir = os.path.join(workdir, "adapters")
    if not os.path.isdir(record_dir):
        return
    for name in os.listdir(record_dir):
        if not name.endswith(".json"):
            continue
        try:
            pid = int(name[:-5])
        except ValueError:
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


@unittest.skipUnless(STEPWISE_SRC, SKIP_MESSAGE)
class RealEngineTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        src = os.path.join(os.path.abspath(STEPWISE_SRC), "src")
        if not os.path.isfile(os.path.join(src, "stepwise", "engine.py")):
            raise AssertionError(f"STEPWISE_SRC={STEPWISE_SRC!r} has no src/stepwise/engine.py")
        probe = subprocess.run(
            [sys.executable, "-c",
             "import stepwise.engine, stepwise.registry_factory, stepwise.acp_backend"],
            env={**os.environ, "STEPWISE_RELEASE_GUARD": "0",
                 "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)},
            capture_output=True, text=True, timeout=120)
        if probe.returncode != 0:
            raise AssertionError(
                "stepwise's engine does not import with this python "
                f"({sys.executable}); missing dependency?\n{probe.stderr[-2000:]}")

    def run_scenario(self, scenario: str, guard: bool) -> dict:
        workdir = tempfile.mkdtemp(prefix=f"swguard-{scenario}-")
        out = os.path.join(workdir, "report.json")
        cmd = [sys.executable, SCENARIO, "--src", STEPWISE_SRC, "--workdir", workdir,
               "--scenario", scenario, "--observe", str(OBSERVE_SECONDS), "--out", out]
        if guard:
            cmd.append("--guard")
        env = dict(os.environ)
        env.pop("STEPWISE_RELEASE_GUARD", None)
        if not guard:  # even if this python has the guard installed in its site-packages
            env["STEPWISE_RELEASE_GUARD"] = "0"
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        finally:
            _kill_recorded(workdir)
        self.assertEqual(proc.returncode, 0, f"scenario failed:\n{proc.stderr[-4000:]}")
        with open(out) as fh:
            report = json.load(fh)
        report["_stderr"] = proc.stderr
        return report

    def test_exit_rule_abandon(self):
        without = self.run_scenario("abandon", guard=False)
        self.assertEqual(without["job_status"], "failed")
        self.assertIn("job.failed", without["events"])
        self.assertEqual(len(without["adapters"]), 1)
        self.assertEqual(without["alive_after_terminal"], [without["adapters"][0]["pid"]],
                         "without the guard the abandoned job's adapter stays alive")
        self.assertTrue(without["guard_status"] is None or without["guard_status"]["state"] == "idle")

        with_guard = self.run_scenario("abandon", guard=True)
        self.assertEqual(with_guard["job_status"], "failed")
        self.assertEqual(len(with_guard["adapters"]), 1)
        self.assertEqual(with_guard["alive_after_terminal"], [],
                         f"with the guard the adapter is gone:\n{with_guard['_stderr'][-3000:]}")
        self.assertEqual(with_guard["guard_status"]["state"], "active")
        self.assertEqual(with_guard["guard_status"]["stats"]["released_on_terminal"], 1)
        self.assertEqual(with_guard["guard_status"]["stats"]["errors"], 0)
        marker = with_guard["marker"]
        self.assertIs(marker["active"], True)
        self.assertEqual(marker["guard"], "stepwise_release_guard")
        self.assertTrue(marker["stepwise_version"])

    def test_cancel_then_retry(self):
        without = self.run_scenario("cancel", guard=False)
        self.assertEqual(without["job_status"], "cancelled")
        self.assertTrue(without["retried"], "the step of the cancelled job retried")
        first = without["first_adapter"]
        retry_pids = [a["pid"] for a in without["adapters"] if a["pid"] != first]
        self.assertNotIn(first, without["alive_after_terminal"], "cancel killed the first adapter")
        self.assertTrue(retry_pids)
        self.assertEqual(without["alive_after_terminal"], retry_pids,
                         "without the guard the retry's fresh adapter stays alive")

        with_guard = self.run_scenario("cancel", guard=True)
        self.assertEqual(with_guard["job_status"], "cancelled")
        self.assertTrue(with_guard["retried"], "the retry still happens (the guard changes nothing else)")
        self.assertEqual(with_guard["alive_after_terminal"], [],
                         f"with the guard the retry's adapter is gone:\n{with_guard['_stderr'][-3000:]}")
        self.assertGreaterEqual(with_guard["guard_status"]["stats"]["released_after_acquire"], 1)
        self.assertEqual(with_guard["guard_status"]["stats"]["errors"], 0)

    # ── session closing ──────────────────────────────────────────────────

    @staticmethod
    def _events(report):
        adapters = report["adapters"]
        assert len(adapters) == 1, adapters
        return adapters[0], [(e["event"], e["sessionId"]) for e in adapters[0]["sessions"]]

    def test_shared_adapter_abandoned_jobs_session_closed(self):
        without = self.run_scenario("shared", guard=False)
        adapter, events = self._events(without)
        a_sid, b_sid = without["sessions"]["A"], without["sessions"]["B"]
        self.assertEqual(without["job_status"], {"A": "running", "B": "failed"})
        self.assertTrue(adapter["alive"])
        self.assertEqual({sid for ev, sid in events if ev == "new"}, {a_sid, b_sid},
                         "one adapter, two sessions (the jobs share the working dir)")
        self.assertEqual([sid for ev, sid in events if ev == "close"], [],
                         "stepwise never closes a session")

        with_guard = self.run_scenario("shared", guard=True)
        adapter, events = self._events(with_guard)
        a_sid, b_sid = with_guard["sessions"]["A"], with_guard["sessions"]["B"]
        self.assertEqual(with_guard["job_status"], {"A": "running", "B": "failed"})
        self.assertEqual(with_guard["runs"]["A"], "running", "A's turn goes on")
        self.assertTrue(adapter["alive"], "the adapter A uses stays")
        self.assertEqual([sid for ev, sid in events if ev == "close"], [b_sid],
                         f"B's session closed, A's kept:\n{with_guard['_stderr'][-3000:]}")
        self.assertTrue(all(e["ok"] for e in adapter["sessions"]))
        stats = with_guard["guard_status"]["stats"]
        self.assertEqual(stats["sessions_closed_on_release"], 1)
        self.assertEqual(stats["session_close_errors"], 0)
        self.assertEqual(stats["errors"], 0)
        self.assertIs(with_guard["marker"]["sessionClosing"], True)
        self.assertIsNone(with_guard["marker"]["sessionClosingReason"])

    def test_finished_steps_sessions(self):
        without = self.run_scenario("steps", guard=False)
        _, events = self._events(without)
        self.assertEqual([sid for ev, sid in events if ev == "close"], [])

        with_guard = self.run_scenario("steps", guard=True)
        adapter, events = self._events(with_guard)
        sessions = with_guard["sessions"]
        self.assertEqual(with_guard["runs"], {"s1": "completed", "s2": "completed",
                                              "s3": "completed", "hold": "running"})
        self.assertEqual(sessions["s2"], sessions["s3"], "s3 continued the named session")
        self.assertIn(("load", sessions["s3"]), events)
        self.assertEqual([sid for ev, sid in events if ev == "close"], [sessions["s1"]],
                         "only s1's session (no session, nobody forks it) is closed; the named "
                         f"session and the running turn are kept:\n{with_guard['_stderr'][-3000:]}")
        self.assertTrue(adapter["alive"])
        stats = with_guard["guard_status"]["stats"]
        self.assertEqual(stats["sessions_closed_after_step"], 1)
        self.assertEqual(stats["errors"], 0)


if __name__ == "__main__":
    unittest.main()
