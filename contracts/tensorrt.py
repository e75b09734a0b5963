"""What the installed TensorRT can do, read from its Python module rather than from its version number: the engine
build (convert/build.py) chooses its recipe by it, and `maskrt doctor` (runtime/doctor.py) reports it.

TensorRT is imported when asked about, never by importing this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskrt.contracts.plugins import PLUGIN_MODES
from maskrt.contracts.precisions import CALIBRATORS, PRECISIONS


@dataclass(frozen=True)
class TensorRT:
    """What the installed TensorRT can do, read from its Python module."""

    version: str
    builder: bool  # not only a runtime (tensorrt-lean, tensorrt-dispatch)
    weak_typing: bool  # BuilderFlag.FP16/INT8: TensorRT 8.5 to 10; TensorRT 11 builds strongly typed networks only
    strong_typing: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (>= 9) or nothing else (11)
    legacy_calibrator: bool  # IInt8EntropyCalibrator2: TensorRT 8.5 to 10
    plugins_v3: bool  # IPluginV3, the interface of maskrt's plugins: TensorRT >= 10
    progress_monitor: bool  # IProgressMonitor: TensorRT >= 10
    optimization_level: bool  # IBuilderConfig.builder_optimization_level: TensorRT >= 8.6

    @property
    def plugin_modes(self) -> tuple[str, ...]:
        """The surgery modes whose graphs this TensorRT builds: native always, maskrt's IPluginV3 plugins from 10 on."""
        return tuple(mode for mode in PLUGIN_MODES if mode == "native" or self.plugins_v3)

    @property
    def calibrators(self) -> tuple[str, ...]:
        """The INT8 calibrators (--int8-calibrator) it builds from: ModelOpt's Q/DQ graph always, TensorRT's own
        IInt8EntropyCalibrator2 where it has one."""
        return tuple(name for name in CALIBRATORS if name != "legacy" or self.legacy_calibrator)

    def precision_builds(self) -> dict[str, str]:
        """Each precision mode and what it is built from here, in words: the weakly typed form and its builder flags
        (TensorRT 8.5 to 10), or the strongly typed form (TensorRT 11)."""
        builds = {}
        for name, mode in PRECISIONS.items():
            if self.weak_typing:
                builds[name] = " + ".join((f"{mode.weak_graph} graph", *(f"{flag} flag" for flag in mode.builder_flags)))
            else:
                builds[name] = f"{mode.typed_graph} graph, strongly typed"
        return builds


def installed_tensorrt() -> TensorRT | None:
    """The installed TensorRT's abilities, or None when there is none (tensorrt-stubs alone is a namespace package)."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    version = getattr(trt, "__version__", None)
    if version is None:
        return None
    weak_typing = hasattr(getattr(trt, "BuilderFlag", None), "FP16")
    return TensorRT(
        version=str(version),
        builder=hasattr(trt, "Builder"),
        weak_typing=weak_typing,
        strong_typing=hasattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED") or not weak_typing,
        legacy_calibrator=hasattr(trt, "IInt8EntropyCalibrator2"),
        plugins_v3=hasattr(trt, "IPluginV3"),
        progress_monitor=hasattr(trt, "IProgressMonitor"),
        optimization_level=hasattr(getattr(trt, "IBuilderConfig", None), "builder_optimization_level"),
    )
