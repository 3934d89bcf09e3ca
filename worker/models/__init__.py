"""Model lifecycle: a repository of versions with model cards, validation before serving,
hot swap, rollback, canary and shadow, controlled across replicas.

Layers, lowest first: ``card``, ``repository``, ``golden``, ``router`` (what the pipeline
imports: no Kafka) and ``validation``; ``state`` (desired states and their transitions),
``manager`` (applies them to the serving slot) and ``guard`` (automatic canary rollback);
``control`` (the compacted control topic or a watched file); ``telemetry``, ``shadow``
(runner observers); ``optimize``; and the two that read settings: ``app`` (wiring) and
``cli`` (``worker models ...``).
"""
