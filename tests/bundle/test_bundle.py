"""Bundle export, verification and the fold-ensemble predictor, from a real tiny CV run."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from distmsfa.bundle import BundleError, bundle_checksum, bundle_info, export_bundle, load_bundle, verify_bundle
from distmsfa.data.index import load_pair, read_index
from distmsfa.evaluation.metrics import binary_metrics, youden_threshold
from distmsfa.models import registry

pytestmark = pytest.mark.slow


def _cases(data, external=None):
    idx = read_index(data)
    if external is not None:
        idx = idx[idx["is_external"] == external]
    return idx, np.stack([load_pair(data, r).astype(np.float32) for r in idx.to_dict("records")])


def _by_hand(run, fold_ids, x, name="best.pt"):
    """Each fold's checkpoint run as in training (fp32, eval), probabilities averaged."""
    probs = []
    for f in fold_ids:
        ck = torch.load(run / "folds" / f"fold{f}" / name, map_location="cpu", weights_only=True)
        model = registry.create_model("msfanet", preset="tiny")
        model.load_state_dict(ck["model"])
        model.eval()
        with torch.no_grad():
            probs.append(model.predict_proba(model(torch.from_numpy(x))).numpy())
    return np.stack(probs, 1)


def test_export_writes_the_documented_layout(tiny_bundle, tiny_run):
    files = sorted(p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file())
    assert files == ["MODEL_CARD.md", "bundle.json", "checksums.json", "oof_predictions.csv",
                     "weights/fold0.safetensors", "weights/fold1.safetensors"]
    def no_nan(c):
        raise AssertionError(f"bundle.json holds {c}: not strict JSON")

    meta = json.loads((tiny_bundle / "bundle.json").read_text(encoding="utf-8"), parse_constant=no_nan)
    assert meta["format"] == "distmsfa-bundle/1" and meta["folds"] == [0, 1] and meta["checkpoint"] == "selected"
    run_summary = json.loads((tiny_run / "summary.json").read_text(encoding="utf-8"))
    assert meta["run_summary"]["folds"].keys() == run_summary["folds"].keys()
    # same policy as the run (youden): the bundle's CV metrics are the run's summary
    assert meta["cv_metrics"]["mean"] == pytest.approx(run_summary["mean"], nan_ok=True)
    assert meta["cv_metrics"]["threshold"] == pytest.approx(run_summary["threshold"])
    best = {f: json.loads((tiny_run / "folds" / f"fold{f}" / "result.json").read_text(encoding="utf-8"))["best_epoch"] for f in (0, 1)}
    assert meta["checkpoint_epochs"] == {str(f): e for f, e in best.items()}
    assert meta["model"] == {"name": "msfanet", "model_cfg": {"preset": "tiny"}}
    assert "OPTIMISTIC" in meta["selection"] and "OPTIMISTIC" in meta["cv_metrics"]["estimate"]
    assert meta["preprocess"]["crop_size"] == [8, 32, 32] and meta["preprocess"]["spacing_dhw"] == [4.0, 0.5, 0.5]
    assert meta["fingerprint"]["params"]["resolved_spacing_dhw"] == [4.0, 0.5, 0.5]
    # the threshold: Youden on the run's pooled out-of-fold predictions, which the bundle carries
    oof = pd.read_csv(tiny_bundle / "oof_predictions.csv")
    run_oof = pd.read_csv(tiny_run / "oof_predictions.csv")
    assert np.allclose(oof.sort_values("case_id")["prob"], run_oof.sort_values("case_id")["prob"])
    assert meta["threshold"]["policy"] == "youden"
    assert meta["threshold"]["value"] == pytest.approx(youden_threshold(oof["label"], oof["prob"]))
    assert meta["cv_metrics"]["pooled_oof"]["auc"] == pytest.approx(
        binary_metrics(oof["label"], oof["prob"], meta["threshold"]["value"])["auc"])
    sums = json.loads((tiny_bundle / "checksums.json").read_text(encoding="utf-8"))
    assert sorted(sums) == [f for f in files if f != "checksums.json"]
    card = (tiny_bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Research use only" in card and "OPTIMISTIC" in card and f"{meta['threshold']['value']:.3f}" in card
    assert verify_bundle(tiny_bundle) == meta


def test_prediction_equals_the_fold_models_by_hand(tiny_bundle, tiny_run, tiny_data):
    pred = load_bundle(tiny_bundle, device="cpu")
    _, x = _cases(tiny_data)
    out = pred.predict(x, batch_size=5)  # batches that do not divide the cases
    ref = _by_hand(tiny_run, [0, 1], x)
    assert out["fold_probs"].shape == (len(x), 2)
    np.testing.assert_allclose(out["fold_probs"], ref, atol=1e-6)
    np.testing.assert_allclose(out["prob"], ref.mean(1), atol=1e-6)
    assert (out["label"] == (out["prob"] >= pred.threshold)).all()
    assert set(out["head_probs"]) == {"fuse", "t1", "fs"} and out["head_probs"]["fuse"].shape == (len(x), 2)
    assert pred.folds == [0, 1] and pred.model_name == "msfanet" and pred.crop_size == (8, 32, 32)
    assert pred.spacing_dhw == (4.0, 0.5, 0.5) and pred.checksum == bundle_checksum(tiny_bundle)
    # the fold models reproduce the run's own out-of-fold predictions of the selected checkpoints
    oof = pd.read_csv(tiny_run / "oof_predictions.csv", dtype={"case_id": str})
    idx = read_index(tiny_data)
    pos = {c: i for i, c in enumerate(idx["case_id"])}
    got = [out["fold_probs"][pos[c], f] for c, f in zip(oof["case_id"], oof["fold"])]
    np.testing.assert_allclose(got, oof["prob"], atol=1e-5)


def test_predict_refuses_bad_input(tiny_bundle):
    pred = load_bundle(tiny_bundle, device="cpu")
    with pytest.raises(ValueError, match=r"crops of \(8, 32, 32\)"):
        pred.predict(np.zeros((1, 2, 8, 32, 30), np.float32))
    with pytest.raises(ValueError, match="one case"):
        pred.predict(np.zeros((2, 8, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pred.predict(np.full((1, 2, 8, 32, 32), 300.0, np.float32))


def test_loading_never_unpickles(tiny_bundle, tiny_data, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a bundle load must not unpickle")

    for mod, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(mod, attr, boom)
    pred = load_bundle(tiny_bundle, device="cpu")
    _, x = _cases(tiny_data)
    assert pred.predict(x[:3])["prob"].shape == (3,)
    assert bundle_info(tiny_bundle)["verified"]


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _refused(path, *words):
    with pytest.raises(BundleError) as ei:
        verify_bundle(path)
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    with pytest.raises(BundleError):
        load_bundle(path, device="cpu")
    return msg


def test_one_altered_byte_in_a_weight_file_is_refused(copy):
    f = copy / "weights" / "fold1.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    _refused(copy, "weights/fold1.safetensors", "altered")


def test_a_removed_file_is_refused(copy):
    (copy / "weights" / "fold0.safetensors").unlink()
    _refused(copy, "weights/fold0.safetensors", "missing")


@pytest.mark.parametrize("rel", ["evil.pkl", "weights/fold0.pt", "weights/extra.safetensors"])
def test_an_extra_file_is_refused(copy, rel):
    (copy / rel).write_bytes(pickle.dumps({"x": 1}))
    _refused(copy, rel, "foreign")


def test_a_pickle_listed_in_the_manifest_is_still_refused(copy):
    from distmsfa.bundle.layout import sha256_file

    (copy / "evil.pkl").write_bytes(pickle.dumps({"x": 1}))
    sums = json.loads((copy / "checksums.json").read_text(encoding="utf-8"))
    sums["evil.pkl"] = sha256_file(copy / "evil.pkl")
    (copy / "checksums.json").write_text(json.dumps(sums))
    _refused(copy, "evil.pkl", "foreign")


def test_a_broken_or_missing_manifest_is_refused(copy):
    (copy / "checksums.json").write_text("{not json")
    _refused(copy, "checksums.json", "not valid JSON")
    (copy / "checksums.json").unlink()
    _refused(copy, "checksums.json", "missing")


def test_an_edited_bundle_json_is_refused(copy):
    meta = json.loads((copy / "bundle.json").read_text(encoding="utf-8"))
    meta["threshold"]["value"] = 0.01
    (copy / "bundle.json").write_text(json.dumps(meta))
    _refused(copy, "bundle.json", "altered")


def test_a_symlink_is_refused(copy, tmp_path):
    (tmp_path / "outside.json").write_text("{}")
    (copy / "link.json").symlink_to(tmp_path / "outside.json")
    _refused(copy, "link.json")


def test_export_refuses_and_force(tiny_run, tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="already exists.*--force"):
        export_bundle(tiny_run, tiny_bundle)
    (tmp_path / "notabundle").mkdir()
    (tmp_path / "notabundle" / "thesis.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle"):
        export_bundle(tiny_run, tmp_path / "notabundle", force=True)
    assert (tmp_path / "notabundle" / "thesis.txt").exists()
    with pytest.raises(BundleError, match="run.json: missing"):
        export_bundle(tmp_path / "notabundle", tmp_path / "b")
    out = export_bundle(tiny_run, tmp_path / "b", threshold_policy="fixed")
    again = export_bundle(tiny_run, out, force=True)
    assert json.loads((again / "bundle.json").read_text(encoding="utf-8"))["threshold"]["policy"] == "youden"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_export_refuses_an_unfinished_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "folds" / "fold1" / "result.json").unlink()
    with pytest.raises(BundleError, match="fold 1 of the run did not finish"):
        export_bundle(run, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_fixed_threshold_and_last_checkpoint(tiny_run, tiny_data, tmp_path):
    b = export_bundle(tiny_run, tmp_path / "last", checkpoint="last", threshold_policy="fixed")
    meta = verify_bundle(b)
    assert meta["threshold"] == {"value": 0.5, "policy": "fixed", "source": "pooled out-of-fold predictions",
                                 "n_cases": 16}
    assert meta["checkpoint"] == "last" and "OPTIMISTIC" not in meta["cv_metrics"]["estimate"]
    assert meta["checkpoint_epochs"] == {"0": 1, "1": 1}
    # the recomputed out-of-fold predictions are the last epoch's: their AUC is the history's last val_auc
    for f in (0, 1):
        hist = pd.read_csv(tiny_run / "folds" / f"fold{f}" / "history.csv")
        fold_auc = meta["cv_metrics"]["folds"][str(f)]["auc"]
        last = hist["val_auc"].iloc[-1]
        assert (np.isnan(last) and fold_auc is None) or fold_auc == pytest.approx(last, abs=1e-6)
    _, x = _cases(tiny_data, external=True)
    np.testing.assert_allclose(load_bundle(b, device="cpu").predict(x)["fold_probs"],
                               _by_hand(tiny_run, [0, 1], x, "last.pt"), atol=1e-6)


def test_bundle_info(tiny_bundle):
    info = bundle_info(tiny_bundle)
    assert info["model"] == "msfanet" and info["folds"] == [0, 1] and info["files"] == 6
    assert info["checksum"] == bundle_checksum(tiny_bundle) and len(info["checksum"]) == 64
    assert info["size_bytes"] == sum(p.stat().st_size for p in tiny_bundle.rglob("*") if p.is_file())
    assert info["crop_size"] == [8, 32, 32] and "OPTIMISTIC" in info["cv_estimate"]


def test_gradcam_is_the_mean_of_the_fold_maps(tiny_bundle, tiny_data):
    from distmsfa.models.gradcam import gradcam

    pred = load_bundle(tiny_bundle, device="cpu")
    _, x = _cases(tiny_data)
    x = x[1:2]  # one axSpA case
    maps = pred.gradcam(x)
    assert set(maps) == {"t1", "fs", "fuse"}
    ref = [gradcam(m, torch.from_numpy(x)) for m in pred.models]
    for k, v in maps.items():
        assert v.shape == (1, *pred.crop_size) and v.dtype == np.float32
        np.testing.assert_allclose(v, np.mean([r[k] for r in ref], 0), atol=1e-5)
        assert 0.0 <= v.min() and v.max() <= 1.0 + 1e-6
    assert set(pred.gradcam(x, branches=["fuse"])) == {"fuse"}


def test_weights_that_do_not_fit_the_recorded_model_are_refused(copy):
    """A self-consistent bundle (checksums rewritten) whose bundle.json names another model config."""
    from distmsfa.bundle.layout import write_checksums

    meta = json.loads((copy / "bundle.json").read_text(encoding="utf-8"))
    meta["model"]["model_cfg"] = {"preset": "tiny", "widths": [8, 16, 32, 64]}
    (copy / "bundle.json").write_text(json.dumps(meta))
    write_checksums(copy)
    verify_bundle(copy)
    with pytest.raises(BundleError, match=r"weights/fold0.safetensors: weights do not fit model 'msfanet'"):
        load_bundle(copy, device="cpu")


def test_the_bundle_core_imports_no_ray(tiny_bundle):
    import subprocess
    import sys

    code = ("import sys, numpy as np; from distmsfa.bundle import load_bundle; import distmsfa.evaluation.stats; "
            f"load_bundle({str(tiny_bundle)!r}, device='cpu').predict(np.zeros((1, 2, 8, 32, 32), np.float32)); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_last_checkpoint_of_a_run_with_weight_averaging_exports_the_averaged_weights(tiny_data, tmp_path):
    """train.ema_decay: the run scored the EMA's weights every epoch, so a `last` bundle must hold
    them (not last.pt's raw training weights): its recomputed fold AUCs are the history's last."""
    from distmsfa.training.cv import run_cv

    run = tmp_path / "run"
    run_cv(tiny_data, "msfanet", profile="cpu", plain=True, out=run, progress=False,
           overrides={"epochs": 2, "batch_size": 4, "num_threads": 1, "selection": "last", "ema_decay": 0.8})
    assert json.loads((run / "run.json").read_text())["train"]["ema_decay"] == 0.8  # recorded with the run
    assert json.loads((run / "summary.json").read_text())["ema_decay"] == 0.8
    b = export_bundle(run, tmp_path / "last", checkpoint="last", threshold_policy="fixed")
    meta = verify_bundle(b)
    for f in (0, 1):
        last = torch.load(run / "folds" / f"fold{f}" / "last.pt", map_location="cpu", weights_only=False)
        assert any(not torch.equal(v, last["model"][k]) for k, v in last["ema"]["model"].items()
                   if v.is_floating_point())
        hist = pd.read_csv(run / "folds" / f"fold{f}" / "history.csv")
        fold_auc, want = meta["cv_metrics"]["folds"][str(f)]["auc"], hist["val_auc"].iloc[-1]
        assert (np.isnan(want) and fold_auc is None) or fold_auc == pytest.approx(want, abs=1e-6)
    # and the prediction equals last.pt's EMA weights scored by hand
    _, x = _cases(tiny_data, external=True)
    probs = []
    for f in (0, 1):
        last = torch.load(run / "folds" / f"fold{f}" / "last.pt", map_location="cpu", weights_only=True)
        model = registry.create_model("msfanet", preset="tiny")
        model.load_state_dict(last["ema"]["model"])
        with torch.no_grad():
            probs.append(model.eval().predict_proba(model(torch.from_numpy(x))).numpy())
    np.testing.assert_allclose(load_bundle(b, device="cpu").predict(x)["fold_probs"], np.stack(probs, 1), atol=1e-6)
