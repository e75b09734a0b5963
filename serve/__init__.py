"""Serving a deploy graph or an engine: a Triton server with the Predictor bound (PyTriton), a model repository for
NVIDIA's Triton container, and DeepStream's nvinfer configuration.

One module per job: `server` (`serve(...)`, PyTriton), `protocol` (what requests carry and responses answer),
`stub` (the environment Triton's Python backend stub needs here), `triton_repository` (`write_triton_repository`),
`deepstream` (`write_deepstream`). PyTriton and tritonclient are imported only by what runs or calls a server:
`pip install 'maskrt[serve]'`.
"""
