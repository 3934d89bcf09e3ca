"""One batch, no Kafka: decode → features → assemble → infer → encode (``pipeline``), the
model input tensors (``assembly``) and the prediction records (``output``).
"""
