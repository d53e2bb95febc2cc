"""Runners that execute on the measured device itself. They import only numpy and onnxruntime, so they can be
copied to any machine with Python (a Linux board, Termux) and run there."""
