"""`distmsfa serve` refuses keyless serving off loopback; the deploy files are valid."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distmsfa.cli.main import app

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args,needle", [
    (["--host", "0.0.0.0"], "refusing to serve on 0.0.0.0 without an API key"),
    (["--host", "10.1.2.3", "--insecure-loopback"], "refusing to serve on 10.1.2.3 without an API key"),
    ([], "--insecure-loopback"),
])
def test_serve_without_key_is_refused_off_loopback_or_without_the_flag(tmp_path, monkeypatch, args, needle):
    monkeypatch.delenv("DISTMSFA_API_KEY", raising=False)
    monkeypatch.delenv("DISTMSFA_API_KEY_FILE", raising=False)
    res = CliRunner().invoke(app, ["serve", "--bundle", str(tmp_path), *args])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


def test_serve_with_a_weak_key_file_is_refused(tmp_path):
    (tmp_path / "k").write_text("short")
    res = CliRunner().invoke(app, ["serve", "--bundle", str(tmp_path), "--api-key-file", str(tmp_path / "k")])
    assert res.exit_code == 2 and "at least 16" in res.output


def test_deploy_files_validate_against_serve_schema_and_settings():
    from ray.serve.schema import ServeDeploySchema

    from distmsfa.serving.settings import ServeSettings

    plain = yaml.safe_load((REPO / "deploy" / "serve.yaml").read_text(encoding="utf-8"))
    rs = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text(encoding="utf-8"))
    assert rs["apiVersion"] == "ray.io/v1" and rs["kind"] == "RayService"
    inner = yaml.safe_load(rs["spec"]["serveConfigV2"])
    for cfg in (plain, inner):
        ServeDeploySchema.model_validate(cfg)
        app_cfg = cfg["applications"][0]
        assert app_cfg["import_path"] == "distmsfa.serving.ray_serve:app_builder"
        s = ServeSettings.from_dict(app_cfg["args"])
        assert s.api_key_sha256 is None and not s.allow_no_key  # the key comes from the secret file
        assert app_cfg["runtime_env"]["env_vars"]["DISTMSFA_API_KEY_FILE"]
