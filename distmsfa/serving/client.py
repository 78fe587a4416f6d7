"""``distmsfa score``: score every case of a manifest over HTTP (plain Python + httpx).

Reads the manifest format of ``distmsfa preprocess`` (:mod:`distmsfa.io.manifest`), uploads
each case to ``POST /v1/predict`` with ``concurrency`` requests in flight, retries with
exponential backoff (honouring ``Retry-After``) on 429/503/504 and dropped connections, and
writes into ``out``:

- ``answers/<case_id>.json``: each answer as received (resume: a case with one is skipped);
- ``predictions.csv``: case_id, label (when known), probability, predicted label, threshold,
  roi_source (given | predicted), per-fold probabilities, model checksum;
- ``failed.csv``: case_id, HTTP status (0: never answered; "manifest": bad row), code, message;
- with labels: ``metrics.json`` (AUC, ACC, SEN, SPEC, F1 with 95% CIs at the bundle's
  threshold, as offline evaluation computes them) and ``roc.png``.

DICOM folders are zipped (one series: the manifest's ``*_series`` selector picks it); a
``roi_bbox_mm`` is sent as its centre (the service takes a label map or a centre).  A case
with an empty ROI cell (or a manifest without ROI column) is sent without ROI: a bundle with a
localiser predicts it (``roi_source`` "predicted" in ``predictions.csv``), one without refuses
the case (422 ``roi_required`` in ``failed.csv``).
"""
from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import random
import zipfile
from pathlib import Path
from typing import Callable

from distmsfa.io import uris
from distmsfa.io.manifest import CaseSpec, load_manifest
from distmsfa.serving.uploads import encode_multipart

RETRY_STATUS = (429, 503, 504)
ANSWERS = "answers"


@dataclasses.dataclass
class ScoreReport:
    out: str
    n_cases: int = 0
    n_scored: int = 0
    n_skipped: int = 0
    failures: list[dict] = dataclasses.field(default_factory=list)
    metrics: dict | None = None
    retries: int = 0

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    def summary(self) -> str:
        return (f"{self.n_scored} scored, {self.n_skipped} already scored (skipped), {self.n_failed} failed "
                f"of {self.n_cases} cases ({self.retries} retries); predictions: {Path(self.out) / 'predictions.csv'}")


def _series_zip(folder: str, selector: str | None, what: str) -> bytes:
    from distmsfa.io import dicom

    info = dicom.select_series(folder, selector, what)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, f in enumerate(info.files):
            zf.write(f, f"series/{i:05d}.dcm")  # file names may identify a patient: not sent
    return buf.getvalue()


def _file_part(path: str, selector: str | None, what: str) -> tuple[str, bytes]:
    with uris.local_copy(path) as local:
        if os.path.isdir(local):
            return f"{what}.zip", _series_zip(local, selector, what)
        low = local.lower()
        suffix = ".nii.gz" if low.endswith(".nii.gz") else os.path.splitext(low)[1]
        with open(local, "rb") as fh:
            return f"{what}{suffix}", fh.read()


def case_parts(case: CaseSpec) -> dict:
    """The multipart fields of one manifest case."""
    parts: dict = {"case_id": case.case_id,
                   "t1": _file_part(case.t1, case.t1_series, "t1"),
                   "fs": _file_part(case.fs, case.fs_series, "fs")}
    if case.roi:
        parts["roi"] = _file_part(case.roi, None, "roi")
    elif case.roi_center_mm is not None:
        parts["roi_center_mm"] = ",".join(repr(float(v)) for v in case.roi_center_mm)
    elif case.roi_bbox_mm is not None:
        b = case.roi_bbox_mm
        parts["roi_center_mm"] = ",".join(repr((b[k] + b[k + 3]) / 2.0) for k in range(3))
    return parts


def _message(resp) -> tuple[str, str]:
    try:
        err = resp.json().get("error") or {}
        return str(err.get("code", "")), str(err.get("message", resp.text[:200]))
    except ValueError:
        return "", resp.text[:200].replace("\n", " ")


async def _post_case(client, endpoint: str, case: CaseSpec, headers: dict, *, retries: int, backoff_s: float,
                     gradcam: bool, stats: dict) -> tuple[int, dict]:
    """(status, answer-or-error) for one case, after retries."""
    import httpx

    try:
        body, ctype = await asyncio.to_thread(lambda: encode_multipart(case_parts(case)))
    except Exception as exc:  # noqa: BLE001 - a local read problem is this case's failure
        return 0, {"code": "client_read", "message": str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}
    url = endpoint.rstrip("/") + "/v1/predict" + ("?gradcam=true" if gradcam else "")
    last: tuple[int, dict] = (0, {"code": "unreachable", "message": "no answer"})
    for attempt in range(retries + 1):
        delay = min(30.0, backoff_s * (2 ** attempt)) * (0.5 + random.random())
        try:
            resp = await client.post(url, content=body, headers={**headers, "content-type": ctype})
        except httpx.TransportError as exc:  # refused, reset, dropped: retry
            last = (0, {"code": "connection", "message": f"{type(exc).__name__}: {str(exc)[:200]}"})
        else:
            if resp.status_code == 200:
                return 200, resp.json()
            code, msg = _message(resp)
            last = (resp.status_code, {"code": code, "message": msg})
            if resp.status_code not in RETRY_STATUS:
                return last
            ra = resp.headers.get("retry-after")
            if ra:
                try:
                    delay = max(delay, min(60.0, float(ra)))
                except ValueError:
                    pass
        if attempt < retries:
            stats["retries"] += 1
            await asyncio.sleep(delay)
    return last


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


