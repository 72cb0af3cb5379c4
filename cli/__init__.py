"""The top floor: the ``spoor`` command (``main``) and what it runs that is no stage of its own (the
admin API, the demo, replay of real data, the simulators, the worker's supervisor)."""
