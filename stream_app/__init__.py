"""The app's core: settings, the typed runtime (:mod:`.app`), topics, records,
partitioning, the CLI, and the subpackages ``domain`` (pure rules), ``broker`` (private
Faust/aiokafka APIs), ``fluent`` (client and simulator) and ``web`` (views).
"""
