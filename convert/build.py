"""Engine build: deploy.onnx → model.engine with TensorRT, and model.engine.json beside it (DESIGN.md, "Engines").

The one module of convert/ that needs TensorRT and a GPU: it imports them when called and says what to install when
they are missing. FP32 and FP16 (TensorRT's builder flag); INT8 comes from explicit Q/DQ graphs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnx
from rich.console import Console

from maskrt.runtime.files import check_output_path, write_atomically
from maskrt.convert.settings import DEPLOY_METADATA_KEY, read_metadata

PRECISIONS = ("fp32", "fp16")


def build_engine(
    deploy_path: Path,
    engine_path: Path,
    precision: str = "fp16",
    workspace_gib: float = 4.0,
    verbose: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Builds and writes the engine and its record; returns the record (what model.engine.json holds)."""
    console = console or Console(stderr=True)
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision}")
    check_output_path(engine_path)
    data, deploy = _read_deploy(deploy_path)
    try:
        import tensorrt as trt

        trt.Builder  # noqa: B018  (tensorrt-stubs alone imports as an empty namespace package)
    except (ImportError, AttributeError):
        raise ValueError(
            f"{deploy_path} is ready, but building an engine needs TensorRT, which is not installed here: "
            "JetPack ships it on a Jetson; on x86, pip install 'maskrt[tensorrt]' (or stop at --surgery-only)"
        ) from None
    if deploy["plugins"] == "maskrt":
        from maskrt.plugins import register

        try:
            register()
        except ImportError as error:
            raise ValueError(
                f"{deploy_path}: a --plugins maskrt graph needs TensorRT >= 10 and cuda-python ({error}); on TensorRT "
                "8.6 (JetPack 5) convert with --plugins native"
            ) from None

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is what TensorRT 8.6 needs spelled out and TensorRT 10 always does.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data, str(deploy_path)):  # the path finds external weights, as parse_from_file would
        reasons = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValueError(f"{deploy_path}: TensorRT's ONNX parser refused it: {reasons[0] if reasons else 'no reason given'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    console.print(f"building a {precision} engine from {deploy_path} (minutes on a Jetson)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError(f"{deploy_path}: TensorRT could not build an engine (run with --verbose for its log)")

    gpu_name, compute_capability = _gpu()
    record = {
        "tensorrt_version": trt.__version__,
        "gpu": gpu_name,
        "compute_capability": compute_capability,
        "precision": precision,
        **{k: deploy[k] for k in ("plugins", "plugin_namespace", "plugin_version", "batch", "input_size")},
        **{k: deploy[k] for k in ("image_mean", "image_std", "num_classes", "class_names", "mask_size", "settings")},
        "source_sha256": deploy["source_sha256"],
        "deploy_sha256": hashlib.sha256(data).hexdigest(),
    }
    record_path = engine_path.with_name(engine_path.name + ".json")
    write_atomically(record_path, json.dumps(record, indent=2).encode())
    write_atomically(engine_path, bytes(serialized))
    console.print(f"wrote {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB) for {gpu_name} (sm_{compute_capability})")
    return record


def _read_deploy(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The deploy graph's bytes, read once for the parser and the sha256, and its DeployRecord as a dict."""
    try:
        data = path.read_bytes()
        model = onnx.load_from_string(data)
    except Exception as error:  # onnx raises a different type for each way a file can be damaged
        raise ValueError(f"{path}: not a readable ONNX model ({type(error).__name__})") from None
    record: dict[str, Any] | None = read_metadata(model, DEPLOY_METADATA_KEY)
    if record is None:
        raise ValueError(f"{path}: not a maskrt deploy graph (no {DEPLOY_METADATA_KEY} metadata); run surgery first")
    return data, record


def _gpu() -> tuple[str, str]:
    """Name and compute capability ("87") of GPU 0, the one TensorRT built for."""
    from cuda.bindings import driver

    def check(result: Any) -> Any:
        error, *values = result
        if error != driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"CUDA driver error {error} while reading the GPU's name")
        return values[0]

    check((driver.cuInit(0),))
    device = check(driver.cuDeviceGet(0))
    name = check(driver.cuDeviceGetName(64, device)).split(b"\0", 1)[0].decode()
    attribute = driver.CUdevice_attribute
    major = check(driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device))
    minor = check(driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device))
    return name, f"{major}{minor}"
