"""Times every step of every asyncio event loop in a process (a development tool).

How long one callback or task step holds the loop is what a web request waits behind
(``GET /inventory`` p99 under a saturating stream). With ``STEP_CENSUS=<path prefix>``
set and this folder on ``PYTHONPATH``, every Python process started so (a worker started
by a bench, the bench itself) writes ``<prefix>.<pid>.json`` every 5 s: the number and
total seconds of all steps, a histogram of step lengths in whole milliseconds (50 = 50 or
more), and the 40 tasks or callbacks that spent the most time in steps over 3 ms, named by
the chain of coroutines a task was suspended in after the step. Diff two dumps to look
at one phase. Costs about a microsecond per step and slows a worker by a few per cent::

    STEP_CENSUS=/tmp/census/out PYTHONPATH=bench/step_census \\
        .venv/bin/python bench/scale.py --keys 1000000 --quick
"""

import os

if os.environ.get("STEP_CENSUS"):
    # uvloop runs its callbacks in C, past asyncio.events.Handle: workers on asyncio's loop
    os.environ["STREAM_APP_EVENT_LOOP"] = "asyncio"
    import asyncio
    import asyncio.events
    import collections
    import json
    import threading
    import time

    _run_step = asyncio.events.Handle._run
    _slow: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    _lengths: collections.Counter[int] = collections.Counter()
    _all = [0, 0.0]

    def _name(callback: object) -> str:
        task = getattr(callback, "__self__", None)
        if isinstance(task, asyncio.Task):
            names, coro = [], task.get_coro()
            while coro is not None and len(names) < 6:
                names.append(getattr(coro, "__qualname__", type(coro).__name__))
                coro = getattr(coro, "cr_await", None)
                if coro is not None and not hasattr(coro, "cr_frame"):
                    names.append(type(coro).__name__)
                    break
            return "task:" + " > ".join(names)
        return "cb:" + getattr(callback, "__qualname__", repr(callback)[:80])

    def _timed(self: asyncio.events.Handle) -> None:
        callback = self._callback
        started = time.perf_counter()
        try:
            _run_step(self)
        finally:
            took = time.perf_counter() - started
            _all[0] += 1
            _all[1] += took
            _lengths[min(int(took * 1000), 50)] += 1
            if took > 0.003:
                entry = _slow[_name(callback)]
                entry[0] += 1
                entry[1] += took
                entry[2] = max(entry[2], took)

    asyncio.events.Handle._run = _timed  # type: ignore[method-assign]

    def _dump() -> None:
        path = f"{os.environ['STEP_CENSUS']}.{os.getpid()}.json"
        while True:
            time.sleep(5)
            top = sorted(_slow.items(), key=lambda item: -item[1][1])[:40]
            with open(path, "w") as out:
                json.dump({"all": _all, "lengths_ms": sorted(_lengths.items()), "slow": top}, out)

    threading.Thread(target=_dump, daemon=True, name="step-census").start()
