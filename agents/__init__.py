"""The flows: each module registers its agents, timers and internal-topic handlers on the
:class:`stream_app.app.Runtime` (``register(runtime)``, in ``stream_app.wiring.REGISTRY``
order, after ``wiring.build_services`` built every table and service) and opens with a
docstring drawing its data path.

May import :mod:`tables` and :mod:`stream_app` (domain, broker, fluent, settings,
cluster); never :mod:`stream_app.web` or :mod:`stream_app.cli` (the views call the flows,
not the other way).
"""
