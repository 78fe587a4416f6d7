"""The scoring service end to end: a real Serve on 127.0.0.1, a bundle made in the test,
real files, a real httpx client.  One module-scoped app serves every test (Serve startup
is the slow part)."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from _bundle import make_bundle
from _files import (image_2d, image_4d, image_nan, nifti_bytes, random_bytes, read_bytes, shifted, truncated_gz,
                    zip_bomb, zip_entries, zip_folder)

pytestmark = [pytest.mark.ray, pytest.mark.slow]
KEY = "test-key-" + "x" * 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("serve-bundle"))


@pytest.fixture(scope="module")
def server(bundle, ray_cluster):
    import ray
    from ray import serve

    from distmsfa.serving import auth
    from distmsfa.serving.ray_serve import build_app
    from distmsfa.serving.settings import ServeSettings

    ray.init(address=ray_cluster.address, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    settings = ServeSettings(bundle=str(bundle), api_key_sha256=auth.key_digest(KEY), max_upload_mb=12.0,
                             max_unzipped_mb=10.0, body_timeout_s=2.0, request_timeout_s=60.0,
                             max_ongoing_requests=4, max_queued_requests=4, retry_after_s=1.0,
                             max_batch=4, batch_wait_s=0.25, cpus_per_preprocess=1.0)
    serve.run(build_app(settings), name="distmsfa", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while httpx.get(url + "/v1/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "service not ready"
        time.sleep(0.5)
    yield {"url": url, "port": port, "settings": settings}
    serve.delete("distmsfa")
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def predictor(bundle):
    from distmsfa.bundle import load_bundle

    return load_bundle(bundle, device="cpu")


def _parts(row: dict, roi: str = "label_map", **extra) -> dict:
    parts = {"t1": ("t1.nii.gz", read_bytes(row["t1"])), "fs": ("fs.nii.gz", read_bytes(row["fs"])),
             "case_id": row["case_id"]}
    if roi == "label_map":
        parts["roi"] = ("roi.nii.gz", read_bytes(row["roi"]))
    else:
        parts["roi_center_mm"] = roi
    parts.update(extra)
    return parts


def post(server, parts: dict, key: str | None = KEY, query: str = "", timeout: float = 120.0) -> httpx.Response:
    from distmsfa.serving.uploads import encode_multipart

    body, ctype = encode_multipart(parts)
    headers = {"content-type": ctype}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(server["url"] + "/v1/predict" + query, content=body, headers=headers, timeout=timeout)


def _in_process(predictor, parts: dict) -> dict:
    from distmsfa.serving.service import score_in_process
    from distmsfa.serving.uploads import encode_multipart, MultipartCollector

    body, ctype = encode_multipart(parts)
    c = MultipartCollector(ctype)
    c.feed(body)
    return score_in_process(predictor, c.finish())


def _roi_center(row) -> str:
    lab = sitk.ReadImage(row["roi"])
    idx = np.argwhere(sitk.GetArrayViewFromImage(lab) > 0).mean(0)[::-1]
    return ",".join(f"{v:.3f}" for v in lab.TransformContinuousIndexToPhysicalPoint(tuple(float(i) for i in idx)))


def test_answer_equals_in_process_prediction(server, predictor, syn_cases):
    row = syn_cases["rows"][0]
    for roi in ("label_map", _roi_center(row)):
        parts = _parts(row, roi)
        r = post(server, parts)
        assert r.status_code == 200, r.text
        a = r.json()
        ref = _in_process(predictor, parts)
        assert a["case_id"] == row["case_id"]
        assert abs(a["probability"] - ref["probability"]) < 1e-5
        assert np.allclose([f["probability"] for f in a["folds"]], [f["probability"] for f in ref["folds"]], atol=1e-5)
        for f, g in zip(a["folds"], ref["folds"]):
            assert set(f["heads"]) == set(g["heads"]) and all(abs(f["heads"][h] - g["heads"][h]) < 1e-5 for h in f["heads"])
        assert a["label"] == int(a["probability"] >= a["threshold"]) == ref["label"]
        assert a["threshold"] == pytest.approx(predictor.threshold)
        assert a["model"]["checksum"] == predictor.checksum and a["model"]["name"] == "msfanet"
        assert a["preprocessing"]["crop_size_dhw"] == list(predictor.crop_size)
        assert a["preprocessing"]["crop_origin_mm"] == pytest.approx(ref["preprocessing"]["crop_origin_mm"])
        assert a["warnings"] == ref["warnings"]
        assert {"upload", "preprocess", "model", "total"} <= set(a["timing_ms"])


def test_dicom_zip_answer_has_no_patient_identifiers(server, predictor, syn_cases):
    d = syn_cases["dicom"]
    parts = {"t1": ("t1.zip", zip_folder(d["t1"])), "fs": ("fs.zip", zip_folder(d["fs"])),
             "roi": ("roi.nii.gz", read_bytes(d["roi"])), "case_id": "ext-1"}
    r = post(server, parts)
    assert r.status_code == 200, r.text
    assert abs(r.json()["probability"] - _in_process(predictor, parts)["probability"]) < 1e-5
    assert d["patient_id"] not in r.text and r.json()["case_id"] == "ext-1"


def _bad_inputs(syn_cases) -> dict:
    row = syn_cases["rows"][0]
    t1b, fsb, roib = read_bytes(row["t1"]), read_bytes(row["fs"]), read_bytes(row["roi"])
    t1, roi = sitk.ReadImage(row["t1"]), sitk.ReadImage(row["roi"])
    fs = sitk.ReadImage(row["fs"])
    base = {"t1": ("t1.nii.gz", t1b), "fs": ("fs.nii.gz", fsb), "roi": ("roi.nii.gz", roib)}
    coarse = sitk.Resample(roi, [s // 2 for s in roi.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           roi.GetOrigin(), [2 * v for v in roi.GetSpacing()], roi.GetDirection())
    two = Path(syn_cases["dicom"]["t1"]).parent / "_two"
    if not two.exists():
        shutil.copytree(syn_cases["dicom"]["t1"], two / "a")
        shutil.copytree(syn_cases["dicom"]["fs"], two / "b")
    return {
        "missing part": ({"t1": base["t1"], "roi": base["roi"]}, 422, "missing_part"),
        "unknown field": ({**base, "patient_name": "x"}, 400, "unknown_field"),
        "truncated file": ({**base, "t1": ("t1.nii.gz", truncated_gz(t1b))}, 422, "invalid_image"),
        "random bytes .nii": ({**base, "t1": ("t1.nii", random_bytes())}, 422, "invalid_image"),
        "2-D image": ({**base, "t1": ("t1.nii.gz", image_2d())}, 422, "invalid_image"),
        "4-D series": ({**base, "fs": ("fs.nii.gz", image_4d())}, 422, "invalid_image"),
        "NaN voxels": ({**base, "t1": ("t1.nii.gz", image_nan(t1))}, 422, "invalid_image"),
        "no overlap": ({**base, "fs": ("fs.nii.gz", nifti_bytes(shifted(fs, 2000.0)))}, 422, "invalid_image"),
        "empty roi": ({**base, "roi": ("roi.nii.gz", nifti_bytes(roi * 0))}, 422, "invalid_image"),
        "roi outside": ({**base, "roi": ("roi.nii.gz", nifti_bytes(shifted(roi, 900.0)))}, 422, "invalid_image"),
        "roi other grid": ({**base, "roi": ("roi.nii.gz", nifti_bytes(coarse))}, 422, "invalid_image"),
        "center outside both": ({"t1": base["t1"], "fs": base["fs"], "roi_center_mm": "5000,5000,5000"}, 422,
                                "invalid_image"),
        "oversize": ({**base, "t1": ("t1.nii", b"\0" * (13 << 20))}, 413, "payload_too_large"),
        "zip two series": ({**base, "t1": ("t1.zip", zip_folder(two))}, 422, "invalid_image"),
        "zip traversal": ({**base, "t1": ("t1.zip", zip_entries({"../../x.dcm": b"x"}))}, 422, "unsafe_zip"),
        "zip bomb": ({**base, "t1": ("t1.zip", zip_bomb(16))}, 413, "zip_too_large"),
    }


def test_bad_inputs_get_json_4xx_and_the_service_keeps_serving(server, syn_cases):
    good = _parts(syn_cases["rows"][1])
    for name, (parts, status, code) in _bad_inputs(syn_cases).items():
        r = post(server, parts)
        assert r.status_code == status, (name, r.status_code, r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["message"] and "\n" not in err["message"], (name, err)
        assert "Traceback" not in r.text
        ok = post(server, good)
        assert ok.status_code == 200, (name, ok.text)


def test_wrong_content_type_keys_and_routes(server, syn_cases):
    url = server["url"]
    r = httpx.post(url + "/v1/predict", content=b"{}", headers={"content-type": "application/json",
                                                                "x-api-key": KEY})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    good = _parts(syn_cases["rows"][1])
    for key in (None, "wrong-key-" + "y" * 20):
        r = post(server, good, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    assert post(server, good, key=KEY).status_code == 200
    r = httpx.get(url + "/v1/model")
    assert r.status_code == 401
    card = httpx.get(url + "/v1/model", headers={"x-api-key": KEY}).json()
    assert card["threshold"] > 0 and card["model"]["checksum"] and "auc" in json.dumps(card["cv_metrics"])
    health = httpx.get(url + "/v1/health").json()
    assert health["status"] == "ready" and isinstance(health["in_flight"], int)
    r = httpx.get(url + "/v1/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_slow_client_that_never_finishes_its_body_gets_408(server, syn_cases):
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: multipart/form-data; boundary=abc\r\nContent-Length: 100000\r\n\r\n").encode()
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as s:
        s.sendall(head + b"--abc\r\nContent-Disposition: form-data; name=\"t1\"; filename=\"t1.nii\"\r\n\r\n" + b"x" * 100)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    assert status == 408, data[:300]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_timeout"
    assert time.monotonic() - t0 < 25
    assert post(server, _parts(syn_cases["rows"][1])).status_code == 200


async def _concurrent(server, parts: dict, n: int) -> list[httpx.Response]:
    from distmsfa.serving.uploads import encode_multipart

    body, ctype = encode_multipart(parts)
    headers = {"content-type": ctype, "x-api-key": KEY}
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as c:
        return await asyncio.gather(*(c.post(server["url"] + "/v1/predict", content=body, headers=headers)
                                      for _ in range(n)))


def test_concurrent_requests_are_batched(server, syn_cases):
    rs = asyncio.run(_concurrent(server, _parts(syn_cases["rows"][0]), 4))
    assert [r.status_code for r in rs] == [200] * 4
    assert len({round(r.json()["probability"], 6) for r in rs}) == 1  # same case, same answer, batched or not
    stats = httpx.get(server["url"] + "/v1/stats", headers={"x-api-key": KEY}).json()
    assert max(int(k) for k in stats["batch_sizes"]) > 1, stats


def test_burst_over_the_queue_limit_gets_429_with_retry_after(server, syn_cases):
    rs = asyncio.run(_concurrent(server, _parts(syn_cases["rows"][0]), 24))
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 429, 503}, codes
    refused = [r for r in rs if r.status_code in (429, 503)]
    assert refused and codes.count(200) >= 4, codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert post(server, _parts(syn_cases["rows"][1])).status_code == 200


def test_gradcam_heat_maps_in_the_input_space(server, syn_cases):
    row = syn_cases["rows"][0]
    r = post(server, _parts(row), query="?gradcam=true")
    assert r.status_code == 200, r.text
    g = r.json()["gradcam"]
    assert base64.b64decode(g["montage_png_base64"])[:8] == b"\x89PNG\r\n\x1a\n"
    t1 = sitk.ReadImage(row["t1"])
    import tempfile

    assert set(g["heatmaps"]) >= {"t1", "fs"}
    for name, h in g["heatmaps"].items():
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "m.nii.gz")
            Path(p).write_bytes(base64.b64decode(h["nifti_gz_base64"]))
            img = sitk.ReadImage(p)
        assert img.GetSize() == t1.GetSize()
        assert np.allclose(img.GetSpacing(), t1.GetSpacing(), atol=1e-4)
        assert np.allclose(img.GetOrigin(), t1.GetOrigin(), atol=1e-3)
        arr = sitk.GetArrayViewFromImage(img)
        assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1 + 1e-5
        # zero outside the crop: the voxels far from the ROI centre carry no heat
        assert (arr == 0).mean() > 0.2


def test_score_over_http_equals_offline_metrics(server, predictor, syn_cases, tmp_path):
    from typer.testing import CliRunner

    from distmsfa.cli.main import app
    from distmsfa.evaluation.stats import metrics_with_ci
    from distmsfa.serving.client import score_manifest

    rows = syn_cases["more"]
    man = pd.DataFrame([{k: r[k] for k in ("case_id", "patient_id", "label", "site", "t1", "fs", "roi")} for r in rows])
    bad = dict(man.iloc[0])
    bad_t1 = tmp_path / "bad.nii.gz"
    bad_t1.write_bytes(random_bytes())
    bad.update(case_id="broken", patient_id="PX", t1=str(bad_t1))
    man = pd.concat([man, pd.DataFrame([bad])], ignore_index=True)
    mpath = tmp_path / "manifest.csv"
    man.to_csv(mpath, index=False)
    out = tmp_path / "scored"
    rep = score_manifest(server["url"], mpath, out, api_key=KEY, concurrency=3, progress=False)
    assert rep.n_scored == len(rows) and rep.n_failed == 1, rep.failures
    failed = pd.read_csv(out / "failed.csv")
    assert list(failed["case_id"]) == ["broken"] and int(failed["status"][0]) == 422
    pred = pd.read_csv(out / "predictions.csv")
    ref_probs = [_in_process(predictor, _parts(r))["probability"] for r in rows]
    assert np.allclose(pred.set_index("case_id").loc[[r["case_id"] for r in rows], "probability"], ref_probs, atol=1e-5)
    offline = metrics_with_ci([r["label"] for r in rows], ref_probs, predictor.threshold)
    served = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["metrics"]
    for k in ("auc", "acc", "sen", "spec", "f1"):
        for q in ("value", "lo", "hi"):
            a, b = served[k][q], offline[k][q]
            assert (np.isnan(a) and np.isnan(b)) or abs(a - b) < 1e-6, (k, q, a, b)
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    # resumable: a second run skips what is scored and retries only the failed case
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY)
    res = CliRunner().invoke(app, ["score", "--endpoint", server["url"], "--manifest", str(mpath), "--out", str(out),
                                   "--api-key-file", str(keyfile), "--concurrency", "2"])
    assert res.exit_code == 0, res.output
    assert f"0 scored, {len(rows)} already scored (skipped), 1 failed" in res.output


@pytest.mark.realdata
def test_real_prostatex_dicom_pair_zipped(server, predictor, real_data, tmp_path):
    """A real DICOM study (ProstateX-0000): axial T2 as 't1', ADC as 'fs', each series zipped
    from the study folder; centre of the T2 as the ROI.  Same answer as in process, and no
    DICOM identifier of the study in the answer."""
    from distmsfa.io import dicom
    from distmsfa.serving.cases import Phi

    study = str(real_data / "prostatex" / "ProstateX-0000" / "07-07-2011")
    t2 = dicom.select_series(study, "t2_tse_tra")
    adc = dicom.select_series(study, "ADC")

    def zipped(files):
        import io
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for i, f in enumerate(files):
                zf.write(f, f"s/{i:04d}.dcm")
        return buf.getvalue()

    img = sitk.ReadImage(t2.files[len(t2.files) // 2])
    ref = dicom.read_series(t2)
    centre = ref.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ref.GetSize()])
    parts = {"t1": ("t1.zip", zipped(t2.files)), "fs": ("fs.zip", zipped(adc.files)),
             "roi_center_mm": ",".join(f"{v:.3f}" for v in centre), "case_id": "px0000"}
    r = post(server, parts)
    assert r.status_code == 200, r.text
    a = r.json()
    assert abs(a["probability"] - _in_process(predictor, parts)["probability"]) < 1e-5
    phi = Phi()
    phi.add_from(t2.files[0])
    assert phi.values and not any(v.lower() in r.text.lower() for v in phi.values if len(v) >= 5)
    assert a["preprocessing"]["t1_input"]["size"] == list(ref.GetSize())
    del img


# -- issue 13: requests without an ROI (the bundle's localiser), per-joint evidence -----------
# A second application on the same Serve instance (route prefix /loc): a copy of the module's
# bundle with a localiser attached, trained here for a few epochs on the served cohort.

@pytest.fixture(scope="module")
def loc_bundle(bundle, syn_cases, tmp_path_factory) -> Path:
    import torch

    from distmsfa.io.manifest import load_manifest
    from distmsfa.localiser import (LocaliserConfig, LocaliserTrainConfig, attach_localiser, fit, load_cases,
                                    save_localiser)

    base = tmp_path_factory.mktemp("loc-bundle")
    cfg = LocaliserConfig(grid_size_dhw=(8, 32, 32), spacing_dhw_mm=(10.0, 8.0, 8.0), channels=(8, 16, 32))
    cases, failures = load_cases(load_manifest(syn_cases["manifest"]).cases, cfg)
    assert not failures, failures
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loc, _ = fit(cases, cfg, LocaliserTrainConfig(epochs=30, batch_size=2, lr=1e-2, shift_vox=(1, 2, 2), seed=0))
    finally:
        torch.set_num_threads(threads)
    out = shutil.copytree(bundle, base / "bundle")
    attach_localiser(out, save_localiser(loc, base / "L"))
    return Path(out)


@pytest.fixture(scope="module")
def loc_server(server, loc_bundle):
    from ray import serve

    from distmsfa.serving import auth
    from distmsfa.serving.ray_serve import build_app

    s = server["settings"]
    settings = type(s).from_dict({**s.to_dict(), "bundle": str(loc_bundle), "api_key_sha256": auth.key_digest(KEY),
                                  "cpus_per_preprocess": 0.5})  # 4 CPUs: both apps fit
    serve.run(build_app(settings), name="distmsfa-loc", route_prefix="/loc", blocking=False)
    url = server["url"] + "/loc"
    deadline = time.monotonic() + 300
    while httpx.get(url + "/v1/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "localiser app not ready"
        time.sleep(0.5)
    yield {**server, "url": url}
    serve.delete("distmsfa-loc")


def _no_roi(row: dict, **extra) -> dict:
    return {"t1": ("t1.nii.gz", read_bytes(row["t1"])), "fs": ("fs.nii.gz", read_bytes(row["fs"])),
            "case_id": row["case_id"], **extra}


def _check_evidence(a: dict) -> None:
    ev = a["joint_evidence"]
    assert set(ev) == set(a["gradcam"]["branches"]) and {"t1", "fs"} <= set(ev)
    for shares in ev.values():
        assert {"left", "right", "outside", "side"} <= set(shares)
        assert all(0.0 <= shares[k] <= 1.0 for k in ("left", "right", "outside"))
        if shares["side"] == "none":  # an all-zero map (the 1-epoch test model has some)
            assert shares["left"] == shares["right"] == shares["outside"] == 0.0
            continue
        assert shares["side"] in ("left", "right") and shares["left"] + shares["right"] > 0, ev
        assert abs(shares["left"] + shares["right"] + shares["outside"] - 1.0) < 2e-3
        assert shares["side"] == ("left" if shares["left"] >= shares["right"] else "right")
    assert any(sh["side"] != "none" for sh in ev.values()), ev


def test_request_without_roi_to_a_bundle_without_localiser_is_refused(server, syn_cases):
    r = post(server, _no_roi(syn_cases["rows"][0]))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "roi_required" and "localiser" in err["message"] and "\n" not in err["message"]
    ok = post(server, _parts(syn_cases["rows"][1]))
    assert ok.status_code == 200 and ok.json()["roi_source"] == "given"


def test_predicted_roi_answer_label_map_and_joint_evidence(loc_server, loc_bundle, syn_cases):
    import tempfile

    from distmsfa.bundle import load_bundle
    from distmsfa.localiser import bundle_localiser

    row = syn_cases["rows"][0]
    parts = _no_roi(row)
    r = post(loc_server, parts, query="?return_roi=true&gradcam=true")
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["roi_source"] == "predicted" and a["roi"]["source"] == "predicted"
    # the served path is the in-process one: same localiser, same crop, same probability
    ref = _in_process_with(load_bundle(loc_bundle, device="cpu"), parts, bundle_localiser(loc_bundle))
    assert abs(a["probability"] - ref["probability"]) < 1e-5
    assert a["preprocessing"]["crop_origin_mm"] == pytest.approx(ref["preprocessing"]["crop_origin_mm"], abs=1e-3)
    # the label map: NIfTI on the uploaded T1's grid, 1 = left (LPS +x), 2 = right
    t1 = sitk.ReadImage(row["t1"])
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "roi.nii.gz")
        Path(p).write_bytes(base64.b64decode(a["roi"]["label_map_nifti_gz_base64"]))
        lab = sitk.ReadImage(p)
    assert lab.GetSize() == t1.GetSize() and np.allclose(lab.GetOrigin(), t1.GetOrigin(), atol=1e-3)
    arr = sitk.GetArrayFromImage(lab)
    assert set(np.unique(arr).tolist()) == {0, 1, 2}
    cx = {k: lab.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in np.argwhere(arr == k).mean(0)[::-1]))
          for k in (1, 2)}
    assert cx[1][0] > cx[2][0]  # the left joint on the patient's left
    manual = np.asarray([float(v) for v in _roi_center(row).split(",")])
    assert np.linalg.norm(np.asarray(a["roi"]["centroids_mm"]["roi"]) - manual) < 15.0
    _check_evidence(a)


def test_given_roi_with_a_localiser_bundle_and_centre_without_evidence(loc_server, server, syn_cases):
    row = syn_cases["rows"][1]
    r = post(loc_server, _parts(row), query="?gradcam=true&return_roi=true")
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["roi_source"] == "given" and "label_map_nifti_gz_base64" not in a["roi"]
    _check_evidence(a)
    plain = post(server, _parts(row)).json()  # same weights, same ROI: same answer as the bundle without localiser
    assert abs(a["probability"] - plain["probability"]) < 1e-5
    c = post(loc_server, _parts(row, _roi_center(row)), query="?gradcam=true").json()
    assert c["roi_source"] == "given" and c["joint_evidence"] is None and "centre" in c["joint_evidence_note"]


def test_implausible_predicted_roi_is_a_422_naming_the_case(loc_server, syn_cases):
    row = syn_cases["rows"][0]
    rng = np.random.default_rng(0)
    noisy = {}
    for k in ("t1", "fs"):
        ref = sitk.ReadImage(row[k])
        img = sitk.GetImageFromArray(rng.normal(100, 10, sitk.GetArrayViewFromImage(ref).shape).astype(np.float32))
        img.CopyInformation(ref)
        noisy[k] = (f"{k}.nii.gz", nifti_bytes(img))
    r = post(loc_server, {**noisy, "case_id": "noise-1"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "implausible_roi" and err["message"].startswith("case noise-1: roi: no plausible"), err
    ok = post(loc_server, _no_roi(syn_cases["rows"][1]))
    assert ok.status_code == 200 and ok.json()["roi_source"] == "predicted", ok.text


def test_score_sends_cases_without_roi_and_records_roi_source(loc_server, server, syn_cases, tmp_path):
    from distmsfa.serving.client import score_manifest

    rows = syn_cases["more"][:4]
    man = pd.DataFrame([{k: r[k] for k in ("case_id", "patient_id", "label", "site", "t1", "fs", "roi")} for r in rows])
    man.loc[[0, 2], "roi"] = ""  # two cases without an ROI
    mpath = tmp_path / "manifest.csv"
    man.to_csv(mpath, index=False)
    rep = score_manifest(loc_server["url"], mpath, tmp_path / "loc", api_key=KEY, concurrency=2, progress=False)
    assert rep.n_scored == 4 and rep.n_failed == 0, rep.failures
    pred = pd.read_csv(tmp_path / "loc" / "predictions.csv").set_index("case_id")
    src = {r["case_id"]: ("predicted" if i in (0, 2) else "given") for i, r in enumerate(rows)}
    assert pred["roi_source"].to_dict() == src
    rep = score_manifest(server["url"], mpath, tmp_path / "plain", api_key=KEY, concurrency=2, progress=False)
    failed = pd.read_csv(tmp_path / "plain" / "failed.csv")
    assert rep.n_scored == 2 and sorted(failed["case_id"]) == sorted(rows[i]["case_id"] for i in (0, 2))
    assert set(failed["code"]) == {"roi_required"} and set(failed["status"].astype(int)) == {422}


def _in_process_with(predictor, parts: dict, localiser) -> dict:
    from distmsfa.serving.service import score_in_process
    from distmsfa.serving.uploads import MultipartCollector, encode_multipart

    body, ctype = encode_multipart(parts)
    c = MultipartCollector(ctype)
    c.feed(body)
    return score_in_process(predictor, c.finish(), localiser=localiser)
