"""Ctrl-C and SIGTERM through the real CLI (issue 16): `distmsfa cv` and `distmsfa preprocess`
on their Ray paths, each in a process group of its own, interrupted mid-run.  Checked: the
exit code (130 / 143), the time to exit, the one resume line, no process of the run's Ray
session left, and that the printed command resumes the run to the uninterrupted result
(cv: the same metrics to 1e-5 as a run without interruption; preprocess: the same pairs).
Also: a normal run shows no Ray log lines, `--verbose` shows them."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
COMPARE = ("train_loss", "val_loss", "val_auc", "val_acc", "val_sen", "val_spec", "val_f1", "train_w_fuse")
EPOCHS = 6
#: Issue 16 asks for < 10 s; asserted with room for a loaded 2-core CI machine (the figure
#: measured is printed and kept in benchmarks/results/interrupt_cpu_2core.json).
EXIT_LIMIT_S = 20.0
RAY_LINE = re.compile(r"\b(INFO|WARNING)\b.*\.py:\d+ --|\(raylet\)|\(pid=|Deprecat|FutureWarning|Started a local Ray")
_counter = iter(range(1000))


def _env() -> tuple[dict, str]:
    """Each run its own short Ray temp dir (unix socket paths < 108 chars), so its session's
    processes can be found by their command lines."""
    tmp = f"/tmp/rsi{os.getpid()}-{next(_counter)}"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), RAY_TMPDIR=tmp)
    env.pop("RAY_ADDRESS", None)
    env.pop("DISTMSFA_VERBOSE", None)
    return env, tmp


def _session_procs(mark: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if mark in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _assert_no_session_left(mark: str) -> None:
    deadline = time.monotonic() + 2.0  # processes just killed may still be on their way out
    while _session_procs(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [(p.pid, " ".join(p.cmdline())[:120]) for p in _session_procs(mark) if p.is_running()]
    assert not left, f"processes of the interrupted run's Ray session are still running: {left}"


def _resume_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("interrupted (")]
    assert len(lines) == 1, err[-3000:]
    assert "; resume with: " in lines[0], lines[0]
    return lines[0].split("; resume with: ", 1)[1]


def _interrupt(cmd: list[str], env: dict, mark: str, ready, sig: int, group: bool, log: Path,
               timeout: float = 400) -> dict:
    """Start ``cmd`` in a new session, wait for ``ready()``, send ``sig``; return what happened."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.stderr.read()[-3000:]}"
        ray_procs = _session_procs(mark)
        assert ray_procs, "no process of the run's Ray session was found: the leftover check would be empty"
        t0 = time.monotonic()
        os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        exit_s = time.monotonic() - t0
    print(f"{next(a for a in cmd[3:] if not a.startswith('-'))}: {signal.Signals(sig).name} -> exit {proc.returncode} "
          f"after {exit_s:.2f} s")
    return {"rc": proc.returncode, "exit_s": exit_s, "err": err, "out": log.read_text(encoding="utf-8"), "n_ray_procs": len(ray_procs)}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """A small synthetic cohort, and its dataset built serially (no Ray), 2 folds."""
    from distmsfa.data import PreprocessConfig, build_dataset
    from distmsfa.data.synthetic import generate_cohort

    base = tmp_path_factory.mktemp("intr")
    manifest = generate_cohort(base / "cohort", n=20, seed=0, progress=False)
    cfg = PreprocessConfig(target_spacing_mm=(5.0, 2.5, 2.5), crop_size=(8, 48, 64), n_folds=2, seed=0)
    report = build_dataset(manifest, base / "data", cfg, address="serial", external_sites=("NHH",), progress=False)
    assert not report.failures, report.failures
    (base / "pre.yaml").write_text(yaml.safe_dump({"preprocess": {"target_spacing_mm": [5.0, 2.5, 2.5],
                                                                  "crop_size": [8, 48, 64], "n_folds": 2, "seed": 0}}))
    (base / "cv.yaml").write_text(yaml.safe_dump({"train": {"epochs": EPOCHS, "num_threads": 1}}))
    return {"base": base, "manifest": manifest, "data": base / "data", "pre": base / "pre.yaml", "cv": base / "cv.yaml"}


@pytest.fixture(scope="module")
def reference(cohort):
    """The uninterrupted run of the same seed (plain loop: the Ray path gives its metrics,
    tests/training/test_ray_cv.py)."""
    from distmsfa.training import run_cv

    return run_cv(cohort["data"], "msfanet", cohort["cv"], profile="cpu", out=cohort["base"] / "ref", plain=True,
                  progress=False)


def _cv_cmd(cohort, run: Path, verbose: bool = False) -> list[str]:
    return [sys.executable, "-m", "distmsfa", *(["--verbose"] if verbose else []), "cv", "--data", str(cohort["data"]),
            "--model", "msfanet", "--profile", "cpu", "--config", str(cohort["cv"]), "--out", str(run)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()] if path.exists() else []


@pytest.mark.parametrize("sig,code,group,verbose", [(signal.SIGINT, 130, True, False),  # Ctrl-C: the whole group
                                                     (signal.SIGTERM, 143, False, True)])  # a scheduler: the process
