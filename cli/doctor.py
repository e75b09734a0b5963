"""`maskrt doctor`: what this machine can do for maskrt, and proof of it (runtime/doctor.py, runtime/kernel_checks.py,
convert/engine_checks.py). Exit 1 when a check fails; what could not be tested here is listed, not failed."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from maskrt.cli import exits

if TYPE_CHECKING:
    from maskrt.runtime.doctor import Check, Machine

ENGINES = "shapes-demo engines (FP32, FP16, INT8 in each plugin mode TensorRT builds) against ONNX Runtime"


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    doctor = verbs.add_parser(
        "doctor", parents=[common],
        help="what this machine can do for maskrt (Python, Jetson, TensorRT, GPU, CUDA, ONNX Runtime), and proof of it",
        description="Reports this machine's Python, platform (the Jetson module and JetPack), TensorRT and what it "
        "builds, GPU, CUDA driver and bindings, kernel compilers and ONNX Runtime; where a GPU is, tests the kernels and "
        "the mask paste against the CPU, and, where TensorRT is, shapes-demo engines against ONNX Runtime. Exit 1 when "
        "a test fails.",
    )
    doctor.add_argument("--json", action="store_true", help="print the facts and results as JSON on stdout")
    doctor.add_argument("--no-engines", action="store_true", help="do not build and compare the shapes-demo engines")
    doctor.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from maskrt.runtime.doctor import Check, Report, gpu_checks, print_report, read_machine

    facts, machine = read_machine()
    report = Report(facts, gpu_checks(machine))
    report.checks += [Check(ENGINES, None, "--no-engines")] if args.no_engines else _engine_checks(machine, console)
    if args.json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    else:
        print_report(report, console)
    return exits.FAILED if report.failed else exits.DONE


def _engine_checks(machine: Machine, console: Console) -> list[Check]:
    """The engines built and compared where TensorRT's builder, a GPU, pycuda and the conversion install are here;
    else one "not tested" saying which is missing."""
    from maskrt.contracts.tensorrt import installed_tensorrt
    from maskrt.runtime.doctor import Check

    tensorrt = installed_tensorrt()
    if tensorrt is None:
        return [Check(ENGINES, None, "no TensorRT")]
    if not tensorrt.builder:
        return [Check(ENGINES, None, f"TensorRT {tensorrt.version} is a runtime-only install, without the builder")]
    if machine.gpu is None:
        return [Check(ENGINES, None, "no GPU")]
    if not machine.pycuda:
        return [Check(ENGINES, None, "no pycuda")]
    try:
        from maskrt.convert.engine_checks import engine_checks
    except ModuleNotFoundError as error:  # the edge install: no PyTorch to export shapes-demo with
        return [Check(ENGINES, None, f"no {error.name}, which exports shapes-demo: pip install 'maskrt[convert]'")]
    with tempfile.TemporaryDirectory(prefix="maskrt-doctor-") as folder:
        return engine_checks(tensorrt, Path(folder), console)
