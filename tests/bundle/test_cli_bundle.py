"""`distmsfa bundle export|verify|info` through the real `distmsfa` app (typer CliRunner)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from distmsfa.cli.main import app

pytestmark = pytest.mark.slow


def _run(*args):
    return CliRunner().invoke(app, ["bundle", *map(str, args)])


def test_export_verify_info(tiny_run, tmp_path):
    out = tmp_path / "b"
    res = _run("export", tiny_run, "--out", out, "--threshold", "fixed", "--checkpoint", "selected")
    assert res.exit_code == 0, res.output
    assert "bundle written" in res.output and "OPTIMISTIC" in res.output and "0.5000 (fixed" in res.output
    assert (out / "weights" / "fold0.safetensors").is_file()

    res = _run("verify", out)
    assert res.exit_code == 0 and res.output.startswith("ok: ") and "msfanet" in res.output

    res = _run("info", out, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["threshold"]["policy"] == "fixed" and info["folds"] == [0, 1] and info["verified"] is True
    res = _run("info", out)
    assert res.exit_code == 0 and "AUC" in res.output and info["checksum"] in res.output


def test_one_line_errors(tiny_run, tiny_bundle, tmp_path):
    cases = [
        (("export", tiny_run, "--out", tiny_bundle), "already exists"),
        (("export", tmp_path, "--out", tmp_path / "x"), "run.json: missing"),
        (("export", tiny_run, "--out", tmp_path / "x", "--checkpoint", "best"), "selected"),
        (("export", tiny_run, "--out", tmp_path / "x", "--threshold", "otsu"), "youden"),
        (("verify", tmp_path / "nope"), "no such bundle folder"),
        (("info", tmp_path / "nope"), "no such bundle folder"),
    ]
    for args, words in cases:
        res = _run(*args)
        assert res.exit_code == 2, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (args, res.output)
    assert not (tmp_path / "x").exists()


def test_verify_names_a_tampered_file(tiny_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    (b / "weights" / "fold0.pt").write_bytes(b"\x80\x04K\x01.")
    res = _run("verify", b)
    assert res.exit_code == 2 and "weights/fold0.pt: foreign file" in res.output
