"""stepwise_release_guard: make a stepwise server release a job's resources when the job ends.

stepwise keeps agent (ACP adapter) processes in a pool that is reference-counted by job id;
a job's references are dropped when the engine calls ``Engine._cleanup_job_sessions`` on a
terminal transition. Some terminal paths in stepwise <= 0.46.1 never make that call (an exit
rule that abandons the job; a step of a cancelled job that retries and acquires a fresh
adapter), so those adapters live until the server dies. This module enforces the invariant
from inside the server process:

* when a job becomes terminal by any path (a ``job.completed`` / ``job.failed`` /
  ``job.cancelled`` event, ``cancel_job`` -- which writes no event --, or a terminal status
  saved through the store by any other path), the engine's resource managers release that
  job, once per terminal transition (nothing is added when the engine released it itself);
* a resource acquired for a job that is already terminal is released right after the
  acquisition;
* ACP sessions nothing can use again are closed with stepwise's own
  ``ACPClient.close_session`` (ACP ``session/close``, which ends that session's ``claude``
  CLI and nothing else): a released job's sessions on an adapter that other jobs keep alive,
  and a finished step run's session when stepwise's session rules say no later step run can
  resume it (no named session, no ``continue_session``, no ``fork_from`` pointing at it).
  A session is never closed while its turn runs; the calls are made on one daemon thread of
  the guard, never on the engine's. stepwise <= 0.46.1 never closes a session, so without
  this a shared adapter keeps one CLI (~170 MB) per session it ever opened.

It changes nothing else: every wrapped method calls its original exactly once, with the same
arguments, and returns its result or raises its exception unchanged; the guard's own
additions are wrapped in ``try/except`` and only logged (logger ``stepwise_release_guard``).

Activation: ``import stepwise_release_guard`` (a ``stepwise_release_guard.pth`` file in the
virtualenv's site-packages does that in every interpreter start). Importing is cheap and lazy:
it only installs an import hook; nothing is patched and stepwise is not imported until the
process itself imports ``stepwise.engine``. At that point the guard checks that the engine
has every method it relies on; if one is missing (another stepwise version) it disables
itself with one warning and patches nothing. Session closing has its own check (the ACP
backend and client methods, ``SQLiteStore.save_run``): when that fails only session
closing is off, with one warning.

In a stepwise *server* process the guard records its state in
``<project>/.stepwise/release-guard.json`` (written atomically) so that stepwise-watchdog
can report it. Set ``STEPWISE_RELEASE_GUARD=0`` to turn the guard off without uninstalling.
"""

import os
import sys

__version__ = "0.2.0"

GUARD_NAME = "stepwise_release_guard"
LOGGER_NAME = "stepwise_release_guard"
MARKER_FILENAME = "release-guard.json"
ENV_SWITCH = "STEPWISE_RELEASE_GUARD"

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "archived"})
#: job events that mean "this job is terminal now" -> the status they imply
TERMINAL_EVENTS = {
    "job.completed": "completed",
    "job.failed": "failed",
    "job.cancelled": "cancelled",
}

DEFAULT_MEMO_CAP = 4096

#: step run statuses after which a run's agent turn is over for good
FINISHED_RUN_STATUSES = frozenset({"completed", "failed", "cancelled", "skipped"})
#: keys of an agent step's spawn config that tie its session to other step runs:
#: ``_session_name`` (a named session, or the legacy ``continue_session`` / ``_session_id``
#: input), ``_session_uuid`` (it continues a session), ``continue_session`` (legacy).
_NAMED_SESSION_KEYS = ("_session_name", "_session_uuid", "continue_session", "_prev_session_name")
_CLOSE_STATS = {
    "release": "sessions_closed_on_release",
    "step-finished": "sessions_closed_after_step",
    "terminal-job": "sessions_closed_terminal_job",
}
_CLOSE_WHY = {
    "release": "its job released this adapter, which other jobs keep alive",
    "step-finished": "its step run finished and nothing can resume the session",
    "terminal-job": "its turn ended after its job had become terminal",
}
SESSION_CLOSE_QUEUE_CAP = 1024

_WRAPPER_FLAG = "__stepwise_release_guard__"
_MISSING = object()

# Engine methods that delimit one engine operation. A terminal transition noticed inside one
# of them is acted upon when the outermost one returns, i.e. after the engine had its chance
# to release the job itself (it does so right after the terminal save/event on its good
# paths). All optional: a method that does not exist is simply not wrapped.
_SCOPE_METHODS = (
    "tick",
    "start_job",
    "resume_job",
    "cancel_job",
    "recover_jobs",
    "_handle_queue_event",
    "_poll_external_changes",
    "_check_job_terminal",
    "_process_completion",
    "_fail_run",
    "_halt_job",
)

_DISABLE_VALUES = frozenset({"0", "off", "false", "no", "disable", "disabled"})


def enabled_by_env(environ=None) -> bool:
    """False when ``STEPWISE_RELEASE_GUARD`` is set to 0/off/false/no/disabled."""
    env = os.environ if environ is None else environ
    return env.get(ENV_SWITCH, "").strip().lower() not in _DISABLE_VALUES


def _logger():
    import logging

    log = logging.getLogger(LOGGER_NAME)
    # stepwise's server sets the root logger to WARNING; let our INFO lines (activation,
    # releases done by the guard) reach its log file unless someone configured us.
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    return log


def _status_value(status):
    """'completed' for JobStatus.COMPLETED or 'completed'; None for anything else."""
    value = getattr(status, "value", status)
    if isinstance(value, str):
        return value.strip().lower()
    return None


def _now_iso() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat()


class _Incompatible(Exception):
    """The imported stepwise lacks something the guard relies on."""


class _JobRecord:
    __slots__ = ("status", "terminal", "gen", "released_gen")

    def __init__(self):
        self.status = None
        self.terminal = False
        self.gen = 0  # number of non-terminal -> terminal transitions seen
        self.released_gen = -1  # transition for which a release has been done


class _SpawnFrame:
    """One ACPBackend.spawn call in progress on this thread."""

    __slots__ = ("lifecycle", "job_id", "step_name", "attempt", "named", "opened")

    def __init__(self, lifecycle, job_id, step_name, attempt, named):
        self.lifecycle = lifecycle
        self.job_id = job_id
        self.step_name = step_name
        self.attempt = attempt
        self.named = named
        self.opened = []  # session keys opened inside this spawn


class _SessionRecord:
    """An ACP session the engine opened for a step run, in one adapter."""

    __slots__ = ("key", "client_ref", "lifecycle_ref", "session_id", "job_id", "step_name",
                 "attempt", "how", "named", "in_turn", "frame", "pending", "closing", "kept")

    def __init__(self, key, client_ref, lifecycle_ref, session_id, frame, how):
        self.key = key
        self.client_ref = client_ref
        self.lifecycle_ref = lifecycle_ref
        self.session_id = session_id
        self.job_id = frame.job_id
        self.step_name = frame.step_name
        self.attempt = frame.attempt
        self.how = how  # new | load | fork
        self.named = frame.named or how == "load"
        self.in_turn = True  # until its spawn (session setup + prompt) returns
        self.frame = frame
        self.pending = None  # a close decided while the turn ran: done when it returns
        self.closing = False
        self.kept = False


