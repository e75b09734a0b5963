"""maskrt: torchvision Mask R-CNN → ONNX → TensorRT, with proof that the engine still answers like PyTorch."""

from setuptools import setup

# The repo's top-level folders install as one namespace, maskrt.<folder>, so nothing generic lands in site-packages.
SUBPACKAGES = ["convert", "plugins", "runtime", "calib", "check"]

setup(
    name="maskrt",
    version="0.1.0",
    description="torchvision Mask R-CNN to TensorRT for Jetson and RTX GPUs, with accuracy proven against PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[f"maskrt.{name}" for name in SUBPACKAGES],
    package_dir={f"maskrt.{name}": name for name in SUBPACKAGES},
    package_data={
        "maskrt.plugins": ["kernels/*.cu", "kernels/*.cuh"],
        # shapes-demo's checkpoint, its recorded val AP and its model card ship inside the package.
        "maskrt.convert": ["weights/*.safetensors", "weights/*.json", "weights/*.md"],
    },
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.2",
        "numpy>=1.26,<3",
        "onnx==1.23.2",
        "onnx-graphsurgeon==0.6.1",
        "onnxruntime==1.31.1",
        "onnxruntime-extensions==0.15.2",
        "polygraphy==0.53.6",
        "opencv-python==5.0.0.93",
        "pycocotools==2.0.11",
        "safetensors==0.8.0",
        "rich==15.0.0",
    ],
    extras_require={
        # TensorRT itself comes from JetPack on a Jetson and from NVIDIA's index on x86; pycuda builds against the driver.
        "tensorrt": ["tensorrt>=10.0", "pycuda>=2024.1", "cuda-bindings>=12.6"],
        # tensorrt-stubs is installed with --no-deps (.ci/run): its metadata requires the full TensorRT wheels.
        "test": ["pytest==9.0.3", "hypothesis==6.155.2", "mypy==2.4.1", "cuda-bindings==13.5.0"],
    },
    entry_points={
        "console_scripts": [
            "maskrt = maskrt.convert.cli:main",
            "trt-convert = maskrt.convert.cli:trt_convert",
        ]
    },
)
