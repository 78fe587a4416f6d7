"""``workers_per_fold > 1`` through Ray Train on a real local cluster: a fold's placement
group, a fold trained with DDP over two gloo workers whose AUC equals one process scoring
the same weights, and a killed rank resumed from rank 0's checkpoint."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from distmsfa.data.index import read_index
from distmsfa.evaluation.metrics import binary_metrics
from distmsfa.training import run_cv
from distmsfa.training.batches import PlainSource, epoch_plan, fold_rows
from distmsfa.training.config import TrainConfig
from distmsfa.training.loop import build_model, evaluate, load_state, resolve_runtime

pytestmark = [pytest.mark.ray]

OV = {"epochs": 3, "num_threads": 1, "selection": "last", "workers_per_fold": 2}


def _lines(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture()
def ray_one_gpu():
    """An in-process local Ray that declares one GPU (none is needed to place bundles)."""
    import ray

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow  # an in-process Ray start: ~45 s on the loaded 2-core machine
def test_four_folds_share_one_gpu_and_a_ddp_fold_asks_a_bundle_per_worker(ray_one_gpu):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from distmsfa.training.ray_train import cluster_parallelism, fold_bundles, fold_scaling_config

    spec = {"gpus_per_fold": 0.25, "cpus_per_fold": 0.5, "use_gpu": True, "workers_per_fold": 1}
    sc = fold_scaling_config(spec)
    assert sc.use_gpu and fold_bundles(sc) == [{"CPU": 0.5, "GPU": 0.25}]
    assert cluster_parallelism(0.25, 0.5, 0.25, True) == 4
    # the bundles Ray Train reserves: four such folds fit the one GPU at once, a fifth waits
    pgs = [placement_group(fold_bundles(sc), strategy=sc.placement_strategy) for _ in range(5)]
    try:
        ready, waiting = ray.wait([pg.ready() for pg in pgs], num_returns=5, timeout=20)
        assert len(ready) == 4 and len(waiting) == 1
    finally:
        for pg in pgs:
            remove_placement_group(pg)
    ddp = fold_scaling_config({**spec, "gpus_per_fold": 1.0, "cpus_per_fold": 1.0, "workers_per_fold": 2})
    assert ddp.num_workers == 2 and fold_bundles(ddp) == [{"CPU": 1.0, "GPU": 1.0}] * 2
    assert cluster_parallelism(1.0, 1.0, 0.25, True, workers_per_fold=2) == 1  # 1 GPU, 2 per fold: still one
    cpu = fold_scaling_config({**spec, "use_gpu": False, "workers_per_fold": 2})
    assert not cpu.use_gpu and fold_bundles(cpu) == [{"CPU": 0.5}] * 2


def _single_process_scores(data, fold_dir, cfg: TrainConfig):
    rows = fold_rows(read_index(data), 0, cfg.selection)
    rt = resolve_runtime("fp32", "cpu")
    model = build_model(cfg, rt)
    model.load_state_dict(load_state(str(fold_dir / "best.pt"))["model"])
    src = PlainSource(str(data), rows.train, rows.val, cfg.batch_size, cfg.seed, workers=1)
    return rows, evaluate(model, src.val_batches(), rt)


@pytest.mark.slow
def test_a_fold_over_two_gloo_workers_and_its_resume_after_a_killed_rank(tiny_dataset, ray_conn, tmp_path):
    res = run_cv(tiny_dataset, "msfanet", profile="cpu", folds=[0], out=tmp_path / "ddp", overrides=OV,
                 progress=False)
    fold_dir = tmp_path / "ddp" / "folds" / "fold0"
    starts = [e for e in _lines(fold_dir / "timeline.jsonl") if e["event"] == "worker_start"]
    assert sorted(e["rank"] for e in starts) == [0, 1] and len({e["pid"] for e in starts}) == 2
    assert [int(m["epoch"]) for m in _lines(fold_dir / "metrics.jsonl")] == [0, 1, 2]  # rank 0 alone writes
    assert list((tmp_path / "ddp" / "ray" / "fold0").glob("checkpoint_epoch0002"))
    cfg = TrainConfig.from_dict(json.loads((tmp_path / "ddp" / "run.json").read_text())["train"])
    rows, ev = _single_process_scores(tiny_dataset, fold_dir, cfg)
    hist = res.histories[0]
    # each epoch's training cases were split between the two workers, each case seen once
    assert int(hist["train_samples"].iloc[0]) == len(epoch_plan(list(rows.train["case_id"]), cfg.seed, 0,
                                                                 cfg.batch_size))
    # validation predictions gathered from both workers = one process on the same weights
    oof = res.oof.sort_values("case_id").reset_index(drop=True)
    assert list(oof["case_id"]) == ev.case_ids
    np.testing.assert_allclose(oof["prob"], ev.prob, rtol=0, atol=1e-6)
    auc = binary_metrics(ev.labels, ev.prob, cfg.threshold_value)["auc"]
    assert hist["val_auc"].iloc[-1] == pytest.approx(auc, abs=1e-6)

    # kill rank 1 once rank 0 has committed an epoch: Ray Train restarts both workers, which
    # resume from rank 0's checkpoint and end where the uninterrupted run ended
    run = tmp_path / "killed"
    kdir = run / "folds" / "fold0"
    killed: dict = {}

    def killer() -> None:
        deadline = time.time() + 480
        while time.time() < deadline:
            done = _lines(kdir / "metrics.jsonl")
            rank1 = [e["pid"] for e in _lines(kdir / "timeline.jsonl") if e.get("rank") == 1]
            if done and rank1:
                os.kill(rank1[0], signal.SIGKILL)
                killed.update(pid=rank1[0], epochs_done=len(done))
                return
            time.sleep(0.01)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    again = run_cv(tiny_dataset, "msfanet", profile="cpu", folds=[0], out=run, overrides=OV, progress=False)
    th.join(5)
    assert killed, "rank 1 was never seen while rank 0 reported"
    result = json.loads((kdir / "result.json").read_text(encoding="utf-8"))
    assert len(result["resumed_epochs"]) == 1 and result["resumed_epochs"][0] >= killed["epochs_done"] - 1
    assert len({e["pid"] for e in _lines(kdir / "timeline.jsonl") if e["event"] == "worker_start"}) == 4
    h2 = again.histories[0]
    assert list(h2["epoch"]) == [0, 1, 2]
    for k in ("train_loss", "val_loss", "val_auc", "train_samples"):
        np.testing.assert_allclose(h2[k], hist[k], rtol=1e-5, atol=1e-6, err_msg=k)
    pd.testing.assert_series_equal(again.oof.sort_values("case_id")["prob"].reset_index(drop=True),
                                   oof["prob"], rtol=1e-5, atol=1e-6)
