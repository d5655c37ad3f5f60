"""Host-side toolchain: torch/ONNX -> simplified ONNX -> TVM-compiled, verified package."""
