"""TRAIL on Kafka: ``trail worker`` and the Kafka code the other commands share.

The worker (one process; several form one consumer group and split the partitions), by
module, in the order a record meets them:

===================  ============================================================================
``runtimes``         the group consumer behind one protocol: ``getmany`` (aiokafka, default)
``faust_runtime``    ... or a Faust app; both feed the same rounds
``clients``          the Kafka clients the worker uses, behind small protocols
``aiokafka_clients`` ... aiokafka's, on a broker
``memory``           ... in memory, for unit tests without a broker
``worker``           the round, assignment and revocation, the items topic, shutdown
``topics``           the app's topics, created when missing, their partitions checked
``items``            item metadata: the catalog file, the items topic, its checkpoint section
``processor``        one events partition: decode, engine, outputs, dead letters
``trending``         the partitions' partial top-N lists merged into the global one
``durability``       outputs acked -> checkpoints written -> offsets committed, in order
``state``            the changelog state store; a checkpoint's encoding and decoding
``faults``           fault injection for the kill -9 tests (test-only)
``cli``              ``trail worker``'s flags
===================  ============================================================================

Shared with ``trail produce``, ``trail tail``, the widget and the benchmarks: ``options``
(connection options, topics), ``decode`` (records -> columns), ``deadletters``, ``sender``
(batched producing) and ``publisher`` (window results -> records).

Importing this package imports none of its modules (nor aiokafka or Faust).
"""
