"""The former name of :mod:`streams.eventlog`, kept while the Kafka modules still import it.

streams/worker.py and streams/kafka_cli.py import ``EventLog`` and ``load_events`` from here;
once they import :mod:`streams.eventlog`, this module goes. New code imports
:mod:`streams.eventlog`.
"""

from streams.eventlog import EventLog, load_events

__all__ = ["EventLog", "load_events"]
