"""The worker's floor: with this folder on PYTHONPATH, Python loads this module at start-up, and a worker
then only decodes its batches, stores their events (COPY, as always) and counts them; no per-user state
(no table read or write, no changelog), no profiles, sessions, journeys, activity, interests, identities,
consent or triggers. Metric windows and everything else in the stack stay as they are.

What a pipeline costs with nothing per user (bench/README.md, "The floor"): run a stack with it, e.g.

    bench/ab.sh 391f7a8 HEAD 200000 2 --new-env PYTHONPATH=$PWD/bench/floor

Figures, not a feature: the rows it leaves are events and metric windows only.
"""

import importlib.abc
import importlib.util
import sys

TARGET = "spoor.stream_processors.profile_tracker"


async def _floor_process(self, records):
    from spoor.stream_processors import worker_metrics
    from spoor.stream_processors.blocking import run_blocking
    if not records:
        return []
    decoded, _erasures, _identity_records = await self._decode(records)
    events = [event for _partition, event in decoded]
    await run_blocking(self.writer.write_batch, [], events, None, [])
    worker_metrics.BATCH_EVENTS.observe(len(events))
    worker_metrics.EVENTS.labels("applied").inc(len(events))
    return decoded


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.ProfileTracker.process = _floor_process
        print("bench/floor: the worker's per-user fold is off", file=sys.stderr, flush=True)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is not None:
            spec.loader = _Loader(spec.loader)
        return spec


sys.meta_path.insert(0, _Finder())
