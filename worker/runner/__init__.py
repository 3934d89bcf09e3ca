"""The consume → process → produce → checkpoint loop (``loop``), when to close a batch
(``batching``) and the hooks through which telemetry and the model lifecycle listen
(``observer``).
"""
