"""A tiny dataset on disk written through the index contract (no preprocessing needed):
two sites, one external, patient-grouped folds, a learnable signal in both sequences."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from distmsfa.data.index import save_array, write_index

SHAPE = (2, 8, 32, 32)


def make_tiny_dataset(root: Path, n: int = 16, folds: int = 2, n_external: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n + n_external):
        ext = i >= n
        label = i % 2
        case = f"c{i:03d}"
        x = rng.uniform(0.0, 0.4, SHAPE).astype(np.float32)
        if label:  # a bright blob, brighter in FS and darker in T1 (oedema-like)
            d, h, w = rng.integers(2, 6), rng.integers(8, 24), rng.integers(8, 24)
            x[1, d - 1 : d + 2, h - 3 : h + 3, w - 3 : w + 3] += 0.5
            x[0, d - 1 : d + 2, h - 3 : h + 3, w - 3 : w + 3] *= 0.3
        x = np.clip(x, 0, 1).astype(np.float16)
        sha = save_array(root, f"pairs/{case}.npy", x)
        save_array(root, f"rois/{case}.npy", np.zeros(SHAPE[1:], np.uint8))
        rows.append({
            "case_id": case, "patient_id": f"p{i // 2 if not ext else 100 + i}", "label": label,
            "site": "EXT" if ext else "A", "fold": pd.NA if ext else (i // 2) % folds, "is_external": ext,
            "shape": list(SHAPE), "spacing_mm": [4.0, 0.5, 0.5], "crop_origin_mm": [0.0, 0.0, 0.0],
            "crop_size_mm": [32.0, 16.0, 16.0], "crop_direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
            "source_sha256": "{}", "fingerprint": "tiny", "pair_path": f"pairs/{case}.npy",
            "roi_path": f"rois/{case}.npy", "pair_sha256": sha,
        })
    df = pd.DataFrame(rows)
    write_index(root, df)
    df[df["fold"].notna()][["case_id", "patient_id", "fold"]].to_parquet(root / "folds.parquet", index=False)
    return root