class _SessionCloser:
    """One daemon thread that calls close_session, so the engine never waits on an adapter."""

    def __init__(self, guard, cap=SESSION_CLOSE_QUEUE_CAP):
        import threading
        from collections import deque

        self._guard = guard
        self._cap = cap
        self._cond = threading.Condition()
        self._queue = deque()
        self._busy = 0
        self._stopped = False
        self._thread = None

    def submit(self, rec, why):
        import threading

        with self._cond:
            if self._stopped or len(self._queue) >= self._cap:
                return False
            self._queue.append((rec, why))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="stepwise-release-guard-sessions", daemon=True)
                self._thread.start()
            self._cond.notify()
            return True

    def _run(self):
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                rec, why = self._queue.popleft()
                self._busy += 1
            try:
                self._guard._close_now(rec, why)
            except Exception:
                self._guard._error(f"closing session {getattr(rec, 'session_id', '?')}")
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def wait_idle(self, timeout):
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self):
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()


def _step_keep_reasons(steps):
    """{step name: why its finished runs' sessions may be resumed, or None} for a workflow.

    ``steps`` maps names to StepDefinition objects (or their ``to_dict()`` form). stepwise
    resumes an agent session only through named sessions (``session:``; later steps, loop
    iterations and retries of the session load it, a ``fork_from`` step forks it), through
    ``fork_from: <step>`` (the source step's session or its snapshot), and through the
    legacy ``continue_session``. Everything else opens a fresh session on every run.
    """

    def field(step, name):
        if isinstance(step, dict):
            return step.get(name)
        return getattr(step, name, None)

    fork_sources = {}
    for name, step in steps.items():
        source = field(step, "fork_from")
        if isinstance(source, str) and source and not source.startswith("$"):
            fork_sources.setdefault(source, name)
    info = {}
    for name, step in steps.items():
        session = field(step, "session")
        if session:
            info[name] = f"the step is in the named session {session!r}"
        elif field(step, "continue_session"):
            info[name] = "the step has continue_session"
        elif name in fork_sources:
            info[name] = f"step {fork_sources[name]!r} forks from it"
        else:
            info[name] = None
    return info


def _arg_getter(func, name):
    """Return f(args, kwargs) -> value of parameter `name` (args exclude `self`)."""
    import inspect

    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    names = [p.name for p in params]
    if name not in names:
        raise _Incompatible(f"{getattr(func, '__qualname__', func)} has no parameter {name!r}")
    param = params[names.index(name)]
    index = names.index(name) - 1  # minus self
    positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
    default = None if param.default is param.empty else param.default

    def get(args, kwargs):
        if name in kwargs:
            return kwargs[name]
        if positional and 0 <= index < len(args):
            return args[index]
        return default

    return get


def _find_owner(cls, name):
    for klass in cls.__mro__:
        if klass is object:
            break
        if name in klass.__dict__:
            return klass
    return None


def _plain_function(owner, name):
    import inspect

    value = owner.__dict__.get(name, _MISSING)
    if value is _MISSING or not inspect.isfunction(value):
        return None
    if inspect.iscoroutinefunction(value):
        return None
    return value


