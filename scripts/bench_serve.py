"""Images per second through `maskrt serve` (PyTriton's tritonserver, tritonclient over HTTP or gRPC) at 1, 4 and 16
concurrent clients, against the Predictor called directly in one process: the same model, the same images (PNG
files, decoded on both sides), the same ONNX Runtime thread count, side by side in one run.

    python scripts/bench_serve.py                         # shapes-demo's native deploy graph, made in a temp folder
    python scripts/bench_serve.py --model deploy.onnx --threads 2 --images 128 --protocol grpc --json

The server runs in its own process on 127.0.0.1 (free ports), as `python -m maskrt.cli serve`; the clients are
threads of this process, each with its own tritonclient client, sending one image a request. The direct run reads
and predicts the same images one by one. On a machine shared with other work the load moves between measurements:
each client count is measured in --rounds rounds, direct and served in turn, and the ratio (serve / direct) is the
median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from maskrt.runtime.predictor import Predictor  # noqa: E402
from maskrt.serve import protocol  # noqa: E402

from serve_support import running_server  # noqa: E402


def shapes_demo_graph(folder: Path) -> Path:
    from maskrt.cli.main import main as maskrt

    exported, deploy = folder / "model.onnx", folder / "deploy.onnx"
    assert maskrt(["export", "--model", "shapes-demo", "-o", str(exported)]) == 0
    assert maskrt(["convert", str(exported), "--surgery-only", "--plugins", "native", "-o", str(deploy)]) == 0
    return deploy


def shapes_images(folder: Path, count: int) -> list[Path]:
    from maskrt.cli.main import main as maskrt

    assert maskrt(["shapes", "--count", str(count), "--seed", "1", "-o", str(folder)]) == 0
    return sorted((folder / "images").glob("*.png"))


def direct(model: Path, paths: list[Path], threads: int) -> float:
    predictor = Predictor(model, threads=threads)
    predictor(str(paths[0]))  # warm-up
    started = time.perf_counter()
    for path in paths:
        predictor(str(path))
    return len(paths) / (time.perf_counter() - started)


def through_server(url: str, module_name: str, encoded: list[bytes], clients: int) -> float:
    module = __import__(f"tritonclient.{module_name}", fromlist=["InferenceServerClient"])
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        connection = module.InferenceServerClient(url)
        mine = encoded[number::clients]
        barrier.wait()
        for data in mine:
            try:
                result = connection.infer("maskrt", protocol.client_inputs(module, [data]), outputs=protocol.client_outputs(module))
                protocol.found_from_result(result)
            except Exception as error:  # noqa: BLE001 - counted and reported
                failures.append(str(error))

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
    return len(encoded) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a deploy graph or engine (default: shapes-demo, native, batch 1)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads, both sides (default 1)")
    parser.add_argument("--images", type=int, default=96, help="images per measurement (default 96)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="direct and served in turn, this many times (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        folder = Path(work)
        model = args.model or shapes_demo_graph(folder)
        paths = shapes_images(folder / "images", min(args.images, 200))
        paths = (paths * (args.images // len(paths) + 1))[: args.images]
        encoded = [path.read_bytes() for path in paths]
        flags = ["--threads", str(args.threads), "--instances", str(args.instances)]
        results: dict[str, object] = {"model": str(args.model or "shapes-demo native batch 1"), "threads": args.threads,
                                      "images": args.images, "protocol": args.protocol, "instances": args.instances}  # fmt: skip
        with running_server(model, folder, *flags) as server:
            url = server.http_url if args.protocol == "http" else server.grpc_url
            through_server(url, args.protocol, encoded[:8], 1)  # warm-up
            rows = []
            for clients in args.clients:
                rounds = []
                for _ in range(args.rounds):  # direct and served in turn, so that both see the same load
                    rounds.append((direct(model, paths, args.threads), through_server(url, args.protocol, encoded, clients)))
                direct_ips = statistics.median(d for d, _ in rounds)
                serve_ips = statistics.median(s for _, s in rounds)
                ratio = statistics.median(s / d for d, s in rounds)
                rows.append({"clients": clients, "serve_ips": round(serve_ips, 2), "direct_ips": round(direct_ips, 2), "ratio": round(ratio, 3),
                             "rounds": [[round(d, 2), round(s, 2)] for d, s in rounds]})  # fmt: skip
                if not args.json:
                    print(f"{clients:>3} clients: serve {serve_ips:6.2f} images/s, direct {direct_ips:6.2f} images/s, ratio {ratio:.3f} "
                          f"(rounds: {', '.join(f'{s / d:.2f}' for d, s in rounds)})", flush=True)  # fmt: skip
            results["rows"] = rows
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
