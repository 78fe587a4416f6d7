"""How a long command runs: its Ray session, its terminal, and its interruption.

Two pieces, used together by every long command (``demo``, ``demo-data``, ``preprocess``,
``cv``; the recipe for the others is in docs/operations.md):

* :func:`ray_session` starts a local Ray (or joins ``address``, or reuses the Ray this
  process is already connected to) with Ray's own output kept off the terminal unless
  verbose, and on the way out shuts down a Ray it started *with every process it started*:
  Ray's ``shutdown`` stops raylet and GCS, but the agents the raylet starts (DashboardAgent,
  RuntimeEnvAgent) and workers can outlive it, so every process whose command line names
  the session's folder is terminated, then killed.  A cluster it only joined is left
  running; the command's own actors end with its driver (Ray kills a job's non-detached
  actors when the driver disconnects).
* :class:`InterruptGuard` turns the first SIGINT/SIGTERM into :class:`Interrupted` (a
  ``KeyboardInterrupt``) raised in the main thread, so every ``finally`` on the way out
  runs: fold trainers are aborted (``ray_train.run_folds``), Ray Data iterators closed, the
  Ray session shut down.  It prints one line (what was interrupted, the command that
  resumes it) and the command exits 128 + signal (130, 143).  A second signal, or a
  clean-up that overruns ``deadline_s``, ends the process at once (after killing the local
  Ray session's processes), so a stop never takes more than ``deadline_s`` seconds.

The core imports no Ray at module level; Ray is imported when a session starts.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

VERBOSE_ENV = "DISTMSFA_VERBOSE"
#: Seconds from the first signal to a forced exit (issue 16: stop within 10 s).
DEFAULT_DEADLINE_S = 8.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- verbosity
def set_verbose(flag: bool) -> None:
    """Show Ray's own output (``distmsfa --verbose``); inherited by subprocesses."""
    if flag:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


#: Environment for Ray processes started by a quiet session (set only where the user has
#: not set them): no Ray Data progress bars (our rich bars show progress), no usage-stats
#: notice.  (Not RAY_BACKEND_LOG_LEVEL: setting it makes the driver's C++ logger print a
#: line saying so.)
_QUIET_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray Train V1/V2 and Ray Data deprecation notices are Python warnings in workers
    # (invisible: log_to_driver=False) and in the driver (filtered in quiet_ray_logging).
    "RAY_TRAIN_V2_ENABLED": "1",
}


def quiet_ray_environment(verbose: bool | None = None) -> None:
    """Before Ray starts: keep Ray's notices and progress bars off the terminal."""
    if is_verbose() if verbose is None else verbose:
        return
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)


def quiet_ray_logging(verbose: bool | None = None) -> None:
    """After ``ray.init``: Ray's Python loggers at ERROR, Ray Data's progress bars off,
    Ray's deprecation warnings filtered, and the raylet's pushed notices (e.g. "N PYTHON
    worker processes have been started") dropped; all of it stays in the session's logs."""
    if is_verbose() if verbose is None else verbose:
        return
    import warnings

    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray(\.|$)")
    _quiet_ray_data_console()
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except Exception:  # noqa: BLE001 - Ray Data absent or changed: nothing to quiet
        pass
    try:
        import ray._private.worker as rw

        if not getattr(rw.print_to_stdstream, "_distmsfa_quiet", False):
            original = rw.print_to_stdstream

            def _print(data: dict, ignore_prefix: bool) -> None:
                # The error listener prints raylet/GCS notices pushed to the driver with
                # this function; worker logs do not come here (log_to_driver=False).
                if is_verbose():
                    original(data, ignore_prefix)

            _print._distmsfa_quiet = True  # type: ignore[attr-defined]
            rw.print_to_stdstream = _print
    except Exception:  # noqa: BLE001 - private API moved: the notices stay visible
        pass


def _quiet_ray_data_console() -> None:
    """Ray Data configures its ``ray.data`` logger itself (level DEBUG, a console handler at
    INFO, a file handler) at import and again per dataset, so a logger level set here does
    not last.  Its documented hook is ``RAY_DATA_LOGGING_CONFIG`` (a YAML file): the same
    configuration with the console handler at ERROR; the file log keeps everything."""
    if "RAY_DATA_LOGGING_CONFIG" in os.environ:  # the user's own configuration wins
        return
    try:
        import copy
        import json
        import tempfile

        from ray.data._internal import logging as rdl

        cfg = copy.deepcopy(rdl.DEFAULT_CONFIG)
        cfg["handlers"]["console"]["level"] = "ERROR"
        path = os.path.join(tempfile.gettempdir(), f"distmsfa-ray-data-logging-{os.getuid()}.yaml")
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(cfg, fh)  # JSON is YAML
        os.replace(tmp, path)
        os.environ["RAY_DATA_LOGGING_CONFIG"] = path
        rdl.configure_logging()
    except Exception as exc:  # noqa: BLE001 - Ray Data absent or changed: its notices stay visible
        log.debug("Ray Data logging: %s", exc)


