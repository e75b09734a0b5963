"""maskrt's command line: `maskrt <verb> ...`, and `trt-convert` as the short name of `maskrt convert`.

Every verb reports a bad input, a mistyped flag included, as one line on stderr naming the file or flag and what is
wrong, and exits with 2; --verbose prints the traceback before that line and changes nothing else. Anything else that
escapes a verb is a defect of maskrt: one line that says so, and exit code 1. Ctrl-C and SIGTERM stop a verb through
the same cleanup (contracts/signals.py): exit codes 130 and 143 (cli/exits.py has the whole table).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Sequence
from typing import NoReturn

from rich.console import Console
from rich.text import Text

from maskrt.cli import (
    bench,
    check,
    convert,
    deepstream,
    demo,
    doctor,
    exits,
    export,
    infer,
    lint,
    plugins,
    serve,
    shapes,
    triton,
)
from maskrt.cli.arguments import maskrt_version
from maskrt.contracts.errors import BadInput, TensorRTUnavailable, Terminated
from maskrt.contracts.signals import interrupts_raised
from maskrt.runtime.progress import make_console

# What conversion needs and `pip install maskrt` (the runtime) leaves out.
CONVERSION_PACKAGES = ("torch", "torchvision", "onnx_graphsurgeon", "safetensors", "modelopt", "matplotlib")
VERBS = (export, convert, lint, shapes, plugins, infer, bench, check, demo, doctor, serve, triton, deepstream)


class UsageError(Exception):
    """A command line that argparse refused: printed as one line, exit 2."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print its usage block; one line names the flag and what is wrong, as for a bad file.
        raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


def main(argv: Sequence[str] | None = None, prog: str = "maskrt") -> int:
    parser, verbs = _parser()
    if prog != "maskrt":
        verbs.choices["convert"].prog = prog
    console = make_console()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # said by the verb's parser, so that trt-convert's mistakes are trt-convert's
            verbs.choices[args.verb].error(f"unrecognized arguments: {' '.join(unknown)}")
    except UsageError as error:
        _print_error(console, error.prog, error)
        return exits.BAD_INPUT
    except SystemExit as done:  # --help and --version
        return int(done.code or 0)
    name = verbs.choices[args.verb].prog
    started = time.perf_counter()
    try:
        with interrupts_raised():
            code = args.run(args, console) or exits.DONE
    except (BadInput, OSError) as error:
        _print_error(console, name, error, args.verbose)
        return exits.BAD_INPUT
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in CONVERSION_PACKAGES:
            return _internal_error(console, name, error, args.verbose)
        missing = BadInput(f"needs {error.name}, which the runtime install leaves out: pip install 'maskrt[convert]'")
        _print_error(console, name, missing, args.verbose)
        return exits.BAD_INPUT
    except TensorRTUnavailable as error:
        console.print(Text.assemble((f"{name}: ", "bold yellow"), str(error)), soft_wrap=True)
        return exits.NO_TENSORRT
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated): the verb cleaned up on its way out
        terminated = isinstance(stop, Terminated)
        console.print(Text.assemble((f"{name}: ", "bold yellow"), "terminated" if terminated else "interrupted"), soft_wrap=True)
        return exits.TERMINATED if terminated else exits.INTERRUPTED
    except Exception as error:  # noqa: BLE001 (every other failure is maskrt's, reported as such)
        return _internal_error(console, name, error, args.verbose)
    if code == exits.DONE:  # a verb that returns another code (a check that failed) has said why
        console.print(f"{name}: done in {time.perf_counter() - started:.1f} s", style="dim")
    return code


def trt_convert(argv: Sequence[str] | None = None) -> int:
    return main(["convert", *(sys.argv[1:] if argv is None else argv)], prog="trt-convert")


def _print_error(console: Console, prog: str, error: BaseException, verbose: bool = False) -> None:
    """One line on stderr; --verbose puts the traceback of the error being handled before it."""
    if verbose:
        console.print(Text(traceback.format_exc().rstrip()), soft_wrap=True)
    console.print(Text.assemble((f"{prog}: error: ", "bold red"), str(error)), soft_wrap=True)


def _internal_error(console: Console, prog: str, error: BaseException, verbose: bool) -> int:
    """A failure that is maskrt's and not the input's: one line saying so, and what to send with a report."""
    if verbose:
        console.print(Text(traceback.format_exc().rstrip()), soft_wrap=True)
    what = " ".join(f"{type(error).__name__}: {error}".split())
    hint = "" if verbose else "; run again with --verbose for the traceback"
    message = f"internal error ({what[:300]}): this is a defect of maskrt, please report it{hint}"
    console.print(Text.assemble((f"{prog}: error: ", "bold red"), message), soft_wrap=True)
    return exits.FAILED


def _parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = _Parser(prog="maskrt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=maskrt_version())
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    common = _Parser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="full tracebacks and TensorRT's own log")
    for verb in VERBS:
        verb.add(verbs, common)
    return parser, verbs


if __name__ == "__main__":
    sys.exit(main())
