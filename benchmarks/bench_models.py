"""Training-step throughput and peak memory of every registered model (issue 4).

Per model, input size and mode (fp32 | bf16 autocast) x (NCDHW | channels_last_3d): samples/s
of a full training step (forward, loss, backward, Adam step) and peak memory, written as JSON.

    python benchmarks/bench_models.py --out bench_cpu.json                # CPU, reduced input
    python benchmarks/bench_models.py --device cuda --out bench_gpu.json  # + paper size
    python benchmarks/bench_models.py --device cuda --models msfanet,baseline --reference

Sizes: ``reduced`` = batch 2, (D, H, W) = (8, 48, 64); ``paper`` = batch 6, (24, 224, 320)
(the paper's 24 x 320 x 224 crop; ``paper`` runs by default only on CUDA).  ``--reference``
adds ``reference``: a plain-PyTorch ~10 M-parameter network of MSFANet's shape (widths
16 -> 256, concatenation instead of MSFA), so MSFANet's figure can be compared with it on
the same machine in one run (``ratios`` in the JSON).

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU each measurement runs in a
forked child (the parent never computes, so fork is safe) and reports the rise of its peak
RSS over its start.  Needs only torch, monai and this repository (no Ray).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distmsfa.models import create_model, list_models  # noqa: E402

SIZES = {"reduced": (2, (8, 48, 64)), "paper": (6, (24, 224, 320))}
MODES = [("fp32", "ncdhw"), ("fp32", "channels_last_3d"), ("bf16", "ncdhw"), ("bf16", "channels_last_3d")]


class _RefBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm3d(cout))
        self.skip = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class ReferenceNet(nn.Module):
    """Plain PyTorch, MSFANet's shape: shared 2-block stem over both sequences, two 2-block
    branches, a fuse block over the concatenated branch features, three heads (~10.5 M)."""

    def __init__(self, w=(16, 64, 128, 256)):
        super().__init__()
        s = [(1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2)]
        self.stem = nn.Sequential(_RefBlock(1, w[0], s[0]), _RefBlock(w[0], w[1], s[1]))
        self.b1 = nn.ModuleList(_RefBlock(w[1], w[2], s[2]) for _ in range(2))
        self.b2 = nn.ModuleList(_RefBlock(w[2], w[3], s[3]) for _ in range(2))
        self.fuse = _RefBlock(2 * w[2], w[3], s[3])
        self.fc = nn.ModuleList(nn.Linear(w[3], 1) for _ in range(3))

    def forward(self, x):
        b = x.shape[0]
        f = self.stem(torch.cat([x[:, :1], x[:, 1:]], 0)).split(b, 0)
        a = [blk(t) for blk, t in zip(self.b1, f)]
        outs = [self.fuse(torch.cat(a, 1))] + [blk(t) for blk, t in zip(self.b2, a)]
        return {k: fc(o.flatten(2).mean(-1)).squeeze(-1) for k, fc, o in zip(("fuse", "t1", "fs"), self.fc, outs)}

    def loss(self, outputs, target):
        losses = [nn.functional.binary_cross_entropy_with_logits(o.float(), target) for o in outputs.values()]
        return sum(losses), {}


def build(name: str, preset: str, overrides: dict | None = None) -> nn.Module:
    return ReferenceNet() if name == "reference" else create_model(name, preset=preset, **(overrides or {}))


def measure(name, preset, batch, dhw, dtype, fmt, device, warmup, iters, overrides=None, seed=0) -> dict:
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = build(name, preset, overrides).to(dev).train()
    mf = torch.channels_last_3d if fmt == "channels_last_3d" else torch.contiguous_format
    model = model.to(memory_format=mf)
    params = model.param_groups(1e-4) if hasattr(model, "param_groups") else model.parameters()
    opt = torch.optim.Adam(params, lr=1e-4)
    x = torch.rand(batch, 2, *dhw, device=dev).contiguous(memory_format=mf)
    y = (torch.arange(batch, device=dev) % 2).float()
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step():
        with amp:
            out = model(x)
        loss, _ = model.loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    dt = time.perf_counter() - t0
    res = {"samples_per_s": batch * iters / dt, "step_ms": 1000 * dt / iters,
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if dev.type == "cuda":
        res["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def _in_child(fn, *args) -> dict:
    """Run ``fn(*args)`` in a forked child; add its peak-RSS rise (MiB); errors come back as data."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            res = fn(*args)
            res["peak_mem_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024
            res["peak_mem_kind"] = "rss_rise"
        except Exception as e:  # noqa: BLE001 - reported in the JSON, the run goes on
            res = {"error": f"{type(e).__name__}: {e}"[:500]}
        with os.fdopen(w, "w") as fh:
            json.dump(res, fh)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data) if data else {"error": "child died (out of memory?)"}