# ----------------------------------------------------------------------------- Ray sessions
@dataclass
class RaySession:
    """What :func:`ray_session` gives the command: whether it started the Ray it runs on
    (then it owns the processes under ``session_dir``), the address, and the session folder."""

    started: bool
    address: Optional[str]
    session_dir: Optional[str]


#: Session folders of the local Rays this process started and has not yet shut down;
#: a forced exit kills their processes.
_OWNED_SESSIONS: list[str] = []


def _session_dir() -> Optional[str]:
    try:
        import ray._private.worker as rw

        node = rw._global_node
        return node.get_session_dir_path() if node is not None else None
    except Exception:  # noqa: BLE001
        return None


def _started_here(address: Optional[str]) -> bool:
    """True when this process's ``ray.init`` started the head node (a connect-only node,
    i.e. a joined cluster, is never ours to stop)."""
    if address:
        return False
    try:
        import ray._private.worker as rw

        node = rw._global_node
        return bool(node is not None and node.is_head())
    except Exception:  # noqa: BLE001
        return False


@contextmanager
def ray_session(address: Optional[str] = None, *, num_cpus: Optional[int] = None, verbose: Optional[bool] = None,
                **init_kwargs: Any) -> Iterator[RaySession]:
    """Run the body on Ray: join ``address``, or the Ray this process is connected to, or
    start a local Ray with ``num_cpus`` logical CPUs.  Ray's output is kept off the terminal
    unless ``verbose`` (default: ``distmsfa --verbose``).  On exit a local Ray it started is
    shut down with every process of its session; a joined cluster keeps running.

    Re-entrant: inside another ``ray_session`` (or any ``ray.init``) it only yields."""
    verbose = is_verbose() if verbose is None else verbose
    quiet_ray_environment(verbose)
    import ray

    if ray.is_initialized():
        quiet_ray_logging(verbose)
        yield RaySession(False, address, _session_dir())
        return
    kwargs: dict[str, Any] = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)
    kwargs.update(init_kwargs)
    try:
        with _keep_our_sigterm_handler():
            if address:
                ray.init(address=address, **kwargs)
            else:
                try:
                    ray.init(num_cpus=num_cpus, **kwargs)
                except ValueError:  # a local cluster started with `ray start` is running: join it as it is
                    ray.init(**kwargs)
    except BaseException:  # interrupted or failed while starting: end what had started
        shutdown_session(RaySession(_started_here(address), address, _session_dir()))
        raise
    session = RaySession(_started_here(address), address, _session_dir())
    started = session.started
    if started and session.session_dir:
        _OWNED_SESSIONS.append(session.session_dir)
    quiet_ray_logging(verbose)
    # ray.init installs its own SIGTERM handler (sys.exit in the main thread, which tears
    # Ray down under running threads: the C++ stack dump of issue 16); put ours back.
    InterruptGuard.reinstall_active()
    try:
        yield session
    finally:
        shutdown_session(session)


@contextmanager
def _keep_our_sigterm_handler() -> Iterator[None]:
    """While a guard is active, stop ``ray.init`` from replacing the SIGTERM handler (it
    installs one that calls ``sys.exit`` at the start of ``init``, before it returns and
    :meth:`InterruptGuard.reinstall_active` could undo it): a SIGTERM during a slow start-up
    must still give the one line and 143."""
    try:
        import ray._private.utils as ru
    except ImportError:  # pragma: no cover
        yield
        return
    saved = ru.set_sigterm_handler
    if InterruptGuard._active is not None:
        ru.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ru.set_sigterm_handler = saved


def shutdown_session(session: RaySession, grace_s: float = 3.0) -> None:
    """Disconnect; for a Ray this process started, also end every process of its session."""
    import ray

    try:
        ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - still sweep the session's processes below
        log.debug("ray.shutdown: %s", exc)
    if session.started and session.session_dir:
        kill_session_processes(session.session_dir, grace_s=grace_s)
        if session.session_dir in _OWNED_SESSIONS:
            _OWNED_SESSIONS.remove(session.session_dir)


def session_processes(session_dir: str) -> list:
    """Live processes (not this one) whose command line names ``session_dir``, with their
    children: raylet, GCS, dashboard and its agents, runtime-env agent, workers."""
    import psutil

    me = os.getpid()
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if proc.pid != me and session_dir in cmd:
            found[proc.pid] = proc
            try:
                found.update({c.pid: c for c in proc.children(recursive=True) if c.pid != me})
            except psutil.Error:
                pass
    return list(found.values())


