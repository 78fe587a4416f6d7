"""Search-space and study-file validation (no Ray): each bad input is one line naming the
key and the fix, raised before anything starts."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from distmsfa.config import ConfigError
from distmsfa.hpo.space import apply_point, decode_choice, parse_space
from distmsfa.hpo.study import default_concurrency, load_study, objective_value, trial_footprint
from distmsfa.training.profiles import PROFILES

REPO = Path(__file__).resolve().parents[2]


def _study(search=None, tune=None, train=None):
    return {"train": {"model_cfg": {"preset": "tiny"}, "epochs": 4, **(train or {})}, "cv": {},
            "search": search if search is not None else {"train.lr": {"loguniform": [1e-4, 1e-2]}},
            "tune": tune or {"num_samples": 2, "grace_period": 1}}


@pytest.mark.parametrize("search, words", [
    ({"train.lrr": {"uniform": [0.1, 0.2]}}, ["train.lrr", "unknown key", "did you mean 'train.lr'"]),
    ({"model.attn_dimm": {"choice": [8, 16]}}, ["model.attn_dimm", "did you mean 'model.attn_dim'"]),
    ({"lr": {"uniform": [0.1, 0.2]}}, ["search.lr", "train.<field>"]),
    ({"train.lr": {"uniform": [0.01, 0.001]}}, ["train.lr", "low (0.01) must be < high (0.001)"]),
    ({"train.lr": {"uniform": [0.01, 0.01]}}, ["train.lr", "must be < high"]),
    ({"train.lr": {"loguniform": [0.0, 0.01]}}, ["train.lr", "loguniform", "bounds > 0", "use uniform"]),
    ({"train.weight_decay": {"loguniform": [-1.0, 0.01]}}, ["train.weight_decay", "bounds > 0"]),
    ({"model.attn_heads": {"choice": []}}, ["model.attn_heads", "non-empty list"]),
    ({"model.attn_heads": {"choice": [1, "two"]}}, ["model.attn_heads", "'two'", "not a int"]),
    ({"train.batch_size": {"uniform": [2, 8]}}, ["train.batch_size", "real numbers", "use int"]),
    ({"model.loss": {"uniform": [0.0, 1.0]}}, ["model.loss", "use choice"]),
    ({"train.epochs": {"int": [1.5, 4]}}, ["train.epochs", "integer bounds"]),
    ({"model.kv_pool": {"choice": [[1, 1], [1, 2, 2]]}}, ["model.kv_pool", "[1, 1]"]),
    ({"train.lr": {"gaussian": [0.0, 1.0]}}, ["train.lr", "unknown distribution"]),
    ({"train.lr": [0.1, 0.2]}, ["train.lr", "one distribution"]),
    ({"train.lr": {"uniform": [-0.1, 0.2]}}, ["train.lr", "value -0.1 refused", "lr=-0.1 must be > 0"]),
    ({"augment.flip_prob": {"uniform": [0.0, 1.5]}}, ["augment.flip_prob", "value 1.5 refused"]),
    ({}, ["search", "empty"]),
])
def test_each_bad_search_entry_is_one_line_naming_the_key_and_the_fix(search, words):
    with pytest.raises(ConfigError) as err:
        load_study(_study(search))
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("tune, words", [
    ({"num_samples": 0}, ["num_samples=0"]),
    ({"scheduler": "hyperband"}, ["scheduler='hyperband'"]),
    ({"num_samplez": 3}, ["num_samplez", "did you mean 'num_samples'"]),
    ({"num_samples": 2, "grace_period": 9}, ["grace_period (9) exceeds train.epochs (4)"]),
    ({"num_samples": 2, "grace_period": 1, "max_t": 2}, ["max_t (2) must equal train.epochs (4)"]),
    ({"num_samples": 2, "grace_period": 1, "points_to_evaluate": [{"train.lr": 5.0}]}, ["train.lr=5.0 is outside"]),
    ({"num_samples": 2, "grace_period": 1, "points_to_evaluate": [{"train.wd": 1e-3}]}, ["'train.wd' is not a key of search"]),
    ({"num_samples": 1, "grace_period": 1, "points_to_evaluate": [{"train.lr": 1e-3}, {"train.lr": 2e-3}]},
     ["raise num_samples"]),
])
def test_bad_tune_settings_are_refused(tune, words):
    with pytest.raises(ConfigError) as err:
        load_study(_study(tune=tune))
    for w in words:
        assert w in str(err.value), str(err.value)


def test_unknown_section_and_model_are_refused():
    with pytest.raises(ConfigError, match="unknown section 'serch'.*did you mean 'search'"):
        load_study({**_study(), "serch": {}})
    with pytest.raises(ConfigError, match="did you mean"):
        load_study(_study(), model="msfanett")


def test_a_valid_space_parses_and_points_apply_to_the_right_sections():
    space = parse_space({"train.lr": {"loguniform": [1e-5, 1e-3]}, "model.kv_pool": {"choice": [[1, 1, 1], [1, 2, 2]]},
                         "augment.rotate_deg": {"int": [0, 20]}, "model.dropout": {"uniform": [0.0, 0.5]}}, "msfanet")
    assert space["train.lr"].log and space["augment.rotate_deg"].kind == "int"
    # Optuna's categorical values must be scalars: lists travel as JSON and come back as lists
    enc = space["model.kv_pool"].to_optuna().choices
    assert all(isinstance(c, str) for c in enc) and decode_choice(enc[1]) == [1, 2, 2]
    base = {"train": {"lr": 1e-4, "model_cfg": {"preset": "tiny"}, "augment": {"flip_prob": 0.5}}, "cv": {}}
    out = apply_point(base, {"train.lr": 3e-4, "model.kv_pool": enc[1], "augment.rotate_deg": 7})
    assert out["train"]["lr"] == 3e-4
    assert out["train"]["model_cfg"] == {"preset": "tiny", "kv_pool": [1, 2, 2]}
    assert out["train"]["augment"] == {"flip_prob": 0.5, "rotate_deg": 7}
    assert base["train"]["lr"] == 1e-4  # the base is not changed


def test_shipped_studies_load_and_match_the_embedded_profiles():
    for name in ("quickstart", "paper"):
        with open(REPO / "tune_configs" / f"{name}.yaml", encoding="utf-8") as fh:
            assert yaml.safe_load(fh) == PROFILES[name], name
        from_file = load_study(REPO / "tune_configs" / f"{name}.yaml")
        assert from_file.to_dict() == load_study(name).to_dict()
    paper = load_study("paper")
    # the paper's own settings are the first trial
    first = paper.points[0]
    assert first["train.lr"] == 1.0e-4 and first["train.batch_size"] == 6 and paper.base["train"]["epochs"] == 300


def test_objective_and_concurrency():
    curve = [0.5, 0.7, float("nan"), 0.6, 0.8]
    assert objective_value(curve, "last", 3) == 0.8
    assert objective_value(curve, "best", 3) == 0.8
    assert objective_value(curve, "smoothed", 3) == pytest.approx((0.7 + 0.6 + 0.8) / 3)
    assert math.isnan(objective_value([float("nan")], "smoothed", 3))
    cv = {"cpus_per_fold": 1.0, "data_cpus": 0.25, "gpus_per_fold": 1.0}
    cpu = trial_footprint(2, cv, 0.5, use_gpu=False)
    assert cpu == {"CPU": 3.0}
    assert default_concurrency({"CPU": 6.0}, cpu) == 2 and default_concurrency({"CPU": 5.9}, cpu) == 1
    gpu = trial_footprint(4, {**cv, "gpus_per_fold": 0.5}, 1.0, use_gpu=True)
    # 8 GPUs / (4 folds x 0.5) = 4 trials, unless CPUs run out first
    assert default_concurrency({"CPU": 64.0, "GPU": 8.0}, gpu) == 4
    assert default_concurrency({"CPU": 12.0, "GPU": 8.0}, gpu) == 2
