"""Serving throughput: `mlflow models serve` of the champion against the same model's predict in-process.

    .venv/bin/python benchmarks/serving.py [--model-uri models:/mnist5k-classifier@champion]
                                           [--seconds 20] [--clients 4] [--batches 1,64] [--workers 1]

The model is the one `make demo` registers (pass --model-uri for another; the
tracking store is MLFLOW_TRACKING_URI, else ./mlflow.db). Requests hold base64
PNGs of real mnist5k test digits in `dataframe_split`, as README's curl does.

For each batch size: `--clients` threads, each on its own keep-alive HTTP
connection, send requests back to back for `--seconds` against one local
server (started here on a free port on 127.0.0.1, `--workers` uvicorn workers,
`--env-manager local`); requests/s, images/s and p50/p99 latency of the
answered requests, and how many failed. Beside it, the same model loaded with
`mlflow.pyfunc.load_model` in this process predicts the same DataFrame of
base64 strings back to back for the same time: that is the in-process rate,
with the same decoding and schema check as the server, without HTTP and JSON.
Goal: at batch 64 the server reaches >= 70% of the in-process images/s, and
no request fails. Client and server share this machine's cores.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")


def test_images(count: int) -> list[str]:
    """base64 PNGs of mnist5k test digits, as a client would send them."""
    from imaging.datasets import load_dataset

    paths = load_dataset("mnist5k")[0].split("test").local_paths()
    return [base64.b64encode(paths[i % len(paths)].read_bytes()).decode("ascii") for i in range(count)]


def in_process(model, frame, seconds: float) -> tuple[float, int]:
    """(images/s, requests) of back-to-back predict calls on `frame` for `seconds`."""
    model.predict(frame)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(frame)
        done += 1
    return done * len(frame) / (time.perf_counter() - start), done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_uri: str, port: int, workers: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        # the server execs `uvicorn` from PATH: the one installed beside this Python
        env={**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])},
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def load(port: int, body: bytes, clients: int, seconds: float) -> dict:
    """Back-to-back requests from `clients` threads for `seconds`: latencies of answered ones, failures."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, bad = [], []
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                if response.status == 200:
                    mine.append(time.perf_counter() - started)
                else:
                    bad.append(f"{response.status}: {payload[:200]!r}")
            except Exception as error:  # noqa: BLE001 - a failed request is counted and shown, not fatal
                bad.append(f"{error.__class__.__name__}: {error}")
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        with lock:
            latencies.extend(mine)
            failures.extend(bad)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    begun = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - begun
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")  # noqa: E731
    return {"requests": len(latencies), "failed": len(failures), "first_failure": failures[0] if failures else "",
            "req_s": len(latencies) / wall, "p50_ms": pick(0.50), "p99_ms": pick(0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", default="models:/mnist5k-classifier@champion", help="model to serve (default: the champion make demo registers)")
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per batch size, for the server and in-process each (default 20)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client connections (default 4)")
    parser.add_argument("--batches", default="1,64", help="images per request, comma-separated (default 1,64)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server (default 1)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlflow.db'}")

    import mlflow
    import pandas as pd
    import torch

    try:
        model = mlflow.pyfunc.load_model(args.model_uri)
    except Exception as error:
        raise SystemExit(f"cannot load {args.model_uri} from {os.environ['MLFLOW_TRACKING_URI']} ({error.__class__.__name__}); "
                         "run `make demo` first, or pass --model-uri and set MLFLOW_TRACKING_URI") from None
    batches = [int(b) for b in args.batches.split(",")]
    images = test_images(max(batches))
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="synthmix-serving-")) / "server.log"
    server = start_server(args.model_uri, port, args.workers, log)
    rows = []
    try:
        for batch in batches:
            frame = pd.DataFrame({"image": images[:batch]})
            body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[v] for v in images[:batch]]}}).encode()
            load(port, body, args.clients, min(2.0, args.seconds))  # warm-up
            served = load(port, body, args.clients, args.seconds)
            local_rate, _ = in_process(model, frame, args.seconds)
            rows.append({"batch": batch, **served, "img_s": served["req_s"] * batch, "in_process_img_s": local_rate})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    print(f"mlflow models serve ({args.workers} worker(s), --env-manager local) of {args.model_uri}; {args.clients} clients, "
          f"{args.seconds:g} s per batch size; {os.cpu_count()} CPU cores shared by clients and server; torch threads {torch.get_num_threads()}; "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print()
    print("| batch | requests | failed | req/s | images/s | p50 ms | p99 ms | in-process images/s | server / in-process |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['batch']} | {row['requests']} | {row['failed']} | {row['req_s']:.1f} | {row['img_s']:.0f} | {row['p50_ms']:.1f} | "
              f"{row['p99_ms']:.1f} | {row['in_process_img_s']:.0f} | {row['img_s'] / row['in_process_img_s']:.0%} |")
    for row in rows:
        if row["failed"]:
            print(f"batch {row['batch']}: first failure: {row['first_failure']}")
    goal = next((row for row in rows if row["batch"] == 64), None)
    if goal is not None:
        met = goal["img_s"] / goal["in_process_img_s"] >= 0.7 and all(row["failed"] == 0 for row in rows)
        print(f"\ngoal (batch 64 >= 70% of in-process, no failed request): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
