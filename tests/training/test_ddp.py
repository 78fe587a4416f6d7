"""One fold over several DDP processes, the Ray-free part: sharding, metric reduction,
gathering, configs, and a real 2-rank gloo run (spawned here, no Ray) whose AUC and
predictions equal one process scoring the same weights."""
from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distmsfa.config import ConfigError
from distmsfa.data.index import read_index
from distmsfa.evaluation.metrics import binary_metrics
from distmsfa.models import create_model, list_models
from distmsfa.training.batches import PlainSource, epoch_plan, fold_rows
from distmsfa.training.config import CVConfig, TrainConfig
from distmsfa.training.distributed import gather_predictions, reduce_train_metrics, shard_ids, shard_plan
from distmsfa.training.loop import build_model, evaluate, load_state, resolve_runtime
from tests.training import _ddp_worker


@pytest.mark.parametrize("n,world,bs", [(16, 2, 4), (17, 2, 4), (19, 3, 3), (10, 4, 2), (9, 2, 4)])
def test_shards_are_disjoint_equal_and_each_step_is_a_block_of_the_single_worker_plan(n, world, bs):
    plan = epoch_plan([f"c{i:02d}" for i in range(n)], seed=0, epoch=3, batch_size=bs)
    shards = [shard_plan(plan, r, world, bs) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank (else DDP hangs)
    assert all(len(s) % bs != 1 for s in shards)  # no lone case in a BatchNorm batch
    seen = [c for s in shards for c in s]
    assert len(seen) == len(set(seen)) and set(seen) <= set(plan)
    assert len(plan) - len(seen) <= world * 2 - 1  # at most a few of the epoch's cases left out
    for i in range(0, len(shards[0]), bs):  # step i of all ranks = the plan's i-th block of bs*world
        step = {c for s in shards for c in s[i : i + bs]}
        assert step == set(plan[i * world : (i + bs) * world]) & set(seen)
    assert shard_plan(plan, 0, 1, bs) == plan


def test_evaluation_shards_cover_every_case_once():
    ids = sorted(f"c{i}" for i in range(7))
    parts = [shard_ids(ids, r, 3) for r in range(3)]
    assert sorted(c for p in parts for c in p) == ids and shard_ids(ids, 0, 1) == ids
    assert shard_ids(ids[:1], 1, 2) == []  # a rank may hold no evaluation case


def test_gather_puts_every_ranks_predictions_in_case_order():
    ids = [f"c{i}" for i in range(5)]
    prob = np.linspace(0.1, 0.9, 5).astype(np.float32)
    lab = np.array([0, 1, 0, 1, 1], np.float32)
    parts = [(shard_ids(ids, r, 2), lab[r::2], prob[r::2], {"fuse": prob[r::2]}, float(r + 1)) for r in range(2)]
    parts.append(([], np.zeros(0, np.float32), np.zeros(0, np.float32), {}, 0.0))  # a rank with nothing
    got_ids, got_lab, got_prob, got_heads, loss = gather_predictions(lambda obj: parts, *parts[0])
    assert got_ids == ids and loss == 3.0
    np.testing.assert_array_equal(got_prob, prob)
    np.testing.assert_array_equal(got_lab, lab)
    np.testing.assert_array_equal(got_heads["fuse"], prob)
    with pytest.raises(RuntimeError, match="two ranks"):
        gather_predictions(lambda obj: [parts[0], parts[0]], *parts[0])


def test_train_metrics_are_the_folds_not_a_ranks():
    a = {"train_loss": 1.0, "train_samples": 4.0, "data_wait_s": 0.1, "train_w_fuse": 0.5}
    b = {"train_loss": 2.0, "train_samples": 12.0, "data_wait_s": 0.3, "train_w_fuse": 1.0}
    r = reduce_train_metrics([a, b])
    assert r["train_samples"] == 16 and r["data_wait_s"] == 0.3
    assert r["train_loss"] == pytest.approx(1.75) and r["train_w_fuse"] == pytest.approx(0.875)
    assert reduce_train_metrics([a]) == a


def test_workers_per_fold_and_fractional_gpus_in_the_config():
    assert CVConfig().workers_per_fold == 1
    assert CVConfig(workers_per_fold=4, gpus_per_fold=1.0).workers_per_fold == 4
    assert CVConfig(gpus_per_fold=0.25).gpus_per_fold == 0.25  # four folds on one GPU
    assert CVConfig.from_dict({"gpus_per_fold": 0.25, "workers_per_fold": 1}).gpus_per_fold == 0.25
    with pytest.raises(ConfigError, match="whole GPU each"):
        CVConfig(workers_per_fold=2, gpus_per_fold=0.5)
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ConfigError, match="workers_per_fold"):
            CVConfig(workers_per_fold=bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~26 s each on the 2-core machine (two processes start torch and train 2 epochs)
@pytest.mark.parametrize("ema_decay", [0.0, 0.8])  # 0.8: every rank scores the same (rank 0's) EMA, best.pt holds it
def test_two_gloo_ranks_score_exactly_what_one_process_scores_with_the_same_weights(tiny_dataset, tmp_path, ema_decay):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker.run_rank, args=(2, _free_port(), str(tiny_dataset), str(tmp_path), ema_decay), nprocs=2,
             join=True)
    r0, r1 = (pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in (0, 1))
    # destroy_process_group() freed each rank's gloo group (its destructor joins its threads), so
    # interpreter exit has no gloo group left to tear down (the likely cause of an occasional
    # SIGABRT of a rank: see _ddp_worker)
    assert r0["pg_freed"] and r1["pg_freed"]
    # only rank 0 wrote the fold's files
    assert sorted(os.listdir(tmp_path / "fold")) == ["best.pt", "last.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold", "rank0.pkl", "rank1.pkl"]
    # every rank ends with the same, gathered, metrics (same selection decisions)
    for k in ("val_auc", "val_loss", "train_loss", "train_samples"):
        assert [h[k] for h in r0["history"]] == [h[k] for h in r1["history"]], k
    cfg = TrainConfig.from_dict(_ddp_worker.cfg_dict(ema_decay=ema_decay))
    rows = fold_rows(read_index(tiny_dataset), 0, "last")
    # the fold's training cases were split between the ranks, each case once per epoch
    assert r0["history"][0]["train_samples"] == len(epoch_plan(list(rows.train["case_id"]), 0, 0, cfg.batch_size))
    pd.testing.assert_frame_equal(r0["predictions"], r1["predictions"])
    assert list(r0["predictions"]["case_id"]) == sorted(rows.val["case_id"])
    # one process, the same weights (best.pt = the last epoch), every validation case
    state = load_state(str(tmp_path / "fold" / "best.pt"))
    if ema_decay:
        assert load_state(str(tmp_path / "fold" / "last.pt"))["ema"]["updates"] > 0
    rt = resolve_runtime("fp32", "cpu")
    model = build_model(cfg, rt)
    model.load_state_dict(state["model"])
    single = PlainSource(str(tiny_dataset), rows.train, rows.val, cfg.batch_size, cfg.seed, workers=1,
                         external=rows.external)
    ev = evaluate(model, single.val_batches(), rt)
    assert ev.case_ids == list(r0["predictions"]["case_id"])
    np.testing.assert_allclose(r0["predictions"]["prob"], ev.prob, rtol=0, atol=1e-6)
    for h in ev.head_probs:
        np.testing.assert_allclose(r0["predictions"][f"prob_{h}"], ev.head_probs[h], rtol=0, atol=1e-6)
    auc = binary_metrics(ev.labels, ev.prob, cfg.threshold_value)["auc"]
    assert r0["metrics"]["auc"] == pytest.approx(auc, abs=1e-6) == pytest.approx(r0["history"][-1]["val_auc"], abs=1e-6)
    assert r0["metrics"]["loss"] == pytest.approx(ev.loss, abs=1e-6)
    xe = evaluate(model, single.external_batches(), rt)  # the external site too (one case per rank)
    assert list(r0["external"]["case_id"]) == xe.case_ids
    np.testing.assert_allclose(r0["external"]["prob"], xe.prob, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_gives_every_parameter_a_gradient_so_ddp_needs_no_unused_search(name):
    """DistContext wraps with find_unused_parameters=False: a parameter left without a
    gradient in a step would make DDP raise at the next one."""
    import torch

    torch.manual_seed(0)
    model = create_model(name, preset="tiny").train()
    out = model(torch.rand(4, 2, 8, 32, 32))
    loss, _ = model.loss(out, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_a_tune_trial_reserves_every_ddp_worker_of_its_folds():
    from distmsfa.hpo.study import default_concurrency, trial_footprint

    cv = {"cpus_per_fold": 2.0, "data_cpus": 0.25, "gpus_per_fold": 1.0}
    one = trial_footprint(4, {**cv, "workers_per_fold": 1}, 1.0, use_gpu=True)
    two = trial_footprint(4, {**cv, "workers_per_fold": 2}, 1.0, use_gpu=True)
    assert one == {"CPU": 1.0 + 4 * 2.25, "GPU": 4.0} and two == {"CPU": 1.0 + 4 * 4.25, "GPU": 8.0}
    assert default_concurrency({"CPU": 64, "GPU": 8}, two) == 1  # 4 folds x 2 GPUs fill 8 GPUs
    quarter = trial_footprint(4, {**cv, "gpus_per_fold": 0.25}, 1.0, use_gpu=True)
    assert quarter["GPU"] == 1.0  # four folds on one GPU
