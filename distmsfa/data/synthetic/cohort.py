"""Generate a synthetic two-sequence sacroiliac cohort: files, manifest, truth and config.

Layout of ``OUT``::

    OUT/manifest.csv   case_id, patient_id, label, site, t1, fs, roi, lesion, subtype
                       (paths relative to OUT; label = the *recorded* label, label noise included)
    OUT/truth.csv      case_id, true_label, label_flipped, subtype, findings (JSON, LPS mm)
    OUT/cohort.json    generator config, seed, site profiles, external site, lesion codes
    OUT/cases/<case_id>/t1.nii.gz fs.nii.gz roi.nii.gz lesion.nii.gz   (NIfTI, default)
    OUT/cases/<case_id>/t1/ fs/  (one DICOM series each) + roi.nii.gz lesion.nii.gz  (DICOM)

Determinism: the plan (labels, sites, subtypes, label noise) comes from ``seed`` alone; each
patient's anatomy and findings from ``(seed, patient index)`` and each scan's acquisition
from ``(seed, case index)``, so any number of worker processes gives identical files.
"""
from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from distmsfa.data.synthetic.acquisition import TISSUES, render_sequence, sample_bias, site_grids
from distmsfa.data.synthetic.anatomy import Anatomy
from distmsfa.data.synthetic.config import MIMICS, CohortConfig
from distmsfa.data.synthetic.findings import CODES, PERIARTICULAR, draw_subtype, sample_findings
from distmsfa.data.synthetic.sites import get_profile

MANIFEST_COLUMNS = ("case_id", "patient_id", "label", "site", "t1", "fs", "roi", "lesion", "subtype")
FORMATS = ("nifti", "dicom")


def _quota(n: int, weights: Sequence[float]) -> list[int]:
    """Largest-remainder split of ``n`` items by ``weights`` (exact, deterministic)."""
    w = np.asarray(weights, dtype=float)
    raw = n * w / w.sum()
    q = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - q), kind="stable")[: n - int(q.sum())]:
        q[i] += 1
    return q.tolist()


def plan_cohort(n: int, sites: Sequence[str], seed: int, cfg: CohortConfig) -> list[dict[str, Any]]:
    """One dict per case: ids, site, true and recorded label, subtype.  Seed only."""
    rng = np.random.default_rng([seed, 0])
    n_repeat = int(round(n * cfg.repeat_scan_rate)) if n >= 10 else 0
    n_pat = n - n_repeat
    site_of = np.repeat(np.arange(len(sites)), _quota(n_pat, [cfg.site(s).weight for s in sites]))
    rng.shuffle(site_of)
    truth = np.zeros(n_pat, dtype=int)
    for s in range(len(sites)):  # class balance holds within every site
        idx = np.flatnonzero(site_of == s)
        pos = rng.permutation(idx)[: int(round(cfg.axspa_fraction * len(idx)))]
        truth[pos] = 1
    flipped = np.zeros(n_pat, dtype=bool)
    flipped[rng.permutation(n_pat)[: int(round(cfg.label_noise * n_pat))]] = True
    subtypes = [draw_subtype(rng, bool(t), cfg) for t in truth]
    patient_of_case = list(range(n_pat)) + sorted(rng.choice(n_pat, n_repeat, replace=False).tolist())
    plan = []
    for c, p in enumerate(patient_of_case):
        plan.append({
            "case_index": c, "case_id": f"SIJ{c:04d}", "patient_index": p, "patient_id": f"P{p:04d}",
            "site": sites[site_of[p]], "true_label": int(truth[p]),
            "label": int(truth[p] ^ flipped[p]), "label_flipped": bool(flipped[p]), "subtype": subtypes[p],
        })
    return plan


