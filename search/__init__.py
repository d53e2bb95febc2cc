"""The DNAS client: search spaces, operator specs, blocks, cost counting, ONNX export and the model zoo."""
