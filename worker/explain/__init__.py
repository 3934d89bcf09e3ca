"""Explanations: why a prediction came out as it did, as signed contributions per model input and
the top reasons (``worker.explain.explainer``); by occlusion for any model (``occlusion``) or
exact TreeSHAP for tree ensembles (``treeshap``)."""