def make_case(spec: dict[str, Any], cfg: CohortConfig, seed: int, out: Path, fmt: str) -> dict[str, Any]:
    """Render and write one case; returns its manifest row plus truth fields."""
    from distmsfa.data.synthetic import writers

    prng = np.random.default_rng([seed, 1, spec["patient_index"]])
    anat = Anatomy.sample(prng)
    lesions = sample_findings(prng, anat, bool(spec["true_label"]), spec["subtype"], cfg)
    arng = np.random.default_rng([seed, 2, spec["case_index"]])
    site = cfg.site(spec["site"])
    prof = get_profile(cfg.profile)
    grids = site_grids(arng, anat, prof, site)
    bias = sample_bias(arng, site.bias_amplitude)
    t1, roi, lab = render_sequence(anat, lesions, grids["t1"], "t1", site, prof, arng, bias, with_masks=True)
    bias_fs = bias * (1 + arng.normal(0, 0.1, bias.shape))
    fs, _, _ = render_sequence(anat, lesions, grids["fs"], "fs", site, prof, arng, bias_fs)
    cid = spec["case_id"]
    folder = out / "cases" / cid
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rel = f"cases/{cid}"
    if fmt == "nifti":
        writers.write_nifti(t1, grids["t1"], folder / "t1.nii.gz")
        writers.write_nifti(fs, grids["fs"], folder / "fs.nii.gz")
        t1_rel, fs_rel = f"{rel}/t1.nii.gz", f"{rel}/fs.nii.gz"
    else:
        study = writers.uid("distmsfa-synthetic", seed, cid)
        for seq, arr, num, desc in (("t1", t1, 3, "T1 TSE COR"), ("fs", fs, 4, "STIR COR")):
            writers.write_dicom_series(arr, grids[seq], folder / seq, patient_id=spec["patient_id"],
                                       study_uid=study, series_uid=writers.uid(study, seq), description=desc,
                                       series_number=num, site=site.name, field_strength=site.field_strength_t)
        t1_rel, fs_rel = f"{rel}/t1", f"{rel}/fs"
    writers.write_nifti(roi, grids["t1"], folder / "roi.nii.gz")
    writers.write_nifti(lab, grids["t1"], folder / "lesion.nii.gz")
    row = {k: spec[k] for k in ("case_id", "patient_id", "label", "site")}
    row.update(t1=t1_rel, fs=fs_rel, roi=f"{rel}/roi.nii.gz", lesion=f"{rel}/lesion.nii.gz", subtype=spec["subtype"])
    truth = {"case_id": cid, "true_label": spec["true_label"], "label_flipped": spec["label_flipped"],
             "subtype": spec["subtype"], "findings": json.dumps([les.to_dict(anat) for les in lesions])}
    return {"row": row, "truth": truth}


def _make_case_star(args: tuple) -> dict[str, Any]:
    return make_case(*args)


_CASE_DIR = re.compile(r"^SIJ\d{4}$")
_CASE_FILES = {"t1.nii.gz", "fs.nii.gz", "roi.nii.gz", "lesion.nii.gz"}
_SERIES_FILE = re.compile(r"^IM\d{4}\.dcm$")


def _foreign(cases: Path) -> str | None:
    """The first entry under ``cases/`` that the generator does not write (relative name)."""
    for entry in sorted(cases.iterdir()):
        if not (entry.is_dir() and not entry.is_symlink() and _CASE_DIR.match(entry.name)):
            return f"cases/{entry.name}"
        for f in sorted(entry.iterdir()):
            if f.is_dir() and not f.is_symlink() and f.name in ("t1", "fs"):
                bad = next((g for g in sorted(f.iterdir()) if not (g.is_file() and _SERIES_FILE.match(g.name))), None)
                if bad is not None:
                    return f"cases/{entry.name}/{f.name}/{bad.name}"
            elif not (f.is_file() and not f.is_symlink() and f.name in _CASE_FILES):
                return f"cases/{entry.name}/{f.name}"
    return None


