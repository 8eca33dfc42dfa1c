"""`python -m stagemfu` runs the command line."""

from stagemfu.cli import main

main()
