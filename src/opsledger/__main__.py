"""Allow `python -m opsledger`, which CI and tests use when the console script is not on PATH."""

from opsledger.cli import main

main()
