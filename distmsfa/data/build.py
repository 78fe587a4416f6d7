"""``build_dataset``: manifest in, dataset (index, folds, pairs, failures) out.

The driver: validate the manifest, resolve the target spacing (fingerprint), hand one
task per case to the serial loop or to Ray Data (``ray_preprocess``), collect results
as they finish (progress bar, periodic index checkpoints), then assign folds and write
``index.parquet``, ``folds.parquet``, ``failed.csv`` and ``fingerprint.json``.
Every write is atomic, so a crash leaves the previous (or a checkpointed) index.

Guards (docs/preprocessing.md, "Re-running into an existing dataset"): the dataset
records the manifest and the preprocessing fingerprint it came from, and a run with
another one is refused before any work unless ``update=True``; cases of the index that
this run does not produce (failed now, or absent from the manifest) are kept unless
``force=True``; ``folds.parquet`` always covers exactly the indexed cases.
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
    kept: list[str] = dataclasses.field(default_factory=list)  # failed now, previous version kept
    dropped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (case_id, why)

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


class DatasetError(ValueError):
    """The dataset at ``out`` cannot be (re)built as asked; nothing was changed."""


def _read_json(root: str, rel: str) -> dict | None:
    """A JSON file of the dataset; None when absent, DatasetError naming it when corrupt
    (a corrupt fingerprint.json must not read as "new dataset": it guards the folds)."""
    try:
        data = dsindex.read_bytes(root, rel)
    except FileNotFoundError:
        return None
    try:
        out = json.loads(data)
        if not isinstance(out, dict):
            raise ValueError(f"top level is a {type(out).__name__}, not an object")
        return out
    except ValueError as exc:
        raise DatasetError(
            f"{rel} of the dataset is corrupt ({str(exc).splitlines()[0][:120]}); it records the settings that "
            f"guard the folds: restore it from a backup, or rebuild into a new --out"
        ) from None


def _read_parquet(root: str, rel: str) -> pd.DataFrame | None:
    try:
        data = dsindex.read_bytes(root, rel)
    except FileNotFoundError:
        return None
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DatasetError(f"{rel} of the dataset is corrupt ({str(exc).splitlines()[0][:120]}); "
                           f"restore it from a backup, or rebuild into a new --out") from None


def _check_out(root: str) -> None:
    """Refuse an unusable --out before any work: an existing file, or not writable."""
    if "://" in root:
        return
    if os.path.exists(root) and not os.path.isdir(root):
        raise DatasetError(f"--out {root} is an existing file, not a dataset folder; choose a folder")
    try:
        os.makedirs(root, exist_ok=True)
        import tempfile

        with tempfile.TemporaryFile(dir=root, prefix=".probe-"):
            pass
    except OSError as exc:
        raise DatasetError(f"--out {root} is not writable ({exc.strerror or type(exc).__name__}); "
                           f"choose a folder you can write to") from None


def _manifest_id(manifest: str | os.PathLike[str]) -> str:
    m = os.fspath(manifest)
    return m if "://" in m else os.path.realpath(m)


def _short(path: str) -> str:
    """A manifest's name for messages: its folder and file name, not the machine path."""
    parts = path.rstrip("/").split("/")
    return "/".join(parts[-2:])


