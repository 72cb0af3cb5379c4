"""The top floor: the ``spoor`` command (``main``) and what it runs that is no stage of its own (the
admin API, the demo, replay of real data, the simulators, the worker's supervisor)."""

from spoor.errors import SpoorError


class CliError(SpoorError):
    """Root of every error the command line raises on purpose (a file it cannot replay...)."""
