"""`maskrt serve`: a deploy graph or engine behind a Triton server, over HTTP and gRPC (serve/server.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from maskrt.cli.arguments import add_backend_options, flags, fraction, integer
from maskrt.serve import defaults


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    serve = verbs.add_parser("serve", parents=[common], help="serve a deploy graph or engine with Triton (HTTP, gRPC, metrics)")
    serve.add_argument("model", type=Path, help="a deploy graph (.onnx, ONNX Runtime) or an engine (.engine, TensorRT)")
    serve.add_argument("--http-port", type=integer(1), default=8000, help="HTTP/REST (KServe v2) port (default 8000)")
    serve.add_argument("--grpc-port", type=integer(1), default=8001, help="gRPC port (default 8001)")
    serve.add_argument("--metrics-port", type=integer(1), default=8002, help="Prometheus metrics port, /metrics (default 8002)")
    serve.add_argument("--address", default="127.0.0.1", help="address the three ports listen on (default 127.0.0.1; 0.0.0.0 for all)")
    add_model_options(serve)
    add_backend_options(serve)
    serve.add_argument("--log-file", type=Path, help="tritonserver's log (default: kept in a temporary folder while it runs)")
    serve.add_argument(
        "--shutdown-timeout",
        type=integer(1),
        default=defaults.SHUTDOWN_TIMEOUT_S,
        help=f"seconds in-flight requests get on SIGTERM (default {defaults.SHUTDOWN_TIMEOUT_S})",
    )
    serve.set_defaults(run=run)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """How a served model answers: in `maskrt serve` and in the repositories of `maskrt triton`."""
    parser.add_argument("--model-name", default=defaults.MODEL_NAME, help=f"the name clients ask for (default {defaults.MODEL_NAME})")
    parser.add_argument("--instances", type=integer(1), default=1, help="model instances, each with a Predictor of its own (default 1)")
    parser.add_argument(
        "--max-queue-delay-us",
        type=integer(0),
        default=defaults.MAX_QUEUE_DELAY_US,
        help=f"how long Triton's dynamic batcher holds a request to group it with others (default {defaults.MAX_QUEUE_DELAY_US})",
    )
    parser.add_argument("--score-threshold", type=fraction, default=0.5, help="drop detections scoring below this (default 0.5)")
    parser.add_argument(
        "--max-image-pixels", type=integer(1), default=defaults.MAX_IMAGE_PIXELS, help="refuse larger images (default 8192x8192)"
    )


def run(args: argparse.Namespace, console: Console) -> None:
    from maskrt.serve.server import serve

    ports = (args.http_port, args.grpc_port, args.metrics_port)
    chosen = flags(args, "address", "model_name", "score_threshold", "device", "threads", "max_image_pixels", "log_file")
    serve(args.model, *ports, args.instances, args.max_queue_delay_us, console, shutdown_timeout_s=args.shutdown_timeout, **chosen)
