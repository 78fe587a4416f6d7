"""`python -m distmsfa ...` = the `distmsfa` command (for Ray jobs shipped as a working_dir)."""
from distmsfa.cli.main import app

app(prog_name="distmsfa")
