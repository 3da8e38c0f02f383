"""Neural networks: architectures, training, export to ONNX, the model registry."""
