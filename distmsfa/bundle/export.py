"""``export_bundle``: a finished ``distmsfa cv`` run folder -> a verified bundle folder.

What it reads (layout in docs/training.md): ``RUN/run.json`` (model, train config, folds,
dataset path), ``RUN/folds/fold<k>/{best,last}.pt`` (torch.save dicts, read with
``weights_only=True``: tensors and plain containers only), ``RUN/folds/fold<k>/predictions.csv``
(the selected checkpoint's validation predictions), and from the dataset the
``fingerprint.json`` (the PreprocessConfig, the resolved target spacing, the cohort's
spacing/size statistics) and the training pairs (intensity statistics for ``prepare``'s
warnings).  The bundle is written into a temporary sibling folder, verified, then renamed
into place, so a crash never leaves a half bundle at ``out``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from distmsfa.bundle.layout import (BUNDLE_FILE, CARD_FILE, FORMAT, OOF_FILE, BundleError, verify_bundle,
                                    weight_file, write_checksums)

CHECKPOINTS = ("selected", "last")
THRESHOLD_POLICIES = ("youden", "fixed")

SELECTED_LABEL = ("best validation AUC per fold (ties: lower validation loss), chosen on the fold's own "
                  "validation cases: its CV metrics are OPTIMISTIC")
LAST_LABEL = "last epoch of each fold (no selection on validation labels)"
INNER_LABEL = ("best AUC on an inner split of each fold's training cases (patient-grouped, stratified; ties: lower "
               "loss): the fold's validation cases did not influence the choice, so its CV metrics are honest")
#: best.pt is the checkpoint the run's selection rule chose (TrainConfig.selection; runs made
#: before the rule existed selected on validation AUC).
SELECTION_LABELS = {"val": SELECTED_LABEL, "inner": INNER_LABEL, "last": LAST_LABEL}


def _selection_label(train: dict[str, Any], checkpoint: str) -> str:
    return SELECTION_LABELS.get(str(train.get("selection", "val")), SELECTED_LABEL) if checkpoint == "selected" \
        else LAST_LABEL


def _versions() -> dict[str, str]:
    import safetensors
    import SimpleITK

    import distmsfa

    return {"distmsfa": distmsfa.__version__, "torch": torch.__version__, "safetensors": safetensors.__version__,
            "numpy": np.__version__, "SimpleITK": SimpleITK.Version_VersionString(), "python": platform.python_version()}


def _read_run(run_dir: Path) -> dict[str, Any]:
    from distmsfa.training.cv import RUN_FILE

    f = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise BundleError(f"{run_dir}: no such run folder")
    if not f.is_file():
        raise BundleError(f"{f}: missing; {run_dir} is not a `distmsfa cv` run folder")
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{f}: not valid JSON ({exc})") from None
    for key in ("data", "model", "folds", "train"):
        if key not in rec:
            raise BundleError(f"{f}: has no {key!r}; not a `distmsfa cv` run record")
    return rec


def _read_fingerprint(data: str) -> dict[str, Any]:
    from distmsfa.data import index as dsindex

    try:
        fp = json.loads(dsindex.read_bytes(data, dsindex.FINGERPRINT_FILE))
    except (FileNotFoundError, OSError):
        raise BundleError(f"{data}/{dsindex.FINGERPRINT_FILE}: missing; the bundle must record how scans were "
                          f"prepared (build the dataset with `distmsfa preprocess`)") from None
    except ValueError as exc:
        raise BundleError(f"{data}/{dsindex.FINGERPRINT_FILE}: not valid JSON ({exc})") from None
    params = fp.get("params") or {}
    if "resolved_spacing_dhw" not in params or "crop_size" not in params:
        raise BundleError(f"{data}/{dsindex.FINGERPRINT_FILE}: records no preprocessing parameters "
                          f"(params.resolved_spacing_dhw / crop_size); rebuild the dataset with `distmsfa preprocess`")
    return fp


def _preprocess_record(fp: dict[str, Any]) -> dict[str, Any]:
    from distmsfa.data.preprocess import PreprocessConfig

    params = fp["params"]
    names = {f.name for f in dataclasses.fields(PreprocessConfig)}
    cfg = PreprocessConfig.from_dict({k: v for k, v in params.items() if k in names})
    return {**cfg.to_dict(), "spacing_dhw": [float(v) for v in params["resolved_spacing_dhw"]]}


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"{path}: missing; the fold has no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refused / corrupt file: one line either way
        raise BundleError(f"{path}: cannot be read as a weights-only checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise BundleError(f"{path}: holds no 'model' state_dict")
    return ckpt


def _score_last(models: dict[int, torch.nn.Module], data: str, rt) -> pd.DataFrame:
    """Validation predictions of each fold's last model (the run stores only the selected one's)."""
    from distmsfa.bundle.predictor import run_models
    from distmsfa.data.index import load_pair, read_index
    from distmsfa.training.batches import training_rows

    index = read_index(data)
    frames = []
    for f, model in models.items():
        _, val = training_rows(index, f)
        x = np.stack([load_pair(data, r).astype(np.float32) for r in val.to_dict("records")])
        probs, heads = [], {}
        for i in range(0, len(x), 8):
            p, h = run_models([model], torch.from_numpy(x[i:i + 8]), rt)
            probs.append(p[:, 0])
            for k, v in h.items():
                heads.setdefault(k, []).append(v[:, 0])
        df = pd.DataFrame({"case_id": val["case_id"].astype(str), "fold": f, "label": val["label"].astype(int),
                           "prob": np.concatenate(probs)})
        for k, v in heads.items():
            df[f"prob_{k}"] = np.concatenate(v)
        frames.append(df)
    return pd.concat(frames, ignore_index=True).sort_values(["fold", "case_id"]).reset_index(drop=True)


def _intensity_stats(data: str, case_ids: list[str]) -> dict[str, Any]:
    """Mean and SD over the training cases of each sequence's mean crop intensity."""
    from distmsfa.data.index import load_pair, read_index

    index = read_index(data)
    rows = index[index["case_id"].astype(str).isin(set(case_ids))].to_dict("records")
    means = np.array([load_pair(data, r).astype(np.float32).reshape(2, -1).mean(1) for r in rows]) if rows else np.zeros((0, 2))
    out: dict[str, Any] = {"what": "per-case mean intensity of the prepared crop, and the fraction of the crop "
                                   "inside each image's field of view, over the CV cases"}
    for i, seq in enumerate(("t1", "fs")):
        v = means[:, i] if len(means) else np.zeros(0)
        out[seq] = {"n": int(v.size), "mean": float(v.mean()) if v.size else None,
                    "sd": float(v.std(ddof=1)) if v.size > 1 else None}
        col = f"{seq}_coverage"  # written by build_dataset (absent in hand-made datasets)
        cov = pd.to_numeric(pd.Series([r.get(col) for r in rows], dtype=object), errors="coerce").dropna()
        out[seq]["coverage_min"] = float(cov.min()) if len(cov) else None
        out[seq]["coverage_median"] = float(cov.median()) if len(cov) else None
    return out


