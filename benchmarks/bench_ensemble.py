"""Fold-ensemble inference: cases/s of a 4-fold MSFANet ensemble at batch 1, 8 and 32.

    python benchmarks/bench_ensemble.py --size tiny --device cpu --out results/ensemble_cpu_2core.json
    python benchmarks/bench_ensemble.py --size paper            # on a GPU: compile + bf16 (auto)

A synthetic bundle (random weights, a valid bundle that ``verify_bundle`` accepts) is written
in a temporary folder at the paper's size (``msfanet`` default preset, crop 24 x 224 x 320) or
the tiny size (``tiny`` preset, crop 8 x 48 x 64), then loaded with ``load_bundle`` once per
batch size (``batch_size`` = the compiled size, as serving's ``max_batch``).  Timed: the whole
``EnsemblePredictor.predict`` of a full batch from a float32 numpy array (input checks, host ->
device copy, the four fold models, one transfer back), median over repeats after a warm-up
call, whose time is reported as ``first_call_s`` (the compile time when compiled).  Also timed
when the predictor is not compiled: the fold loop against the fold models stacked with
``torch.func.stack_module_state`` + ``vmap`` at batch 8 (``stack_check``), the reason the
predictor loops over folds (docs/bundle.md).

``run()`` is the library entry (the GPU benchmark script calls it); ``--out`` writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

SIZES = {"paper": ("default", (24, 224, 320)), "tiny": ("tiny", (8, 48, 64))}
N_FOLDS = 4


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"host_cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "torch": torch.__version__, "python": platform.python_version(), "device": device,
                            "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            info["cpu_model"] = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if hasattr(os, "getloadavg"):
        info["load_avg_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def write_synthetic_bundle(root: Path, size: str, n_folds: int = N_FOLDS, seed: int = 0) -> Path:
    """A valid bundle of ``n_folds`` randomly initialised MSFANets (figures only: its
    predictions mean nothing)."""
    from safetensors.torch import save_file

    from distmsfa.bundle.card import write_model_card
    from distmsfa.bundle.layout import BUNDLE_FILE, CARD_FILE, FORMAT, OOF_FILE, weight_file, write_checksums
    from distmsfa.data.preprocess import PreprocessConfig
    from distmsfa.models import registry

    preset, crop = SIZES[size]
    model_cfg = {} if preset == "default" else {"preset": preset}
    (root / "weights").mkdir(parents=True)
    for f in range(n_folds):
        torch.manual_seed(seed + f)
        m = registry.create_model("msfanet", **model_cfg)
        save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, str(root / weight_file(f)))
    pre = PreprocessConfig(target_spacing_mm=(4.0, 0.7, 0.7), crop_size=crop).to_dict()
    pre.pop("target_spacing_mm")
    meta = {"format": FORMAT, "model": {"name": "msfanet", "model_cfg": model_cfg}, "train": {}, "folds": list(range(n_folds)),
            "checkpoint": "synthetic", "selection": "random weights (benchmark only)",
            "threshold": {"value": 0.5, "policy": "fixed", "source": "benchmark", "n_cases": 0},
            "cv_metrics": {}, "preprocess": {**pre, "spacing_dhw": [4.0, 0.7, 0.7]}, "fingerprint": {}, "intensity": {},
            "input": {"shape": ["B", 2, *crop], "channels": ["t1", "fs"], "range": [0.0, 1.0], "dtype": "float32"},
            "source": {"created": "benchmark"}, "localiser": None}
    (root / BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (root / OOF_FILE).write_text("case_id,fold,label,prob\n", encoding="utf-8")
    write_model_card(root / CARD_FILE, meta)
    write_checksums(root)
    return root


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, iters: int, min_seconds: float) -> list[float]:
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < iters or (time.perf_counter() - t_start < min_seconds and len(times) < 50):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def stack_check(pred, x: np.ndarray, iters: int, min_seconds: float) -> dict[str, Any]:
    """The predictor's fold loop against the same fold models stacked and run under ``vmap``
    (eager, the predictor's precision), on one batch: cases/s of each and the largest
    difference of their fold probabilities."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    from distmsfa.bundle.predictor import _fold_outputs, run_models

    dev = str(pred.device)
    params, buffers = stack_module_state(pred.models)
    base = copy.deepcopy(pred.models[0]).to("meta")
    rt = pred._rt

    class _Call:  # the stacked parameters as a "model" for _fold_outputs (call + predict_proba)
        def __init__(self, p, b):
            self.p, self.b = p, b

        def __call__(self, v):
            return functional_call(base, (self.p, self.b), (v,))

        def predict_proba(self, out):
            return base.predict_proba(out)

    def stacked(p, b, t):
        return _fold_outputs(_Call(p, b), t, rt.amp_dtype, rt.channels_last)[0]

    t = torch.from_numpy(x).to(pred.device)

    @torch.inference_mode()
    def run_vmap():
        return vmap(stacked, in_dims=(0, 0, None))(params, buffers, t).T.float().cpu().numpy()

    @torch.inference_mode()
    def run_loop():
        return run_models(pred.models, t, rt)[0]

    import warnings

    warnings.filterwarnings("ignore", message=".*batching rule.*")  # SDPA has none on CPU: vmap falls back
    got, ref = run_vmap(), run_loop()
    bs = len(x)
    out: dict[str, Any] = {"batch": bs, "max_abs_diff": float(np.abs(got - ref).max()), "by_threads": {}}
    threads0 = torch.get_num_threads()
    # At torch's thread count and at one thread: on a loaded machine the per-op thread
    # synchronisation of many small ops (the loop) suffers more than a few larger ones (vmap),
    # while one thread shows the arithmetic alone.
    for nt in sorted({threads0, 1}, reverse=True):
        torch.set_num_threads(nt)
        try:
            loop_t, vmap_t = [], []
            t_start = time.perf_counter()
            while len(loop_t) < iters or (time.perf_counter() - t_start < 2 * min_seconds and len(loop_t) < 50):
                loop_t += _time(run_loop, dev, 1, 0.0)  # interleaved: both see the same machine load
                vmap_t += _time(run_vmap, dev, 1, 0.0)
        finally:
            torch.set_num_threads(threads0)
        out["by_threads"][str(nt)] = {
            "repeats": len(loop_t), "loop_cases_per_s": round(bs / statistics.median(loop_t), 2),
            "vmap_cases_per_s": round(bs / statistics.median(vmap_t), 2),
            "vmap_over_loop": round(statistics.median(loop_t) / statistics.median(vmap_t), 3)}
    return out


def run(out_json: Optional[str] = None, batch_sizes: Sequence[int] = (1, 8, 32), device: Optional[str] = None,
        size: str = "paper", compile: str = "auto", precision: str = "auto", *, iters: int = 3,  # noqa: A002
        min_seconds: float = 2.0, compare_vmap: bool = True) -> dict[str, Any]:
    """Measure cases/s of a 4-fold ensemble at each batch size; return (and write) the JSON."""
    import torch._dynamo

    from distmsfa.bundle import load_bundle

    if size not in SIZES:
        raise ValueError(f"size {size!r}: use one of {', '.join(SIZES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    crop = SIZES[size][1]
    rng = np.random.default_rng(0)
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {"benchmark": "ensemble inference", "machine": machine(device), "size": size,
                              "preset": SIZES[size][0], "crop_dhw": list(crop), "folds": N_FOLDS, "model": "msfanet",
                              "compile": compile, "precision_word": precision, "iters_min": iters,
                              "min_seconds": min_seconds, "timed": "EnsemblePredictor.predict of a full batch, float32 numpy in "
                              "and out (input checks, copies, 4 fold models), median", "results": results}
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:
        bundle = write_synthetic_bundle(Path(tmp) / "bundle", size)
        for bs in batch_sizes:
            torch._dynamo.reset()  # each batch size is compiled afresh, as in a new process
            t0 = time.perf_counter()
            pred = load_bundle(bundle, device=device, precision=precision, compile=compile, batch_size=int(bs))
            load_s = time.perf_counter() - t0
            x = rng.uniform(0.0, 1.0, (int(bs), 2, *crop)).astype(np.float32)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            row: dict[str, Any] = {"batch": int(bs), "precision": pred.precision, "compiled": pred.compiled,
                                   "load_s": round(load_s, 3)}
            try:
                _sync(device)
                t0 = time.perf_counter()
                pred.predict(x)
                _sync(device)
                row["first_call_s"] = round(time.perf_counter() - t0, 3)
                times = _time(lambda: pred.predict(x), device, iters, min_seconds)
                med = statistics.median(times)
                row.update(batch_s=round(med, 5), cases_per_s=round(bs / med, 2), repeats=len(times))
                if bs > 1:  # a short batch (serving's partial batches): padded when compiled
                    short = x[: max(1, bs // 2)]
                    st = statistics.median(_time(lambda: pred.predict(short), device, iters, 0.0))
                    row.update(short_batch=len(short), short_batch_s=round(st, 5))
                if device.startswith("cuda"):
                    row["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory at one batch size: report, go on
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            results.append(row)
            print(json.dumps(row), flush=True)
            if compare_vmap and not pred.compiled and "error" not in row and "stack_check" not in report:
                xb = rng.uniform(0.0, 1.0, (8, 2, *crop)).astype(np.float32)
                try:
                    report["stack_check"] = stack_check(pred, xb, iters, min_seconds)
                except Exception as exc:  # noqa: BLE001 - vmap may lack a batching rule: say so
                    report["stack_check"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                print(json.dumps({"stack_check": report["stack_check"]}), flush=True)
            del pred
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    report["load_avg_after"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="paper", choices=list(SIZES))
    ap.add_argument("--batch-sizes", default="1,8,32", help="comma-separated")
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--iters", type=int, default=3, help="timed calls at least (more until --min-seconds)")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--no-vmap", action="store_true", help="skip the fold-loop vs vmap comparison")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default="benchmarks/out/ensemble.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    run(a.out, tuple(int(v) for v in a.batch_sizes.split(",")), a.device, a.size, a.compile, a.precision,
        iters=a.iters, min_seconds=a.min_seconds, compare_vmap=not a.no_vmap)


if __name__ == "__main__":
    main()
