"""`distmsfa inspect`: counts, spacing statistics and a PNG montage of a preprocessed dataset;
`--check` verifies its consistency instead."""
from __future__ import annotations

from typing import Optional

import typer

from distmsfa.cli._common import fail


def inspect(
    root: str = typer.Argument(..., help="dataset folder written by `distmsfa preprocess`"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="PNG path for the montage (default ROOT/inspect.png)"),
    n: int = typer.Option(6, "--n", help="number of cases in the montage (>= 1)"),
    check: bool = typer.Option(False, "--check", help="verify the dataset instead: every indexed pair exists and "
                               "matches its checksum, no orphan files, folds cover exactly the indexed cases"),
) -> None:
    """Print counts per label, site and fold, spacing statistics, and write a montage PNG.

    With --check: exit 0 when the dataset is consistent, 1 (one `error:` line per problem) when not."""
    if check:
        from distmsfa.data.check import check_dataset

        rep = check_dataset(root)
        for p in rep.problems:
            typer.echo(f"error: {p}", err=True)
        if not rep.ok:
            typer.echo(f"{len(rep.problems)} problem(s) in the dataset", err=True)
            raise typer.Exit(1)
        typer.echo(f"ok: {rep.n_cases} cases, {rep.n_pairs_verified} pairs match their checksums, "
                   f"no orphan files, folds cover exactly the indexed cases")
        return
    if n < 1:
        fail(f"--n {n}: the montage needs at least 1 case; give --n 1 or more")
    from distmsfa.data.inspect import format_summary, inspect_dataset

    try:
        summary, png = inspect_dataset(root, out, n=n)
    except (OSError, ValueError) as exc:  # OSError: also a pair that fails its checksum (names the case)
        fail(str(exc))
    typer.echo(format_summary(summary))
    typer.echo(f"montage written to {png}")
