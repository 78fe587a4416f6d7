"""distmsfa.runtime without Ray: the interrupt guard in a real subprocess (signals, exit
codes, the one line, second signal, deadline), the session sweep, the resume command."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from distmsfa.cli._run import resume_command
from distmsfa.runtime import Interrupted, kill_session_processes, session_processes

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

# A long command: work in the body, a clean-up of CLEANUP_S seconds in its `finally`.
SCRIPT = textwrap.dedent("""
    import sys, time
    from distmsfa.cli._run import interruptible
    cleanup_s, deadline = float(sys.argv[1]), float(sys.argv[2])
    import distmsfa.runtime as rt
    rt.DEFAULT_DEADLINE_S = deadline
    with interruptible("the test job", "resume-me --resume"):
        try:
            print("started", flush=True)
            time.sleep(60)
            print("finished", flush=True)
        finally:
            time.sleep(cleanup_s)
            print("cleaned up", flush=True)
    print("after the block", flush=True)
""")


def _start(cleanup_s: float, deadline_s: float = 8.0) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", SCRIPT, str(cleanup_s), str(deadline_s)], env=ENV, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert p.stdout.readline().strip() == "started"
    return p


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_runs_the_cleanup_prints_one_line_and_exits_128_plus_signal(sig, code):
    p = _start(cleanup_s=0.2)
    t0 = time.monotonic()
    os.killpg(p.pid, sig)  # the whole group, as a terminal's Ctrl-C
    out, err = p.communicate(timeout=30)
    assert p.returncode == code
    assert time.monotonic() - t0 < 5
    assert out.splitlines() == ["cleaned up"]  # the finally ran; nothing after the block
    lines = [x for x in err.splitlines() if x.strip()]
    name = signal.Signals(sig).name
    assert lines == [f"interrupted ({name}): the test job stopped; resume with: resume-me --resume"]


def test_second_signal_exits_at_once_while_the_cleanup_still_runs():
    p = _start(cleanup_s=30)
    os.kill(p.pid, signal.SIGINT)
    time.sleep(1.0)
    assert p.poll() is None  # stuck in its 30 s clean-up
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert time.monotonic() - t0 < 3
    assert p.returncode == 130
    assert "cleaned up" not in out
    assert err.count("interrupted (SIGINT): the test job stopped") == 1


def test_a_cleanup_that_overruns_the_deadline_is_cut_short():
    p = _start(cleanup_s=30, deadline_s=2.0)
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 143
    assert 1.5 < time.monotonic() - t0 < 10
    assert "cleaned up" not in out and "interrupted (SIGTERM)" in err


def test_interrupted_is_a_keyboard_interrupt_with_the_shell_exit_code():
    e = Interrupted(signal.SIGTERM)
    assert isinstance(e, KeyboardInterrupt) and not isinstance(e, Exception)
    assert e.exit_code == 143 and Interrupted(signal.SIGINT).exit_code == 130


def test_session_sweep_kills_a_process_that_ignores_sigterm(tmp_path):
    session = f"/tmp/distmsfa-test-session-{os.getpid()}"
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"
    p = subprocess.Popen([sys.executable, "-c", code, f"--session-dir={session}"], stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--session-dir=/tmp/another"])
    try:
        assert p.stdout.readline().strip() == "up"
        assert [q.pid for q in session_processes(session)] == [p.pid]
        t0 = time.monotonic()
        assert kill_session_processes(session, grace_s=0.5) == 1
        assert time.monotonic() - t0 < 5
        # it ignores SIGTERM: only the SIGKILL that follows ends it (psutil reaps our child)
        assert not psutil.pid_exists(p.pid) or psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE
        assert psutil.pid_exists(other.pid) and other.poll() is None  # another session is untouched
    finally:
        for q in (p, other):
            q.kill()
            q.wait()


def test_resume_command_sets_the_run_folder_and_adds_the_flag_once():
    argv = ["--verbose", "cv", "--data", "d", "--out=old dir", "--model", "m"]
    cmd = resume_command(add=["--resume"], set_options={"--out": "/runs/x y"}, argv=argv)
    assert cmd.endswith("-m distmsfa --verbose cv --data d --model m --out '/runs/x y' --resume")
    again = resume_command(add=["--resume"], argv=["cv", "--resume", "--out", "r"])
    assert again.endswith("distmsfa cv --resume --out r")
    short = resume_command(set_options={"--out": "new"}, aliases={"--out": ["-o"]}, argv=["preprocess", "m.csv", "-o", "old"])
    assert short.endswith("distmsfa preprocess m.csv --out new")
