"""The neural networks: architectures, the tf.data input pipeline, training, export to ONNX (+ INT8).

Not database models: the tables are in ``services/tables.py``. This package needs the ``train``
extra (TensorFlow, Keras, tf2onnx); it depends on the core (``services``), never the reverse, and
the serving install runs without it. The registry of exported models is in ``services/classify``.
"""
