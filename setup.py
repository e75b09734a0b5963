"""maskrt: torchvision Mask R-CNN → ONNX → TensorRT, with proof that the engine still answers like PyTorch."""

import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))

# The repo's top-level folders install as one namespace, maskrt.<folder>, so nothing generic lands in site-packages.
SUBPACKAGES = ["contracts", "plugins", "runtime", "calib", "check", "convert", "serve", "cli"]


class BuildPyWithKernels(build_py):
    """Also compiles the plugin kernels into the package where nvcc is available; elsewhere they compile on first use."""

    def run(self) -> None:
        super().run()
        # plugins/kernel_build.py needs only the standard library, so it runs before maskrt is installed.
        spec = importlib.util.spec_from_file_location("maskrt_kernel_build", os.path.join(HERE, "plugins", "kernel_build.py"))
        kernels = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = kernels
        spec.loader.exec_module(kernels)
        try:
            built = kernels.build_into(kernels.Path(self.build_lib) / "maskrt" / "plugins" / "kernels")
        except OSError as error:
            print(f"maskrt: CUDA kernels not compiled at install time, they will be on first use: {error}")
        else:
            print(f"maskrt: CUDA kernels compiled into {built}" if built else "maskrt: no nvcc, kernels compile on first use")


# `pip install maskrt` is the runtime (runtime/: the Predictor, `maskrt infer`, `maskrt bench` and `maskrt doctor` on
# ONNX Runtime or a TensorRT engine), what a Jetson needs beside JetPack's TensorRT. onnx reads a deploy graph's metadata
# and runs the parts of a plugin-mode graph between its plugin nodes; onnxruntime-extensions carries those nodes as
# custom ops. Polygraphy's TensorRT loaders build the engine, so a Jetson builds a graph made elsewhere with this
# install alone. It runs on JetPack's Pythons, whose TensorRT bindings exist for them alone: 3.8 (JetPack 5.1) and 3.10
# (JetPack 6). Each pin below is the newest release with a binary wheel for manylinux aarch64 on that Python (.ci/run
# checks it with `pip download --only-binary :all:`), so that on a Jetson nothing but pycuda builds from source.
JETPACK_5 = "python_version < '3.10'"  # 3.8; 3.9 takes the same wheels
JETPACK_6 = "python_version == '3.10'"  # onnxruntime 1.23.2 is the last with cp310 wheels
NEWER = "python_version >= '3.11'"
RUNTIME = [
    f"numpy==1.24.4; {JETPACK_5}",  # NumPy's last release for 3.8
    "numpy>=1.26,<3; python_version >= '3.10'",
    f"onnx==1.17.0; {JETPACK_5}",
    "onnx==1.23.2; python_version >= '3.10'",
    "polygraphy==0.53.6",
    f"onnxruntime==1.19.2; {JETPACK_5}",
    f"onnxruntime==1.23.2; {JETPACK_6}",
    f"onnxruntime==1.31.1; {NEWER}",
    f"onnxruntime-extensions==0.13.0; {JETPACK_5}",
    "onnxruntime-extensions==0.15.2; python_version >= '3.10'",
    "opencv-python==5.0.0.93",
    f"pycocotools==2.0.7; {JETPACK_5}",
    "pycocotools==2.0.11; python_version >= '3.10'",
    f"rich==14.3.4; {JETPACK_5}",  # rich 15 needs 3.9
    "rich==15.0.0; python_version >= '3.10'",
]
# Conversion (export, surgery, precision, calibration, the accuracy check): PyTorch and the graph tools, on the
# Pythons PyTorch 2.14 supports (>= 3.10); the edge install alone is what JetPack 5.1's Python 3.8 gets.
CONVERSION = "python_version >= '3.10'"
CONVERT = [
    f"torch==2.14.1; {CONVERSION}",
    f"torchvision==0.29.2; {CONVERSION}",
    f"onnx-graphsurgeon==0.6.1; {CONVERSION}",
    f"safetensors==0.8.0; {CONVERSION}",
    # the plots of `maskrt check`'s report; matplotlib 3.11 needs Python 3.11
    f"matplotlib==3.10.9; {JETPACK_6}",
    f"matplotlib==3.11.2; {NEWER}",
    # ModelOpt without its [onnx] extra, which pins onnx~=1.21 and pulls onnxruntime-gpu: the ONNX PTQ and
    # AutoCast that convert/precision.py calls need only these beside it.
    f"nvidia-modelopt==0.47.0; {CONVERSION}",
    f"lief==1.0.0; {CONVERSION}",
    f"cppimport==26.4.17; {CONVERSION}",
    f"ml_dtypes==0.6.0; {CONVERSION}",
    f"onnxconverter-common==1.16.0; {CONVERSION}",
    f"onnxslim==0.1.98; {CONVERSION}",
    f"onnxscript==0.7.2; {CONVERSION}",
]
# Serving (maskrt.serve): PyTriton's tritonserver with the Predictor bound, and tritonclient. nvidia-pytriton 0.7.0 asks
# for numpy<2 and tritonclient 2.73.0 for ml-dtypes<=0.5.4, which opencv-python 5 (numpy>=2) and ModelOpt's ml_dtypes
# 0.6 rule out, so pip's resolver cannot install them here: SERVE_NO_DEPS goes in with `pip install --no-deps`, and
# SERVE is what they need beside it. Both run with NumPy 2 and ml_dtypes 0.6 (tests/test_serve.py); the Python
# backend stub that tritonserver starts gets NumPy 1 of its own (maskrt.serve.stub).
SERVE_NO_DEPS = ["nvidia-pytriton==0.7.0", "tritonclient==2.73.0"]
SERVE = [
    # nvidia-pytriton's
    "grpcio==1.85.4",
    "pyzmq==27.3.0",
    "sh==2.4.0",
    "typer==0.29.2",
    "typing-inspect==0.9.0",
    "wrapt==2.1.2",
    "importlib-metadata==10.2.0",
    # tritonclient[http,grpc]'s
    "python-rapidjson==1.25",
    "geventhttpclient==2.6.1",
    "greenlet==3.3.2",
    "aiohttp==3.14.5",
]

