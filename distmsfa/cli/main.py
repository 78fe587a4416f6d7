"""The ``distmsfa`` command line.  Thin: each command lives in its own module under
``distmsfa/cli/`` and only parses arguments, then calls one library function
(heavy imports happen inside the command, so ``distmsfa --help`` is instant)."""
from __future__ import annotations

import typer

from distmsfa.cli import bundle as _bundle
from distmsfa.cli import cv as _cv
from distmsfa.cli import demo as _demo
from distmsfa.cli import demo_data as _demo_data
from distmsfa.cli import inspect as _inspect
from distmsfa.cli import models as _models
from distmsfa.cli import preprocess as _preprocess
from distmsfa.cli import tune as _tune

app = typer.Typer(
    name="distmsfa",
    help="MSFANet for two-sequence sacroiliac MRI: preprocess, cross-validate, tune, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("demo")(_demo.demo)
app.command("demo-data")(_demo_data.demo_data)
app.command("preprocess")(_preprocess.preprocess)
app.command("inspect")(_inspect.inspect)
app.command("models")(_models.models)
app.command("cv")(_cv.cv)
app.command("tune")(_tune.tune)
app.add_typer(_bundle.app, name="bundle")


if __name__ == "__main__":  # pragma: no cover
    app()
