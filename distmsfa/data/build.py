"""``build_dataset``: manifest in, dataset (index, folds, pairs, failures) out.

The driver: validate the manifest, resolve the target spacing (fingerprint), hand one
task per case to the serial loop or to Ray Data (``ray_preprocess``), collect results
as they finish (progress bar, periodic index checkpoints), then assign folds and write
``index.parquet``, ``folds.parquet``, ``failed.csv`` and ``fingerprint.json``.
Every write is atomic, so a crash leaves the previous (or a checkpointed) index.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import Iterable, Iterator, Sequence

import pandas as pd

from distmsfa.data import index as dsindex
from distmsfa.data.case import make_task, process_case
from distmsfa.data.fingerprint import dataset_fingerprint, params_fingerprint, params_payload, target_spacing
from distmsfa.data.folds import assign_folds
from distmsfa.data.preprocess import PreprocessConfig
from distmsfa.io.manifest import load_manifest

CHECKPOINT_EVERY_S = 30.0


@dataclasses.dataclass
class BuildReport:
    """What a build did; ``failures`` are ``(case_id, one-line reason)``."""

    root: str
    n_done: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    spacing_dhw: tuple[float, ...] = ()
    fingerprint: str = ""
    seconds: float = 0.0
    executor: str = "serial"

    @property
    def n_ok(self) -> int:
        return self.n_done + self.n_skipped

    @property
    def index_path(self) -> str:
        return _join(self.root, dsindex.INDEX_FILE)

    @property
    def folds_path(self) -> str:
        return _join(self.root, dsindex.FOLDS_FILE)

    @property
    def failed_path(self) -> str:
        return _join(self.root, dsindex.FAILED_FILE)

    def summary(self) -> str:
        return (f"{self.n_done} preprocessed, {self.n_skipped} unchanged (skipped), {self.n_failed} failed "
                f"in {self.seconds:.1f} s ({self.executor}); spacing (D,H,W) mm = "
                f"{tuple(round(v, 3) for v in self.spacing_dhw)}; index: {self.index_path}")


def _join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def _read_json(root: str, rel: str) -> dict | None:
    try:
        return json.loads(dsindex.read_bytes(root, rel))
    except (FileNotFoundError, OSError, ValueError):
        return None


def _read_parquet(root: str, rel: str) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(io.BytesIO(dsindex.read_bytes(root, rel)))
    except (FileNotFoundError, OSError):
        return None


def _index_frame(rows: Iterable[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    if df.empty:
        df = pd.DataFrame({c: pd.Series(dtype=object) for c in dsindex.INDEX_COLUMNS})
    for col in ("label", "fold"):
        df[col] = pd.array([None if v is None or v != v else int(v) for v in df[col]], dtype="Int8")
    df["is_external"] = df["is_external"].astype(bool)
    return df.sort_values("case_id").reset_index(drop=True) if len(df) else df


def _folds_config(root: str, stored: dict | None, cfg: PreprocessConfig, external_sites: Sequence[str],
                  refold: bool) -> tuple[tuple[str, ...], pd.DataFrame | None]:
    """External sites to use and the existing folds to keep (None on first run / refold)."""
    existing = None if refold else _read_parquet(root, dsindex.FOLDS_FILE)
    ext = tuple(sorted(set(external_sites)))
    prev = (stored or {}).get("folds") if existing is not None else None
    if prev:
        if not ext:
            ext = tuple(prev.get("external_sites", ()))
        clash = []
        if tuple(prev.get("external_sites", ())) != ext:
            clash.append(f"external sites {list(prev.get('external_sites', ()))} -> {list(ext)}")
        if int(prev.get("n_folds", cfg.n_folds)) != cfg.n_folds or int(prev.get("seed", cfg.seed)) != cfg.seed:
            clash.append(f"n_folds/seed {prev.get('n_folds')}/{prev.get('seed')} -> {cfg.n_folds}/{cfg.seed}")
        if clash:
            raise ValueError(
                f"{dsindex.FOLDS_FILE} in {root} was written with other fold settings ({'; '.join(clash)}); "
                f"folds are never rewritten silently: pass --refold (refold=True) to rewrite them, "
                f"or use the original settings"
            )
    return ext, existing


def _execute(tasks: list[dict], address: str | None, num_workers: int | None) -> Iterator[dict]:
    if address == "serial":
        for t in tasks:
            yield process_case(t)
        return
    from distmsfa.data.ray_preprocess import run_tasks_ray

    yield from run_tasks_ray(tasks, address=address, num_workers=num_workers)


def build_dataset(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: PreprocessConfig | None = None,
    *,
    address: str | None = None,
    external_sites: Sequence[str] = (),
    num_workers: int | None = None,
    progress: bool = True,
    refold: bool = False,
    refingerprint: bool = False,
    localiser: str | os.PathLike[str] | None = None,
) -> BuildReport:
    """Preprocess every case of ``manifest`` into the dataset at ``out`` (local path or URI).

    ``address``: None = Ray (connect to a running one, or start a local one), ``"auto"`` or
    ``"ray://..."``/``"host:port"`` = that cluster, ``"serial"`` = no Ray, one process.
    Raises ManifestError for a structurally broken manifest; per-case problems (bad rows,
    unreadable images...) are reported in ``BuildReport.failures`` and ``failed.csv``.
    ``localiser``: a trained localiser folder; cases with no ROI get a predicted one
    (index column ``roi_source`` = "given" | "predicted"; docs/localiser.md)."""
    cfg = config or PreprocessConfig()
    t0 = time.perf_counter()
    root = os.fspath(out) if "://" in os.fspath(out) else os.path.abspath(os.fspath(out))
    if "://" not in root:
        os.makedirs(root, exist_ok=True)
    if localiser is not None:
        from distmsfa.localiser.store import load_localiser

        localiser = os.path.abspath(os.fspath(localiser))
        load_localiser(localiser)  # fail fast (LocaliserError) before any case runs
    manifest_obj = load_manifest(manifest, allow_missing_roi=localiser is not None)
    stored = _read_json(root, dsindex.FINGERPRINT_FILE)
    ext, existing_folds = _folds_config(root, stored, cfg, external_sites, refold)

    # The target spacing: explicit > stored (so adding cases does not redo the others) > fingerprint
    fp_data = (stored or {}).get("dataset")
    stored_spacing = (stored or {}).get("params", {}).get("resolved_spacing_dhw")
    if cfg.target_spacing_mm is None and stored_spacing and not refingerprint:
        spacing = tuple(float(v) for v in stored_spacing)
    else:
        if cfg.target_spacing_mm is None or fp_data is None or refingerprint:
            fp_data = dataset_fingerprint(manifest_obj.cases, cfg.orientation)
        spacing = target_spacing(cfg, fp_data)
    fingerprint = params_fingerprint(cfg, spacing)

    try:
        old_index = dsindex.read_index(root)
        previous = {r["case_id"]: r for r in old_index.to_dict("records")}
    except FileNotFoundError:
        previous = {}
    threads = 1 if address != "serial" else 0
    tasks = [make_task(c, root, cfg, spacing, fingerprint, previous.get(c.case_id), threads, localiser)
             for c in manifest_obj.cases]
    report = BuildReport(root=root, spacing_dhw=spacing, fingerprint=fingerprint,
                         executor="serial" if address == "serial" else "ray")
    for p in manifest_obj.problems:
        report.failures.append((p.case_id or f"row{p.row}", f"manifest row {p.row}: {p.message}"))

    rows: dict[str, dict] = {}
    pending = {t["case"]["case_id"] for t in tasks}
    last_ckpt = time.monotonic()
    bar = _progress(progress, len(tasks))
    try:
        for res in _execute(tasks, address, num_workers):
            cid = res["case_id"]
            pending.discard(cid)
            if res["status"] == "failed":
                report.failures.append((cid, res["reason"]))
            else:
                rows[cid] = json.loads(res["row_json"])
                setattr(report, "n_done" if res["status"] == "done" else "n_skipped",
                        getattr(report, "n_done" if res["status"] == "done" else "n_skipped") + 1)
            if bar:
                bar[0].update(bar[1], advance=1, description=f"preprocess ({len(report.failures)} failed)")
            if time.monotonic() - last_ckpt > CHECKPOINT_EVERY_S:
                # a valid index at any time: finished rows + untouched old rows of pending cases
                ckpt = {**{c: previous[c] for c in pending if c in previous}, **rows}
                dsindex.write_index(root, _index_frame(ckpt.values()))
                last_ckpt = time.monotonic()
    finally:
        if bar:
            bar[0].stop()
    for cid in sorted(pending):  # a worker died (Ray skipped its block): still reported
        report.failures.append((cid, "worker process died while preprocessing (a reader crash?); re-run to retry"))
    report.n_failed = len(report.failures)

    index_df = _index_frame(rows.values())
    base = existing_folds if existing_folds is not None else None
    folds = assign_folds(index_df, cfg.n_folds, cfg.seed, ext, existing=base) if len(index_df) else None
    if base is not None:
        keep = base[~base["case_id"].isin(folds["case_id"] if folds is not None else [])]
        folds = pd.concat([keep, folds]) if folds is not None else base
    if folds is not None:
        folds = folds.sort_values("case_id").reset_index(drop=True)
        lookup = folds.set_index("case_id")
        if len(index_df):
            index_df["fold"] = lookup.loc[index_df["case_id"], "fold"].astype("Int8").to_numpy()
            index_df["is_external"] = lookup.loc[index_df["case_id"], "is_external"].astype(bool).to_numpy()
        folds["fold"] = folds["fold"].astype("Int8")
        folds["label"] = folds["label"].astype("Int8")
        buf = io.BytesIO()
        folds.to_parquet(buf, index=False)
        dsindex.write_bytes_atomic(root, dsindex.FOLDS_FILE, buf.getvalue())
    dsindex.write_index(root, index_df)
    failed = pd.DataFrame(report.failures, columns=["case_id", "reason"])
    dsindex.write_bytes_atomic(root, dsindex.FAILED_FILE, failed.to_csv(index=False).encode())
    meta = {
        "dataset": fp_data, "params": params_payload(cfg, spacing), "fingerprint": fingerprint,
        "folds": {"n_folds": cfg.n_folds, "seed": cfg.seed, "external_sites": list(ext)},
    }
    dsindex.write_bytes_atomic(root, dsindex.FINGERPRINT_FILE, json.dumps(meta, indent=2).encode())
    report.seconds = time.perf_counter() - t0
    return report


def _progress(enabled: bool, total: int):
    if not enabled or total == 0:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
    prog.start()
    return prog, prog.add_task("preprocess", total=total)