def kill_session_processes(session_dir: str, grace_s: float = 3.0) -> int:
    """SIGTERM the session's processes, SIGKILL those still alive after ``grace_s``;
    returns how many there were."""
    import psutil

    procs = session_processes(session_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s) if grace_s > 0 else ([], procs)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    if alive:
        psutil.wait_procs(alive, timeout=2.0)
    return len(procs)


# ----------------------------------------------------------------------------- interrupts
class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by :class:`InterruptGuard` on SIGINT or SIGTERM.

    A ``KeyboardInterrupt``, so ``except Exception`` blocks do not swallow it and library
    code written for Ctrl-C cleans up the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class InterruptGuard:
    """Installed around a long command's work (main thread only)::

        with InterruptGuard("cross-validation of msfanet", resume="distmsfa cv ... --resume"):
            run_cv(...)

    First SIGINT/SIGTERM: raises :class:`Interrupted` where the main thread is, and starts
    a ``deadline_s`` watchdog.  The command's ``finally`` blocks then cancel its work and
    shut its Ray down; :meth:`message` is the one line to print, ``exit_code`` 130/143.
    Second signal or overrun deadline: print the line, kill the local Ray sessions this
    process started, ``os._exit`` with the same code.  ``on_interrupt`` callbacks run in the
    handler before the exception is raised (e.g. serve: stop accepting requests)."""

    _active: Optional["InterruptGuard"] = None

    def __init__(self, what: str, resume: Optional[str] = None, *, deadline_s: float = DEFAULT_DEADLINE_S,
                 stream: Any = None) -> None:
        self.what = what
        self.resume = resume
        self.deadline_s = deadline_s
        self.stream = stream
        self.signum: Optional[int] = None
        self.t_signal: Optional[float] = None
        self._callbacks: list[Callable[[int], None]] = []
        self._saved: dict[int, Any] = {}
        self._timer: Optional[threading.Timer] = None
        self._printed = False
        self._lock = threading.Lock()

    # -- state
    @property
    def interrupted(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def on_interrupt(self, fn: Callable[[int], None]) -> None:
        """Call ``fn(signum)`` in the handler, before :class:`Interrupted` is raised."""
        self._callbacks.append(fn)

    def message(self) -> str:
        name = signal.Signals(self.signum or signal.SIGINT).name
        line = f"interrupted ({name}): {self.what} stopped"
        return f"{line}; resume with: {self.resume}" if self.resume else f"{line}; nothing to resume"

    def print_message(self) -> None:
        with self._lock:
            if self._printed:
                return
            self._printed = True
        stream = self.stream or sys.stderr
        try:
            stream.write(self.message() + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    # -- installation
    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("InterruptGuard must be entered on the main thread (signal handlers)")
        for s in SIGNALS:
            self._saved[s] = signal.getsignal(s)
        InterruptGuard._active = self
        self._install()
        return self

    def _install(self) -> None:
        for s in SIGNALS:
            signal.signal(s, self._handler)

    @classmethod
    def reinstall_active(cls) -> None:
        """Put the active guard's handlers back (after ``ray.init`` or Tune replaced them)."""
        g = cls._active
        if g is not None and threading.current_thread() is threading.main_thread():
            g._install()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.interrupted:
            # Keep the watchdog and the handlers until the process ends: interpreter exit
            # still joins threads (a fold's fit()) and runs Ray's atexit hook, and a second
            # signal there must still end the process at once.
            return False
        if self._timer is not None:
            self._timer.cancel()
        for s, h in self._saved.items():
            try:
                signal.signal(s, h if h is not None else signal.SIG_DFL)
            except (TypeError, ValueError):
                pass
        if InterruptGuard._active is self:
            InterruptGuard._active = None
        return False

    # -- the handler
    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.force_exit(reason="second signal")
            return
        self.signum = signum
        self.t_signal = time.monotonic()
        self._timer = threading.Timer(self.deadline_s, self.force_exit, kwargs={"reason": "deadline"})
        self._timer.daemon = True
        self._timer.start()
        for fn in self._callbacks:
            try:
                fn(signum)
            except Exception as exc:  # noqa: BLE001 - a failing hook must not block the stop
                log.debug("interrupt hook %r: %s", fn, exc)
        raise Interrupted(signum)

    def exit_now(self) -> None:
        """End the process with :attr:`exit_code` now, without interpreter teardown; for a
        command whose interrupted work has been cleaned up already."""
        self._quiet_and_exit()

    def force_exit(self, reason: str = "") -> None:
        """Print the line, kill the local Ray sessions this process started, exit now."""
        self.print_message()
        for d in list(_OWNED_SESSIONS):
            try:
                kill_session_processes(d, grace_s=0.5)
            except Exception:  # noqa: BLE001
                pass
        self._quiet_and_exit()

    def _quiet_and_exit(self) -> None:
        try:  # nothing from Ray's C++ threads (fatal-signal stack dumps) after our line
            sys.stdout.flush()
            sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        except OSError:
            pass
        os._exit(self.exit_code)
