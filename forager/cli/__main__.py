"""`python -m forager.cli`, the same as `python -m forager`."""

from forager.cli import main

main()
