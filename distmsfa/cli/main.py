"""The ``distmsfa`` command line.  Thin: each command lives in its own module under
``distmsfa/cli/`` and only parses arguments, then calls one library function
(heavy imports happen inside the command, so ``distmsfa --help`` is instant)."""
from __future__ import annotations

import typer

from distmsfa.cli import bundle as _bundle
from distmsfa.cli import cv as _cv
from distmsfa.cli import demo as _demo
from distmsfa.cli import demo_data as _demo_data
from distmsfa.cli import evaluate as _evaluate
from distmsfa.cli import inspect as _inspect
from distmsfa.cli import localiser as _localiser
from distmsfa.cli import models as _models
from distmsfa.cli import paper as _paper
from distmsfa.cli import preprocess as _preprocess
from distmsfa.cli import report as _report
from distmsfa.cli import score as _score
from distmsfa.cli import serve as _serve
from distmsfa.cli import tune as _tune

app = typer.Typer(
    name="distmsfa",
    help="MSFANet for two-sequence sacroiliac MRI: preprocess, cross-validate, tune, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own log lines and notices (hidden by default).")) -> None:
    """MSFANet for two-sequence sacroiliac MRI: preprocess, cross-validate, tune, serve."""
    from distmsfa.runtime import set_verbose

    set_verbose(verbose)


app.command("demo")(_demo.demo)
app.command("demo-data")(_demo_data.demo_data)
app.command("preprocess")(_preprocess.preprocess)
app.command("inspect")(_inspect.inspect)
app.command("models")(_models.models)
app.command("cv")(_cv.cv)
app.command("report")(_report.report)
app.command("evaluate")(_evaluate.evaluate)
app.command("paper")(_paper.paper)
app.command("tune")(_tune.tune)
app.add_typer(_bundle.app, name="bundle")
app.command("serve")(_serve.serve)
app.command("score")(_score.score)
app.add_typer(_localiser.app, name="localiser")


if __name__ == "__main__":  # pragma: no cover
    app()
