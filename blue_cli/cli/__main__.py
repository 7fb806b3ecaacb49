"""``python -m blue_cli.cli`` is the ``blue`` command."""

from blue_cli.cli.commands import main

main()