def _cv_metrics(oof: pd.DataFrame, epochs: dict[int, int], policy: str, fixed: float, checkpoint: str,
                label: str = SELECTED_LABEL) -> dict[str, Any]:
    from distmsfa.training.report import summarize

    s = summarize(oof, epochs, policy, fixed)
    for f, row in s["folds"].items():  # summarize's "best_epoch" is the exported checkpoint's epoch here
        row["checkpoint_epoch"] = row["best_epoch"]
    s["estimate"] = label if checkpoint == "selected" else LAST_LABEL
    s["how"] = ("each fold's model scored on its own validation fold (out-of-fold); mean ± std (ddof=1) over "
                "folds and pooled over all out-of-fold cases, at the bundle's threshold")
    if policy == "youden":
        s["threshold_note"] = ("the Youden threshold was chosen on these same out-of-fold predictions: ACC/SEN/SPEC/F1 "
                               "here are optimistic for that reason too; AUC does not depend on it")
    return s


def _run_summary(run_dir: Path) -> Any:
    """The run's own summary.json as it is (whatever estimates the run recorded), or None."""
    from distmsfa.training.cv import SUMMARY_FILE

    try:
        return json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists():
        if not force:
            raise BundleError(f"{out}: already exists; pass --force (force=True) to replace it or choose another --out")
        if out.is_dir() and any(out.iterdir()) and not (out / BUNDLE_FILE).is_file():
            raise BundleError(f"{out}: exists and is not a bundle; --force only replaces a bundle or an empty folder")
        if not out.is_dir():
            raise BundleError(f"{out}: exists and is a file, not a bundle folder")