class _PostImportLoader:
    """Delegating loader that calls back once the real module has executed."""

    def __init__(self, loader, callback):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:  # give introspection the real loader back
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader
        except Exception:
            pass
        self._callback(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _ImportHook:
    """sys.meta_path entry that watches a few module names and nothing else."""

    def __init__(self, guard):
        self._guard = guard
        self.watched = {}  # module name -> callback(module)

    def find_spec(self, fullname, path=None, target=None):
        callback = self.watched.get(fullname)
        if callback is None:
            return None
        try:
            spec = None
            for finder in list(sys.meta_path):
                if finder is self:
                    continue
                find_spec = getattr(finder, "find_spec", None)
                if find_spec is None:
                    continue
                spec = find_spec(fullname, path, target)
                if spec is not None:
                    break
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return None

            def done(module, _name=fullname, _callback=callback):
                self.watched.pop(_name, None)
                _callback(module)

            spec.loader = _PostImportLoader(spec.loader, done)
            return spec
        except Exception:  # never break an import: let the normal machinery do it
            return None


class ReleaseGuard:
    """The guard. One instance (``GUARD``) is installed when this module is imported."""

    def __init__(self, package="stepwise", memo_cap=DEFAULT_MEMO_CAP):
        self.package = package
        self.memo_cap = max(16, int(memo_cap))
        self.state = "idle"  # idle -> waiting -> active | disabled
        self.reason = None
        self.stepwise_version = None
        self.activated_at = None
        self.hook_points = []
        self._hook = None
        self._patches = []  # (owner, name, previous __dict__ value or _MISSING)
        self._warned = False
        self._lock = None
        self._marker_lock = None
        self._tls = None
        self._memo = None
        self._engines = None
        self._cleanup_orig = None
        self._marker_dirs = None
        self._marker_started_at = None
        self._marker_error_logged = False
        self.stats = {
            "released_on_terminal": 0,
            "released_after_acquire": 0,
            "engine_releases_seen": 0,
            "errors": 0,
            "sessions_seen": 0,
            "sessions_closed_on_release": 0,
            "sessions_closed_after_step": 0,
            "sessions_closed_terminal_job": 0,
            "sessions_kept_resumable": 0,
            "session_close_errors": 0,
            "sessions_forgotten": 0,
        }
        # Session closing (see the "sessions" section below): its own state, because it
        # can be off while the release part is active.
        self.session_state = "off"  # off -> waiting -> active | disabled
        self.session_reason = "the guard is not active"
        self._sessions = None  # OrderedDict (id(client), session_id) -> _SessionRecord
        self._job_steps = None  # OrderedDict job_id -> (id(workflow), {step: keep-reason|None})
        self._gone = None  # deque of session keys whose client object was collected
        self._closer = None
        self._queue_full_logged = False

    # ── installation ─────────────────────────────────────────────────────

    @property
    def engine_module(self):
        return f"{self.package}.engine"

    @property
    def containment_module(self):
        return f"{self.package}.containment.cloud_hypervisor"

    @property
    def acp_backend_module(self):
        return f"{self.package}.acp_backend"

    def install(self):
        """Arrange for the engine to be patched when (or if already) it is imported."""
        if self.state != "idle":
            return self
        self.state = "waiting"
        self._hook = _ImportHook(self)
        self._hook.watched[self.engine_module] = self._on_engine_imported
        sys.meta_path.insert(0, self._hook)
        module = sys.modules.get(self.engine_module)
        if module is not None and getattr(module, "__spec__", None) is not None:
            self._hook.watched.pop(self.engine_module, None)
            self._on_engine_imported(module)
        return self

    def uninstall(self):
        """Restore every patched attribute and drop the import hook (used by tests)."""
        for owner, name, previous in reversed(self._patches):
            try:
                if previous is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, previous)
            except Exception:
                pass
        self._patches = []
        self._remove_hook()
        if self._closer is not None:
            self._closer.stop()
        self.state = "idle"
        self.session_state = "off"

    def _remove_hook(self):
        hook = self._hook
        if hook is not None:
            hook.watched.clear()
            try:
                sys.meta_path.remove(hook)
            except ValueError:
                pass
        self._hook = None

    def _maybe_remove_hook(self):
        if self._hook is not None and not self._hook.watched:
            self._remove_hook()

    # ── activation ───────────────────────────────────────────────────────

    def _on_engine_imported(self, engine_module):
        try:
            if self.state != "waiting":
                return
            self._activate(engine_module)
        except _Incompatible as exc:
            self._disable(str(exc))
        except Exception as exc:  # a bug of ours must not break stepwise's import
            self._disable(f"internal error while checking the engine: {exc!r}")
        finally:
            try:
                self._maybe_remove_hook()
            except Exception:
                pass

    def _import_sibling(self, name):
        import importlib

        try:
            return importlib.import_module(f"{self.package}.{name}")
        except Exception as exc:
            raise _Incompatible(f"cannot import {self.package}.{name}: {exc!r}") from exc

    def _activate(self, engine_module):
        import threading
        import weakref
        from collections import OrderedDict

        self.stepwise_version = self._detect_version(engine_module)
        plan = self._plan(engine_module)  # raises _Incompatible

        self._lock = threading.Lock()
        self._marker_lock = threading.Lock()
        self._tls = threading.local()
        self._memo = OrderedDict()
        self._engines = weakref.WeakSet()
        self._sessions = OrderedDict()
        self._job_steps = OrderedDict()
        from collections import deque

        self._gone = deque()
        self.activated_at = _now_iso()

        applied = []
        try:
            for owner, name, wrapper in plan:
                previous = owner.__dict__.get(name, _MISSING)
                setattr(owner, name, wrapper)
                applied.append((owner, name, previous))
        except Exception as exc:
            for owner, name, previous in reversed(applied):
                try:
                    if previous is _MISSING:
                        delattr(owner, name)
                    else:
                        setattr(owner, name, previous)
                except Exception:
                    pass
            raise _Incompatible(f"could not patch the engine: {exc!r}") from exc
        self._patches.extend(applied)
        self.hook_points = sorted({f"{o.__module__}.{o.__qualname__}.{n}" for o, n, _ in applied})
        self.state = "active"

        # Optional: the microVM pool, when this stepwise has one. Patched now or when imported.
        containment = sys.modules.get(self.containment_module)
        if containment is not None:
            self._on_containment_imported(containment)
        elif self._hook is not None:
            self._hook.watched[self.containment_module] = self._on_containment_imported

        # Session closing needs the ACP backend, which the engine does not import itself
        # (the server's registry factory does). Checked and patched now or when imported.
        self.session_state = "waiting"
        self.session_reason = f"{self.acp_backend_module} is not loaded in this process yet"
        acp_backend = sys.modules.get(self.acp_backend_module)
        if acp_backend is not None and getattr(acp_backend, "__spec__", None) is not None \
                and getattr(acp_backend, "ACPBackend", None) is not None:
            self._on_acp_backend_imported(acp_backend)
        elif self._hook is not None:
            self._hook.watched[self.acp_backend_module] = self._on_acp_backend_imported

        _logger().debug(
            "%s %s patched stepwise %s (pid %d): %s",
            GUARD_NAME, __version__, self.stepwise_version, os.getpid(), ", ".join(self.hook_points),
        )

    def _disable(self, reason):
        self.state = "disabled"
        self.reason = reason
        if not self._warned:
            self._warned = True
            try:
                _logger().warning(
                    "%s %s disabled itself: %s. Nothing was patched; this stepwise "
                    "(version %s) runs unguarded and leaked adapters are left to the watchdog.",
                    GUARD_NAME, __version__, reason, self.stepwise_version or "unknown",
                )
            except Exception:
                pass
        # A disabled guard in a server process says so in the marker.
        try:
            if self._looks_like_server(None):
                self._write_marker(self._marker_dirs_for(None))
        except Exception:
            pass

    def _detect_version(self, engine_module):
        """stepwise's version: its source tree's pyproject.toml, else its installed metadata."""
        engine_file = os.path.realpath(getattr(engine_module, "__file__", "") or "")
        try:  # a source tree: <root>/src/stepwise/engine.py next to <root>/pyproject.toml
            import re

            pyproject = os.path.join(os.path.dirname(engine_file), os.pardir, os.pardir, "pyproject.toml")
            with open(pyproject, encoding="utf-8") as fh:
                text = fh.read()
            if re.search(r'^name\s*=\s*"stepwise-run"', text, re.M):
                m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
                if m:
                    return m.group(1)
        except Exception:
            pass
        try:  # an installed wheel, as long as it is the one this engine came from
            from importlib.metadata import distribution

            dist = distribution("stepwise-run")
            located = os.path.realpath(str(dist.locate_file(
                os.path.join(*self.package.split("."), "engine.py"))))
            if located == engine_file:
                return dist.version
        except Exception:
            pass
        return None

    def _plan(self, engine_module):
        """Check everything the guard relies on; return [(owner, name, wrapper)]."""
        store_module = self._import_sibling("store")
        executors_module = self._import_sibling("executors")
        lifecycle_module = self._import_sibling("lifecycle")

        def cls(module, name):
            value = getattr(module, name, None)
            if not isinstance(value, type):
                raise _Incompatible(f"{module.__name__}.{name} is missing")
            return value

        Engine = cls(engine_module, "Engine")
        SQLiteStore = cls(store_module, "SQLiteStore")
        ExecutorRegistry = cls(executors_module, "ExecutorRegistry")
        Lifecycle = cls(lifecycle_module, "ResourceLifecycleManager")

        def method(klass, name):
            owner = _find_owner(klass, name)
            func = _plain_function(owner, name) if owner is not None else None
            if func is None:
                raise _Incompatible(f"{klass.__module__}.{klass.__qualname__}.{name} is missing")
            return owner, func

        if not hasattr(ExecutorRegistry, "resource_managers"):
            raise _Incompatible(f"{executors_module.__name__}.ExecutorRegistry.resource_managers is missing")
        _arg_getter(method(Lifecycle, "release_for_job")[1], "job_id")

        plan = []
        seen = set()

        def add(owner, name, wrapper):
            key = (owner, name)
            if key not in seen:
                seen.add(key)
                plan.append((owner, name, wrapper))

        # Engine: construction (to know the engines and write the marker), events, the
        # engine's own release, cancellation.
        owner, func = method(Engine, "__init__")
        add(owner, "__init__", self._wrap_engine_init(func))
        owner, func = method(Engine, "_emit")
        add(owner, "_emit", self._wrap_emit(func, _arg_getter(func, "job_id"), _arg_getter(func, "event_type")))
        owner, func = method(Engine, "_cleanup_job_sessions")
        self._cleanup_orig = func
        add(owner, "_cleanup_job_sessions", self._wrap_cleanup(func, _arg_getter(func, "job_id")))
        owner, func = method(Engine, "cancel_job")
        add(owner, "cancel_job", self._wrap_cancel(func, _arg_getter(func, "job_id")))

        # Operation scopes, on Engine and on every subclass defined next to it
        # (AsyncEngine overrides cancel_job and calls super()).
        engine_classes = [
            value for value in vars(engine_module).values()
            if isinstance(value, type) and issubclass(value, Engine)
        ]
        for klass in engine_classes:
            for name in _SCOPE_METHODS:
                func = _plain_function(klass, name)
                if func is None:
                    continue
                if name == "cancel_job":
                    add(klass, name, self._wrap_cancel(func, _arg_getter(func, "job_id")))
                else:
                    add(klass, name, self._wrap_scope(func))

        # Store: every method that writes a job status.
        owner, func = method(SQLiteStore, "save_job")
        add(owner, "save_job", self._wrap_save_job(func, _arg_getter(func, "job")))
        for name, status_param, fixed in (
            ("archive_job", None, "archived"),
            ("unarchive_job", "restore_status", None),
            ("atomic_status_transition", "to_status", None),
            ("reset_job", "status", None),
            ("transition_job_to_pending", None, "pending"),
            ("transition_job_to_approved", None, "pending"),
            ("delete_job", None, None),
        ):
            owner = _find_owner(SQLiteStore, name)
            func = _plain_function(owner, name) if owner is not None else None
            if func is None:
                continue
            try:
                get_job_id = _arg_getter(func, "job_id")
                get_status = _arg_getter(func, status_param) if status_param else None
            except _Incompatible:
                continue  # optional; a different shape is simply not observed
            add(owner, name, self._wrap_store_status(func, name, get_job_id, get_status, fixed))

        # Acquisition of pooled resources for a job.
        owner, func = method(Lifecycle, "acquire")
        add(owner, "acquire", self._wrap_acquire(func, _arg_getter(func, "job_id")))
        return plan

    def _on_containment_imported(self, module):
        try:
            if self.state != "active":
                return
            klass = getattr(module, "CloudHypervisorBackend", None)
            if not isinstance(klass, type):
                return
            owner = _find_owner(klass, "get_spawn_context")
            func = _plain_function(owner, "get_spawn_context") if owner is not None else None
            if func is None or _plain_function(_find_owner(klass, "release_for_job") or klass, "release_for_job") is None:
                return
            wrapper = self._wrap_acquire(func, _arg_getter(func, "job_id"))
            previous = owner.__dict__.get("get_spawn_context", _MISSING)
            setattr(owner, "get_spawn_context", wrapper)
            self._patches.append((owner, "get_spawn_context", previous))
            self.hook_points = sorted(set(self.hook_points) | {
                f"{owner.__module__}.{owner.__qualname__}.get_spawn_context"})
        except Exception:
            self._error("patching the containment backend")
        finally:
            try:
                self._maybe_remove_hook()
            except Exception:
                pass

    # ── sessions: checking and patching ──────────────────────────────────

    def _on_acp_backend_imported(self, module):
        try:
            if self.state != "active" or self.session_state != "waiting":
                return
            self._activate_sessions(module)
        except _Incompatible as exc:
            self._disable_sessions(str(exc))
        except Exception as exc:  # a bug of ours must not break stepwise's import
            self._disable_sessions(f"internal error while checking the ACP backend: {exc!r}")
        finally:
            try:
                self._maybe_remove_hook()
            except Exception:
                pass

    def _session_plan(self, acp_backend_module):
        """Check everything session closing relies on; return [(owner, name, wrapper)]."""

        def cls(module, name):
            value = getattr(module, name, None)
            if not isinstance(value, type):
                raise _Incompatible(f"{getattr(module, '__name__', module)}.{name} is missing")
            return value

        def method(klass, name, *params):
            owner = _find_owner(klass, name)
            func = _plain_function(owner, name) if owner is not None else None
            if func is None:
                raise _Incompatible(f"{klass.__module__}.{klass.__qualname__}.{name} is missing")
            getters = [_arg_getter(func, p) for p in params]  # raises _Incompatible
            return owner, func, getters

        ACPBackend = cls(acp_backend_module, "ACPBackend")
        client_module = sys.modules.get(f"{self.package}.acp_client") or self._import_sibling("acp_client")
        ACPClient = cls(client_module, "ACPClient")
        SQLiteStore = cls(self._import_sibling("store"), "SQLiteStore")
        Lifecycle = cls(self._import_sibling("lifecycle"), "ResourceLifecycleManager")

        # close_session is checked first: the one an upstream change is most likely to touch.
        method(ACPClient, "close_session", "session_id")
        plan = []
        owner, func, (get_config, get_context) = method(ACPBackend, "spawn", "config", "context")
        plan.append((owner, "spawn", self._wrap_spawn(func, get_config, get_context)))
        owner, func, _ = method(ACPClient, "new_session", "cwd")
        plan.append((owner, "new_session", self._wrap_session_open(func, "new", None)))
        for name in ("load_session", "fork_session"):
            owner, func, (get_sid,) = method(ACPClient, name, "session_id")
            plan.append((owner, name, self._wrap_session_open(func, name.split("_")[0], get_sid)))
        owner, func, (get_job_id,) = method(Lifecycle, "release_for_job", "job_id")
        plan.append((owner, "release_for_job", self._wrap_release_for_job(func, get_job_id)))
        owner, func, (get_run,) = method(SQLiteStore, "save_run", "run")
        plan.append((owner, "save_run", self._wrap_save_run(func, get_run)))
        return plan

    def _activate_sessions(self, acp_backend_module):
        plan = self._session_plan(acp_backend_module)  # raises _Incompatible
        applied = []
        try:
            for owner, name, wrapper in plan:
                previous = owner.__dict__.get(name, _MISSING)
                setattr(owner, name, wrapper)
                applied.append((owner, name, previous))
        except Exception as exc:
            for owner, name, previous in reversed(applied):
                try:
                    if previous is _MISSING:
                        delattr(owner, name)
                    else:
                        setattr(owner, name, previous)
                except Exception:
                    pass
            raise _Incompatible(f"could not patch the ACP backend: {exc!r}") from exc
        self._patches.extend(applied)
        self._closer = _SessionCloser(self)
        self.hook_points = sorted(set(self.hook_points) | {
            f"{o.__module__}.{o.__qualname__}.{n}" for o, n, _ in applied})
        self.session_state = "active"
        self.session_reason = None
        self._update_marker()

    def _disable_sessions(self, reason):
        self.session_state = "disabled"
        self.session_reason = reason
        try:
            _logger().warning(
                "%s %s: session closing is off: %s. Job releases are still guarded; sessions "
                "of finished jobs in shared adapters are left to the watchdog (stepwise %s).",
                GUARD_NAME, __version__, reason, self.stepwise_version or "unknown",
            )
        except Exception:
            pass
        try:
            self._update_marker()
        except Exception:
            pass

    # ── wrappers ─────────────────────────────────────────────────────────

    def _mark(self, wrapper, func):
        import functools

        functools.update_wrapper(wrapper, func)
        setattr(wrapper, _WRAPPER_FLAG, True)
        return wrapper

    def _enter(self):
        tls = self._tls
        depth = getattr(tls, "depth", 0)
        if depth == 0:
            tls.pending = {}
        tls.depth = depth + 1
        return depth

    def _leave(self, depth):
        try:
            tls = self._tls
            tls.depth = depth
            if depth == 0:
                pending, tls.pending = tls.pending, {}
                for job_id, gen in pending.items():
                    self._flush(job_id, gen)
        except Exception:
            self._error("finishing an engine operation")

    def _wrap_scope(self, func):
        guard = self

        def wrapper(*args, **kwargs):
            try:
                depth = guard._enter()
            except Exception:
                guard._error("entering an engine operation")
                return func(*args, **kwargs)
            try:
                return func(*args, **kwargs)
            finally:
                guard._leave(depth)

        return self._mark(wrapper, func)

    def _wrap_cancel(self, func, get_job_id):
        guard = self

        def wrapper(*args, **kwargs):
            try:
                depth = guard._enter()
            except Exception:
                guard._error("entering cancel_job")
                return func(*args, **kwargs)
            try:
                result = func(*args, **kwargs)
                # cancel_job writes no event: the call returning is the signal.
                try:
                    guard._note_terminal(get_job_id(args[1:], kwargs), "cancelled", "cancel_job")
                except Exception:
                    guard._error("observing cancel_job")
                return result
            finally:
                guard._leave(depth)

        return self._mark(wrapper, func)

    def _wrap_engine_init(self, func):
        guard = self

        def wrapper(*args, **kwargs):
            result = func(*args, **kwargs)
            try:
                guard._register_engine(args[0])
            except Exception:
                guard._error("registering an engine")
            return result

        return self._mark(wrapper, func)

    def _wrap_emit(self, func, get_job_id, get_event_type):
        guard = self

        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            finally:
                try:
                    status = TERMINAL_EVENTS.get(get_event_type(args[1:], kwargs))
                    if status is not None:
                        guard._note_terminal(get_job_id(args[1:], kwargs), status, "event")
                except Exception:
                    guard._error("observing an event")

        return self._mark(wrapper, func)

    def _wrap_cleanup(self, func, get_job_id):
        guard = self

        def wrapper(*args, **kwargs):
            try:
                guard._note_engine_release(get_job_id(args[1:], kwargs))
            except Exception:
                guard._error("observing the engine's release")
            return func(*args, **kwargs)

        return self._mark(wrapper, func)

    def _wrap_save_job(self, func, get_job):
        guard = self

        def wrapper(*args, **kwargs):
            result = func(*args, **kwargs)
            try:
                job = get_job(args[1:], kwargs)
                job_id = getattr(job, "id", None)
                status = _status_value(getattr(job, "status", None))
                if job_id and status:
                    guard._note_status(job_id, status, "save_job")
                if job_id and guard.session_state == "active":
                    guard._note_workflow(job_id, getattr(job, "workflow", None))
            except Exception:
                guard._error("observing save_job")
            return result

        return self._mark(wrapper, func)

    def _wrap_store_status(self, func, name, get_job_id, get_status, fixed):
        guard = self

        def wrapper(*args, **kwargs):
            result = func(*args, **kwargs)
            try:
                job_id = get_job_id(args[1:], kwargs)
                if job_id:
                    if name == "delete_job":
                        guard._forget(job_id)
                    elif name == "atomic_status_transition" and not result:
                        pass  # nothing changed
                    else:
                        status = fixed or _status_value(get_status(args[1:], kwargs))
                        if status:
                            guard._note_status(job_id, status, name)
            except Exception:
                guard._error(f"observing {name}")
            return result

        return self._mark(wrapper, func)

    def _wrap_acquire(self, func, get_job_id):
        guard = self

        def wrapper(*args, **kwargs):
            result = func(*args, **kwargs)
            try:
                job_id = get_job_id(args[1:], kwargs)
                if job_id:
                    guard._after_acquire(args[0], job_id)
            except Exception:
                guard._error("checking an acquisition")
            return result

        return self._mark(wrapper, func)

    def _wrap_spawn(self, func, get_config, get_context):
        """ACPBackend.spawn: the sessions opened inside belong to this step run."""
        guard = self

        def wrapper(*args, **kwargs):
            frame = None
            try:
                frame = guard._spawn_enter(args[0], get_config(args[1:], kwargs),
                                           get_context(args[1:], kwargs))
            except Exception:
                guard._error("observing an agent spawn")
            try:
                return func(*args, **kwargs)
            finally:
                if frame is not None:
                    try:
                        guard._spawn_leave(frame)
                    except Exception:
                        guard._error("finishing an agent spawn")

        return self._mark(wrapper, func)

    def _wrap_session_open(self, func, how, get_session_id):
        """ACPClient.new_session / load_session / fork_session: record the opened session."""
        guard = self

        def wrapper(*args, **kwargs):
            result = func(*args, **kwargs)
            try:
                session_id = result if get_session_id is None or how == "fork" \
                    else get_session_id(args[1:], kwargs)
                guard._session_opened(args[0], session_id, how)
            except Exception:
                guard._error(f"observing {how}_session")
            return result

        return self._mark(wrapper, func)

    def _wrap_release_for_job(self, func, get_job_id):
        """ResourceLifecycleManager.release_for_job: close the job's sessions on survivors."""
        guard = self

        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            finally:
                try:
                    guard._after_release(args[0], get_job_id(args[1:], kwargs))
                except Exception:
                    guard._error("closing the sessions of a released job")

        return self._mark(wrapper, func)

    def _wrap_save_run(self, func, get_run):
        """SQLiteStore.save_run: a step run that finished may free its session."""
        guard = self

        def wrapper(*args, **kwargs):
            result = func(*args, **kwargs)
            try:
                guard._run_saved(get_run(args[1:], kwargs))
            except Exception:
                guard._error("observing save_run")
            return result

        return self._mark(wrapper, func)

    # ── sessions: bookkeeping ────────────────────────────────────────────
    #
    # A record per ACP session the engine opened inside ACPBackend.spawn, keyed by
    # (id(ACPClient), session id): the client (weakly: one client per adapter process),
    # the adapter pool (ResourceLifecycleManager) it lives in, the step run it was opened
    # for (job id, step name, attempt) and whether its turn is still running.

    def _spawn_enter(self, backend, config, context):
        job_id = getattr(context, "job_id", None)
        if not job_id or self.session_state != "active":
            return None
        named = isinstance(config, dict) and any(
            config.get(k) for k in _NAMED_SESSION_KEYS)
        frame = _SpawnFrame(getattr(backend, "lifecycle", None), job_id,
                            getattr(context, "step_name", None), getattr(context, "attempt", None),
                            bool(named))
        stack = getattr(self._tls, "spawns", None)
        if stack is None:
            stack = self._tls.spawns = []
        stack.append(frame)
        return frame

    def _spawn_leave(self, frame):
        stack = getattr(self._tls, "spawns", None) or []
        if stack and stack[-1] is frame:
            stack.pop()
        elif frame in stack:
            stack.remove(frame)
        if not frame.opened:
            return
        terminal = None
        for key in frame.opened:
            with self._lock:
                rec = self._sessions.get(key)
                if rec is None or rec.frame is not frame:
                    continue
                rec.in_turn = False
                rec.frame = None
                why = rec.pending
            if why is None:
                # A turn that ran for a job that is terminal by now (a retry of a cancelled
                # job's step on a shared adapter, a step still running when its job was
                # abandoned): nothing will use this session again.
                if terminal is None:
                    terminal = self._authoritative_status(frame.job_id) in TERMINAL_STATUSES
                if terminal:
                    why = "terminal-job"
            if why is not None:
                self._submit_close(rec, why)

    def _session_opened(self, client, session_id, how):
        if self.session_state != "active" or not isinstance(session_id, str) or not session_id:
            return
        stack = getattr(self._tls, "spawns", None)
        if not stack:
            return  # not opened for a step run: not ours to close
        frame = stack[-1]
        import weakref

        key = (id(client), session_id)
        gone = self._gone
        try:
            client_ref = weakref.ref(client, lambda _ref, _key=key: gone.append(_key))
            lifecycle_ref = weakref.ref(frame.lifecycle) if frame.lifecycle is not None else None
        except TypeError:
            return  # not weak-referenceable: do not keep adapters alive for bookkeeping
        rec = _SessionRecord(key, client_ref, lifecycle_ref, session_id, frame, how)
        with self._lock:
            self._drain_gone()
            self._sessions[key] = rec  # a load of a known id: the latest step run owns it
            self._sessions.move_to_end(key)
            self.stats["sessions_seen"] += 1
            while len(self._sessions) > self.memo_cap:
                # Forget the oldest idle session first (its turn is over), else the oldest.
                victim = next((k for k, r in self._sessions.items() if not r.in_turn), None)
                old = self._sessions.pop(victim) if victim is not None \
                    else self._sessions.popitem(last=False)[1]
                self.stats["sessions_forgotten"] += 1
                _logger().debug("%s: too many open sessions tracked; forgot %s of job %s",
                                GUARD_NAME, old.session_id, old.job_id)
        frame.opened.append(key)

    def _drain_gone(self):
        """Forget sessions whose client object was collected (caller holds the lock)."""
        gone = self._gone
        while gone:
            try:
                key = gone.popleft()
            except IndexError:
                break
            rec = self._sessions.get(key)
            if rec is not None and rec.client_ref() is None:
                del self._sessions[key]

    def _after_release(self, lifecycle, job_id):
        """After release_for_job(job_id): close that job's sessions on adapters that live on."""
        if self.session_state != "active" or not job_id:
            return
        try:
            managed_list = list(getattr(lifecycle, "active"))
        except Exception:
            return
        alive = {}  # id(client) -> (client, managed) for every adapter still in the pool
        for managed in managed_list:
            client = getattr(getattr(managed, "resource", None), "client", None)
            if client is not None:
                alive[id(client)] = (client, managed)
        to_close = []
        with self._lock:
            self._drain_gone()
            for key, rec in list(self._sessions.items()):
                if rec.lifecycle_ref is None or rec.lifecycle_ref() is not lifecycle:
                    continue
                client = rec.client_ref()
                entry = alive.get(id(client)) if client is not None else None
                if entry is None or entry[0] is not client:
                    if not rec.in_turn:  # the adapter was torn down: its sessions with it
                        del self._sessions[key]
                    continue
                if rec.job_id != job_id or rec.closing:
                    continue
                refs = getattr(entry[1], "job_refs", None)
                if refs is not None and job_id in refs:
                    continue  # the job holds this adapter again (re-acquired meanwhile)
                if rec.in_turn:
                    rec.pending = rec.pending or "release"  # closed when its turn returns
                else:
                    to_close.append(rec)
            self._job_steps.pop(job_id, None)
        for rec in to_close:
            self._submit_close(rec, "release")

    def _run_saved(self, run):
        if self.session_state != "active" or run is None:
            return
        if _status_value(getattr(run, "status", None)) not in FINISHED_RUN_STATUSES:
            return
        job_id = getattr(run, "job_id", None)
        step_name = getattr(run, "step_name", None)
        attempt = getattr(run, "attempt", None)
        with self._lock:
            matches = [rec for rec in self._sessions.values()
                       if rec.job_id == job_id and rec.step_name == step_name
                       and rec.attempt == attempt and not rec.closing and rec.pending is None]
        if not matches:
            return
        keep = self._keep_reason(job_id, step_name, matches)
        if keep is not None:
            with self._lock:
                for rec in matches:
                    if not rec.kept:
                        rec.kept = True
                        self.stats["sessions_kept_resumable"] += 1
            _logger().debug("%s: kept session(s) %s of %s/%s: %s", GUARD_NAME,
                            ", ".join(r.session_id for r in matches), job_id, step_name, keep)
            return
        for rec in matches:
            with self._lock:
                if rec.in_turn:
                    rec.pending = "step-finished"
                    continue
            self._submit_close(rec, "step-finished")

    def _keep_reason(self, job_id, step_name, records):
        """Why a finished step's session may be resumed (keep it), or None (close it)."""
        if any(rec.named for rec in records):
            return "the step ran in a named or continued session"
        info = self._step_info(job_id)
        if info is None:
            return "the job's workflow is unknown"
        if step_name not in info:
            return "the step is not in the job's workflow"
        return info[step_name]

    def _note_workflow(self, job_id, workflow):
        steps = getattr(workflow, "steps", None)
        if not isinstance(steps, dict):
            return
        with self._lock:
            cached = self._job_steps.get(job_id)
            if cached is not None and cached[0] == id(workflow):
                self._job_steps.move_to_end(job_id)
                return
        info = _step_keep_reasons(steps)
        with self._lock:
            self._job_steps[job_id] = (id(workflow), info)
            self._job_steps.move_to_end(job_id)
            while len(self._job_steps) > self.memo_cap:
                self._job_steps.popitem(last=False)

    def _step_info(self, job_id):
        with self._lock:
            cached = self._job_steps.get(job_id)
        if cached is not None:
            return cached[1]
        for path in self._db_paths():  # e.g. the job was saved before the guard saw it
            try:
                steps = _read_job_steps(path, job_id)
            except Exception:
                steps = None
            if steps is not None:
                info = _step_keep_reasons(steps)
                with self._lock:
                    self._job_steps[job_id] = (None, info)
                    while len(self._job_steps) > self.memo_cap:
                        self._job_steps.popitem(last=False)
                return info
        return None

    def _submit_close(self, rec, why):
        with self._lock:
            if rec.closing or self._sessions.get(rec.key) is not rec:
                return
            rec.closing = True
        closer = self._closer
        if closer is None or not closer.submit(rec, why):
            with self._lock:
                rec.closing = False
                first = not self._queue_full_logged
                self._queue_full_logged = True
            (_logger().warning if first else _logger().debug)(
                "%s: too many session closes pending (adapters not answering?); left session "
                "%s of job %s open", GUARD_NAME, rec.session_id, rec.job_id)

    def _adapter_alive(self, rec, client):
        lifecycle = rec.lifecycle_ref() if rec.lifecycle_ref is not None else None
        if lifecycle is None or client is None:
            return False
        try:
            managed_list = list(getattr(lifecycle, "active"))
        except Exception:
            return False
        for managed in managed_list:
            resource = getattr(managed, "resource", None)
            if getattr(resource, "client", None) is client:
                process = getattr(resource, "process", None)
                poll = getattr(process, "poll", None)
                if callable(poll):
                    try:
                        if poll() is not None:
                            return False
                    except Exception:
                        pass
                return True
        return False

    def _close_now(self, rec, why):
        """On the closer thread: stepwise's own ACPClient.close_session, once."""
        client = rec.client_ref()
        try:
            with self._lock:
                if self._sessions.get(rec.key) is not rec:
                    return  # forgotten or replaced (the session was loaded again) meanwhile
            if not self._adapter_alive(rec, client):
                return  # the adapter is gone, and the session with it
            ok = True
            try:
                client.close_session(rec.session_id)
            except Exception as exc:
                ok = False
                with self._lock:
                    self.stats["session_close_errors"] += 1
                _logger().warning(
                    "%s: closing ACP session %s of job %s (step %s) failed (ignored): %r",
                    GUARD_NAME, rec.session_id, rec.job_id, rec.step_name, exc)
            if ok:
                stat = _CLOSE_STATS.get(why, "sessions_closed_on_release")
                with self._lock:
                    self.stats[stat] += 1
                _logger().info(
                    "%s: closed ACP session %s of job %s (step %s, attempt %s): %s",
                    GUARD_NAME, rec.session_id, rec.job_id, rec.step_name, rec.attempt,
                    _CLOSE_WHY.get(why, why))
            self._update_marker()
        finally:
            with self._lock:
                if self._sessions.get(rec.key) is rec:
                    del self._sessions[rec.key]

    def wait_for_session_closes(self, timeout=5.0):
        """True once every queued session close has been done (for tests and tools)."""
        closer = self._closer
        return True if closer is None else closer.wait_idle(timeout)

    def open_sessions(self):
        """[(job_id, step_name, attempt, session_id, state)] of the sessions tracked now."""
        if self._sessions is None:
            return []
        with self._lock:
            return [(r.job_id, r.step_name, r.attempt, r.session_id,
                     "closing" if r.closing else "in-turn" if r.in_turn else "idle")
                    for r in self._sessions.values()]

    # ── bookkeeping ──────────────────────────────────────────────────────

    def _error(self, what):
        try:
            self.stats["errors"] += 1
            _logger().error("%s: error while %s (ignored)", GUARD_NAME, what, exc_info=True)
        except Exception:
            pass

    def _record(self, job_id):
        """The memo entry of a job (caller holds the lock); LRU-bounded."""
        memo = self._memo
        rec = memo.get(job_id)
        if rec is None:
            rec = memo[job_id] = _JobRecord()
            while len(memo) > self.memo_cap:
                memo.popitem(last=False)
        else:
            memo.move_to_end(job_id)
        return rec

    def _note_status(self, job_id, status, source):
        if status in TERMINAL_STATUSES:
            self._note_terminal(job_id, status, source)
        else:
            with self._lock:
                rec = self._record(job_id)
                rec.status = status
                rec.terminal = False  # a later terminal status is a new transition

    def _note_terminal(self, job_id, status, source):
        if not job_id:
            return
        with self._lock:
            rec = self._record(job_id)
            if not rec.terminal:
                rec.terminal = True
                rec.gen += 1
            if status:
                rec.status = status
            if rec.released_gen == rec.gen:
                return
            gen = rec.gen
        self._schedule(job_id, gen)

    def _note_engine_release(self, job_id):
        if not job_id:
            return
        with self._lock:
            self.stats["engine_releases_seen"] += 1
            rec = self._record(job_id)
            if not rec.terminal:
                # The engine only releases terminal jobs; it saved the status first.
                rec.terminal = True
                rec.gen += 1
            rec.released_gen = rec.gen

    def _forget(self, job_id):
        with self._lock:
            self._memo.pop(job_id, None)
            if self._job_steps is not None:
                self._job_steps.pop(job_id, None)

    def _schedule(self, job_id, gen):
        """Release after the current engine operation (or now, outside any)."""
        tls = self._tls
        if getattr(tls, "depth", 0) > 0:
            tls.pending[job_id] = gen
            return
        if "asyncio" in sys.modules:
            import asyncio

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                try:
                    loop.call_soon(self._flush, job_id, gen)
                    return
                except Exception:
                    pass  # loop closing: do it now
        self._flush(job_id, gen)

    def _flush(self, job_id, gen):
        try:
            with self._lock:
                rec = self._memo.get(job_id)
                if rec is None or not rec.terminal or rec.gen != gen or rec.released_gen == gen:
                    return
                rec.released_gen = gen
                status = rec.status
            self._release_terminal(job_id, status)
        except Exception:
            self._error(f"releasing job {job_id}")

    def _live_engines(self):
        try:
            return list(self._engines)
        except Exception:
            return []

    def _release_terminal(self, job_id, status):
        """The engine's own release path (session registry + every resource manager)."""
        engines = self._live_engines()
        if not engines:
            return  # no engine in this process: nothing of this job's is held here
        held = self._job_holds(job_id, engines)
        done_registries = set()
        for engine in engines:
            registry = getattr(engine, "registry", None)
            if id(registry) in done_registries:
                continue
            done_registries.add(id(registry))
            try:
                self._cleanup_orig(engine, job_id)
            except Exception:
                self._error(f"releasing job {job_id}")
        if held is False:
            # e.g. jobs failed at start-up for a server that died: nothing of theirs is here
            _logger().debug("%s: job %s became %s; it held no resources here",
                            GUARD_NAME, job_id, status or "terminal")
            return
        with self._lock:
            self.stats["released_on_terminal"] += 1
        _logger().info(
            "%s: job %s became %s without the engine releasing its resources; released them",
            GUARD_NAME, job_id, status or "terminal",
        )
        self._update_marker()

    @staticmethod
    def _job_holds(job_id, engines):
        """Whether a pool still references the job: True, False, or None (cannot tell).

        Only for reporting: the release is done either way (it is idempotent).
        """
        unknown = False
        seen = set()
        for engine in engines:
            try:
                managers = list(engine.registry.resource_managers)
            except Exception:
                return None
            for manager in managers:
                if id(manager) in seen:
                    continue
                seen.add(id(manager))
                pools = [getattr(manager, "lifecycle", None) or manager]
                containment = getattr(manager, "containment", None)
                try:
                    for pool in pools:
                        active = getattr(pool, "active", None)
                        if active is None:
                            unknown = True
                            continue
                        for managed in list(active):
                            refs = getattr(managed, "job_refs", None)
                            if refs is None:
                                unknown = True
                            elif job_id in refs:
                                return True
                    if containment is not None:
                        vm_refs = getattr(containment, "_job_refs", None)
                        if isinstance(vm_refs, dict):
                            if any(job_id in refs for refs in list(vm_refs.values())):
                                return True
                        elif type(containment).__name__ != "NoContainmentBackend":
                            unknown = True
                except Exception:
                    unknown = True
        return None if unknown else False

    def _after_acquire(self, acquirer, job_id):
        status = self._authoritative_status(job_id)
        if status not in TERMINAL_STATUSES:
            return
        covered = set()
        for engine in self._live_engines():
            try:
                managers = list(getattr(engine, "registry").resource_managers)
            except Exception:
                continue
            for manager in managers:
                if id(manager) in covered:
                    continue
                covered.add(id(manager))
                for attr in ("lifecycle", "containment"):
                    sub = getattr(manager, attr, None)
                    if sub is not None:
                        covered.add(id(sub))
                try:
                    manager.release_for_job(job_id)
                except Exception:
                    self._error(f"releasing job {job_id} after an acquisition")
        if id(acquirer) not in covered:
            try:
                acquirer.release_for_job(job_id)
            except Exception:
                self._error(f"releasing job {job_id} after an acquisition")
        with self._lock:
            self.stats["released_after_acquire"] += 1
        _logger().info(
            "%s: a resource was acquired for job %s, which is already %s; released it",
            GUARD_NAME, job_id, status,
        )
        self._update_marker()

    def _authoritative_status(self, job_id):
        """The job's status in the database when readable, else the last status seen here."""
        for path in self._db_paths():
            try:
                status = _read_job_status(path, job_id)
            except Exception:
                status = None
            if status is not None:
                return status
        with self._lock:
            rec = self._memo.get(job_id)
            if rec is None:
                return None
            return rec.status if rec.terminal else (rec.status or "running")

    def _db_paths(self):
        paths = []
        for engine in self._live_engines():
            path = getattr(getattr(engine, "store", None), "_db_path", None)
            if isinstance(path, str) and path and path not in paths:
                paths.append(path)
        return paths

    # ── engines and the marker ───────────────────────────────────────────

    def _register_engine(self, engine):
        try:
            self._engines.add(engine)
        except TypeError:
            return
        if self.session_state == "waiting":  # the ACP backend was imported in a way we missed
            acp_backend = sys.modules.get(self.acp_backend_module)
            if acp_backend is not None and getattr(acp_backend, "ACPBackend", None) is not None:
                if self._hook is not None:
                    self._hook.watched.pop(self.acp_backend_module, None)
                self._on_acp_backend_imported(acp_backend)
        if self._marker_dirs is None and self._looks_like_server(engine):
            self._marker_dirs = self._marker_dirs_for(engine)
            self._write_marker(self._marker_dirs)
            _logger().info(
                "%s %s active in stepwise %s server (pid %d); marker %s",
                GUARD_NAME, __version__, self.stepwise_version or "unknown", os.getpid(),
                ", ".join(os.path.join(d, MARKER_FILENAME) for d in self._marker_dirs) or "not written",
            )

    def _looks_like_server(self, engine):
        """A stepwise server imports stepwise.server and writes .stepwise/server.pid first."""
        if f"{self.package}.server" in sys.modules:
            return True
        for directory in self._marker_dirs_for(engine):
            try:
                import json

                with open(os.path.join(directory, "server.pid"), encoding="utf-8") as fh:
                    if int(json.load(fh).get("pid")) == os.getpid():
                        return True
            except Exception:
                continue
        return False

    def _marker_dirs_for(self, engine):
        """The project's .stepwise (the engine's project_dir) and the cwd-relative one."""
        candidates = []
        project_dir = getattr(engine, "project_dir", None) if engine is not None else None
        if project_dir:
            candidates.append(os.fspath(project_dir))
        env_project = os.environ.get("STEPWISE_PROJECT_DIR")
        if env_project:
            candidates.append(os.path.join(env_project, ".stepwise"))
        candidates.append(os.path.join(os.getcwd(), ".stepwise"))
        dirs, seen = [], set()
        for directory in candidates:
            try:
                real = os.path.realpath(directory)
            except Exception:
                continue
            if real in seen or not os.path.isdir(real):
                continue
            seen.add(real)
            dirs.append(real)
        return dirs

    def marker_payload(self):
        with_lock = self._lock is not None
        if with_lock:
            self._lock.acquire()
        try:
            stats = dict(self.stats)
        finally:
            if with_lock:
                self._lock.release()
        if self._marker_started_at is None:
            self._marker_started_at = self.activated_at or _now_iso()
        return {
            "guard": GUARD_NAME,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self._marker_started_at,
            "updated_at": _now_iso(),
            "stepwise_version": self.stepwise_version,
            "active": self.state == "active",
            "reason": None if self.state == "active" else (self.reason or self.state),
            "sessionClosing": self.session_closing_active,
            "sessionClosingReason": self.session_closing_reason,
            "hook_points": list(self.hook_points),
            "stats": stats,
        }

    @property
    def session_closing_active(self):
        return self.state == "active" and self.session_state == "active"

    @property
    def session_closing_reason(self):
        if self.state != "active":
            return f"the guard is not active ({self.reason or self.state})"
        if self.session_state == "active":
            return None
        return self.session_reason or self.session_state

    def _update_marker(self):
        if self._marker_dirs:
            self._write_marker(self._marker_dirs)

    def _write_marker(self, dirs):
        if not dirs:
            return
        lock = self._marker_lock
        if lock is None:
            self._write_marker_unlocked(dirs)
            return
        with lock:  # releases happen on executor threads too
            self._write_marker_unlocked(dirs)

    def _write_marker_unlocked(self, dirs):
        try:
            payload = self.marker_payload()
        except Exception:
            self._error("building the marker")
            return
        for directory in dirs:
            try:
                write_json_atomic(os.path.join(directory, MARKER_FILENAME), payload)
            except Exception as exc:
                if not self._marker_error_logged:
                    self._marker_error_logged = True
                    try:
                        _logger().warning("%s: cannot write %s: %r", GUARD_NAME,
                                          os.path.join(directory, MARKER_FILENAME), exc)
                    except Exception:
                        pass

    def status(self):
        """A summary for humans and tests."""
        return {
            "state": self.state,
            "reason": self.reason,
            "session_closing": self.session_closing_active,
            "session_closing_reason": self.session_closing_reason,
            "sessions_tracked": len(self._sessions) if self._sessions is not None else 0,
            "stepwise_version": self.stepwise_version,
            "hook_points": list(self.hook_points),
            "stats": dict(self.stats),
        }