def _prepare_out(out: Path) -> None:
    """Refuse a folder that is not a previous synthetic cohort, and a previous cohort whose
    ``cases/`` holds anything the generator did not write (it is replaced, and what a user
    put there must not be deleted with it)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out.name} is an existing file; choose a folder")
    # a folder holding only cases/ is an interrupted generation: the same command redoes it
    if out.exists() and any(p.name != "cases" for p in out.iterdir()) and not (out / "cohort.json").exists():
        raise FileExistsError(f"{out} is not empty and holds no synthetic cohort (cohort.json); "
                              "choose an empty or new folder")
    cases = out / "cases"
    if cases.exists():  # a previous synthetic cohort: replace it whole, if all of it is ours
        bad = _foreign(cases) if cases.is_dir() else "cases"
        if bad is not None:
            raise FileExistsError(f"{bad} in --out was not written by demo-data and would be deleted with the "
                                  f"previous cohort; move it away or choose another --out (nothing was deleted)")
        shutil.rmtree(cases)
    out.mkdir(parents=True, exist_ok=True)


def generate_cohort(out: str | Path, n: int = 120, *, sites: Sequence[str] = ("TAH", "NHH"),
                    external_site: str | None = "NHH", seed: int = 0, fmt: str = "nifti",
                    config: CohortConfig | None = None, progress: bool = True, workers: int = 1) -> Path:
    """Write a synthetic cohort of ``n`` cases to ``out``; returns the manifest path.

    ``sites`` are names of ``config.sites`` profiles; ``external_site`` (one of ``sites`` or
    None) is recorded in cohort.json for ``--external-site`` downstream.  ``workers`` > 1
    renders cases in that many processes (identical output)."""
    import pandas as pd

    cfg = config or CohortConfig()
    out = Path(out)
    sites = tuple(sites)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not sites or len(set(sites)) != len(sites):
        raise ValueError(f"sites must be non-empty and unique, got {list(sites)}")
    for s in sites:
        cfg.site(s)  # raises with the list of known sites
    if external_site is not None and external_site not in sites:
        raise ValueError(f"external site {external_site!r} is not among the sites {list(sites)}; "
                         "pass one of them or None")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _prepare_out(out)
    plan = plan_cohort(n, sites, seed, cfg)
    jobs = [(spec, cfg, seed, out, fmt) for spec in plan]
    results = _run(jobs, workers, progress)
    rows = [r["row"] for r in results]
    manifest = out / "manifest.csv"
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(manifest, index=False)
    pd.DataFrame([r["truth"] for r in results]).to_csv(out / "truth.csv", index=False)
    meta = {
        "generator": "distmsfa.data.synthetic", "n": n, "seed": seed, "format": fmt,
        "sites": list(sites), "external_site": external_site, "config": cfg.to_dict(),
        "profile": get_profile(cfg.profile).to_dict(), "lesion_codes": CODES,
        "periarticular_kinds": list(PERIARTICULAR), "mimics": MIMICS,
        "tissues": {k: dict(zip(("t1", "fs_water", "fat"), v)) for k, v in TISSUES.items()},
        "roi_labels": {"1": "left sacroiliac joint", "2": "right sacroiliac joint"},
        "label_counts": {str(k): int(v) for k, v in pd.Series([r["label"] for r in rows]).value_counts().items()},
    }
    (out / "cohort.json").write_text(json.dumps(meta, indent=2))
    return manifest


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C (sent to the whole process group) to the parent, which
    cancels the queued cases: no traceback per worker on the terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(jobs: list[tuple], workers: int, progress: bool) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = (TextColumn("synthetic cohort"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*cols, disable=not progress, transient=False) as bar:
        task = bar.add_task("cases", total=len(jobs))
        if workers == 1:
            results = []
            for job in jobs:
                results.append(make_case(*job))
                bar.advance(task)
            return results
        with ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint) as pool:
            results = []
            for res in pool.map(_make_case_star, jobs, chunksize=1):
                results.append(res)
                bar.advance(task)
            return results