def export_bundle(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, checkpoint: str = "selected",
                  threshold_policy: str = "youden", force: bool = False) -> Path:
    """Make a bundle at ``out`` from the finished CV run in ``run_dir``; return its path.

    ``checkpoint``: ``"selected"`` = each fold's ``best.pt`` (the run's selection rule),
    ``"last"`` = each fold's ``last.pt``, the EMA's weights when the run averaged them
    (``train.ema_decay``; its validation predictions are recomputed from the dataset, so threshold and CV metrics describe the exported models).  ``threshold_policy``:
    ``"youden"`` (Youden's J on the pooled out-of-fold predictions) or ``"fixed"`` (the run's
    ``train.threshold_value``, 0.5 by default)."""
    from distmsfa.bundle.card import write_model_card
    from distmsfa.bundle.predictor import build_fold_model
    from distmsfa.evaluation.metrics import choose_threshold
    from distmsfa.training import outputs as out_files
    from distmsfa.training.loop import BEST_FILE, LAST_FILE, resolve_runtime

    if checkpoint not in CHECKPOINTS:
        raise BundleError(f"checkpoint {checkpoint!r}: use one of {', '.join(CHECKPOINTS)} (--checkpoint)")
    if threshold_policy not in THRESHOLD_POLICIES:
        raise BundleError(f"threshold policy {threshold_policy!r}: use one of {', '.join(THRESHOLD_POLICIES)} (--threshold)")
    run_dir = Path(run_dir).resolve()
    out = Path(out).resolve()
    rec = _read_run(run_dir)
    _prepare_out(out, force)
    folds = [int(f) for f in rec["folds"]]
    for f in folds:
        fd = run_dir / "folds" / f"fold{f}"
        if not out_files.fold_done(str(fd)):
            raise BundleError(f"{fd / out_files.RESULT_FILE}: missing; fold {f} of the run did not finish "
                              f"(resume it with `distmsfa cv --resume --out {run_dir}`)")
    train = dict(rec["train"])
    name, model_cfg = rec["model"], dict(train.get("model_cfg") or {})
    data = str(rec["data"])
    fp = _read_fingerprint(data)
    preprocess = _preprocess_record(fp)

    rt = resolve_runtime("fp32", "cpu")
    states: dict[int, dict[str, torch.Tensor]] = {}
    epochs: dict[int, int] = {}
    models: dict[int, torch.nn.Module] = {}
    for f in folds:
        path = run_dir / "folds" / f"fold{f}" / (BEST_FILE if checkpoint == "selected" else LAST_FILE)
        ckpt = _load_checkpoint(path)
        # last.pt of a run with weight averaging (train.ema_decay): the EMA's weights, the ones it scored
        weights = ckpt["ema"]["model"] if checkpoint == "last" and ckpt.get("ema") else ckpt["model"]
        state = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items() if torch.is_tensor(v)}
        try:  # the weights must fit the recorded model before they go into a bundle
            models[f] = build_fold_model(name, model_cfg, state, rt)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path}: weights do not fit model {name!r} ({str(exc).splitlines()[0][:200]})") from None
        states[f] = state
        epochs[f] = int(ckpt.get("epoch", -1))

    if checkpoint == "selected":
        oof = pd.concat([out_files.read_fold(str(run_dir / "folds" / f"fold{f}"))["predictions"] for f in folds],
                        ignore_index=True).sort_values(["fold", "case_id"]).reset_index(drop=True)
    else:
        oof = _score_last(models, data, rt)
    fixed = float(train.get("threshold_value", 0.5))
    thr = choose_threshold(threshold_policy, oof["label"], oof["prob"], fixed)
    cv_metrics = _cv_metrics(oof, epochs, threshold_policy, fixed, checkpoint, _selection_label(train, checkpoint))

    meta: dict[str, Any] = {
        "format": FORMAT,
        "model": {"name": name, "model_cfg": model_cfg},
        "train": train,
        "folds": folds,
        "checkpoint": checkpoint,
        "checkpoint_epochs": {str(f): e for f, e in epochs.items()},
        "selection": _selection_label(train, checkpoint),
        "threshold": {"value": float(thr), "policy": threshold_policy, "source": "pooled out-of-fold predictions",
                      "n_cases": int(len(oof))},
        "cv_metrics": cv_metrics,
        "run_summary": _run_summary(run_dir),
        "preprocess": preprocess,
        "fingerprint": fp,
        "intensity": _intensity_stats(data, list(oof["case_id"].astype(str))),
        "input": {"shape": ["B", 2, *preprocess["crop_size"]], "channels": ["t1", "fs"], "range": [0.0, 1.0],
                  "dtype": "float32"},
        "source": {"run_dir": str(run_dir), "data": data, "profile": rec.get("profile"), "run_created": rec.get("created"),
                   "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "versions": _versions(),
        "localiser": None,
    }

    from safetensors.torch import save_file

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "weights").mkdir(parents=True)
    try:
        for f, state in states.items():
            save_file(state, str(tmp / weight_file(f)), metadata={"format": FORMAT, "model": name, "fold": str(f),
                                                                  "checkpoint": checkpoint, "epoch": str(epochs[f])})
        oof.to_csv(tmp / OOF_FILE, index=False)
        (tmp / BUNDLE_FILE).write_text(json.dumps(_clean(meta), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        write_model_card(tmp / CARD_FILE, meta)
        write_checksums(tmp)
        verify_bundle(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _clean(o: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/Inf to null (strict JSON for any reader)."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if hasattr(o, "tolist") and not isinstance(o, (str, bytes)):
        return _clean(o.tolist())
    if isinstance(o, float):
        return o if np.isfinite(o) else None
    if o is None or isinstance(o, (str, int, bool)):
        return o
    return str(o)
