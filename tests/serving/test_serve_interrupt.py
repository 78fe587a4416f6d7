"""`distmsfa serve` drains on Ctrl-C and SIGTERM (issue 16): the real CLI in a process group of its own,
a real Serve on loopback, predictions in flight when SIGINT arrives.  Checked: every request
in flight gets 200 with its result, a request after the signal gets 503 with a JSON body and
Retry-After, the process exits 130 / 143 within the drain timeout + a margin with the one line, and
no process of its Ray session is left.

The requests are kept in flight by sending their bodies slowly (the ingress reads the body
inside the request, so it counts them from the first byte): deterministic on any machine."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from _bundle import make_bundle
from _files import read_bytes

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DRAIN_TIMEOUT_S = 30.0
N_IN_FLIGHT = 3
UPLOAD_S = 10.0  # each in-flight body takes this long to arrive; the signal comes once all are inside


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_procs(mark: str) -> list:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if mark in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _slow(body: bytes, seconds: float, pieces: int = 16):
    step = max(1, len(body) // pieces)
    for i in range(0, len(body), step):
        yield body[i:i + step]
        time.sleep(seconds / pieces)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("drain-bundle"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_drains_requests_in_flight_on_a_signal(bundle, syn_cases, tmp_path, sig):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    mark = f"/tmp/rsd{os.getpid()}-{int(sig)}"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), RAY_TMPDIR=mark)
    env.pop("RAY_ADDRESS", None)
    env.pop("DISTMSFA_VERBOSE", None)
    cmd = [sys.executable, "-m", "distmsfa", "serve", "--bundle", str(bundle), "--insecure-loopback",
           "--port", str(port), "--drain-timeout", str(DRAIN_TIMEOUT_S)]
    rows = syn_cases["more"][:N_IN_FLIGHT]
    log = tmp_path / "serve.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while True:
                assert proc.poll() is None, f"serve exited early: {proc.stderr.read()[-3000:]}"
                assert time.monotonic() < deadline, "service not ready"
                if "serving " in log.read_text():  # the CLI's own "serving <bundle> at <url>": ready
                    break
                time.sleep(0.5)

            results: dict[str, object] = {}

            def post(row: dict) -> None:
                parts = {"t1": ("t1.nii.gz", read_bytes(row["t1"])), "fs": ("fs.nii.gz", read_bytes(row["fs"])),
                         "roi": ("roi.nii.gz", read_bytes(row["roi"]))}
                req = httpx.Request("POST", url + "/v1/predict", data={"case_id": row["case_id"]}, files=parts)
                body = req.read()
                try:
                    r = httpx.post(url + "/v1/predict", content=_slow(body, UPLOAD_S),
                                   headers={"content-type": req.headers["content-type"]}, timeout=120)
                    results[row["case_id"]] = r
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    results[row["case_id"]] = exc

            threads = [threading.Thread(target=post, args=(r,)) for r in rows]
            for t in threads:
                t.start()
            # Signal once the ingress counts every request (health reports its in-flight count).
            t_wait = time.monotonic() + UPLOAD_S - 2.0
            while httpx.get(url + "/v1/health", timeout=10).json().get("in_flight", 0) < N_IN_FLIGHT:
                assert time.monotonic() < t_wait, "the requests did not reach the ingress in time"
                time.sleep(0.1)
            assert all(t.is_alive() for t in threads)
            # SIGINT as Ctrl-C at a terminal sends it: to the whole process group, Ray's processes
            # included (they must keep answering); SIGTERM as a scheduler or `docker stop` does: to the CLI.
            if sig == signal.SIGINT:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
            t_sig = time.monotonic()

            # A new request after the signal is turned away (while the slow ones still upload).
            late = None
            while time.monotonic() < t_sig + UPLOAD_S - 3.0:
                time.sleep(0.5)
                try:
                    r = httpx.post(url + "/v1/predict", files={"case_id": (None, "late")}, timeout=10)
                except httpx.HTTPError:
                    continue
                if r.status_code == 503:
                    late = r
                    break
                assert r.status_code < 500, r.text  # before the drain began: 4xx, the missing parts
            for t in threads:
                t.join(timeout=120)
            _, err = proc.communicate(timeout=DRAIN_TIMEOUT_S + 30)
            t_exit = time.monotonic() - t_sig
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    for row in rows:
        r = results[row["case_id"]]
        assert isinstance(r, httpx.Response), f"{row['case_id']}: {r!r}; server: {err[-3000:]}"
        assert r.status_code == 200, f"{r.text}; server: {err[-3000:]}"
        ans = r.json()
        assert ans["case_id"] == row["case_id"] and 0.0 <= ans["probability"] <= 1.0
    assert late is not None, "no request was turned away with 503 after the signal"
    assert late.json()["error"]["code"] == "shutting_down" and int(late.headers["retry-after"]) >= 1

    assert proc.returncode == 128 + sig, err[-3000:]
    assert t_exit < DRAIN_TIMEOUT_S + 20, f"took {t_exit:.1f} s to exit"
    lines = [x for x in err.splitlines() if x.startswith("interrupted (")]
    assert lines == [f"interrupted ({sig.name}): serving {bundle.name} on 127.0.0.1:{port} stopped; nothing to resume"], \
        err[-3000:]
    assert "Traceback" not in err and "*** SIG" not in err, err[-3000:]
    deadline = time.monotonic() + 3.0
    while _session_procs(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [(p.pid, " ".join(p.cmdline())[:120]) for p in _session_procs(mark) if p.is_running()]
    assert not left, f"processes of the server's Ray session are still running: {left}"
    print(f"\nserve drained {N_IN_FLIGHT} requests and exited {128 + sig} in {t_exit:.1f} s after {sig.name}")
