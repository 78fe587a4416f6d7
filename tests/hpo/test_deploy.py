"""The deploy/ manifests parse, and every study entrypoint in them is the one deploy/README.md
gives (so the docs and the cluster files cannot drift apart)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _docs_entrypoint() -> str:
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- entrypoint -->\s*```bash\n(.+?)\n```", text, re.S)
    assert m, "deploy/README.md lost its <!-- entrypoint --> block"
    return m.group(1).strip()


def _manifests() -> dict[Path, dict]:
    out = {}
    for p in sorted(DEPLOY.rglob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d is not None]
        assert len(docs) == 1, p
        out[p] = docs[0]
    return out


def test_entrypoints_equal_the_docs_and_the_cli_parses_them():
    entry = _docs_entrypoint()
    docs = (DEPLOY / "README.md").read_text(encoding="utf-8")
    # the `ray job submit ... --` line runs the same command
    submits = re.findall(r"ray job submit [^\n]*-- \\\n\s+(python -m distmsfa tune[^\n]*)\n", docs)
    assert submits and all(s.strip() == entry for s in submits), submits
    jobs = {p: m for p, m in _manifests().items() if m.get("kind") == "RayJob"}
    assert jobs, "no RayJob in deploy/"
    for p, m in jobs.items():
        assert m["apiVersion"] == "ray.io/v1"
        assert m["spec"]["entrypoint"].strip() == entry, p
        assert m["spec"]["backoffLimit"] >= 1 and "--auto-resume" in entry  # a retry continues the study
        yaml.safe_load(m["spec"]["runtimeEnvYAML"])
    # the entrypoint is a real `distmsfa tune` command line: typer parses its options
    argv = shlex.split(entry)
    assert argv[:4] == ["python", "-m", "distmsfa", "tune"]
    from typer.testing import CliRunner

    from distmsfa.cli.main import app

    bad = CliRunner().invoke(app, argv[3:] + ["--no-such-option"])
    assert "No such option: --no-such-option" in bad.output  # only the added option is refused
    assert (REPO / argv[argv.index("--config") + 1]).is_file()


def test_clusters_put_folds_on_gpus_and_share_the_study_folder():
    ms = _manifests()
    kinds = {m.get("kind") for m in ms.values()}
    assert {"RayJob", "RayCluster"} <= kinds
    launcher = [m for m in ms.values() if "available_node_types" in m]
    assert launcher and launcher[0]["head_node_type"] in launcher[0]["available_node_types"]
    for p, m in ms.items():
        if m.get("kind") not in ("RayJob", "RayCluster"):
            continue
        spec = m["spec"]["rayClusterSpec"] if m["kind"] == "RayJob" else m["spec"]
        assert spec["rayVersion"] == "2.60.0", p
        assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0", p  # trials and drivers never take a GPU
        for g in spec["workerGroupSpecs"]:
            c = g["template"]["spec"]["containers"][0]
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, p
            assert any(v["mountPath"] == "/mnt/shared" for v in c["volumeMounts"]), p
    env = yaml.safe_load((DEPLOY / "runtime_env.yaml").read_text())
    assert set(env) <= {"working_dir", "excludes", "pip", "env_vars", "py_modules", "conda", "uv"}
