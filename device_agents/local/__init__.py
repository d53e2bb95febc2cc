"""Measures on this host's CPU with onnxruntime."""