async def _score_all(endpoint: str, todo: list[CaseSpec], out: Path, *, api_key: str | None, concurrency: int,
                     retries: int, backoff_s: float, timeout_s: float, gradcam: bool,
                     on_done: Callable[[], None]) -> tuple[list[dict], int]:
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    sem = asyncio.Semaphore(concurrency)
    failures: list[dict] = []
    stats = {"retries": 0}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        async def one(case: CaseSpec) -> None:
            async with sem:
                status, data = await _post_case(client, endpoint, case, headers, retries=retries,
                                                backoff_s=backoff_s, gradcam=gradcam, stats=stats)
            if status == 200:
                _write_json(out / ANSWERS / f"{case.case_id}.json", data)
            else:
                failures.append({"case_id": case.case_id, "status": status, **data})
            on_done()

        await asyncio.gather(*(one(c) for c in todo))
    return failures, stats["retries"]


def write_outputs(out: Path, cases: list[CaseSpec]) -> tuple[list[dict], dict | None]:
    """predictions.csv from the answers on disk; metrics.json + roc.png where labels allow."""
    import pandas as pd

    rows = []
    for c in cases:
        p = out / ANSWERS / f"{c.case_id}.json"
        if not p.exists():
            continue
        a = json.loads(p.read_text(encoding="utf-8"))
        row = {"case_id": c.case_id, "label": c.label, "probability": a["probability"], "predicted": a["label"],
               "threshold": a["threshold"], "roi_source": a.get("roi_source", "given"),
               "model_checksum": a["model"]["checksum"]}
        for f in a.get("folds", []):
            row[f"fold{f['fold']}_probability"] = f["probability"]
        row["warnings"] = " | ".join(a.get("warnings", []))
        rows.append(row)
    pd.DataFrame(rows).to_csv(out / "predictions.csv", index=False)
    labelled = [r for r in rows if r["label"] is not None]
    metrics = None
    if labelled and len({r["label"] for r in labelled}) == 2:
        metrics = labelled_metrics(out, labelled)
    return rows, metrics


def labelled_metrics(out: Path, rows: list[dict]) -> dict:
    """The offline evaluation's metrics with CIs, at the bundle's threshold, and a ROC curve."""
    import numpy as np

    from distmsfa.evaluation.stats import metrics_with_ci

    y = np.asarray([int(r["label"]) for r in rows])
    p = np.asarray([float(r["probability"]) for r in rows])
    thr = float(rows[0]["threshold"])
    m = metrics_with_ci(y, p, thr)
    checksums = sorted({r["model_checksum"] for r in rows})
    result = {"metrics": m, "n": int(y.size), "n_positive": int(y.sum()), "threshold": thr,
              "how": "manifest cases scored over HTTP by the bundle's fold ensemble; threshold fixed by the bundle "
                     "(chosen on the CV run's out-of-fold predictions); AUC CI by DeLong, others stratified bootstrap",
              "model_checksums": checksums}
    _write_json(out / "metrics.json", result)
    _roc_png(out / "roc.png", y, p, m)
    return result


def _roc_png(path: Path, y, p, m: dict) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    auc = m.get("auc", {})
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc.get('value', float('nan')):.3f} "
                                  f"(95% CI {auc.get('lo', float('nan')):.3f}-{auc.get('hi', float('nan')):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC, {len(y)} cases scored over HTTP")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def score_manifest(endpoint: str, manifest: str | os.PathLike[str], out: str | os.PathLike[str], *,
                   api_key: str | None = None, concurrency: int = 8, retries: int = 6, backoff_s: float = 0.5,
                   timeout_s: float = 300.0, gradcam: bool = False, progress: bool = True) -> ScoreReport:
    """Score a manifest's cases against a running service; see the module doc for the outputs."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    m = load_manifest(manifest, allow_missing_roi=True)  # no ROI: the service's localiser predicts it
    out = Path(out)
    (out / ANSWERS).mkdir(parents=True, exist_ok=True)
    cases = list(m.cases)
    report = ScoreReport(str(out), n_cases=len(cases) + len({p.row for p in m.problems}))
    for p in m.problems:
        report.failures.append({"case_id": p.case_id, "status": "manifest", "code": "manifest_row", "message": str(p)})
    todo = [c for c in cases if not (out / ANSWERS / f"{c.case_id}.json").exists()]
    report.n_skipped = len(cases) - len(todo)

    bar = None
    if progress and todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        bar.start()
        task = bar.add_task("score", total=len(todo))
    try:
        failures, retries = asyncio.run(_score_all(
            endpoint, todo, out, api_key=api_key, concurrency=concurrency, retries=retries, backoff_s=backoff_s,
            timeout_s=timeout_s, gradcam=gradcam, on_done=(lambda: bar.advance(task)) if bar else (lambda: None)))
    finally:
        if bar:
            bar.stop()
    report.failures.extend(failures)
    report.retries = retries
    report.n_scored = len(todo) - len(failures)
    import pandas as pd

    pd.DataFrame(report.failures, columns=["case_id", "status", "code", "message"]).to_csv(out / "failed.csv", index=False)
    _, report.metrics = write_outputs(out, cases)
    return report
