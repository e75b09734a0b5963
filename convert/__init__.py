"""Torch → ONNX export, graph surgery, lint and engine build, and the `maskrt` / `trt-convert` commands."""
