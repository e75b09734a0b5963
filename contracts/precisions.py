"""The precision modes of an engine, as one table: how each one's graph is made, whether it needs calibration, what
each TensorRT generation builds it from, its trtexec flags and the file name of its graph.

A graph comes in one of three forms: "deploy" (FP32, from surgery), "autocast" (FP16 typed by ModelOpt's AutoCast)
and "qdq" (INT8 as Q/DQ pairs from ModelOpt's PTQ). TensorRT 11 builds strongly typed networks only: it needs the
typed form of each mode. TensorRT 8.5 to 10 also build weakly typed networks, where builder flags let TensorRT lower
FP32 layers, with the rebuilt middle held at FP32 by per-layer precision.
"""

from __future__ import annotations

from dataclasses import dataclass

DEPLOY, AUTOCAST, QDQ = "deploy", "autocast", "qdq"
# How an INT8 graph is calibrated: ModelOpt's PTQ methods for the Q/DQ graph, and who calibrates: ModelOpt ("qdq",
# every TensorRT) or TensorRT's IInt8EntropyCalibrator2 on the deploy graph ("legacy", TensorRT 8.5 to 10).
CALIBRATION_METHODS = ("entropy", "max", "percentile")
CALIBRATORS = ("qdq", "legacy")
# The TensorRT generations maskrt builds for, as `maskrt lint --target` names them (convert/targets.py has what each
# one's ONNX parser takes).
TENSORRT_TARGETS = ("trt8.5", "trt8.6", "trt10", "trt11")


@dataclass(frozen=True)
class PrecisionMode:
    name: str  # as --precision and the precision records spell it
    typed_graph: str  # the form a strongly typed build parses
    weak_graph: str  # the form a weakly typed build (TensorRT 8.5 to 10) parses
    builder_flags: tuple[str, ...]  # the BuilderFlag members a weakly typed build sets
    hold_fp32: bool  # whether a weakly typed build holds the rebuilt middle at FP32
    calibration: bool  # whether making its graph needs calibration images
    suffix: str  # its graph beside the engine is <engine stem>.<suffix>.onnx

    @property
    def trtexec_flags(self) -> tuple[str, ...]:
        """trtexec's flags for the builder flags of a weakly typed build."""
        return tuple(f"--{flag.lower()}" for flag in self.builder_flags)


PRECISIONS = {
    mode.name: mode
    for mode in (
        PrecisionMode("fp32", DEPLOY, DEPLOY, (), hold_fp32=False, calibration=False, suffix="deploy"),
        PrecisionMode("fp16", AUTOCAST, DEPLOY, ("FP16",), hold_fp32=True, calibration=False, suffix="fp16"),
        PrecisionMode("int8", QDQ, QDQ, ("FP16", "INT8"), hold_fp32=True, calibration=True, suffix="int8"),
    )
}
DEFAULT_PRECISION = "fp16"
# The mode whose typed form each graph form is: what a graph given to trt-convert already is.
PRECISION_OF_FORM = {mode.typed_graph: mode.name for mode in PRECISIONS.values()}
