"""`distmsfa models`: list the registered models."""
from __future__ import annotations

import typer


def models() -> None:
    """List every model in the registry (names accepted by `--model`)."""
    from distmsfa.models.registry import create_model, list_models

    for name in list_models():
        m = create_model(name)
        n = sum(p.numel() for p in m.parameters())
        typer.echo(f"{name:28s} sequences={','.join(m.sequences):6s} params={n/1e6:6.2f}M")
