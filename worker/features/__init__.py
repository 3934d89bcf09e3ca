"""Feature lookup: the feature store port and its in-memory twin (``store``), entity key
templates (``keys``), per-batch lookups of distinct keys (``fetcher``) and the Redis store
(``redis_store``).
"""
