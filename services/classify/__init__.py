"""Classification: the ONNX inference engine, the model registry (the active model), evaluation."""
