"""Broker plumbing: every use of a private Faust, mode or aiokafka API lives here.

* :mod:`.patches` is the one place that installs the patches on an app and checks at
  start-up that each took effect (naming the pinned versions when one did not);
* :mod:`.flow_control`: Faust's flow control without the loss at the end of a recovery;
* :mod:`.tansu_offsets`: the end offsets a broker reports, checked with a fetch;
* :mod:`.fetch_scope`: fetch only the partitions Faust consumes;
* :mod:`.consumers`: plain consumers of the app's topics, the hook into Faust's consumer.
* :mod:`.stores`: the RocksDB database of one table partition (per-key tables).
* :mod:`.delivery`: sends an agent can acknowledge on (every output on the broker, or a stall).
* :mod:`.current_event`: table writes as while processing an event (Faust's context variable).
* :mod:`.lifecycle`: whether the worker is ready; closing connections before it stops.
* :mod:`.assignment`: which worker owns a partition (the assignor's URL table).
* :mod:`.batching`: groups of a Faust stream without a fixed wait (``take_ready``).

May import faust, mode, aiokafka and :mod:`stream_app.settings`; nothing of the domain,
the agents or the web views.
"""
