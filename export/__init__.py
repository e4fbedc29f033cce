"""torch -> ONNX (preprocessing baked in), INT8 QDQ, TensorRT engine build and runtime."""
