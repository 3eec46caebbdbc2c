"""Deploy: ONNX export with parity, INT8, runtimes, reading ONNX files back, accuracy and latency."""
