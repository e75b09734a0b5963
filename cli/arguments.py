"""argparse types shared by the verbs: each refuses a bad value with a sentence naming what was expected."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import fields
from importlib.metadata import version
from typing import Any, TypeVar

Options = TypeVar("Options")


def integer(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{f' ({why})' if why else ''}, got {value}")
        return value

    return parse


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def fraction(text: str) -> float:
    """Thresholds: IoU and scores lie in [0, 1]."""
    value = number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive_number(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def non_negative_number(text: str) -> float:
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def size(text: str) -> tuple[int, int]:
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit() or int(height) <= 0 or int(width) <= 0:
        raise argparse.ArgumentTypeError(f"expected HxW such as 800x1344, got '{text}'")
    return int(height), int(width)


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """What `maskrt infer` and `maskrt bench` pass to the runtime's backend."""
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="ONNX Runtime's provider (default: CUDA when installed)"
    )
    parser.add_argument("--threads", type=integer(1), help="ONNX Runtime's intra-op threads (default: one per core)")


def backend_options(args: argparse.Namespace) -> dict[str, object]:
    """Every backend option; open_backend hands each backend its own and refuses what one cannot do."""
    return {"device": args.device, "threads": args.threads, "cuda_graph": getattr(args, "cuda_graph", False), "verbose": args.verbose}


def maskrt_version() -> str:
    """What --version prints."""
    return f"maskrt {version('maskrt')}"


def options_from(args: argparse.Namespace, kind: type[Options], **given: Any) -> Options:
    """The options dataclass `kind` from the flags whose dests are its fields' names (the others keep their defaults,
    or take `given`)."""
    return kind(**{f.name: getattr(args, f.name) for f in fields(kind) if hasattr(args, f.name)}, **given)  # type: ignore[call-arg, arg-type]


def flags(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags `names` as keyword arguments of the function their dests are named after."""
    return {name: getattr(args, name) for name in names}
