"""Model lifecycle: a repository of versions with model cards, validation before serving,
hot swap, rollback, canary and shadow, controlled across replicas.

Modules, lowest first: ``card``, ``repository``, ``golden`` and ``validation``; ``state``
(desired states and their transitions), ``manager`` (applies them to the serving slot, see
``worker.serving``) and ``guard`` (automatic canary rollback); ``control`` (the compacted
control topic or a watched file); ``metrics`` and ``shadow`` (runner observers); ``optimize``.
Its wiring from settings is ``worker.app.lifecycle``; its commands are ``worker.cli.models``.
"""
