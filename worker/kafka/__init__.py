"""Everything the worker says to Kafka, and the only package that imports confluent_kafka.

``port`` holds the small Protocols the rest of the worker talks to (a consumer, a producer, an
admin client) and the broker's errors in the worker's own terms; ``confluent`` implements them
over confluent-kafka and ``memory`` is the in-memory twin for tests. Above the port: client
configuration (``config``), topic administration (``admin``), reading topics without a group
(``reader``), producing with delivery tracking (``sink``) and the checkpoints of the two
processing guarantees (``checkpoint``, ``transactions``).
"""
