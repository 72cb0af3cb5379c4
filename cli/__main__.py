"""``python -m spoor.cli``: the ``spoor`` command."""

from spoor.cli.main import main

main()