def _index_frame(rows: Iterable[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    if df.empty:
        df = pd.DataFrame({c: pd.Series(dtype=object) for c in dsindex.INDEX_COLUMNS})
    for col in ("label", "fold"):
        df[col] = pd.array([None if v is None or pd.isna(v) else int(v) for v in df[col]], dtype="Int8")
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
    update: bool = False,
    force: bool = False,
    localiser: str | os.PathLike[str] | None = None,
) -> BuildReport:
    """Preprocess every case of ``manifest`` into the dataset at ``out`` (local path or URI).

    ``address``: None = Ray (connect to a running one, or start a local one), ``"auto"`` or
    ``"ray://..."``/``"host:port"`` = that cluster, ``"serial"`` = no Ray, one process.
    Raises ManifestError for a structurally broken manifest and DatasetError (before any
    work) for an unusable ``out`` or a run the guards refuse; per-case problems (bad rows,
    unreadable images...) are reported in ``BuildReport.failures`` and ``failed.csv``.

    ``update``: accept a dataset built from another manifest or other preprocessing
    settings (its cases are kept, same case ids replaced).  ``force``: the index becomes
    exactly this run's good cases (cases that fail now or are absent from the manifest
    are dropped, with their files).  ``localiser``: a trained localiser folder (or a model bundle
    carrying one); cases with no
    ROI get a predicted one (index column ``roi_source`` = "given" | "predicted";
    docs/localiser.md)."""
    cfg = config or PreprocessConfig()
    t0 = time.perf_counter()
    root = os.fspath(out) if "://" in os.fspath(out) else os.path.abspath(os.fspath(out))
    _check_out(root)
    if localiser is not None:  # a localiser folder, or a model bundle that carries one
        from distmsfa.localiser.bundle import localiser_folder

        localiser = os.path.abspath(os.fspath(localiser_folder(localiser)))  # fail fast (LocaliserError)
    manifest_obj = load_manifest(manifest, allow_missing_roi=localiser is not None)
    stored = _read_json(root, dsindex.FINGERPRINT_FILE)
    ext, existing_folds = _folds_config(root, stored, cfg, external_sites, refold)
    try:
        old_index = dsindex.read_index(root)
    except FileNotFoundError:
        old_index = None
    except Exception as exc:  # noqa: BLE001 - a damaged index.parquet
        raise DatasetError(f"{dsindex.INDEX_FILE} of the dataset is corrupt ({str(exc).splitlines()[0][:120]}); "
                           f"restore it from a backup, or rebuild into a new --out") from None
    previous = {r["case_id"]: r for r in old_index.to_dict("records")} if old_index is not None else {}
    mid = _manifest_id(manifest)
    old_mid = ((stored or {}).get("manifest") or {}).get("source")
    if previous and old_mid and old_mid != mid and not update:
        raise DatasetError(
            f"the dataset at --out was built from another manifest ({_short(old_mid)}), not {_short(mid)}: "
            f"its {len(previous)} cases would be overwritten (same case ids) or orphaned; nothing was changed. "
            f"Pass --update to add this manifest's cases to it, or choose another --out"
        )

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
    manifest_ids = {c.case_id for c in manifest_obj.cases} | {p.case_id for p in manifest_obj.problems if p.case_id}
    stale = sorted(c for c, r in previous.items() if r.get("fingerprint") != fingerprint)
    if stale and not (update or refingerprint):
        raise DatasetError(
            f"the dataset at --out was preprocessed with other settings ({len(stale)} of its cases, e.g. "
            f"{', '.join(stale[:3])}; spacing/crop/orientation/intensity options or library versions differ); "
            f"nothing was changed. Pass --update to rebuild its cases with these settings, or choose another --out"
        )
    stale_untouched = [c for c in stale if c not in manifest_ids]
    if stale_untouched and not force:
        raise DatasetError(
            f"{len(stale_untouched)} indexed case(s) are not in this manifest and were preprocessed with other "
            f"settings ({', '.join(stale_untouched[:5])}{', ...' if len(stale_untouched) > 5 else ''}); they would "
            f"not match the rebuilt ones; nothing was changed. Add them to the manifest, or pass --force to drop them"
        )
    # one label per patient over what the index will hold (a merge with --update can mix them)
    _check_patient_labels(pd.DataFrame(
        [{"case_id": c.case_id, "patient_id": c.patient_id, "label": c.label} for c in manifest_obj.cases]
        + ([] if force else [{"case_id": c, "patient_id": r["patient_id"], "label": r["label"]}
                             for c, r in previous.items() if c not in manifest_ids]),
        columns=["case_id", "patient_id", "label"]))
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
                # a valid index at any time: finished rows + the old rows of every other case
                ckpt = {**previous, **rows}
                dsindex.write_index(root, _index_frame(ckpt.values()))
                last_ckpt = time.monotonic()
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM (distmsfa.runtime): keep what finished, so a re-run skips it
        if rows:
            dsindex.write_index(root, _index_frame({**{c: previous[c] for c in pending if c in previous}, **rows}.values()))
        raise
    finally:
        if bar:
            bar[0].stop()
    for cid in sorted(pending):  # a worker died (Ray skipped its block): still reported
        report.failures.append((cid, "worker process died while preprocessing (a reader crash?); re-run to retry"))
    report.n_failed = len(report.failures)

    # Cases of the old index this run did not produce: kept (never lost by accident), or
    # dropped with their files when asked (--force) or when they cannot match the new ones.
    final = dict(rows)
    for cid, prev in sorted(previous.items()):
        if cid in rows:
            continue
        if force:
            report.dropped.append((cid, "failed in this run" if cid in manifest_ids else "not in this manifest"))
        elif prev.get("fingerprint") != fingerprint:
            report.dropped.append((cid, "failed in this run, and its previous version was preprocessed with other "
                                        "settings"))
        else:
            final[cid] = prev
            if cid in manifest_ids:
                report.kept.append(cid)
    for cid, _ in report.dropped:
        _remove_case_files(root, previous[cid])

    index_df = _index_frame(final.values())
    base = existing_folds if existing_folds is not None else None
    # folds cover exactly the indexed cases: existing assignments kept verbatim, rows of
    # cases no longer indexed removed, new cases placed
    folds = assign_folds(index_df, cfg.n_folds, cfg.seed, ext, existing=base) if len(index_df) else None
    if folds is None and base is not None:
        folds = base.iloc[0:0]
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
        "manifest": {"source": mid, "previous": sorted(set(((stored or {}).get("manifest") or {}).get("previous", [])
                                                            + ([old_mid] if old_mid and old_mid != mid else [])))},
    }
    dsindex.write_bytes_atomic(root, dsindex.FINGERPRINT_FILE, json.dumps(meta, indent=2).encode())
    report.seconds = time.perf_counter() - t0
    return report


def _remove_case_files(root: str, row: dict) -> None:
    """Delete the pair and ROI files of a case dropped from the index (no orphans)."""
    fs, base = dsindex.resolve_root(root)
    for key in ("pair_path", "roi_path"):
        rel = row.get(key)
        if rel:
            try:
                fs.delete_file(base.rstrip("/") + "/" + str(rel))
            except (FileNotFoundError, OSError):
                pass


def _check_patient_labels(df: pd.DataFrame) -> None:
    """One label per patient across the cases the index will hold; refused before any work."""
    lab = df[df["label"].notna()] if len(df) else df
    if not len(lab):
        return
    n = lab.groupby("patient_id")["label"].nunique()
    bad = list(n[n > 1].index)
    if bad:
        pid = bad[0]
        cases = ", ".join(f"{r.case_id}={int(r.label)}" for r in lab[lab["patient_id"] == pid].itertuples())
        raise DatasetError(
            f"patient {pid} would have cases with different labels in the index ({cases}); folds and the "
            f"patient-level diagnosis assume one label per patient: fix the labels; nothing was changed"
        )


def _progress(enabled: bool, total: int):
    if not enabled or total == 0:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
    prog.start()
    return prog, prog.add_task("preprocess", total=total)
