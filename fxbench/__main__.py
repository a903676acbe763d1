"""`python -m fxbench` runs the CLI."""

from fxbench.cli import main

main()
