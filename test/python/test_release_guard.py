"""Unit tests for deploy/stepwise/stepwise_release_guard.py, without stepwise.

Each test writes a tiny fake stepwise package (engine, store, executors, lifecycle, models,
optionally containment) under a unique package name into a temp dir, points a fresh
ReleaseGuard at that name, and imports the fake engine through the guard's import hook.

Run: python3 -m unittest discover -s test/python -v
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import unittest
import uuid
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GUARD_DIR = os.path.join(ROOT, "deploy", "stepwise")

# The module installs a process-wide guard for the real "stepwise" on import; these tests
# build their own guards for fake packages, so keep the global one idle.
os.environ["STEPWISE_RELEASE_GUARD"] = "0"
if GUARD_DIR not in sys.path:
    sys.path.insert(0, GUARD_DIR)
import stepwise_release_guard as srg  # noqa: E402

LOGGER = "stepwise_release_guard"

FAKE_SOURCES = {
    "__init__.py": "",
    "models.py": '''
        import enum

        class JobStatus(enum.Enum):
            STAGED = "staged"
            PENDING = "pending"
            RUNNING = "running"
            PAUSED = "paused"
            COMPLETED = "completed"
            FAILED = "failed"
            CANCELLED = "cancelled"
            ARCHIVED = "archived"

        class Job:
            def __init__(self, id, status=JobStatus.PENDING, workflow=None):
                self.id = id
                self.status = status
                self.workflow = workflow

        class StepRunStatus(enum.Enum):
            RUNNING = "running"
            SUSPENDED = "suspended"
            DELEGATED = "delegated"
            COMPLETED = "completed"
            FAILED = "failed"
            CANCELLED = "cancelled"
            SKIPPED = "skipped"

        class StepDefinition:
            def __init__(self, name, session=None, fork_from=None, continue_session=False):
                self.name = name
                self.session = session
                self.fork_from = fork_from
                self.continue_session = continue_session

            def to_dict(self):
                d = {"name": self.name}
                if self.session:
                    d["session"] = self.session
                if self.fork_from:
                    d["fork_from"] = self.fork_from
                if self.continue_session:
                    d["continue_session"] = True
                return d

        class WorkflowDefinition:
            def __init__(self, steps):
                self.steps = {s.name: s for s in steps}

            def to_dict(self):
                return {"steps": {n: s.to_dict() for n, s in self.steps.items()}}

        class StepRun:
            def __init__(self, job_id, step_name, attempt=1, status=StepRunStatus.RUNNING):
                self.id = f"run-{job_id}-{step_name}-{attempt}"
                self.job_id = job_id
                self.step_name = step_name
                self.attempt = attempt
                self.status = status
                self.executor_state = None
    ''',
    "store.py": '''
        import sqlite3
        import threading
        from .models import Job, JobStatus

        class SQLiteStore:
            def __init__(self, db_path=":memory:"):
                self._db_path = db_path
                self._conn = sqlite3.connect(db_path, check_same_thread=False)
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT, workflow TEXT)")
                self._conn.commit()
                self.save_calls = 0
                self._write_lock = threading.Lock()
                self.runs = {}

            def save_job(self, job):
                self.save_calls += 1
                if job.id is None:
                    raise ValueError("job without id")
                import json
                wf = getattr(job, "workflow", None)
                with self._write_lock:
                    self._conn.execute(
                        "INSERT INTO jobs (id, status, workflow) VALUES (?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
                        "workflow = coalesce(excluded.workflow, workflow)",
                        (job.id, job.status.value, json.dumps(wf.to_dict()) if wf else None))
                    self._conn.commit()
                return "saved"

            def save_run(self, run):
                self.runs[run.id] = (run.status, dict(run.executor_state or {}))
                return "run saved"

            def load_job(self, job_id):
                row = self._conn.execute(
                    "SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise KeyError(job_id)
                return Job(job_id, JobStatus(row[0]))

            def raw_set_status(self, job_id, status):
                """A write the guard cannot see (another process)."""
                self._conn.execute("UPDATE jobs SET status = ? WHERE id = ?", (status, job_id))
                self._conn.commit()

            def load_job_workflow(self, job_id):
                row = self._conn.execute("SELECT workflow FROM jobs WHERE id = ?", (job_id,)).fetchone()
                return row[0] if row else None

            def archive_job(self, job_id):
                self.raw_set_status(job_id, JobStatus.ARCHIVED.value)

            def atomic_status_transition(self, job_id, from_status, to_status):
                cur = self._conn.execute(
                    "UPDATE jobs SET status = ? WHERE id = ? AND status = ?",
                    (to_status.value, job_id, from_status.value))
                self._conn.commit()
                return cur.rowcount > 0

            def reset_job(self, job_id, *, status=JobStatus.PENDING):
                self.raw_set_status(job_id, status.value)

            def delete_job(self, job_id):
                self._conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                self._conn.commit()
    ''',
    "executors.py": '''
        class ExecutorRegistry:
            def __init__(self):
                self._resource_managers = []

            def register_resource_manager(self, manager):
                if manager not in self._resource_managers:
                    self._resource_managers.append(manager)

            @property
            def resource_managers(self):
                return list(self._resource_managers)

        class ExecutionContext:
            def __init__(self, job_id, step_name, attempt, state_update_fn=None):
                self.job_id = job_id
                self.step_name = step_name
                self.attempt = attempt
                self.state_update_fn = state_update_fn
    ''',
    "lifecycle.py": '''
        class Managed:
            def __init__(self, config, job_id, resource=None):
                self.config = config
                self.resource = resource
                self.job_refs = {job_id} if job_id else set()

        class ResourceLifecycleManager:
            """Like stepwise's: `active` pool entries carry the job_refs that keep them;
            with a factory, an entry with an equal config is reused (refs added)."""
            def __init__(self, trace=None, factory=None, teardown=None):
                self.trace = trace if trace is not None else []
                self.factory = factory
                self.teardown = teardown
                self.active = []
                self.acquired = []
                self.released = []
                self.fail_release = False

            def acquire(self, config, session_name=None, job_id=None):
                self.acquired.append(job_id)
                self.trace.append(("acquire", job_id))
                if self.factory is not None:
                    for managed in self.active:
                        if managed.config == config:
                            if job_id:
                                managed.job_refs.add(job_id)
                            return managed, False
                    managed = Managed(config, job_id, self.factory(config))
                    self.active.append(managed)
                    return managed, True
                self.active.append(Managed(config, job_id))
                return ("resource", config), True

            def release_for_job(self, job_id):
                self.released.append(job_id)
                self.trace.append(("lifecycle.release", job_id))
                if self.fail_release:
                    raise RuntimeError("teardown exploded")
                for managed in self.active:
                    managed.job_refs.discard(job_id)
                    if not managed.job_refs and self.teardown and managed.resource is not None:
                        self.teardown(managed.resource)
                self.active = [m for m in self.active if m.job_refs]
    ''',
    "acp_client.py": '''
        import itertools

        _ids = itertools.count(1)

        class AcpError(Exception):
            pass

        class FakeAdapter:
            """Stands in for an adapter process: the set of sessions it keeps open (the
            real one runs one `claude` CLI per open session)."""
            def __init__(self, name):
                self.name = name
                self.pid = 40000 + next(_ids)
                self.sessions = set()
                self.closed = []
                self.close_calls = []
                self.prompts = []
                self.alive = True
                self.close_raises = None   # an exception for close_session to raise

            def poll(self):
                return None if self.alive else 0

        class ACPClient:
            """Like stepwise's: one per adapter process; close_session is best effort."""
            def __init__(self, adapter):
                self.adapter = adapter
                self.sessions = {}

            def new_session(self, cwd, session_name=None):
                sid = f"sess-{next(_ids)}"
                self.adapter.sessions.add(sid)
                if session_name:
                    self.sessions[session_name] = sid
                return sid

            def load_session(self, session_id, cwd):
                self.adapter.sessions.add(session_id)

            def fork_session(self, session_id, cwd):
                sid = f"fork-{next(_ids)}"
                self.adapter.sessions.add(sid)
                return sid

            def prompt(self, session_id, text, on_update=None, output_path=None):
                if session_id not in self.adapter.sessions:
                    raise AcpError(f"Session not found: {session_id}")
                self.adapter.prompts.append((session_id, text))
                return {"stopReason": "end_turn"}

            def close_session(self, session_id):
                self.adapter.close_calls.append(session_id)
                if self.adapter.close_raises is not None:
                    raise self.adapter.close_raises
                try:
                    if session_id not in self.adapter.sessions:
                        raise AcpError("Session not found")
                    self.adapter.sessions.discard(session_id)
                    self.adapter.closed.append(session_id)
                except Exception:
                    pass  # best effort, as in stepwise
    ''',
    "acp_backend.py": '''
        import threading
        import types
        from .acp_client import ACPClient, FakeAdapter
        from .lifecycle import ResourceLifecycleManager

        class ACPProcess:
            def __init__(self, config):
                self.config = config
                self.process = FakeAdapter(config)
                self.client = ACPClient(self.process)

        def _kill(acp_proc):
            acp_proc.process.alive = False
            acp_proc.process.sessions.clear()

        class ACPBackend:
            """Like stepwise's: a resource manager owning a lifecycle pool of adapters."""
            def __init__(self, trace=None):
                self.trace = trace if trace is not None else []
                self.lifecycle = ResourceLifecycleManager(self.trace, factory=ACPProcess, teardown=_kill)
                self.containment = None
                self.released = []
                self.fail_release = False
                self.gates = {}   # step name -> threading.Event the turn waits for

            def spawn(self, prompt, config, context):
                """Acquire an adapter (shared by config), open/load/fork a session, run the turn."""
                managed, was_new = self.lifecycle.acquire(
                    config.get("adapter", "shared"), config.get("_session_name"), job_id=context.job_id)
                acp = managed.resource
                if config.get("_fork_from_session_id"):
                    sid = acp.client.fork_session(config["_fork_from_session_id"], "/ws")
                elif config.get("_session_uuid"):
                    acp.client.load_session(config["_session_uuid"], "/ws")
                    sid = config["_session_uuid"]
                else:
                    sid = acp.client.new_session("/ws", config.get("_session_name"))
                if context.state_update_fn:
                    context.state_update_fn({"pid": acp.process.pid, "session_id": sid})
                gate = self.gates.get(context.step_name)
                if gate is not None:
                    gate.wait(10)
                acp.client.prompt(sid, prompt)
                return types.SimpleNamespace(pid=acp.process.pid, session_id=sid)

            def release_for_job(self, job_id):
                self.released.append(job_id)
                self.trace.append(("release", job_id))
                if self.fail_release:
                    raise RuntimeError("release exploded")
                self.lifecycle.release_for_job(job_id)

            def release_all(self):
                pass
    ''',
    "engine.py": '''
        from .executors import ExecutionContext, ExecutorRegistry
        from .models import Job, JobStatus, StepRun, StepRunStatus
        from .store import SQLiteStore

        class Engine:
            def __init__(self, store, registry=None, project_dir=None):
                self.store = store
                self.registry = registry or ExecutorRegistry()
                self.project_dir = project_dir
                self.trace = []
                self.events = []
                self.cancel_releases = True   # False: a version whose cancel forgets it
                self._session_registries = {}

            def _emit(self, job_id, event_type, data=None, is_effector=False):
                self.events.append((job_id, event_type))
                self.trace.append(("emit", job_id, event_type))

            def _cleanup_job_sessions(self, job_id, job=None):
                self.trace.append(("cleanup", job_id))
                self._session_registries.pop(job_id, None)
                for manager in self.registry.resource_managers:
                    manager.release_for_job(job_id)

            def create_job(self, job_id, status=JobStatus.RUNNING, workflow=None):
                job = Job(job_id, status, workflow)
                self.store.save_job(job)
                return job

            def run_agent_step(self, backend, job_id, step_name, attempt=1, config=None,
                               outcome=StepRunStatus.COMPLETED):
                """Like the engine's agent path: a run, the backend's spawn (session setup and
                the turn), then the run saved finished. Returns (run, session id)."""
                run = StepRun(job_id, step_name, attempt)
                self.store.save_run(run)

                def update(state):
                    run.executor_state = {**(run.executor_state or {}), **state}
                    self.store.save_run(run)

                ctx = ExecutionContext(job_id, step_name, attempt, update)
                try:
                    process = backend.spawn("do it", dict(config or {}), ctx)
                    run.status = outcome
                except Exception:
                    run.status = StepRunStatus.FAILED
                    process = None
                self.store.save_run(run)
                return run, process.session_id if process else None

            def cancel_job(self, job_id):
                job = self.store.load_job(job_id)
                job.status = JobStatus.CANCELLED
                self.store.save_job(job)          # no event, as in stepwise
                if self.cancel_releases:
                    self._cleanup_job_sessions(job.id, job)
                return "cancelled!"

            def _process_completion(self, job, action):
                if action == "abandon":           # the leak of stepwise PR #12
                    job.status = JobStatus.FAILED
                    self.store.save_job(job)
                    self._emit(job.id, "job.failed", {"reason": "abandoned"})
                    return "abandoned"
                return "advanced"

            def _check_job_terminal(self, job_id):
                job = self.store.load_job(job_id)
                job.status = JobStatus.COMPLETED
                self.store.save_job(job)
                self._emit(job.id, "job.completed")
                self._cleanup_job_sessions(job.id, job)

            def resume_job(self, job_id):
                job = self.store.load_job(job_id)
                job.status = JobStatus.RUNNING
                self.store.save_job(job)

            def tick(self):
                return "ticked"

        class AsyncEngine(Engine):
            def cancel_job(self, job_id):
                self.trace.append(("async-cancel", job_id))
                super().cancel_job(job_id)
                return "async-cancelled!"
    ''',
}

CONTAINMENT_SOURCES = {
    "containment/__init__.py": "",
    "containment/cloud_hypervisor.py": '''
        class CloudHypervisorBackend:
            def __init__(self):
                self.refs = {}
                self.released = []

            def get_spawn_context(self, config, job_id=None):
                if job_id:
                    self.refs.setdefault("vm", set()).add(job_id)
                return "spawn-context"

            def release_for_job(self, job_id):
                self.released.append(job_id)
                for refs in self.refs.values():
                    refs.discard(job_id)

            def release_all(self):
                pass
    ''',
}


def _write_package(root, name, sources):
    for rel, text in sources.items():
        path = os.path.join(root, name, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(textwrap.dedent(text))


class FakeStepwiseTestCase(unittest.TestCase):
    """A fresh fake package + a fresh guard per test."""

    sources = FAKE_SOURCES
    install_before_import = True

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.pkg = "swfake_" + uuid.uuid4().hex[:10]
        _write_package(self.tmp.name, self.pkg, self.sources)
        sys.path.insert(0, self.tmp.name)
        self.addCleanup(self._unimport)
        old_cwd = os.getcwd()
        self.cwd = os.path.join(self.tmp.name, "cwd")
        os.makedirs(self.cwd)
        os.chdir(self.cwd)  # so no marker can land in the repository
        self.addCleanup(os.chdir, old_cwd)
        env = mock.patch.dict(os.environ, {}, clear=False)
        env.start()
        self.addCleanup(env.stop)
        os.environ.pop("STEPWISE_PROJECT_DIR", None)
        self.guard = srg.ReleaseGuard(package=self.pkg)
        self.addCleanup(self.guard.uninstall)
        if self.install_before_import:
            self.guard.install()

    def _unimport(self):
        try:
            sys.path.remove(self.tmp.name)
        except ValueError:
            pass
        for name in list(sys.modules):
            if name == self.pkg or name.startswith(self.pkg + "."):
                del sys.modules[name]

    def mod(self, name):
        return importlib.import_module(f"{self.pkg}.{name}")

    def make_engine(self, cls_name="Engine", db_path=":memory:", project_dir=None):
        engine_mod = self.mod("engine")
        store = self.mod("store").SQLiteStore(db_path)
        registry = self.mod("executors").ExecutorRegistry()
        backend = self.mod("acp_backend").ACPBackend()
        registry.register_resource_manager(backend)
        engine = getattr(engine_mod, cls_name)(store, registry, project_dir=project_dir)
        backend.trace = engine.trace
        backend.lifecycle.trace = engine.trace
        return engine, store, backend

    def status(self, name):
        return getattr(self.mod("models").JobStatus, name.upper())

    def job(self, job_id, status):
        return self.mod("models").Job(job_id, self.status(status))


# ── import hook / activation ────────────────────────────────────────────


class ImportHookTests(FakeStepwiseTestCase):
    def test_install_is_lazy_and_patches_on_import(self):
        self.assertEqual(self.guard.state, "waiting")
        self.assertNotIn(self.pkg, sys.modules, "installing must not import the package")
        self.assertIn(self.guard._hook, sys.meta_path)

        engine_mod = self.mod("engine")

        self.assertEqual(self.guard.state, "active")
        for name in ("__init__", "_emit", "_cleanup_job_sessions", "cancel_job",
                     "_process_completion", "tick"):
            self.assertTrue(getattr(getattr(engine_mod.Engine, name), srg._WRAPPER_FLAG, False), name)
        self.assertTrue(getattr(engine_mod.AsyncEngine.cancel_job, srg._WRAPPER_FLAG, False))
        self.assertTrue(getattr(self.mod("store").SQLiteStore.save_job, srg._WRAPPER_FLAG, False))
        self.assertTrue(getattr(self.mod("lifecycle").ResourceLifecycleManager.acquire,
                                srg._WRAPPER_FLAG, False))
        self.assertNotIn(f"{self.pkg}.engine", self.guard._hook.watched)
        # the module keeps its real loader for introspection
        self.assertNotIsInstance(engine_mod.__loader__, srg._PostImportLoader)
        self.assertNotIsInstance(engine_mod.__spec__.loader, srg._PostImportLoader)

    def test_wrappers_are_transparent(self):
        engine_mod = self.mod("engine")
        emit = engine_mod.Engine._emit
        self.assertEqual(emit.__name__, "_emit")
        self.assertTrue(callable(emit.__wrapped__))
        self.assertFalse(getattr(emit.__wrapped__, srg._WRAPPER_FLAG, False))

        engine, store, _ = self.make_engine()
        engine.create_job("j1")
        self.assertEqual(store.save_calls, 1)
        self.assertEqual(store.save_job(self.job("j1", "running")), "saved")
        self.assertEqual(store.save_calls, 2)
        self.assertEqual(engine.tick(), "ticked")
        self.assertEqual(engine.cancel_job("j1"), "cancelled!")
        self.assertEqual(store.save_calls, 3, "original called exactly once per call")
        self.assertEqual(engine._process_completion(self.job("j2", "running"), "advance"), "advanced")

    def test_original_exceptions_propagate_unchanged(self):
        engine, store, backend = self.make_engine()
        with self.assertRaisesRegex(ValueError, "job without id"):
            store.save_job(self.job(None, "failed"))
        self.assertEqual(store.save_calls, 1)
        with self.assertRaises(KeyError):
            engine.cancel_job("nope")
        self.assertEqual(backend.released, [])

    def test_uninstall_restores_originals(self):
        engine_mod = self.mod("engine")
        wrapped = engine_mod.Engine._emit
        self.guard.uninstall()
        self.assertIs(engine_mod.Engine._emit, wrapped.__wrapped__)
        for owner, name in ((engine_mod.Engine, "cancel_job"), (engine_mod.AsyncEngine, "cancel_job"),
                            (self.mod("store").SQLiteStore, "save_job"),
                            (self.mod("lifecycle").ResourceLifecycleManager, "acquire")):
            self.assertFalse(getattr(getattr(owner, name), srg._WRAPPER_FLAG, False), name)
        self.assertNotIn(self.guard._hook, sys.meta_path)


class AlreadyImportedTests(FakeStepwiseTestCase):
    install_before_import = False

    def test_patches_immediately_when_engine_already_imported(self):
        engine_mod = self.mod("engine")
        self.assertFalse(getattr(engine_mod.Engine._emit, srg._WRAPPER_FLAG, False))
        self.guard.install()
        self.assertEqual(self.guard.state, "active")
        self.assertTrue(getattr(engine_mod.Engine._emit, srg._WRAPPER_FLAG, False))


class DisabledTests(FakeStepwiseTestCase):
    sources = dict(FAKE_SOURCES)
    sources["engine.py"] = FAKE_SOURCES["engine.py"].replace(
        "def _cleanup_job_sessions(self, job_id, job=None):",
        "def _release_everything(self, job_id, job=None):")

    def test_disables_itself_with_one_warning(self):
        with self.assertLogs(LOGGER, level="WARNING") as logs:
            engine_mod = self.mod("engine")
            engine, store, backend = self.make_engine()
            engine.create_job("j1")
            engine._process_completion(store.load_job("j1"), "abandon")
            self.mod("engine")
            self.guard._on_engine_imported(engine_mod)  # a second look changes nothing
        warnings = [r for r in logs.records if r.levelname == "WARNING"]
        self.assertEqual(len(warnings), 1, [r.getMessage() for r in logs.records])
        self.assertIn("_cleanup_job_sessions", warnings[0].getMessage())
        self.assertIn("disabled", warnings[0].getMessage())
        self.assertEqual(self.guard.state, "disabled")
        self.assertIn("_cleanup_job_sessions", self.guard.reason)
        # nothing patched, nothing released
        self.assertFalse(getattr(engine_mod.Engine._emit, srg._WRAPPER_FLAG, False))
        self.assertFalse(getattr(self.mod("store").SQLiteStore.save_job, srg._WRAPPER_FLAG, False))
        self.assertEqual(backend.released, [])
        self.assertNotIn(self.guard._hook, sys.meta_path)
        self.assertIsNone(self.guard._hook)

    def test_disabled_marker_in_a_server_process(self):
        dot = os.path.join(self.cwd, ".stepwise")
        os.makedirs(dot)
        with open(os.path.join(dot, "server.pid"), "w") as fh:
            json.dump({"pid": os.getpid(), "port": 1}, fh)
        with self.assertLogs(LOGGER, level="WARNING"):
            self.mod("engine")
        with open(os.path.join(dot, srg.MARKER_FILENAME)) as fh:
            marker = json.load(fh)
        self.assertIs(marker["active"], False)
        self.assertIn("_cleanup_job_sessions", marker["reason"])
        self.assertEqual(marker["pid"], os.getpid())


class IncompatibleSignatureTests(FakeStepwiseTestCase):
    sources = dict(FAKE_SOURCES)
    sources["engine.py"] = FAKE_SOURCES["engine.py"].replace(
        "def _emit(self, job_id, event_type, data=None, is_effector=False):",
        "def _emit(self, job, kind, data=None, is_effector=False):").replace(
        "self.events.append((job_id, event_type))", "self.events.append((job, kind))").replace(
        'self.trace.append(("emit", job_id, event_type))', "pass")

    def test_renamed_parameters_disable_the_guard(self):
        with self.assertLogs(LOGGER, level="WARNING") as logs:
            self.mod("engine")
        self.assertEqual(self.guard.state, "disabled")
        self.assertIn("job_id", self.guard.reason)
        self.assertEqual(len(logs.records), 1)


class MissingLifecycleTests(FakeStepwiseTestCase):
    sources = {k: v for k, v in FAKE_SOURCES.items() if k not in ("lifecycle.py", "acp_backend.py")}

    def test_missing_module_disables(self):
        with self.assertLogs(LOGGER, level="WARNING"):
            self.mod("engine")
        self.assertEqual(self.guard.state, "disabled")
        self.assertIn("lifecycle", self.guard.reason)


# ── release once per terminal transition ────────────────────────────────


class TerminalPathTests(FakeStepwiseTestCase):
    def setUp(self):
        super().setUp()
        self.engine, self.store, self.backend = self.make_engine()
        self.engine.create_job("j1")

    def test_abandon_path_is_released_after_the_event(self):
        result = self.engine._process_completion(self.store.load_job("j1"), "abandon")
        self.assertEqual(result, "abandoned")
        self.assertEqual(self.backend.released, ["j1"])
        trace = self.engine.trace
        self.assertLess(trace.index(("emit", "j1", "job.failed")), trace.index(("release", "j1")),
                        "released when the engine operation ends, after its event")

    def test_terminal_event_alone_releases_once(self):
        self.engine._emit("j1", "job.failed", {"reason": "x"})
        self.engine._emit("j1", "job.failed", {"reason": "x"})
        self.engine._emit("j1", "step.failed", {})
        self.assertEqual(self.backend.released, ["j1"])

    def test_engine_releasing_itself_gets_no_second_release(self):
        self.engine._check_job_terminal("j1")
        self.assertEqual(self.backend.released, ["j1"], "only the engine's own release")
        self.assertEqual(self.guard.stats["released_on_terminal"], 0)
        self.assertEqual(self.guard.stats["engine_releases_seen"], 1)

    def test_cancel_that_releases_is_left_alone(self):
        self.assertEqual(self.engine.cancel_job("j1"), "cancelled!")
        self.assertEqual(self.backend.released, ["j1"])

    def test_cancel_that_forgets_to_release_is_released(self):
        self.backend.lifecycle.acquire({}, job_id="j1")
        self.engine.cancel_releases = False
        self.assertEqual(self.engine.cancel_job("j1"), "cancelled!")
        self.assertEqual(self.backend.released, ["j1"])
        self.assertEqual(self.backend.lifecycle.active, [])
        self.assertEqual(self.guard.stats["released_on_terminal"], 1)

    def test_release_of_a_job_that_held_nothing_is_not_reported(self):
        self.backend.lifecycle.acquire({}, job_id="other")
        with self.assertLogs(LOGGER, level="DEBUG") as logs:
            self.store.save_job(self.job("j1", "failed"))   # e.g. a zombie failed at start-up
        self.assertEqual(self.backend.released, ["j1"], "released anyway (idempotent)")
        self.assertEqual(self.guard.stats["released_on_terminal"], 0)
        self.assertEqual([r.levelname for r in logs.records], ["DEBUG"])
        self.assertEqual(len(self.backend.lifecycle.active), 1, "the other job's resource stays")

    def test_async_engine_cancel_override(self):
        engine, store, backend = self.make_engine("AsyncEngine")
        engine.create_job("a1")
        engine.cancel_releases = False
        self.assertEqual(engine.cancel_job("a1"), "async-cancelled!")
        self.assertEqual(backend.released, ["a1"])

    def test_terminal_save_by_another_path(self):
        self.assertEqual(self.store.save_job(self.job("j1", "failed")), "saved")
        self.assertEqual(self.backend.released, ["j1"], "outside any engine operation: at once")
        self.store.save_job(self.job("j1", "failed"))       # same terminal period
        self.store.archive_job("j1")                         # terminal -> terminal
        self.assertEqual(self.backend.released, ["j1"])

    def test_archive_of_a_running_job(self):
        self.store.archive_job("j1")
        self.assertEqual(self.backend.released, ["j1"])

    def test_atomic_status_transition(self):
        js = self.mod("models").JobStatus
        self.assertFalse(self.store.atomic_status_transition("j1", js.PENDING, js.CANCELLED))
        self.assertEqual(self.backend.released, [])
        self.assertTrue(self.store.atomic_status_transition("j1", js.RUNNING, js.CANCELLED))
        self.assertEqual(self.backend.released, ["j1"])

    def test_rerun_after_terminal_is_a_new_transition(self):
        self.engine._process_completion(self.store.load_job("j1"), "abandon")
        self.engine.resume_job("j1")                          # failed -> running
        self.engine._process_completion(self.store.load_job("j1"), "abandon")
        self.assertEqual(self.backend.released, ["j1", "j1"])
        self.store.reset_job("j1")                            # -> pending
        self.store.save_job(self.job("j1", "cancelled"))
        self.assertEqual(self.backend.released, ["j1", "j1", "j1"])

    def test_delete_forgets_the_job(self):
        self.store.save_job(self.job("j1", "failed"))
        self.store.delete_job("j1")
        self.assertNotIn("j1", self.guard._memo)

    def test_event_loop_defers_to_after_the_callback(self):
        async def scenario():
            # the engine's good path: terminal save, event, its own release, same callback
            self.engine.create_job("good")
            self.store.save_job(self.job("good", "completed"))
            self.engine._emit("good", "job.completed")
            self.engine._cleanup_job_sessions("good")
            # the leaky path: terminal save and event only
            self.engine.create_job("leaky")
            self.store.save_job(self.job("leaky", "failed"))
            self.engine._emit("leaky", "job.failed")
            before = list(self.backend.released)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return before

        before = asyncio.run(scenario())
        self.assertEqual(before, ["good"], "nothing released by the guard inside the callback")
        self.assertEqual(sorted(self.backend.released), ["good", "leaky"])

    def test_concurrent_terminal_saves_release_once(self):
        barrier = threading.Barrier(16)

        def save():
            barrier.wait()
            self.store.save_job(self.job("j1", "failed"))

        threads = [threading.Thread(target=save) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(self.backend.released, ["j1"])

    def test_memo_is_bounded(self):
        guard_cap = srg.ReleaseGuard(package="unused", memo_cap=20)
        self.guard.memo_cap = guard_cap.memo_cap
        for i in range(200):
            self.store.save_job(self.job(f"m{i}", "running"))
            self.store.save_job(self.job(f"m{i}", "completed"))
        self.assertLessEqual(len(self.guard._memo), 20)
        self.assertIn("m199", self.guard._memo)
        self.assertNotIn("m0", self.guard._memo)


# ── acquisition for a terminal job ──────────────────────────────────────


class AcquisitionTests(FakeStepwiseTestCase):
    def setUp(self):
        super().setUp()
        self.db = os.path.join(self.tmp.name, "stepwise.db")
        self.engine, self.store, self.backend = self.make_engine(db_path=self.db)
        self.engine.create_job("j1")

    def test_acquire_for_cancelled_job_is_released_at_once(self):
        self.engine.cancel_job("j1")                     # engine releases: 1
        result = self.backend.lifecycle.acquire({"agent": "x"}, "sess", job_id="j1")  # a retry
        managed, was_new = result
        self.assertEqual((managed.config, was_new), ({"agent": "x"}, True), "return value untouched")
        self.assertEqual(self.backend.released, ["j1", "j1"])
        trace = self.engine.trace
        self.assertEqual(trace[-3:], [("acquire", "j1"), ("release", "j1"), ("lifecycle.release", "j1")])
        self.assertEqual(self.guard.stats["released_after_acquire"], 1)

    def test_positional_job_id(self):
        self.engine.cancel_job("j1")
        self.backend.lifecycle.acquire({}, None, "j1")
        self.assertEqual(self.backend.released, ["j1", "j1"])

    def test_acquire_for_running_job_is_kept(self):
        self.backend.lifecycle.acquire({}, job_id="j1")
        self.backend.lifecycle.acquire({}, job_id=None)
        self.backend.lifecycle.acquire({})
        self.assertEqual(self.backend.released, [])

    def test_database_is_the_authority(self):
        # cancelled by another process: the guard never saw it, the database says so
        self.store.raw_set_status("j1", "cancelled")
        self.backend.lifecycle.acquire({}, job_id="j1")
        self.assertEqual(self.backend.released, ["j1"])
        # cancelled here, then resumed elsewhere: the database wins, nothing released
        self.engine.create_job("j2")
        self.engine.cancel_job("j2")
        self.store.raw_set_status("j2", "running")
        self.backend.lifecycle.acquire({}, job_id="j2")
        self.assertEqual(self.backend.released, ["j1", "j2"])

    def test_memory_store_uses_what_the_guard_saw(self):
        engine, store, backend = self.make_engine(db_path=":memory:")
        engine.create_job("m1")
        engine.cancel_releases = False
        engine.cancel_job("m1")
        backend.lifecycle.acquire({}, job_id="m1")
        self.assertEqual(backend.released, ["m1", "m1"])

    def test_lifecycle_not_owned_by_an_engine_is_released_directly(self):
        self.engine.cancel_job("j1")
        stray = self.mod("lifecycle").ResourceLifecycleManager()
        stray.acquire({}, job_id="j1")
        self.assertEqual(stray.released, ["j1"])

    def test_containment_acquisition(self):
        _write_package(self.tmp.name, self.pkg, CONTAINMENT_SOURCES)
        importlib.invalidate_caches()
        ch = importlib.import_module(f"{self.pkg}.containment.cloud_hypervisor")
        self.assertTrue(getattr(ch.CloudHypervisorBackend.get_spawn_context, srg._WRAPPER_FLAG, False))
        self.assertIsNone(self.guard._hook, "nothing left to watch: hook removed")
        vm = ch.CloudHypervisorBackend()
        self.assertEqual(vm.get_spawn_context({}, job_id="j1"), "spawn-context")
        self.assertEqual(vm.released, [])
        self.engine.cancel_job("j1")
        vm.get_spawn_context({}, job_id="j1")
        self.assertEqual(vm.released, ["j1"])
        self.assertEqual(vm.refs["vm"], set())


# ── errors never reach the engine ───────────────────────────────────────


class ErrorContainmentTests(FakeStepwiseTestCase):
    def setUp(self):
        super().setUp()
        self.engine, self.store, self.backend = self.make_engine()
        self.engine.create_job("j1")

    def test_failing_release_is_logged_not_raised(self):
        self.backend.fail_release = True
        with self.assertLogs(LOGGER, level="ERROR") as logs:
            result = self.engine._process_completion(self.store.load_job("j1"), "abandon")
        self.assertEqual(result, "abandoned")
        self.assertEqual(self.backend.released, ["j1"])
        self.assertTrue(any("j1" in r.getMessage() for r in logs.records))

    def test_failing_release_after_acquire(self):
        self.engine.cancel_job("j1")
        self.backend.fail_release = True
        with self.assertLogs(LOGGER, level="ERROR"):
            result = self.backend.lifecycle.acquire({}, job_id="j1")
        self.assertEqual(result[1], True)

    def test_bug_in_guard_bookkeeping_is_contained(self):
        with mock.patch.object(self.guard, "_note_status", side_effect=RuntimeError("guard bug")), \
                mock.patch.object(self.guard, "_note_terminal", side_effect=RuntimeError("guard bug")), \
                mock.patch.object(self.guard, "_after_acquire", side_effect=RuntimeError("guard bug")), \
                mock.patch.object(self.guard, "_note_engine_release", side_effect=RuntimeError("guard bug")):
            with self.assertLogs(LOGGER, level="ERROR"):
                self.assertEqual(self.store.save_job(self.job("j1", "failed")), "saved")
                self.engine._emit("j1", "job.failed")
                self.assertEqual(self.engine.cancel_job("j1"), "cancelled!")
                self.engine._cleanup_job_sessions("j1")
                self.backend.lifecycle.acquire({}, job_id="j1")
        self.assertGreaterEqual(self.guard.stats["errors"], 5)

    def test_bug_in_scope_bookkeeping_is_contained(self):
        with mock.patch.object(self.guard, "_enter", side_effect=RuntimeError("guard bug")):
            with self.assertLogs(LOGGER, level="ERROR"):
                self.assertEqual(self.engine.tick(), "ticked")
                self.assertEqual(self.engine.cancel_job("j1"), "cancelled!")


# ── the marker ──────────────────────────────────────────────────────────


class MarkerTests(FakeStepwiseTestCase):
    def setUp(self):
        super().setUp()
        self.dot = os.path.join(self.tmp.name, "project", ".stepwise")
        os.makedirs(self.dot)
        self.marker = os.path.join(self.dot, srg.MARKER_FILENAME)

    def _server_pid(self, pid):
        with open(os.path.join(self.dot, "server.pid"), "w") as fh:
            json.dump({"pid": pid, "port": 8341}, fh)

    def test_marker_written_in_a_server_process(self):
        self._server_pid(os.getpid())
        with self.assertLogs(LOGGER, level="INFO") as logs:
            engine, store, backend = self.make_engine(project_dir=self.dot)
        self.assertTrue(any("active" in r.getMessage() for r in logs.records))
        with open(self.marker) as fh:
            marker = json.load(fh)
        self.assertEqual(marker["guard"], "stepwise_release_guard")
        self.assertEqual(marker["version"], srg.__version__)
        self.assertEqual(marker["pid"], os.getpid())
        self.assertIs(marker["active"], True)
        self.assertIsNone(marker["reason"])
        self.assertIn("started_at", marker)
        self.assertIn("stepwise_version", marker)
        self.assertEqual(marker["stats"]["released_on_terminal"], 0)
        self.assertEqual([n for n in os.listdir(self.dot) if n.endswith(".tmp")], [])

        # a release done by the guard updates it
        engine.create_job("j1")
        backend.lifecycle.acquire({}, job_id="j1")
        engine._process_completion(store.load_job("j1"), "abandon")
        with open(self.marker) as fh:
            updated = json.load(fh)
        self.assertEqual(updated["stats"]["released_on_terminal"], 1)
        self.assertEqual(updated["started_at"], marker["started_at"])

    def test_concurrent_updates_leave_a_valid_marker(self):
        self._server_pid(os.getpid())
        self.make_engine(project_dir=self.dot)
        errors = []

        def update():
            try:
                for _ in range(20):
                    self.guard._update_marker()
            except Exception as exc:  # pragma: no cover - would fail the test below
                errors.append(exc)

        with self.assertNoLogs(LOGGER, level="WARNING"):
            threads = [threading.Thread(target=update) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.assertEqual(errors, [])
        with open(self.marker) as fh:
            self.assertIs(json.load(fh)["active"], True)
        self.assertEqual([n for n in os.listdir(self.dot) if n.endswith(".tmp")], [])

    def test_no_marker_outside_a_server(self):
        self._server_pid(os.getpid() + 100000)  # another process's server
        self.make_engine(project_dir=self.dot)
        self.assertFalse(os.path.exists(self.marker))

    def test_atomic_write(self):
        srg.write_json_atomic(self.marker, {"a": 1})
        real_replace = os.replace
        seen = []

        def spy(src, dst):
            seen.append((src, dst))
            self.assertEqual(os.path.dirname(src), os.path.dirname(dst))
            with open(src) as fh:
                self.assertEqual(json.load(fh), {"a": 2})
            with open(dst) as fh:
                self.assertEqual(json.load(fh), {"a": 1}, "old content intact until the rename")
            return real_replace(src, dst)

        with mock.patch.object(srg.os, "replace", side_effect=spy):
            srg.write_json_atomic(self.marker, {"a": 2})
        self.assertEqual(len(seen), 1)
        with open(self.marker) as fh:
            self.assertEqual(json.load(fh), {"a": 2})

        with mock.patch.object(srg.os, "replace", side_effect=OSError("disk full")):
            with self.assertRaises(OSError):
                srg.write_json_atomic(self.marker, {"a": 3})
        with self.assertRaises(TypeError):
            srg.write_json_atomic(self.marker, {"a": object()})
        with open(self.marker) as fh:
            self.assertEqual(json.load(fh), {"a": 2})
        self.assertEqual([n for n in os.listdir(self.dot) if n.endswith(".tmp")], [])


# ── sessions of finished steps and released jobs ────────────────────────


class SessionTestCase(FakeStepwiseTestCase):
    def setUp(self):
        super().setUp()
        self.db = os.path.join(self.tmp.name, "stepwise.db")
        self.engine, self.store, self.backend = self.make_engine(db_path=self.db)
        self.assertEqual(self.guard.session_state, "active", self.guard.session_reason)
        self._threads = []
        self.addCleanup(self._finish_threads)

    def _finish_threads(self):
        for gate in self.backend.gates.values():
            gate.set()
        for t in self._threads:
            t.join(10)

    def workflow(self, *steps):
        m = self.mod("models")
        return m.WorkflowDefinition([m.StepDefinition(**spec) if isinstance(spec, dict)
                                     else m.StepDefinition(spec) for spec in steps])

    def step(self, job_id, step_name, **kw):
        return self.engine.run_agent_step(self.backend, job_id, step_name, **kw)

    def step_in_thread(self, job_id, step_name, **kw):
        """A turn that runs until self.release_turn(step_name)."""
        gate = self.backend.gates[step_name] = threading.Event()
        out = {}
        t = threading.Thread(target=lambda: out.update(result=self.step(job_id, step_name, **kw)))
        t.start()
        self._threads.append(t)
        self.assertTrue(self._wait(lambda: any(
            j == job_id and s == step_name for j, s, *_ in self.guard.open_sessions())))
        return out, t

    def release_turn(self, step_name, thread):
        self.backend.gates[step_name].set()
        thread.join(10)
        self.assertFalse(thread.is_alive())

    @staticmethod
    def _wait(pred, timeout=5.0):
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.01)
        return pred()

    def settle(self):
        self.assertTrue(self.guard.wait_for_session_closes(5))

    def adapter(self):
        self.assertEqual(len(self.backend.lifecycle.active), 1, "one shared adapter")
        managed = self.backend.lifecycle.active[0]
        return managed, managed.resource.process

    def session_of(self, job_id, step_name):
        ids = [sid for j, st, _, sid, _ in self.guard.open_sessions() if j == job_id and st == step_name]
        self.assertEqual(len(ids), 1, self.guard.open_sessions())
        return ids[0]


class SharedAdapterSessionTests(SessionTestCase):
    def test_abandoned_job_session_closed_running_job_kept(self):
        # job A runs a long turn; job B (same working dir: same adapter) is abandoned.
        self.engine.create_job("A", workflow=self.workflow("hold"))
        self.engine.create_job("B", workflow=self.workflow({"name": "work", "session": "main"}))
        _, a_thread = self.step_in_thread("A", "hold")
        a_sid = self.session_of("A", "hold")
        _, b_sid = self.step("B", "work", config={"_session_name": "main"})
        self.settle()
        managed, adapter = self.adapter()
        self.assertEqual(adapter.sessions, {a_sid, b_sid}, "B's named session is kept while B runs")

        result = self.engine._process_completion(self.store.load_job("B"), "abandon")
        self.assertEqual(result, "abandoned")
        self.settle()

        managed2, adapter2 = self.adapter()
        self.assertIs(adapter2, adapter, "the adapter was not released")
        self.assertTrue(adapter.alive)
        self.assertEqual(managed.job_refs, {"A"})
        self.assertEqual(adapter.sessions, {a_sid}, "B's session closed, A's kept")
        self.assertEqual(adapter.closed, [b_sid])
        self.assertEqual(self.guard.stats["sessions_closed_on_release"], 1)

        # A's turn goes on and completes on its own session
        self.release_turn("hold", a_thread)
        self.assertIn((a_sid, "do it"), adapter.prompts)
        self.assertEqual(self.store.runs["run-A-hold-1"][0].value, "completed")

    def test_engine_cancel_on_a_shared_adapter_closes_the_cancelled_jobs_sessions(self):
        self.engine.create_job("A", workflow=self.workflow("hold"))
        self.engine.create_job("B", workflow=self.workflow({"name": "s", "session": "x"}))
        _, a_thread = self.step_in_thread("A", "hold")
        _, b_sid = self.step("B", "s", config={"_session_name": "x"})
        self.engine.cancel_job("B")          # the engine releases B itself
        self.settle()
        _, adapter = self.adapter()
        self.assertEqual(adapter.closed, [b_sid])
        self.assertNotIn(b_sid, adapter.sessions)
        self.assertEqual(len(adapter.sessions), 1)
        self.release_turn("hold", a_thread)

    def test_a_turn_in_flight_is_closed_only_when_it_returns(self):
        self.engine.create_job("A", workflow=self.workflow("hold"))
        self.engine.create_job("B", workflow=self.workflow("slow"))
        _, a_thread = self.step_in_thread("A", "hold")
        _, b_thread = self.step_in_thread("B", "slow")
        b_sid = self.session_of("B", "slow")
        self.engine._process_completion(self.store.load_job("B"), "abandon")  # B's turn still runs
        self.settle()
        _, adapter = self.adapter()
        self.assertIn(b_sid, adapter.sessions, "never closed under a running turn")
        self.release_turn("slow", b_thread)
        self.settle()
        self.assertEqual(adapter.closed, [b_sid])
        self.assertIn((b_sid, "do it"), adapter.prompts, "the turn completed first")
        self.release_turn("hold", a_thread)

    def test_retry_of_a_cancelled_job_on_a_shared_adapter(self):
        # leak 2 on a shared adapter: the acquisition is released at once (the adapter
        # lives on for A); the session the retry opens is closed when its turn ends.
        self.engine.create_job("A", workflow=self.workflow("hold"))
        self.engine.create_job("D", workflow=self.workflow("work"))
        _, a_thread = self.step_in_thread("A", "hold")
        self.engine.cancel_job("D")
        _, d_sid = self.step("D", "work", attempt=2)
        self.settle()
        managed, adapter = self.adapter()
        self.assertEqual(managed.job_refs, {"A"})
        self.assertEqual(adapter.closed, [d_sid])
        self.assertEqual(self.guard.stats["sessions_closed_terminal_job"]
                         + self.guard.stats["sessions_closed_after_step"], 1)
        self.release_turn("hold", a_thread)

    def test_released_adapter_takes_its_sessions_along(self):
        # a job alone on its adapter: release tears the adapter down; nothing to close,
        # and the guard forgets the sessions (bounded memory).
        self.engine.create_job("solo", workflow=self.workflow({"name": "s", "session": "m"}))
        self.step("solo", "s", config={"_session_name": "m"})
        managed, adapter = self.adapter()
        self.engine._check_job_terminal("solo")  # completes and releases
        self.settle()
        self.assertEqual(self.backend.lifecycle.active, [])
        self.assertFalse(adapter.alive)
        self.assertEqual(adapter.close_calls, [], "no close_session on a torn-down adapter")
        self.assertEqual(self.guard.open_sessions(), [])
        self.assertNotIn("solo", self.guard._job_steps)

    def test_release_twice_closes_once(self):
        self.engine.create_job("A", workflow=self.workflow("hold"))
        self.engine.create_job("B", workflow=self.workflow({"name": "s", "session": "x"}))
        _, a_thread = self.step_in_thread("A", "hold")
        _, b_sid = self.step("B", "s", config={"_session_name": "x"})
        self.backend.release_for_job("B")
        self.backend.release_for_job("B")
        self.engine._cleanup_job_sessions("B")
        self.settle()
        _, adapter = self.adapter()
        self.assertEqual(adapter.close_calls, [b_sid])
        self.release_turn("hold", a_thread)


class FinishedStepSessionTests(SessionTestCase):
    def test_finished_non_resumable_step_session_closed(self):
        self.engine.create_job("C", workflow=self.workflow("plain", "next"))
        run, sid = self.step("C", "plain")
        self.settle()
        managed, adapter = self.adapter()
        self.assertEqual(adapter.closed, [sid])
        self.assertEqual(adapter.sessions, set())
        self.assertTrue(adapter.alive)
        self.assertEqual(managed.job_refs, {"C"}, "the job keeps its adapter")
        self.assertEqual(self.guard.stats["sessions_closed_after_step"], 1)
        # the next step gets a fresh session on the same adapter, as stepwise does
        _, sid2 = self.step("C", "next")
        self.settle()
        self.assertEqual(adapter.closed, [sid, sid2])

    def test_failed_attempt_closed_its_retry_gets_a_new_session(self):
        self.engine.create_job("C", workflow=self.workflow("flaky"))
        _, sid1 = self.step("C", "flaky", outcome=self.mod("models").StepRunStatus.FAILED)
        _, sid2 = self.step("C", "flaky", attempt=2)
        self.settle()
        _, adapter = self.adapter()
        self.assertNotEqual(sid1, sid2)
        self.assertEqual(adapter.closed, [sid1, sid2])

    def test_resumable_sessions_kept(self):
        wf = self.workflow(
            {"name": "s1", "session": "main"}, {"name": "s2", "session": "main"},
            "src", {"name": "fork", "fork_from": "src"},
            {"name": "legacy", "continue_session": True}, "plain")
        self.engine.create_job("R", workflow=wf)
        _, s1 = self.step("R", "s1", config={"_session_name": "main"})
        _, s2 = self.step("R", "s2", config={"_session_name": "main", "_session_uuid": s1})
        _, src = self.step("R", "src")
        _, fork = self.step("R", "fork", config={"_fork_from_session_id": src})
        _, legacy = self.step("R", "legacy", config={"_session_name": "step-R-legacy"})
        _, plain = self.step("R", "plain")
        self.settle()
        _, adapter = self.adapter()
        self.assertEqual(s1, s2, "s2 continued s1's session")
        self.assertEqual(sorted(adapter.closed), sorted([fork, plain]),
                         "only the ephemeral fork and the plain step are closed")
        self.assertEqual(adapter.sessions, {s1, src, legacy})
        self.assertGreaterEqual(self.guard.stats["sessions_kept_resumable"], 4)

    def test_workflow_from_the_database(self):
        self.engine.create_job("W", workflow=self.workflow("plain", {"name": "s", "session": "k"}))
        self.guard._job_steps.clear()      # e.g. the job was saved before the guard loaded
        _, plain = self.step("W", "plain")
        self.guard._job_steps.clear()
        _, named = self.step("W", "s")     # named in the workflow, not in the spawn config
        self.settle()
        _, adapter = self.adapter()
        self.assertEqual(adapter.closed, [plain])
        self.assertIn(named, adapter.sessions)

    def test_unknown_workflow_keeps_the_session(self):
        self.engine.create_job("U")        # no workflow anywhere
        _, sid = self.step("U", "x")
        self.settle()
        _, adapter = self.adapter()
        self.assertEqual(adapter.closed, [])
        self.assertIn(sid, adapter.sessions)

    def test_running_suspended_delegated_runs_are_left_alone(self):
        st = self.mod("models").StepRunStatus
        self.engine.create_job("C", workflow=self.workflow("a", "b", "c"))
        for name, outcome in (("a", st.SUSPENDED), ("b", st.DELEGATED), ("c", st.RUNNING)):
            self.step("C", name, outcome=outcome)
        self.settle()
        _, adapter = self.adapter()
        self.assertEqual(adapter.closed, [])
        self.assertEqual(len(adapter.sessions), 3)

    def test_saved_twice_closed_once(self):
        self.engine.create_job("C", workflow=self.workflow("plain"))
        run, sid = self.step("C", "plain")
        self.store.save_run(run)
        self.store.save_run(run)
        self.settle()
        _, adapter = self.adapter()
        self.assertEqual(adapter.close_calls, [sid])


class SessionCloseErrorTests(SessionTestCase):
    def test_close_session_raising_is_logged_and_swallowed(self):
        self.engine.create_job("C", workflow=self.workflow("plain"))
        self.backend.lifecycle.acquire("shared", job_id="C")   # the adapter, before the step
        _, adapter = self.adapter()
        adapter.close_raises = RuntimeError("session/close exploded")
        with self.assertLogs(LOGGER, level="WARNING") as logs:
            run, sid = self.step("C", "plain")
            self.settle()
        self.assertEqual(self.store.runs[run.id][0].value, "completed", "the engine carried on")
        self.assertTrue(any("failed (ignored)" in r.getMessage() and sid in r.getMessage()
                            for r in logs.records))
        self.assertEqual(self.guard.stats["session_close_errors"], 1)
        self.assertEqual(self.guard.stats["sessions_closed_after_step"], 0)
        self.assertEqual(self.guard.open_sessions(), [], "forgotten, not retried forever")
        self.assertIn(sid, adapter.sessions)

    def test_best_effort_close_of_a_session_the_adapter_lost(self):
        # stepwise's own close_session swallows the adapter's error
        self.engine.create_job("C", workflow=self.workflow("plain"))
        self.backend.lifecycle.acquire("shared", job_id="C")
        _, adapter = self.adapter()
        real_prompt = type(self.backend.lifecycle.active[0].resource.client).prompt

        def prompt_then_lose(client, session_id, text, **kw):
            result = real_prompt(client, session_id, text, **kw)
            client.adapter.sessions.discard(session_id)   # the CLI died by itself
            return result

        with mock.patch.object(type(self.backend.lifecycle.active[0].resource.client), "prompt",
                               prompt_then_lose):
            _, sid = self.step("C", "plain")
            self.settle()
        self.assertEqual(adapter.close_calls, [sid])
        self.assertEqual(self.guard.stats["errors"], 0)

    def test_bugs_in_session_bookkeeping_never_reach_the_engine(self):
        self.engine.create_job("C", workflow=self.workflow("plain"))
        with mock.patch.object(self.guard, "_session_opened", side_effect=RuntimeError("bug")), \
                mock.patch.object(self.guard, "_run_saved", side_effect=RuntimeError("bug")), \
                mock.patch.object(self.guard, "_after_release", side_effect=RuntimeError("bug")), \
                mock.patch.object(self.guard, "_spawn_enter", side_effect=RuntimeError("bug")):
            with self.assertLogs(LOGGER, level="ERROR"):
                run, sid = self.step("C", "plain")
                self.backend.release_for_job("C")
        self.assertTrue(sid)
        self.assertEqual(self.store.runs[run.id][0].value, "completed")
        self.assertGreaterEqual(self.guard.stats["errors"], 4)

    def test_close_runs_off_the_engine_thread(self):
        self.engine.create_job("C", workflow=self.workflow("plain"))
        self.backend.lifecycle.acquire("shared", job_id="C")
        _, adapter = self.adapter()
        entered, unblock = threading.Event(), threading.Event()
        client_cls = type(self.backend.lifecycle.active[0].resource.client)
        real_close = client_cls.close_session
        threads = []

        def slow_close(client, session_id):
            threads.append(threading.current_thread().name)
            entered.set()
            unblock.wait(5)
            return real_close(client, session_id)

        with mock.patch.object(client_cls, "close_session", slow_close):
            _, sid = self.step("C", "plain")   # returns although close_session hangs
            self.assertTrue(entered.wait(5))
            self.assertIn(sid, adapter.sessions)
            unblock.set()
            self.settle()
        self.assertEqual(threads, ["stepwise-release-guard-sessions"])
        self.assertEqual(adapter.closed, [sid])


class SessionMemoryTests(SessionTestCase):
    def test_maps_are_bounded_and_pruned(self):
        self.guard.memo_cap = 16
        self.engine.create_job("A", workflow=self.workflow("hold"))
        _, a_thread = self.step_in_thread("A", "hold")
        for i in range(60):
            job = f"J{i}"
            self.engine.create_job(job, workflow=self.workflow({"name": "s", "session": "m"}))
            self.step(job, "s", config={"_session_name": "m"})
            self.assertLessEqual(len(self.guard._sessions), 16)
            self.assertLessEqual(len(self.guard._job_steps), 16)
        for i in range(60):
            self.engine._check_job_terminal(f"J{i}")
        self.settle()
        self.assertEqual([j for j, *_ in self.guard.open_sessions()], ["A"])
        self.assertEqual({j for j in self.guard._job_steps if j.startswith("J")}, set())
        self.release_turn("hold", a_thread)
        self.engine._check_job_terminal("A")
        self.settle()
        self.assertEqual(self.guard.open_sessions(), [])

    def test_collected_clients_are_forgotten(self):
        import gc
        self.engine.create_job("C", workflow=self.workflow({"name": "s", "session": "m"}))
        self.step("C", "s", config={"_session_name": "m"})
        self.assertEqual(len(self.guard.open_sessions()), 1)
        self.backend.lifecycle.active.clear()        # the pool dropped the adapter object
        gc.collect()
        self.guard._session_opened(object(), "x", "new")   # any later bookkeeping drains
        with self.guard._lock:
            self.guard._drain_gone()
        self.assertEqual(self.guard.open_sessions(), [])


class SessionMarkerTests(SessionTestCase):
    def test_marker_says_session_closing_is_active(self):
        dot = os.path.join(self.tmp.name, "project", ".stepwise")
        os.makedirs(dot)
        with open(os.path.join(dot, "server.pid"), "w") as fh:
            json.dump({"pid": os.getpid()}, fh)
        engine, store, backend = self.make_engine(db_path=self.db, project_dir=dot)
        with open(os.path.join(dot, srg.MARKER_FILENAME)) as fh:
            marker = json.load(fh)
        self.assertIs(marker["sessionClosing"], True)
        self.assertIsNone(marker["sessionClosingReason"])
        self.assertIn(f"{self.pkg}.acp_client.ACPClient.new_session", marker["hook_points"])
        engine.create_job("C", workflow=self.workflow("plain"))
        engine.run_agent_step(backend, "C", "plain")
        self.settle()
        with open(os.path.join(dot, srg.MARKER_FILENAME)) as fh:
            self.assertEqual(json.load(fh)["stats"]["sessions_closed_after_step"], 1)


def _sources_with(**replacements):
    sources = dict(FAKE_SOURCES)
    for module, pairs in replacements.items():
        text = sources[module]
        for old, new in pairs:
            assert old in text, old
            text = text.replace(old, new)
        sources[module] = text
    return sources


class NoCloseSessionTests(FakeStepwiseTestCase):
    sources = _sources_with(**{"acp_client.py": [
        ("def close_session(self, session_id):", "def end_session(self, session_id):")]})

    def test_only_session_closing_is_off(self):
        dot = os.path.join(self.cwd, ".stepwise")
        os.makedirs(dot)
        with open(os.path.join(dot, "server.pid"), "w") as fh:
            json.dump({"pid": os.getpid()}, fh)
        with self.assertLogs(LOGGER, level="WARNING") as logs:
            engine, store, backend = self.make_engine()
        warnings = [r.getMessage() for r in logs.records if r.levelname == "WARNING"]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("close_session", warnings[0])
        self.assertEqual(self.guard.state, "active", "the release part stays on")
        self.assertEqual(self.guard.session_state, "disabled")
        self.assertIn("close_session", self.guard.session_reason)
        self.assertFalse(getattr(self.mod("acp_backend").ACPBackend.spawn, srg._WRAPPER_FLAG, False))
        self.assertFalse(getattr(self.mod("store").SQLiteStore.save_run, srg._WRAPPER_FLAG, False))
        # releases still guarded
        engine.create_job("j1")
        backend.lifecycle.acquire("x", job_id="j1")
        engine._process_completion(store.load_job("j1"), "abandon")
        self.assertEqual(backend.released, ["j1"])
        with open(os.path.join(dot, srg.MARKER_FILENAME)) as fh:
            marker = json.load(fh)
        self.assertIs(marker["active"], True)
        self.assertIs(marker["sessionClosing"], False)
        self.assertIn("close_session", marker["sessionClosingReason"])


class ChangedSpawnTests(FakeStepwiseTestCase):
    sources = _sources_with(**{"acp_backend.py": [
        ("def spawn(self, prompt, config, context):", "def spawn(self, prompt, config, ctx):"),
        ("job_id=context.job_id", "job_id=ctx.job_id"),
        ("if context.state_update_fn:", "if ctx.state_update_fn:"),
        ("context.state_update_fn({", "ctx.state_update_fn({"),
        ("self.gates.get(context.step_name)", "self.gates.get(ctx.step_name)")]})

    def test_changed_signature_turns_session_closing_off(self):
        with self.assertLogs(LOGGER, level="WARNING"):
            self.make_engine()
        self.assertEqual(self.guard.state, "active")
        self.assertEqual(self.guard.session_state, "disabled")
        self.assertIn("context", self.guard.session_reason)


class NoAcpClientTests(FakeStepwiseTestCase):
    sources = {k: v for k, v in FAKE_SOURCES.items() if k != "acp_client.py"}
    sources["acp_backend.py"] = FAKE_SOURCES["acp_backend.py"].replace(
        "from .acp_client import ACPClient, FakeAdapter", "ACPClient = FakeAdapter = None")

    def test_missing_client_module_turns_session_closing_off(self):
        with self.assertLogs(LOGGER, level="WARNING"):
            self.mod("engine")
            self.mod("acp_backend")
        self.assertEqual(self.guard.state, "active")
        self.assertEqual(self.guard.session_state, "disabled")
        self.assertIn("acp_client", self.guard.session_reason)


class SessionWaitingTests(FakeStepwiseTestCase):
    def test_waits_for_the_acp_backend_import(self):
        self.mod("engine")
        self.assertEqual(self.guard.session_state, "waiting")
        self.assertIs(self.guard.marker_payload()["sessionClosing"], False)
        self.assertIn("not loaded", self.guard.marker_payload()["sessionClosingReason"])
        self.assertIn(f"{self.pkg}.acp_backend", self.guard._hook.watched)
        self.mod("acp_backend")
        self.assertEqual(self.guard.session_state, "active")
        self.assertIs(self.guard.marker_payload()["sessionClosing"], True)

    def test_acp_backend_imported_before_the_engine(self):
        self.guard.uninstall()
        self.mod("acp_backend")
        self.guard.install()
        self.mod("engine")
        self.assertEqual(self.guard.session_state, "active")


class DisabledGuardSessionTests(DisabledTests):
    def test_marker_of_a_disabled_guard_has_session_closing_off(self):
        with self.assertLogs(LOGGER, level="WARNING"):
            self.mod("engine")
        payload = self.guard.marker_payload()
        self.assertIs(payload["sessionClosing"], False)
        self.assertIn("not active", payload["sessionClosingReason"])


class PortabilityTests(unittest.TestCase):
    def test_module_reads_nothing_linux_only(self):
        with open(os.path.join(GUARD_DIR, "stepwise_release_guard.py")) as fh:
            source = fh.read()
        for needle in ("/proc", "/sys/", "prctl", "sys.platform", "linux"):
            self.assertNotIn(needle, source.lower() if needle == "linux" else source, needle)


# ── the module itself, in fresh interpreters ────────────────────────────


class ModuleImportTests(unittest.TestCase):
    def _python(self, code, env_extra=None):
        env = dict(os.environ)
        env.pop("STEPWISE_RELEASE_GUARD", None)
        env.update(env_extra or {})
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60, cwd=tempfile.gettempdir())

    def test_pth_line_installs_a_lazy_hook(self):
        with open(os.path.join(GUARD_DIR, "stepwise_release_guard.pth")) as fh:
            self.assertEqual(fh.read().strip(), "import stepwise_release_guard")
        code = textwrap.dedent(f"""
            import site, sys
            before = set(sys.modules)
            site.addsitedir({GUARD_DIR!r})
            import stepwise_release_guard as g
            new = set(sys.modules) - before
            print(g.GUARD.state, g.GUARD._hook in sys.meta_path,
                  'stepwise' in sys.modules, sorted(m for m in new if m != 'stepwise_release_guard'))
        """)
        out = self._python(code)
        self.assertEqual(out.returncode, 0, out.stderr)
        state, hooked, imported, new_modules = out.stdout.split(" ", 3)
        self.assertEqual((state, hooked, imported), ("waiting", "True", "False"))
        self.assertEqual(new_modules.strip(), "[]", "importing must pull in nothing else")

    def test_env_switch_turns_it_off(self):
        self.assertFalse(srg.enabled_by_env({"STEPWISE_RELEASE_GUARD": "0"}))
        self.assertFalse(srg.enabled_by_env({"STEPWISE_RELEASE_GUARD": "off"}))
        self.assertTrue(srg.enabled_by_env({}))
        self.assertTrue(srg.enabled_by_env({"STEPWISE_RELEASE_GUARD": "1"}))
        code = (f"import sys; sys.path.insert(0, {GUARD_DIR!r}); import stepwise_release_guard as g; "
                "print(g.GUARD.state, g.GUARD._hook is None)")
        out = self._python(code, {"STEPWISE_RELEASE_GUARD": "0"})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), ["idle", "True"])


if __name__ == "__main__":
    unittest.main()
