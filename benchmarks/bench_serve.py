"""Scoring service on loopback: latency and throughput at 1/4/16 clients, served model vs
in-process ensemble throughput, and a bounded soak (good and bad requests mixed).

A real Serve app (ingress + preprocess + model deployments) on a local Ray bound to
127.0.0.1, a bundle (``--bundle``, else a tiny one made from a 1-epoch plain CV), synthetic
NIfTI cases (``generate_cohort``).  Written JSON: per level p50/p95/p99 latency (ms),
throughput (requests/s), and the answers' own split of the time into upload,
preprocessing and model (ms, medians); served/in-process throughput on the same
preprocessed inputs at 16 concurrent calls; soak: counts by status, 5xx, replica RSS at
request 200 and at the end.

    bash tests/isolated.sh python benchmarks/bench_serve.py [--requests 32] [--soak 2000]
        [--out benchmarks/out/bench_serve.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "serving"))
KEY = "bench-key-" + "z" * 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bodies(manifest: Path) -> list[tuple[bytes, str]]:
    import pandas as pd

    from distmsfa.serving.uploads import encode_multipart

    out = []
    for r in pd.read_csv(manifest).to_dict("records"):
        base = manifest.parent
        out.append(encode_multipart({
            "case_id": r["case_id"], "t1": ("t1.nii.gz", (base / r["t1"]).read_bytes()),
            "fs": ("fs.nii.gz", (base / r["fs"]).read_bytes()), "roi": ("roi.nii.gz", (base / r["roi"]).read_bytes())}))
    return out


async def _level(url: str, bodies, clients: int, n: int) -> dict:
    import httpx

    lat, split, codes = [], {"upload": [], "preprocess": [], "model": []}, {}
    queue = list(range(n))

    async def worker(c):
        while queue:
            i = queue.pop()
            body, ctype = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            r = await c.post(url + "/v1/predict", content=body, headers={"content-type": ctype, "x-api-key": KEY})
            lat.append(time.perf_counter() - t0)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                for k in split:
                    split[k].append(r.json()["timing_ms"][k])

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"clients": clients, "requests": n, "status_counts": {str(k): v for k, v in codes.items()},
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "throughput_rps": n / wall,
            "median_split_ms": {k: float(np.median(v)) if v else None for k, v in split.items()}}


async def _served_model(pairs: list[np.ndarray], n: int, concurrency: int) -> float:
    from ray import serve

    h = serve.get_deployment_handle("Model", app_name="distmsfa")
    await h.predict.remote(pairs[0])  # warm
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            await h.predict.remote(pairs[i % len(pairs)])

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t0)


def _replica_rss() -> dict[str, int]:
    """RSS of this driver's Serve replica processes (Ray workers descend from the local Ray
    this script started; their process titles name the deployment)."""
    import psutil

    out = {}
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
            if "ServeReplica" in title:
                out[title.split()[0].split(".")[0][:80]] = p.memory_info().rss  # title: ...:Model.<method> when busy
        except psutil.Error:
            pass
    return out


async def _soak(url: str, good, bad, n: int, clients: int) -> dict:
    import httpx

    codes: dict[int, int] = {}
    rss_200: dict = {}
    done = 0
    idx = list(range(n))
    good_ok = good_sent = 0

    async def worker(c):
        nonlocal done, rss_200, good_ok, good_sent
        while idx:
            i = idx.pop(0)
            is_bad = i % 4 == 3  # one in four is bad
            body, ctype = (bad if is_bad else good)[i % len(bad if is_bad else good)]
            r = await c.post(url + "/v1/predict", content=body, headers={"content-type": ctype, "x-api-key": KEY})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if not is_bad:
                good_sent += 1
                good_ok += r.status_code == 200
            done += 1
            if done == min(200, n // 2) and not rss_200:
                rss_200 = await asyncio.to_thread(_replica_rss)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    rss_end = _replica_rss()
    growth = {k: (rss_end[k] - rss_200[k]) / rss_200[k] for k in rss_end if k in rss_200}
    return {"requests": n, "clients": clients, "seconds": wall, "status_counts": {str(k): v for k, v in codes.items()},
            "n_5xx": sum(v for k, v in codes.items() if k >= 500), "good_sent": good_sent, "good_answered": good_ok,
            "rss_bytes_at_200": rss_200, "rss_bytes_end": rss_end, "rss_growth": growth,
            "max_rss_growth": max(growth.values()) if growth else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level (>= clients)")
    ap.add_argument("--model-calls", type=int, default=128)
    ap.add_argument("--soak", type=int, default=2000)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "bench_serve.json"))
    args = ap.parse_args()

    import ray
    from ray import serve

    from distmsfa.bundle import load_bundle
    from distmsfa.data.synthetic import generate_cohort
    from distmsfa.serving import auth
    from distmsfa.serving.ray_serve import build_app
    from distmsfa.serving.settings import ServeSettings
    from distmsfa.serving.uploads import encode_multipart

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if args.bundle:
        bundle = Path(args.bundle)
    else:
        from _bundle import make_bundle

        bundle = make_bundle(tmp / "b")
    manifest = generate_cohort(tmp / "cohort", n=8, seed=11, progress=False)
    good = _bodies(Path(manifest))
    import pandas as pd

    r0 = pd.read_csv(manifest).to_dict("records")[0]
    base = Path(manifest).parent
    bad = [encode_multipart({"t1": ("t1.nii.gz", (base / r0["t1"]).read_bytes())}),  # missing part
           encode_multipart({"t1": ("t1.nii", os.urandom(4000)), "fs": ("fs.nii.gz", (base / r0["fs"]).read_bytes()),
                             "roi_center_mm": "0,0,0"}),  # random bytes
           encode_multipart({"t1": ("t1.nii.gz", (base / r0["t1"]).read_bytes()),
                             "fs": ("fs.nii.gz", (base / r0["fs"]).read_bytes()), "roi_center_mm": "9e5,0,0"})]

    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    s = ServeSettings(bundle=str(bundle), api_key_sha256=auth.key_digest(KEY), max_ongoing_requests=32,
                      max_queued_requests=64, max_batch=args.max_batch, batch_wait_s=0.02)
    t0 = time.perf_counter()
    serve.run(build_app(s), name="distmsfa", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    startup = time.perf_counter() - t0
    result: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "load_avg_start": os.getloadavg()},
                    "bundle": {"path": str(bundle), "crop": None}, "serve_startup_s": startup,
                    "settings": s.to_dict() | {"api_key_sha256": "(set)"}}
    try:
        asyncio.run(_level(url, good, 1, 4))  # warm every stage
        result["levels"] = [asyncio.run(_level(url, good, c, max(args.requests, c))) for c in (1, 4, 16)]
        for lv in result["levels"]:
            print(json.dumps({k: lv[k] for k in ("clients", "p50_ms", "p95_ms", "p99_ms", "throughput_rps")}))

        # served model vs in-process, same preprocessed inputs, 16 concurrent calls
        pred = load_bundle(bundle, device="cpu")
        result["bundle"]["crop"] = list(pred.crop_size)
        from distmsfa.serving.service import prepare_upload
        from distmsfa.serving.uploads import MultipartCollector

        pairs = []
        for body, ctype in good:
            c = MultipartCollector(ctype)
            c.feed(body)
            pairs.append(prepare_upload(pred, c.finish(), max_unzipped_bytes=1 << 30, max_entries=5000)["pair"])
        x = np.stack([pairs[i % len(pairs)] for i in range(16)]).astype(np.float32)
        import torch

        torch.set_num_threads(1)  # the model replica has 1 CPU (Ray sets OMP_NUM_THREADS=1 there)
        pred.predict(x, 16)
        n_batches = max(1, args.model_calls // 16)
        in_proc, served = [], []
        for _ in range(3):  # alternate, so that a shared machine's load drifts over both alike
            t = time.perf_counter()
            for _ in range(n_batches):
                pred.predict(x, 16)
            in_proc.append(n_batches * 16 / (time.perf_counter() - t))
            served.append(asyncio.run(_served_model(pairs, args.model_calls, 16)))
        ip, sv = float(np.median(in_proc)), float(np.median(served))
        result["model_throughput"] = {"in_process_cases_per_s": ip, "served_cases_per_s": sv, "ratio": sv / ip,
                                      "rounds": {"in_process": in_proc, "served": served}, "concurrency": 16,
                                      "calls_per_round": args.model_calls, "in_process_batch": 16,
                                      "in_process_threads": 1}
        print(json.dumps(result["model_throughput"]))
        if args.soak:
            result["soak"] = asyncio.run(_soak(url, good, bad, args.soak, 8))
            print(json.dumps({k: result["soak"][k] for k in ("requests", "status_counts", "n_5xx", "good_answered",
                                                              "good_sent", "max_rss_growth")}))
        result["machine"]["load_avg_end"] = os.getloadavg()
    finally:
        serve.shutdown()
        ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
