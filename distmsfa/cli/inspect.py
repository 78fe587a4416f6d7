"""`distmsfa inspect`: counts, spacing statistics and a PNG montage of a preprocessed dataset."""
from __future__ import annotations

from typing import Optional

import typer

from distmsfa.cli._common import fail


def inspect(
    root: str = typer.Argument(..., help="dataset folder written by `distmsfa preprocess`"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="PNG path for the montage (default ROOT/inspect.png)"),
    n: int = typer.Option(6, "--n", help="number of cases in the montage"),
) -> None:
    """Print counts per label, site and fold, spacing statistics, and write a montage PNG."""
    from distmsfa.data.inspect import format_summary, inspect_dataset

    try:
        summary, png = inspect_dataset(root, out, n=n)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(format_summary(summary))
    typer.echo(f"montage written to {png}")