def test_cv_interrupted_stops_cleanly_and_the_printed_command_resumes_it(cohort, reference, tmp_path, sig, code,
                                                                         group, verbose):
    run = tmp_path / "run"
    env, mark = _env()
    first = lambda: any(_lines(run / "folds" / f"fold{f}" / "metrics.jsonl") for f in (0, 1))  # noqa: E731
    got = _interrupt(_cv_cmd(cohort, run, verbose), env, mark, first, sig, group, tmp_path / "first.log")
    assert got["rc"] == code, got["err"][-3000:]
    assert got["exit_s"] < EXIT_LIMIT_S
    _assert_no_session_left(mark)
    assert not (run / "summary.json").exists()  # it really stopped mid-run
    assert "*** SIG" not in got["err"] and "*** Aborted" not in got["err"], got["err"][-3000:]  # no C++ stack dump
    if not verbose:  # (--verbose forwards Ray's workers' own output, tracebacks of its retries included)
        assert "Traceback" not in got["err"], got["err"][-3000:]
    resume = _resume_line(got["err"])
    assert f"--out {run}" in resume and resume.endswith("--resume")
    if verbose:  # --verbose shows Ray's own lines, and the resume command keeps it
        assert RAY_LINE.search(got["err"] + got["out"]), got["err"][-2000:]
        assert " --verbose cv " in resume
    before = {f: len(_lines(run / "folds" / f"fold{f}" / "metrics.jsonl")) for f in (0, 1)}

    env2, mark2 = _env()
    done = subprocess.run(shlex.split(resume), env=env2, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    _assert_no_session_left(mark2)
    if not verbose:  # a normal run: our progress and table, no Ray log lines
        noise = [x for x in (done.stdout + done.stderr).splitlines() if RAY_LINE.search(x)]
        assert not noise, noise[:5]
    from distmsfa.training.outputs import read_fold

    for f in (0, 1):
        fold_dir = run / "folds" / f"fold{f}"
        result = json.loads((fold_dir / "result.json").read_text(encoding="utf-8"))
        if before[f]:  # it continued from its committed checkpoint, not from epoch 0
            assert result["resumed_epochs"], f"fold {f} had a checkpoint but started again"
            assert sum(1 for e in _lines(fold_dir / "metrics.jsonl") if e["epoch"] == 0) == 1
        hist, ref = read_fold(str(fold_dir))["history"], reference.histories[f]
        assert list(hist["epoch"]) == list(range(EPOCHS))
        for k in COMPARE:
            np.testing.assert_allclose(hist[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=f"fold {f} {k}")
    oof = pd.read_csv(run / "oof_predictions.csv").sort_values("case_id").reset_index(drop=True)
    ref_oof = reference.oof.sort_values("case_id").reset_index(drop=True)
    assert list(oof["case_id"]) == list(ref_oof["case_id"])
    np.testing.assert_allclose(oof["prob"], ref_oof["prob"], rtol=1e-5, atol=1e-6)


def test_preprocess_interrupted_keeps_finished_cases_and_the_same_command_completes_it(cohort, tmp_path):
    out = tmp_path / "data"
    env, mark = _env()
    cmd = [sys.executable, "-m", "distmsfa", "preprocess", str(cohort["manifest"]), "--out", str(out),
           "--config", str(cohort["pre"]), "--external-site", "NHH", "--workers", "1", "--no-progress"]
    started = lambda: len(list((out / "pairs").glob("*.npy"))) >= 3  # noqa: E731
    got = _interrupt(cmd, env, mark, started, signal.SIGINT, True, tmp_path / "first.log")
    assert got["rc"] == 130, got["err"][-3000:]
    assert got["exit_s"] < EXIT_LIMIT_S
    _assert_no_session_left(mark)
    assert "Traceback" not in got["err"], got["err"][-3000:]
    resume = _resume_line(got["err"])
    assert shlex.split(resume)[3:] == cmd[3:]  # the same command continues it
    kept = pd.read_parquet(out / "index.parquet")  # what finished before the signal is in the index
    assert 1 <= len(kept) < 20

    env2, mark2 = _env()
    done = subprocess.run(shlex.split(resume), env=env2, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    _assert_no_session_left(mark2)
    m = re.search(r"(\d+) preprocessed, (\d+) unchanged", done.stdout)
    assert m and int(m.group(2)) == len(kept) and int(m.group(1)) == 20 - len(kept), done.stdout
    noise = [x for x in (done.stdout + done.stderr).splitlines() if RAY_LINE.search(x)]
    assert not noise, noise[:5]
    # the interrupted-then-resumed dataset is the uninterrupted serial one
    a = pd.read_parquet(out / "index.parquet").sort_values("case_id").reset_index(drop=True)
    b = pd.read_parquet(cohort["data"] / "index.parquet").sort_values("case_id").reset_index(drop=True)
    assert list(a["case_id"]) == list(b["case_id"])
    assert list(a["pair_sha256"]) == list(b["pair_sha256"])
    assert list(a["fold"].astype("Int64")) == list(b["fold"].astype("Int64"))
