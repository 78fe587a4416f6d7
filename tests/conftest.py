"""Shared fixtures: real local Ray clusters (started with `ray start`, bound to 127.0.0.1),
the real-data folder, small synthetic data."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Ray 2.5x+ token auth on local clusters: `ray start` turns it on when ~/.ray/auth_token exists,
# but a driver given an explicit address only sends the token when RAY_AUTH_MODE=token. Make
# the mode explicit before Ray is imported (RayConfig caches it) and make sure a token exists,
# so clusters, drivers and job clients agree on any machine, fresh or not.
os.environ.setdefault("RAY_AUTH_MODE", "token")


def real_data_dir() -> Path:
    return Path(os.environ.get("DISTMSFA_REAL_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    d = real_data_dir()
    if not d.is_dir():
        pytest.skip(f"real MRI fixtures not found at {d} (set DISTMSFA_REAL_DATA)")
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Fixed-default ports of a node's agents, made unique: two clusters on one machine (the
    session cluster and a multi-node one) would otherwise share 52365 and the second head's
    job agent never serves ("No available agent to submit job")."""
    return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]


def _loopback_only() -> bool:
    """True inside a network namespace whose only interface is loopback (tests/isolated.sh)."""
    try:
        return {name for _, name in socket.if_nameindex()} <= {"lo"}
    except OSError:
        return False


def _ray_bin() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


class LocalCluster:
    """A real Ray cluster of one or more nodes on 127.0.0.1, started with `ray start`."""

    def __init__(self, tmp: Path, num_cpus: int = 4, extra_nodes: int = 0, head_cpus: int | None = None) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_port = _free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.tmp = tmp
        # Short temp dir: Ray's unix socket paths must stay under 108 characters.
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        self.env.pop("RAY_ADDRESS", None)
        # Inside the loopback-only network namespace of tests/isolated.sh Ray picks 127.0.0.1
        # by itself; outside it a single node is pinned to loopback by this variable.
        if not _loopback_only():
            self.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            if extra_nodes:
                pytest.skip("multi-node tests need the loopback-only namespace: run via tests/isolated.sh")
        if self.env.get("RAY_AUTH_MODE") == "token":
            self._run([_ray_bin(), "get-auth-token", "--generate"])
        common = [f"--num-cpus={num_cpus}", "--disable-usage-stats"]
        head = [f"--num-cpus={head_cpus if head_cpus is not None else num_cpus}", "--disable-usage-stats"]
        try:
            self._run(
                [_ray_bin(), "start", "--head", f"--port={self.port}", "--include-dashboard=true",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                 f"--ray-client-server-port={_free_port()}", f"--temp-dir={tmp}", *head, *_node_ports()]
            )
            for _ in range(extra_nodes):
                self._run([_ray_bin(), "start", f"--address={self.address}", *common, *_node_ports()])
            self._wait_for_nodes(1 + extra_nodes)
        except BaseException:
            # a start that fails half-way (seen on a loaded machine) leaves GCS, dashboard and
            # client server running with no fixture to stop them
            self.stop()
            raise

    def _wait_for_nodes(self, n: int, timeout: float = 90.0) -> None:
        """`ray start` returns before a worker node has registered: wait until n are active."""
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run([_ray_bin(), "status", f"--address={self.address}"], env=self.env,
                                 capture_output=True, encoding="utf-8", errors="replace", timeout=60).stdout
            active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
            if active.count("node_") >= n:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {active.count('node_')} of {n} Ray nodes came up:\n{out}")
            time.sleep(1.0)

    def _run(self, cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, env=self.env, capture_output=True, timeout=180)

    def stop(self) -> None:
        """Stop this cluster only (``ray stop`` would kill every Ray on the machine)."""
        import psutil

        marks = (str(self.tmp), f"127.0.0.1:{self.port}")
        roots = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid != os.getpid() and any(m in cmd for m in marks):
                roots.append(proc)
        procs = {p.pid: p for p in roots}
        for p in roots:
            try:
                procs.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.Error:
                pass
        procs.pop(os.getpid(), None)
        for p in procs.values():
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(list(procs.values()), timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One real single-node local cluster for the whole session; yields its address.

    Connect with ``ray.init(address=cluster.address)`` and ``ray.shutdown()`` afterwards."""
    tmp = Path(f"/tmp/rt{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    cluster = LocalCluster(tmp, num_cpus=4)
    time.sleep(1)
    yield cluster
    cluster.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture()
def ray_conn(ray_cluster):
    """This process connected as a driver to the session's real cluster; disconnected after."""
    import ray

    ray.init(address=ray_cluster.address, log_to_driver=False)
    yield ray_cluster
    ray.shutdown()


@pytest.fixture()
def two_node_cluster():
    """A real two-node cluster on loopback: a 1-CPU head and a 2-CPU worker node (so that
    two 1-CPU fold workers cannot both fit on the head); function-scoped.

    Only works inside tests/isolated.sh (a loopback-only namespace); skips elsewhere."""
    tmp = Path(f"/tmp/rt2n{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    cluster = LocalCluster(tmp, num_cpus=2, extra_nodes=1, head_cpus=1)
    yield cluster
    cluster.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture()
def two_equal_nodes():
    """A real two-node cluster on loopback with 2 CPUs on each node (a study's trial actor and
    one fold fit on one node, the second fold only on the other); function-scoped."""
    tmp = Path(f"/tmp/rt2e{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    cluster = LocalCluster(tmp, num_cpus=2, extra_nodes=1)
    yield cluster
    cluster.stop()
    shutil.rmtree(tmp, ignore_errors=True)
