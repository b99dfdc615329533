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
            def __init__(self, id, status=JobStatus.PENDING):
                self.id = id
                self.status = status
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
                    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT)")
                self._conn.commit()
                self.save_calls = 0
                self._write_lock = threading.Lock()

            def save_job(self, job):
                self.save_calls += 1
                if job.id is None:
                    raise ValueError("job without id")
                with self._write_lock:
                    self._conn.execute(
                        "INSERT INTO jobs (id, status) VALUES (?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET status = excluded.status",
                        (job.id, job.status.value))
                    self._conn.commit()
                return "saved"

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
    ''',
    "lifecycle.py": '''
        class Managed:
            def __init__(self, config, job_id):
                self.config = config
                self.job_refs = {job_id} if job_id else set()

        class ResourceLifecycleManager:
            """Like stepwise's: `active` pool entries carry the job_refs that keep them."""
            def __init__(self, trace=None):
                self.trace = trace if trace is not None else []
                self.active = []
                self.acquired = []
                self.released = []
                self.fail_release = False

            def acquire(self, config, session_name=None, job_id=None):
                self.acquired.append(job_id)
                self.trace.append(("acquire", job_id))
                self.active.append(Managed(config, job_id))
                return ("resource", config), True

            def release_for_job(self, job_id):
                self.released.append(job_id)
                self.trace.append(("lifecycle.release", job_id))
                if self.fail_release:
                    raise RuntimeError("teardown exploded")
                for managed in self.active:
                    managed.job_refs.discard(job_id)
                self.active = [m for m in self.active if m.job_refs]
    ''',
    "acp_backend.py": '''
        from .lifecycle import ResourceLifecycleManager

        class ACPBackend:
            """Like stepwise's: a resource manager owning a lifecycle pool."""
            def __init__(self, trace=None):
                self.trace = trace if trace is not None else []
                self.lifecycle = ResourceLifecycleManager(self.trace)
                self.containment = None
                self.released = []
                self.fail_release = False

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
        from .executors import ExecutorRegistry
        from .models import Job, JobStatus
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

            def create_job(self, job_id, status=JobStatus.RUNNING):
                job = Job(job_id, status)
                self.store.save_job(job)
                return job

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
        self.assertEqual(result, (("resource", {"agent": "x"}), True), "return value untouched")
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
