"""One fold of one model on a preprocessed demo dataset, printed per epoch (issue 15 diagnosis).

A bare loop (no checkpoints, no Ray, no inner split) over the dataset's cases held in memory:
Adam, cosine lr over the run, the project's ``augment_batch``, and each epoch the AUC of the
training cases (eval mode: how far the net memorises), of the validation fold and of the
external site.  It answers "does this setting learn at all, and does it memorise?" in
minutes; the honest, four-fold comparison is ``bench_demo_models.py``.  The runs kept in
``benchmarks/results/demo_diagnosis_fold_cpu_2core.json`` were made with it (one line per
epoch on stdout, collected into the JSON).

    python benchmarks/bench_demo_diagnosis.py --data runs/ds --model baseline --fold 1 \\
        --epochs 40 --aug '{"translate": 0.1}'
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score


def main() -> None:
    from distmsfa.models import create_model
    from distmsfa.training.augment import augment_batch
    from distmsfa.training.config import AugmentConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a preprocessed dataset (index.parquet, pairs/)")
    p.add_argument("--model", default="baseline")
    p.add_argument("--cfg", default='{"preset": "demo"}', help="JSON model config")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--bs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--aug", default="{}", help="JSON AugmentConfig overrides")
    p.add_argument("--noaug", action="store_true")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--sched", default="cosine", choices=("cosine", "constant"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    idx = pd.read_parquet(f"{a.data}/index.parquet")
    x_all = torch.from_numpy(np.stack([np.load(f"{a.data}/{q}").astype(np.float32) for q in idx.pair_path]))
    y = idx.label.astype(int).to_numpy()
    ext = idx.is_external.to_numpy(bool)
    tr = (~ext) & (idx.fold.to_numpy() != a.fold)
    va = (~ext) & (idx.fold.to_numpy() == a.fold)
    model = create_model(a.model, **json.loads(a.cfg))
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.wd)
    acfg = AugmentConfig(enabled=False) if a.noaug else AugmentConfig(**json.loads(a.aug))
    tri = np.where(tr)[0]
    steps = math.ceil(len(tri) / a.bs) * a.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)) if a.sched == "cosine" else 1.0)

    def predict(mask: np.ndarray) -> np.ndarray:
        model.eval()
        ids, out = np.where(mask)[0], []
        with torch.no_grad():
            for i in range(0, len(ids), 16):
                out.append(model.predict_proba(model(x_all[ids[i:i + 16]])))
        return torch.cat(out).numpy()

    print(json.dumps({"params": sum(q.numel() for q in model.parameters()), "train": int(tr.sum()),
                      "val": int(va.sum()), "external": int(ext.sum())}), flush=True)
    for ep in range(a.epochs):
        model.train()
        t0, total = time.time(), 0.0
        perm = np.random.default_rng(a.seed * 1000 + ep).permutation(tri)
        for st in range(0, len(perm), a.bs):
            b = perm[st:st + a.bs]
            if len(b) < 2:  # BatchNorm needs two cases
                continue
            out = model(augment_batch(x_all[b], acfg, a.seed, ep, st))
            loss, _ = model.loss(out, torch.from_numpy(y[b]).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(b)
        row = {"ep": ep, "s": round(time.time() - t0, 1), "loss": round(total / len(tri), 3),
               "tr": round(roc_auc_score(y[tr], predict(tr)), 3), "va": round(roc_auc_score(y[va], predict(va)), 3),
               "ext": round(roc_auc_score(y[ext], predict(ext)), 3)}
        print(row, flush=True)


if __name__ == "__main__":
    main()