def write_json_atomic(path, payload):
    """Write JSON to `path` through a temporary file in the same directory and a rename."""
    import json

    directory = os.path.dirname(os.path.abspath(path))
    data = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    import threading

    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_job_status(db_path, job_id):
    """jobs.status of `job_id` through a separate read-only connection; None if unknown."""
    if not db_path or db_path == ":memory:" or db_path.startswith("file:"):
        return None
    path = os.path.abspath(db_path)
    if not os.path.isfile(path):
        return None
    import sqlite3
    from urllib.parse import quote

    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=2.0)
    try:
        row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        conn.close()
    if row is None or not isinstance(row[0], str):
        return None
    return row[0].strip().lower()


def _read_job_steps(db_path, job_id):
    """The steps of a job's workflow (JSON dicts) through a read-only connection, or None."""
    if not db_path or db_path == ":memory:" or db_path.startswith("file:"):
        return None
    path = os.path.abspath(db_path)
    if not os.path.isfile(path):
        return None
    import json
    import sqlite3
    from urllib.parse import quote

    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=2.0)
    try:
        row = conn.execute("SELECT workflow FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        conn.close()
    if row is None or not isinstance(row[0], str):
        return None
    steps = json.loads(row[0]).get("steps")
    return steps if isinstance(steps, dict) else None


GUARD = ReleaseGuard()


def status():
    """State of the guard installed in this process."""
    return GUARD.status()


if enabled_by_env():
    try:
        GUARD.install()
    except Exception:  # never break interpreter start-up (this runs from a .pth file)
        pass
