"""Stages 7-8, deploy: ONNX export with parity, reading ONNX files back, accuracy and latency."""
