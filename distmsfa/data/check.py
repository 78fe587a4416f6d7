"""``distmsfa inspect --check``: is a dataset consistent?

Checks (each problem is one line naming the case or the file within the dataset):

* ``fingerprint.json``, ``index.parquet`` and ``folds.parquet`` read;
* every indexed pair and ROI file exists, and the pair matches its recorded ``pair_sha256``;
* no orphans: every file under ``pairs/`` and ``rois/`` belongs to an indexed case;
* folds cover exactly the indexed cases, agree with the index's ``fold`` column, give a
  fold in ``0..k-1`` to every labelled non-external case and none to the others, and
  keep every patient in one fold;
* one label per patient.
"""
from __future__ import annotations

import dataclasses
import io
import json

import pandas as pd
import pyarrow.fs as pafs

from distmsfa.data import index as dsindex


@dataclasses.dataclass
class CheckReport:
    n_cases: int = 0
    n_pairs_verified: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _list(root: str, sub: str) -> list[str]:
    fs, base = dsindex.resolve_root(root)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base.rstrip("/") + "/" + sub, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return []
    return sorted(f"{sub}/{i.base_name}" for i in infos if i.type == pafs.FileType.File)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def check_dataset(root: str) -> CheckReport:
    """Verify the dataset at ``root`` (local folder or URI); never raises for a bad dataset."""
    rep = CheckReport()
    meta: dict = {}
    try:
        meta = json.loads(dsindex.read_bytes(root, dsindex.FINGERPRINT_FILE))
    except FileNotFoundError:
        rep.problems.append(f"{dsindex.FINGERPRINT_FILE} is missing")
    except ValueError as exc:
        rep.problems.append(f"{dsindex.FINGERPRINT_FILE} is corrupt ({_first_line(exc)})")
    try:
        idx = dsindex.read_index(root)
    except FileNotFoundError:
        rep.problems.append(f"{dsindex.INDEX_FILE} is missing; run `distmsfa preprocess` first")
        return rep
    except Exception as exc:  # noqa: BLE001 - any damage to the parquet file
        rep.problems.append(f"{dsindex.INDEX_FILE} is corrupt ({_first_line(exc)})")
        return rep
    rep.n_cases = len(idx)

    # pairs and ROIs
    for row in idx.to_dict("records"):
        cid = row["case_id"]
        try:
            data = dsindex.read_bytes(root, row["pair_path"])
        except (FileNotFoundError, OSError):
            rep.problems.append(f"case {cid}: pair file {row['pair_path']} is missing")
        else:
            if dsindex.sha256_bytes(data) != row["pair_sha256"]:
                rep.problems.append(f"case {cid}: pair file {row['pair_path']} does not match its recorded checksum "
                                    f"(changed, truncated or corrupt)")
            else:
                rep.n_pairs_verified += 1
        try:
            dsindex.read_bytes(root, row["roi_path"])
        except (FileNotFoundError, OSError):
            rep.problems.append(f"case {cid}: ROI file {row['roi_path']} is missing")
    referenced = set(idx["pair_path"]) | set(idx["roi_path"])
    for rel in _list(root, "pairs") + _list(root, "rois"):
        if rel not in referenced:
            rep.problems.append(f"orphan file {rel}: no indexed case refers to it")

    # one label per patient
    lab = idx.dropna(subset=["label"])
    n_lab = lab.groupby("patient_id")["label"].nunique()
    for pid in n_lab[n_lab > 1].index:
        cases = ", ".join(f"{r.case_id}={int(r.label)}" for r in lab[lab["patient_id"] == pid].itertuples())
        rep.problems.append(f"patient {pid} has cases with different labels ({cases})")

    # folds
    try:
        folds = pd.read_parquet(io.BytesIO(dsindex.read_bytes(root, dsindex.FOLDS_FILE)))
    except FileNotFoundError:
        if len(idx):
            rep.problems.append(f"{dsindex.FOLDS_FILE} is missing")
        return rep
    except Exception as exc:  # noqa: BLE001
        rep.problems.append(f"{dsindex.FOLDS_FILE} is corrupt ({_first_line(exc)})")
        return rep
    k = int((meta.get("folds") or {}).get("n_folds", 0)) or None
    in_idx, in_folds = set(idx["case_id"]), set(folds["case_id"])
    for cid in sorted(in_folds - in_idx):
        rep.problems.append(f"case {cid}: in {dsindex.FOLDS_FILE} but not in the index")
    for cid in sorted(in_idx - in_folds):
        rep.problems.append(f"case {cid}: indexed but has no row in {dsindex.FOLDS_FILE}")
    f = folds.set_index("case_id")
    for row in idx.to_dict("records"):
        cid = row["case_id"]
        if cid not in f.index:
            continue
        fold = f.loc[cid, "fold"]
        ext = bool(f.loc[cid, "is_external"])
        idx_fold = row["fold"]
        if (pd.isna(fold) != pd.isna(idx_fold)) or (not pd.isna(fold) and int(fold) != int(idx_fold)):
            rep.problems.append(f"case {cid}: fold {idx_fold} in the index but {fold} in {dsindex.FOLDS_FILE}")
        should = not ext and not pd.isna(row["label"])
        if should and pd.isna(fold):
            rep.problems.append(f"case {cid}: labelled and not external, but has no fold")
        elif not should and not pd.isna(fold):
            rep.problems.append(f"case {cid}: {'external' if ext else 'unlabelled'} but assigned to fold {int(fold)}")
        elif should and k is not None and not 0 <= int(fold) < k:
            rep.problems.append(f"case {cid}: fold {int(fold)} outside 0..{k - 1}")
    spread = folds.dropna(subset=["fold"]).groupby("patient_id")["fold"].nunique()
    for pid in spread[spread > 1].index:
        rep.problems.append(f"patient {pid} has cases in {int(spread[pid])} different folds")
    return rep
