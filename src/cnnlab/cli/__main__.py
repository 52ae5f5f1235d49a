"""`python -m cnnlab.cli`: the cnnlab command."""

from cnnlab.cli import main

main()