setup(
    name="maskrt",
    version="0.1.0",
    description="torchvision Mask R-CNN to TensorRT for Jetson and RTX GPUs, with accuracy proven against PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=[f"maskrt.{name}" for name in SUBPACKAGES],
    package_dir={f"maskrt.{name}": name for name in SUBPACKAGES},
    package_data={
        "maskrt.plugins": ["kernels/*.cu", "kernels/*.cuh"],
        # shapes-demo's checkpoint, its recorded val AP and its model card ship inside the package.
        "maskrt.convert": ["weights/*.safetensors", "weights/*.json", "weights/*.md"],
    },
    cmdclass={"build_py": BuildPyWithKernels},
    install_requires=RUNTIME,
    extras_require={
        "convert": CONVERT,
        # then: pip install --no-deps nvidia-pytriton==0.7.0 tritonclient==2.73.0 (SERVE_NO_DEPS)
        "serve": SERVE,
        # TensorRT comes from JetPack on a Jetson, where PyPI's (an SBSA build) must not replace it: PyPI's only on x86.
        # cuda-python of CUDA 12, which every CUDA 12 and 13 driver runs (cuda-bindings 13 needs a CUDA 13 driver, and
        # JetPack 6 is CUDA 12), and NVRTC 12 for the kernels where nvcc is missing (NVRTC builds a CUBIN for the GPU,
        # which a driver of the same major version loads). pycuda builds against the CUDA toolkit.
        "tensorrt": [
            "tensorrt>=10.0; platform_machine == 'x86_64' or platform_machine == 'AMD64'",
            "pycuda>=2024.1",
            # cuda-bindings has no release for Python 3.8 (nor for JetPack 5.1's CUDA 11.4 driver): there engines run
            # with pycuda alone and their masks are pasted on the CPU (--plugins native engines need no maskrt kernel).
            "cuda-bindings>=12.6,<13; python_version >= '3.9'",
            "nvidia-cuda-nvrtc-cu12>=12.6,<13; python_version >= '3.9'",
        ],
        # tensorrt-stubs is installed with --no-deps (.ci/run): its metadata requires the full TensorRT wheels.
        # nvidia-cuda-nvrtc-cu12: NVRTC 12 still targets sm_72 (Xavier), which CUDA 13's nvcc dropped; a test uses it.
        "test": [
            *CONVERT,
            *SERVE,
            "pytest==9.0.3",
            "hypothesis==6.155.2",
            "mypy==2.4.1",
            "cuda-bindings==13.5.0",
            "nvidia-cuda-nvrtc-cu12==12.9.86",
            # Real TensorRT that installs on a CPU: 11.4's lean runtime (the plugin registry) and TensorRT for RTX
            # (builds engines without a GPU).
            "tensorrt-lean-cu13==11.4.0.106",
            "tensorrt-rtx-cu13-libs==1.7.1.116",
            "tensorrt-rtx-cu13-bindings==1.7.1.116",
        ],
    },
    entry_points={
        "console_scripts": [
            "maskrt = maskrt.cli.main:main",
            "trt-convert = maskrt.cli.main:trt_convert",
        ]
    },
)
