"""Docs against the kept benchmark results: every benchmark figure quoted in docs/*.md and
benchmarks/README.md (a number with samples/s, cases/s, MB/s or GB/s, or "ratio N") sits in a
section that names a file of benchmarks/results/ that exists, and one of the files named
there holds that number (to the precision quoted).  A light check: figures without one of
those units are not parsed."""
from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "benchmarks" / "README.md"]

FIGURE = re.compile(r"(\d+(?:\.\d+)?)\s*(samples/s|cases/s|MB/s|GB/s)|\bratio\s+(\d+(?:\.\d+)?)")
JSON_NAME = re.compile(r"([\w.*-]+\.json)\b")
#: a quoted value in this unit may be a JSON value in another: GB/s quoted from MB_per_s
SCALES = {"GB/s": (1.0, 1000.0)}


def sections(text: str) -> list[str]:
    """The text split at markdown headings (each section keeps its heading)."""
    return [s for s in re.split(r"(?m)^(?=#{1,6} )", text) if s.strip()]


def numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in numbers(x)]
    return []


def named_results(section: str) -> tuple[list[Path], list[str]]:
    """The results files a section names (globs allowed), and the .json names it gives that
    are not in benchmarks/results/."""
    files, missing = [], []
    have = sorted(p.name for p in RESULTS.glob("*.json"))
    for name in set(JSON_NAME.findall(section)):
        hits = fnmatch.filter(have, Path(name).name)
        if hits:
            files += [RESULTS / h for h in hits]
        else:
            missing.append(name)
    return files, missing


def held(quoted: str, unit: str, values: list[float]) -> bool:
    q = float(quoted)
    tol = 0.5 * 10 ** -(len(quoted.split(".")[1]) if "." in quoted else 0) + 1e-9
    return any(abs(v / s - q) <= tol for s in SCALES.get(unit, (1.0,)) for v in values)


def check(text: str) -> list[str]:
    problems = []
    for sec in sections(text):
        figures = [(m[1] or m[3], m[2] or "ratio") for m in FIGURE.finditer(sec)]
        if not figures:
            continue
        head = sec.strip().splitlines()[0][:60]
        files, missing = named_results(sec)
        if not files:
            problems.append(f"section {head!r} quotes {figures[0][0]} {figures[0][1]} but names no "
                            f"benchmarks/results/*.json" + (f" (names {missing}, not kept)" if missing else ""))
            continue
        values = [v for f in files for v in numbers(json.loads(f.read_text(encoding="utf-8")))]
        for q, unit in figures:
            if not held(q, unit, values):
                problems.append(f"section {head!r}: {q} {unit} is in none of {[f.name for f in files]}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_quoted_benchmark_figure_is_in_a_named_results_file(doc):
    problems = check(doc.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_the_check_catches_unbacked_and_unnamed_figures():
    named = "## Figures\n\nFrom `training_cpu_2core.json`: 1.93 GB/s, ratio 1.064, 111 MB/s.\n"
    assert check(named) == []
    assert check(named.replace("1.93 GB/s", "2.64 GB/s")) == [
        "section '## Figures': 2.64 GB/s is in none of ['training_cpu_2core.json']"]
    assert "names no benchmarks/results" in check("## X\n\nabout 245 samples/s\n")[0]
    assert "not kept" in check("## X\n\n245 samples/s (`benchmarks/out/bench_models_cpu.json`)\n")[0]
