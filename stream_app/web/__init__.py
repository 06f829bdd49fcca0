"""Web views only: each module registers its endpoints (``register(runtime)``) and answers
from the services on the :class:`stream_app.app.Runtime`, forwarding a key's request to
the worker that owns it. No consumers, timers or state live here.

May import :mod:`agents`, :mod:`tables` and the rest of :mod:`stream_app`.
"""
