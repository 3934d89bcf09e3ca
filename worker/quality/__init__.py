"""Model quality arithmetic, free of Kafka and Redis: reference bins and PSI (``bins``), exact
sliding windows of binned rows (``window``), and accuracy from scores and ground truth (``accuracy``)."""
