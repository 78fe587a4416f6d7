"""The fold ensemble's inference path: batched, padded to a fixed shape, compiled, precision
words (docs/bundle.md, "The inference path").  CPU; the compile test is the only slow one
that compiles (one compile of the tiny bundle)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distmsfa.bundle import load_bundle
from distmsfa.data.index import load_pair, read_index


def _x(data) -> np.ndarray:
    idx = read_index(data)
    return np.stack([load_pair(data, r).astype(np.float32) for r in idx.to_dict("records")])


def _previous_path(pred, x: np.ndarray, batch_size: int):
    """The predictor's path before this change, written out: per chunk, each fold model through
    the training loop's ``_forward`` and ``predict_proba``, one transfer per fold and head."""
    from distmsfa.training.loop import _forward

    fold, heads = [], {}
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            t = torch.from_numpy(x[i:i + batch_size])
            probs, hs = [], {}
            for m in pred.models:
                out = _forward(m, t, pred._rt)
                probs.append(m.predict_proba(out).float().cpu().numpy())
                for h, v in out.items():
                    hs.setdefault(h, []).append(torch.sigmoid(v.float()).cpu().numpy())
            fold.append(np.stack(probs, 1))
            for h, v in hs.items():
                heads.setdefault(h, []).append(np.stack(v, 1))
    fp = np.concatenate(fold)
    return fp, {h: np.concatenate(v) for h, v in heads.items()}


def test_cpu_defaults_and_fp32_equal_the_previous_path(tiny_bundle, tiny_data):
    pred = load_bundle(tiny_bundle, device="cpu")
    assert (pred.precision, pred.compiled, pred.pad, pred.batch_size) == ("fp32", False, False, 8)
    x = _x(tiny_data)
    out = pred.predict(x, batch_size=5)
    ref_fold, ref_heads = _previous_path(pred, x, 5)
    for k in ("prob", "fold_probs"):
        assert out[k].dtype == np.float32
    np.testing.assert_allclose(out["fold_probs"], ref_fold, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["prob"], ref_fold.mean(1), atol=1e-6, rtol=0)
    assert out["head_probs"].keys() == ref_heads.keys()
    for h in ref_heads:
        np.testing.assert_allclose(out["head_probs"][h], ref_heads[h], atol=1e-6, rtol=0)
    fp32 = load_bundle(tiny_bundle, device="cpu", precision="fp32", compile="off").predict(x)
    np.testing.assert_allclose(fp32["fold_probs"], ref_fold, atol=1e-6, rtol=0)


def test_padding_changes_no_prediction(tiny_bundle, tiny_data):
    x = _x(tiny_data)[:11]  # chunks of 8: one full, one of 3 padded with 5 zero cases
    plain = load_bundle(tiny_bundle, device="cpu")
    padded = load_bundle(tiny_bundle, device="cpu")
    padded.pad = True
    a, b = plain.predict(x), padded.predict(x)
    assert b["fold_probs"].shape == (11, 2) and b["head_probs"]["fuse"].shape == (11, 2)
    np.testing.assert_allclose(b["fold_probs"], a["fold_probs"], atol=1e-6, rtol=0)
    for h in a["head_probs"]:
        np.testing.assert_allclose(b["head_probs"][h], a["head_probs"][h], atol=1e-6, rtol=0)
    # one case padded to 8: the same as that case among real ones
    np.testing.assert_allclose(padded.predict(x[9:10])["fold_probs"], a["fold_probs"][9:10], atol=1e-6, rtol=0)


def test_a_case_gets_the_same_result_in_a_batch_of_3_and_of_8(tiny_bundle, tiny_data):
    x = _x(tiny_data)[:8]
    pred = load_bundle(tiny_bundle, device="cpu")
    three = pred.predict(x[:3])
    eight = pred.predict(x)
    np.testing.assert_allclose(three["fold_probs"], eight["fold_probs"][:3], atol=1e-6, rtol=0)
    np.testing.assert_allclose(three["prob"], eight["prob"][:3], atol=1e-6, rtol=0)
    assert (three["label"] == eight["label"][:3]).all()
    # the cases differ, so equal rows are not a constant output
    assert np.ptp(eight["prob"]) > 1e-4


def test_bf16_on_cpu_when_asked(tiny_bundle, tiny_data):
    x = _x(tiny_data)[:4]
    ref = load_bundle(tiny_bundle, device="cpu").predict(x)
    bf = load_bundle(tiny_bundle, device="cpu", precision="bf16")
    assert bf.precision == "bf16" and "bf16" in repr(bf)
    out = bf.predict(x)
    assert out["prob"].dtype == np.float32
    np.testing.assert_allclose(out["prob"], ref["prob"], atol=0.05)


@pytest.mark.parametrize("kw, words", [({"precision": "fp16"}, "auto, bf16, fp32"),
                                       ({"compile": "yes"}, "auto, on, off"),
                                       ({"batch_size": 0}, "batch_size")])
def test_bad_words_are_refused(tiny_bundle, kw, words):
    with pytest.raises(ValueError, match=words):
        load_bundle(tiny_bundle, device="cpu", **kw)


@pytest.mark.slow
def test_compiled_on_cpu_matches_eager_and_never_recompiles(tiny_bundle, tiny_data, monkeypatch):
    import torch._dynamo

    torch._dynamo.reset()
    x = _x(tiny_data)  # 18 cases: chunks 4, 4, 4, 4, 2 (padded)
    eager = load_bundle(tiny_bundle, device="cpu").predict(x)
    pred = load_bundle(tiny_bundle, device="cpu", compile="on", batch_size=4)
    assert pred.compiled and pred.pad and pred.precision == "fp32"
    assert pred.warmup() > 0 and pred.compile_s is not None
    # after the warm-up every batch size (and every fold model) runs on the one compiled graph
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    out = pred.predict(x, batch_size=7)  # the argument cannot change the compiled shape
    np.testing.assert_allclose(out["fold_probs"], eager["fold_probs"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["prob"], eager["prob"], atol=1e-4, rtol=0)
    for h in eager["head_probs"]:
        np.testing.assert_allclose(out["head_probs"][h], eager["head_probs"][h], atol=1e-4, rtol=0)
    one = pred.predict(x[5:6])
    np.testing.assert_allclose(one["fold_probs"], eager["fold_probs"][5:6], atol=1e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_defaults_compiled_bf16_close_to_fp32_without_recompiles(tiny_bundle, tiny_data, monkeypatch):
    import torch._dynamo

    torch._dynamo.reset()
    x = _x(tiny_data)
    ref = load_bundle(tiny_bundle, device="cpu").predict(x)
    pred = load_bundle(tiny_bundle, device="cuda", batch_size=4)  # auto: compiled, bf16, channels_last_3d
    assert pred.compiled and pred.precision == "bf16" and pred._rt.channels_last
    pred.warmup()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    out = pred.predict(x)
    assert out["prob"].dtype == np.float32
    np.testing.assert_allclose(out["prob"], ref["prob"], atol=0.05)
    np.testing.assert_allclose(pred.predict(x[:1])["prob"], out["prob"][:1], atol=1e-4)  # padded 1 -> 4
    fp32 = load_bundle(tiny_bundle, device="cuda", precision="fp32", compile="off").predict(x)
    np.testing.assert_allclose(fp32["prob"], ref["prob"], atol=1e-4)
