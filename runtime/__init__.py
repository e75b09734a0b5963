"""Running deploy graphs and engines: the letterbox, engine loading and execution, mask pasting, the Predictor.

The edge install: NumPy, OpenCV, ONNX Runtime or TensorRT with pycuda; never PyTorch, torchvision or
onnx-graphsurgeon. The lowest layer of maskrt besides plugins/: calib/, check/ and convert/ build on it.
"""
