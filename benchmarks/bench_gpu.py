"""Every benchmark of issue 14 (GPU speed) in one command, one JSON.

    python benchmarks/bench_gpu.py                       # a GPU machine: paper size, all sections
    python benchmarks/bench_gpu.py --profile             # + torch.profiler's top kernels of MSFANet
    python benchmarks/bench_gpu.py --smoke --out /tmp/g.json   # CPU: tiny sizes, a few steps

Sections (``--sections``, default all; each is written to the JSON as soon as it is done,
so a run cut short keeps what it has, and a section that fails records its error and the
others still run):

``models``      MSFANet and the plain reference net (bench_models.py's ``ReferenceNet``) at
                the paper's input (batch 6, 2 x 24 x 224 x 320; bf16 + channels_last_3d on
                CUDA), eager vs ``torch.compile``: training-step samples/s (forward, loss,
                backward, Adam as the loop builds it: fused on CUDA), peak memory, compile
                seconds.  Goal: compiled MSFANet >= 440 samples/s on one H100/H200.
                ``--profile``: the top kernels of MSFANet's step (``profile`` in the JSON).
``training``    The training path end to end on one device, one fold: plain loop vs Ray path
                in this run (median samples/s over epochs >= 1, ratio; goal >= 0.95),
                ``data_wait_s`` as a share of the training time (goal < 5%), fold start-up
                (Ray: submit -> first training batch), compile seconds per fold.
``four_folds``  Four folds on one GPU (``gpus_per_fold`` 0.25) against one fold alone:
                summed per-fold samples/s and the ratio.
``ensemble``    Ensemble inference, cases/s for a 4-fold ensemble at batch 1, 8, 32: calls
                ``run()`` of ``benchmarks/bench_ensemble.py`` when that file exists, else
                records the section as not run.

Reuses ``bench_models.py`` (``build``, ``ReferenceNet``, ``machine``, ``_in_child``) and
``bench_training.py`` (``write_dataset``, ``_median_rate``).  The device machine has no Ray:
``benchmarks/gpu/run_all.sh WHEELS_DIR`` unpacks it from wheels and runs this script
(``benchmarks/gpu/README.md``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import bench_models  # noqa: E402
import bench_training  # noqa: E402

SECTIONS = ("models", "training", "four_folds", "ensemble")
GOALS = {"msfanet_compiled_samples_per_s": 440.0, "ray_over_plain": 0.95, "data_wait_share": 0.05}


def _settings(size: str, device: str) -> dict:
    if size == "reduced":  # bench_training.py's CPU setting: the tiny preset at 8 x 48 x 64
        return {"batch": 6, "dhw": (8, 48, 64), "preset": "tiny", "warmup": 2, "iters": 5, "n": 48, "epochs": 3,
                "four_fold_epochs": 30, "ensemble_batches": (1, 8, 32), "backend": "inductor"}
    if size == "tiny":
        return {"batch": 2, "dhw": (4, 16, 16), "preset": "tiny", "warmup": 1, "iters": 2, "n": 8, "epochs": 2,
                "four_fold_epochs": 1, "ensemble_batches": (1, 2),
                # dynamo + AOT autograd without inductor's code generation (minutes on a small CPU):
                # the smoke run checks the script; the inductor path is tested in tests/training
                "backend": "aot_eager"}
    return {"batch": 6, "dhw": (24, 224, 320), "preset": "default", "warmup": 3 if device == "cuda" else 1,
            "iters": 20 if device == "cuda" else 3, "n": 48, "epochs": 4, "four_fold_epochs": 30,
            "ensemble_batches": (1, 8, 32), "backend": "inductor"}


# --- models: eager vs compiled ---------------------------------------------------------------

def step_rate(name: str, preset: str, batch: int, dhw: tuple, device: str, compiled: bool, warmup: int,
              iters: int, profile: bool = False, backend: str = "inductor", threads: int | None = None) -> dict:
    """Training-step samples/s of one model, the loop's own optimizer and precision choices."""
    from distmsfa.training.speed import make_optimizer

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    fmt = torch.channels_last_3d if cuda else torch.contiguous_format
    model = bench_models.build(name, preset).to(dev).to(memory_format=fmt).train()
    params = model.param_groups(1e-4) if hasattr(model, "param_groups") else model.parameters()
    opt, impl = make_optimizer(params, 1e-4, dev)
    net = torch.compile(model, dynamic=False, backend=backend) if compiled else model
    x = torch.rand(batch, 2, *dhw, device=dev).contiguous(memory_format=fmt)
    y = (torch.arange(batch, device=dev) % 2).float()

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            out = net(x)
        loss, _ = model.loss({k: v.float() for k, v in out.items()}, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    step()  # compiles when compiled
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    dt = time.perf_counter() - t0
    res = {"samples_per_s": batch * iters / dt, "step_ms": 1000 * dt / iters, "first_step_s": first_s,
           "compile_s": max(first_s - dt / iters, 0.0) if compiled else 0.0, "optimizer": impl,
           "compile_backend": backend if compiled else None,
           "precision": "bf16+channels_last_3d" if cuda else "fp32",
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if cuda:
        res["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        res["peak_mem_kind"] = "cuda_max_allocated"
    if profile:
        res["profile"] = top_kernels(step, dev)
    return res


def top_kernels(step, dev: torch.device, steps: int = 3, top: int = 15) -> dict:
    """torch.profiler over ``steps`` steps: the ops/kernels with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    attr = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    if dev.type == "cuda" and not hasattr(events[0] if len(events) else None, attr):
        attr = "self_cuda_time_total"  # older torch
    total = sum(getattr(e, attr, 0.0) for e in events) or 1.0
    rows = sorted(events, key=lambda e: getattr(e, attr, 0.0), reverse=True)[:top]
    return {"sort_by": attr, "steps": steps, "total_ms": total / 1000,
            "top": [{"name": e.key, "calls": int(e.count), "self_ms": getattr(e, attr, 0.0) / 1000,
                     "share": getattr(e, attr, 0.0) / total} for e in rows]}


def section_models(a, s: dict) -> dict:
    out = {"batch": s["batch"], "dhw": list(s["dhw"]), "preset": s["preset"], "iters": s["iters"],
           "compile_backend": s["backend"], "torch_threads": a.threads or torch.get_num_threads(),
           "step": "forward (autocast) + loss + backward + Adam step", "results": []}
    for name in ("msfanet", "reference"):
        for compiled in (False, True):
            prof = a.profile and name == "msfanet" and compiled
            args = (name, s["preset"], s["batch"], s["dhw"], a.device, compiled, s["warmup"], s["iters"], prof,
                    s["backend"], a.threads)
            r = bench_models._in_child(step_rate, *args) if a.device == "cpu" else _guarded(step_rate, *args)
            out["results"].append({"model": name, "mode": "compiled" if compiled else "eager", **r})
            if a.device == "cuda":
                torch.cuda.empty_cache()
    rate = {(r["model"], r["mode"]): r.get("samples_per_s") for r in out["results"]}
    out["compiled_over_eager"] = {m: _ratio(rate[(m, "compiled")], rate[(m, "eager")]) for m in ("msfanet", "reference")}
    out["msfanet_over_reference"] = {k: _ratio(rate[("msfanet", k)], rate[("reference", k)]) for k in ("eager", "compiled")}
    out["goal_msfanet_compiled_samples_per_s"] = GOALS["msfanet_compiled_samples_per_s"]
    return out


def _guarded(fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: reported, the run goes on
        return {"error": f"{type(e).__name__}: {e}"[:500]}


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


# --- training path: plain vs Ray, data wait, start-up; four folds on one GPU ----------------

def _quiet():
    from rich.console import Console

    return Console(quiet=True)  # run_cv's summary tables stay out of the benchmark's output


_QUIET = None


def _overrides(a, s: dict, epochs: int) -> dict:
    train = {"epochs": epochs, "batch_size": s["batch"], "model_cfg": {"preset": s["preset"]},
             "precision": "auto" if a.device == "cuda" else "fp32", "compile": a.compile, "selection": "val"}
    if a.device == "cpu":
        train["num_threads"] = 1  # a fold's worker reserves one CPU
    return {"train": train, "cv": {"gpus_per_fold": 1.0, "cpus_per_fold": 1.0}}


def _steady(hist, col: str) -> float:
    h = hist[hist["epoch"] >= 1] if len(hist) > 1 else hist
    return float(statistics.median(h[col]))


def _fold_figures(hist) -> dict:
    train_s = hist["train_samples"] / hist["train_samples_per_s"]
    share = hist["data_wait_s"] / train_s
    steady = share[hist["epoch"] >= 1] if len(hist) > 1 else share
    return {"samples_per_s": bench_training._median_rate(hist), "epoch_rates": [float(v) for v in hist["train_samples_per_s"]],
            "data_wait_share": float(statistics.median(steady)), "data_wait_share_epochs": [float(v) for v in share],
            "compile_s": float(hist["compile_s"].sum()) if "compile_s" in hist else 0.0}


def _timeline(run_dir: Path, fold: int) -> dict:
    path = run_dir / "folds" / f"fold{fold}" / "timeline.jsonl"
    ev: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        ev.setdefault(e["event"], e["t"])
    return ev


def section_training(a, s: dict, tmp: Path) -> dict:
    from distmsfa.training.cv import run_cv

    data = bench_training.write_dataset(tmp / "train_data", s["n"], s["dhw"])
    ov = _overrides(a, s, s["epochs"])
    t = time.perf_counter()
    plain = run_cv(data, "msfanet", profile="cpu", folds=[0], out=tmp / "plain", plain=True, overrides=ov, progress=False, console=_QUIET)
    plain_wall = time.perf_counter() - t
    t = time.perf_counter()
    viaray = run_cv(data, "msfanet", profile="cpu", folds=[0], out=tmp / "ray", overrides=ov, progress=False, console=_QUIET)
    ray_wall = time.perf_counter() - t
    p, r = _fold_figures(plain.histories[0]), _fold_figures(viaray.histories[0])
    ev = _timeline(tmp / "ray", 0)
    return {"cases": s["n"], "train_cases_per_epoch": int(plain.histories[0]["train_samples"].iloc[-1]),
            "epochs": s["epochs"], "compile": a.compile, "plain": p | {"run_wall_s": plain_wall},
            "ray": r | {"run_wall_s": ray_wall}, "ray_over_plain": _ratio(r["samples_per_s"], p["samples_per_s"]),
            "goal_ray_over_plain": GOALS["ray_over_plain"], "goal_data_wait_share": GOALS["data_wait_share"],
            "fold_startup": {"submit_to_first_batch_s": ev["first_batch"] - ev["submit"],
                             "breakdown_s": {k: round(v - ev["submit"], 2) for k, v in ev.items()}}}


def _write_four_fold_index(root: Path) -> None:
    from distmsfa.data.index import read_index, write_index

    idx = read_index(root)
    idx["fold"] = [(i // 2) % 4 for i in range(len(idx))]
    write_index(root, idx)


def section_four_folds(a, s: dict, tmp: Path) -> dict:
    from distmsfa.training.cv import run_cv

    data = bench_training.write_dataset(tmp / "four_data", s["n"], s["dhw"], seed=2)
    _write_four_fold_index(data)
    ov = _overrides(a, s, s["four_fold_epochs"])
    t = time.perf_counter()
    one = run_cv(data, "msfanet", profile="cpu", folds=[0], out=tmp / "one", overrides=ov, progress=False, console=_QUIET)
    one_wall = time.perf_counter() - t
    ov["cv"]["gpus_per_fold"] = 0.25
    t = time.perf_counter()
    four = run_cv(data, "msfanet", profile="cpu", folds=[0, 1, 2, 3], out=tmp / "four", overrides=ov, progress=False, console=_QUIET)
    four_wall = time.perf_counter() - t
    one_rate = bench_training._median_rate(one.histories[0])
    conc = concurrent_rates(four.histories)
    starts = {f: _timeline(tmp / "four", f).get("first_batch") for f in four.histories}
    summed = sum(conc["rates"].values()) if conc["all_overlap"] else None
    return {"epochs": s["four_fold_epochs"], "gpus_per_fold": 0.25, "one_fold_samples_per_s": one_rate,
            "four_folds_samples_per_s": {str(f): v for f, v in conc["rates"].items()},
            "four_folds_summed_samples_per_s": summed, "summed_over_one": _ratio(summed, one_rate),
            "overlap_window_s": conc["window_s"], "epochs_in_window": conc["epochs"],
            "first_batch_spread_s": (max(starts.values()) - min(starts.values())) if all(starts.values()) else None,
            "one_fold_wall_s": one_wall, "four_folds_wall_s": four_wall,
            "note": "each fold's samples/s over its epochs (>= 1) that ran while all four folds trained; "
                    "summed only when every fold has such an epoch (else null: more epochs needed)"}


def concurrent_rates(histories: dict) -> dict:
    """Per fold, samples/s over the epochs (>= 1) that lie inside the window in which every
    fold was training (epoch spans from ``epoch_end_unix`` and ``epoch_time_s``)."""
    spans = {}
    for f, h in histories.items():
        h = h[h["epoch"] >= 1] if len(h) > 1 else h
        end = h["epoch_end_unix"].astype(float)
        spans[f] = (end - h["epoch_time_s"].astype(float), end, h)
    lo = max(float(st.min()) for st, _, _ in spans.values())
    hi = min(float(en.max()) for _, en, _ in spans.values())
    rates, epochs = {}, {}
    for f, (st, en, h) in spans.items():
        inside = (st >= lo - 1e-6) & (en <= hi + 1e-6)
        sel = h[inside.values]
        epochs[str(f)] = int(len(sel))
        if len(sel):
            rates[f] = float(sel["train_samples"].sum() / (sel["train_samples"] / sel["train_samples_per_s"]).sum())
    return {"rates": rates, "epochs": epochs, "window_s": max(hi - lo, 0.0),
            "all_overlap": len(rates) == len(histories)}


# --- ensemble ------------------------------------------------------------------------------

def section_ensemble(a, s: dict) -> dict:
    path = HERE / "bench_ensemble.py"
    if not path.exists():
        return {"run": False, "reason": "benchmarks/bench_ensemble.py is not in this checkout"}
    spec = importlib.util.spec_from_file_location("bench_ensemble", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    # The ensemble's size follows the run's: the paper's network for a full run, the tiny
    # one for --smoke / --size tiny|reduced (a paper-size ensemble on a CPU takes seconds per case).
    size = "paper" if s["preset"] == "default" else "tiny"
    quick = {"iters": 1, "min_seconds": 0.0, "compare_vmap": False} if s["preset"] != "default" and a.device == "cpu" else {}
    res = mod.run(out_json=None, batch_sizes=tuple(s["ensemble_batches"]), device=a.device, size=size, **quick)
    return {"run": True, "batch_sizes": list(s["ensemble_batches"]), "result": res}


# --- driver --------------------------------------------------------------------------------

def _default_out(device: str, size: str) -> Path:
    if size == "tiny":
        return HERE / "out" / "gpu_smoke.json"
    card = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu_{os.cpu_count()}core"
    slug = re.sub(r"[^a-z0-9]+", "_", card.lower()).strip("_")
    return HERE / "results" / f"gpu_bench_{slug}_{size}.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--smoke", action="store_true", help="= --size tiny: a few steps (checks the script on CPU)")
    ap.add_argument("--size", default=None, choices=["paper", "reduced", "tiny"],
                    help="paper: batch 6, 24x224x320, default preset (default on CUDA); reduced: batch 6, 8x48x64, "
                         "tiny preset (default on CPU); tiny: the smoke run")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated of {', '.join(SECTIONS)}")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                    help="TrainConfig.compile for the training sections (auto = on for CUDA)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for the models section (default 1 on CPU, as a fold's worker has: "
                         "on a busy shared machine more threads stall each other; torch's default on CUDA)")
    ap.add_argument("--warm-cache", action="store_true",
                    help="use inductor's usual on-disk cache (default: an empty one, so compile_s is a cold compile)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler top kernels of compiled MSFANet")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_<card>_<date>.json; "
                                                "--smoke: benchmarks/out/gpu_smoke.json)")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA GPU is visible")
    sections = [x.strip() for x in a.sections.split(",") if x.strip()]
    bad = [x for x in sections if x not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {list(SECTIONS)}")
    if a.device == "cuda":
        torch.backends.cudnn.benchmark = True
    elif a.threads is None:
        a.threads = 1
    size = "tiny" if a.smoke else (a.size or ("paper" if a.device == "cuda" else "reduced"))
    a.smoke = size == "tiny"
    s = _settings(size, a.device)
    global _QUIET
    _QUIET = _quiet()
    out = Path(a.out) if a.out else _default_out(a.device, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": bench_models.machine(a.device), "smoke": a.smoke, "size": size, "sections_asked": sections,
                    "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
                    "goals": GOALS, "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    def save():
        out.write_text(json.dumps(report, indent=1, default=float))

    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    if not a.warm_cache:  # compile times as a fresh machine sees them: an empty inductor cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor_cache")
    report["inductor_cache"] = "warm (the user's)" if a.warm_cache else "cold (empty, this run's)"
    ray_started = False
    try:
        for name in sections:
            t = time.perf_counter()
            print(f"[bench_gpu] {name} ...", flush=True)
            try:
                if name in ("training", "four_folds") and not ray_started:
                    import ray

                    ray.init(num_cpus=max(4, os.cpu_count() or 1), log_to_driver=False, include_dashboard=False)
                    report["machine"]["ray"] = ray.__version__
                    ray_started = True
                if name == "models":
                    report[name] = section_models(a, s)
                elif name == "training":
                    report[name] = section_training(a, s, tmp)
                elif name == "four_folds":
                    report[name] = section_four_folds(a, s, tmp)
                else:
                    report[name] = section_ensemble(a, s)
            except Exception as e:  # noqa: BLE001 - recorded; the other sections still run
                report[name] = {"error": f"{type(e).__name__}: {e}"[:1000], "traceback": traceback.format_exc()[-3000:]}
            report[name]["section_wall_s"] = time.perf_counter() - t
            save()
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)  # datasets and run folders (GBs at the paper's size)
    report["complete"] = all("error" not in report[n] for n in sections)
    save()
    print(json.dumps({n: ("error: " + report[n]["error"]) if "error" in report[n] else "ok" for n in sections}, indent=1))
    print(f"wrote {out}")
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