def run_one(name, preset, batch, dhw, dtype, fmt, device, warmup, iters, overrides=None) -> dict:
    args = (name, preset, batch, dhw, dtype, fmt, device, warmup, iters, overrides)
    if device == "cpu":
        return _in_child(measure, *args)
    try:
        return measure(*args)
    except Exception as e:  # noqa: BLE001 - e.g. OOM for one model: report, go on
        return {"error": f"{type(e).__name__}: {e}"[:500]}
    finally:
        torch.cuda.empty_cache()


def machine(device: str) -> dict:
    info = {"host_cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "device": device,
            "torch_threads": torch.get_num_threads()}
    try:
        info["cpu_model"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def ratios(results: list[dict]) -> dict:
    """samples/s of each model over the reference's, per size and mode, measured in this run."""
    ref = {(r["size"], r["dtype"], r["memory_format"]): r.get("samples_per_s")
           for r in results if r["model"] == "reference"}
    out = {}
    for r in results:
        key = (r["size"], r["dtype"], r["memory_format"])
        if r["model"] != "reference" and ref.get(key) and r.get("samples_per_s"):
            out.setdefault(r["model"], {})["/".join(key)] = round(r["samples_per_s"] / ref[key], 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default="all", help="comma-separated registry names, or 'all'")
    ap.add_argument("--sizes", default=None, help="comma-separated of: reduced, paper (default: reduced on CPU, paper on CUDA)")
    ap.add_argument("--modes", default="all", help="comma-separated dtype/format, e.g. bf16/channels_last_3d,fp32/ncdhw")
    ap.add_argument("--preset", default="default", help="model size preset (default | tiny)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps (default 5 on CPU, 10 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 3 on CUDA)")
    ap.add_argument("--reference", action="store_true", help="also benchmark the plain-PyTorch reference network")
    ap.add_argument("--set", action="append", default=[], metavar="NAME:KEY=VALUE",
                    help="config override for one model (value parsed as JSON), e.g. msfanet:attn_heads=1; "
                         "repeatable; 'NAME@TAG:KEY=VALUE' benchmarks a variant under the name NAME@TAG")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default="bench_models.json")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA GPU is visible")
    names = list_models() if a.models == "all" else [m.strip() for m in a.models.split(",") if m.strip()]
    overrides: dict[str, dict] = {}
    for item in a.set:
        try:
            who, kv = item.split(":", 1)
            key, val = kv.split("=", 1)
        except ValueError:
            ap.error(f"--set {item!r}: expected NAME:KEY=VALUE")
        try:
            val = json.loads(val)
        except json.JSONDecodeError:
            pass  # a bare string
        overrides.setdefault(who, {})[key] = val
        if who not in names:
            names.append(who)
    unknown = [n for n in names if n.split("@")[0] not in list_models() and n != "reference"]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list_models()}")
    if a.reference and "reference" not in names:
        names = ["reference"] + names
    sizes = (a.sizes or ("paper" if a.device == "cuda" else "reduced")).split(",")
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"unknown size(s) {bad}; choose from {list(SIZES)}")
    modes = MODES if a.modes == "all" else [tuple(m.split("/")) for m in a.modes.split(",")]
    iters = a.iters or (5 if a.device == "cpu" else 10)
    warmup = a.warmup if a.warmup is not None else (1 if a.device == "cpu" else 3)
    if a.device == "cuda":
        torch.backends.cudnn.benchmark = True
    if a.threads:
        torch.set_num_threads(a.threads)

    from rich.progress import Progress

    try:  # imported here, not inside a CPU child's memory figure
        import monai.networks.nets  # noqa: F401
    except ImportError:  # bressem / efficientnet_dual then report the error; the rest run
        print("monai not importable: MONAI-based models will report an error", file=sys.stderr)

    info = machine(a.device)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    results = []
    jobs = [(n, s, m) for s in sizes for n in names for m in modes]
    with Progress() as bar:
        task = bar.add_task("benchmark", total=len(jobs))
        for name, size, (dtype, fmt) in jobs:
            batch, dhw = SIZES[size]
            bar.update(task, description=f"{name} {size} {dtype}/{fmt}")
            cfg = overrides.get(name, {})
            res = run_one(name.split("@")[0], a.preset, batch, dhw, dtype, fmt, a.device, warmup, iters, cfg)
            results.append({"model": name, "size": size, "batch": batch, "dhw": list(dhw), "dtype": dtype,
                            "memory_format": fmt, "config": {k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in cfg.items()}, **res})
            bar.advance(task)
            # Written after every measurement, so a run cut short (time limit) keeps what it has.
            report = {"machine": info, "preset": a.preset, "iters": iters, "warmup": warmup,
                      "step": "forward + loss + backward + Adam step", "complete": len(results) == len(jobs),
                      "results": results, "ratio_to_reference": ratios(results)}
            Path(a.out).write_text(json.dumps(report, indent=1))
    for r in results:
        tail = f"{r['samples_per_s']:8.2f} samples/s  {r.get('peak_mem_mib', float('nan')):8.0f} MiB" \
            if "samples_per_s" in r else r.get("error", "")
        print(f"{r['model']:18s} {r['size']:7s} {r['dtype']}/{r['memory_format']:16s} {tail}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
