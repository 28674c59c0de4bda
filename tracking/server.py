"""python -m tracking.server: the MLflow tracking server a team (or several workers) logs to.

    python -m tracking.server                                   # 127.0.0.1:5000, sqlite:///mlflow.db, ./mlartifacts
    python -m tracking.server --host 0.0.0.0 --backend-store-uri postgresql://postgres@db:5432/mlflow \\
                              --artifacts-destination s3://bucket/mlflow

Runs `mlflow server` with a backend store (runs, metrics, the Model Registry)
and an artifacts destination that the server proxies, so workers need only
`MLFLOW_TRACKING_URI=http://<host>:<port>` and no access to the artifact
store. The backend store is checked first: a database that does not answer
is one line and exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tracking.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for other machines (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument("--backend-store-uri", default="sqlite:///mlflow.db", help="runs and the Model Registry: sqlite:///file.db or postgresql://user@host:port/db (default sqlite:///mlflow.db)")
    parser.add_argument("--artifacts-destination", default="./mlartifacts", help="where the server stores artifacts: a folder, s3://, gs://, ... (default ./mlartifacts)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from imaging.errors import InputError
    from tracking.connect import check_reachable, shown

    try:
        check_reachable(args.backend_store_uri, "backend store", "start the database or fix --backend-store-uri")
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "server", "--host", args.host, "--port", str(args.port), "--backend-store-uri", args.backend_store_uri,
               "--artifacts-destination", args.artifacts_destination, "--workers", str(args.workers)]
    print(f"[synthmix] tracking server on http://{args.host}:{args.port} (backend {shown(args.backend_store_uri)}, artifacts {args.artifacts_destination})", flush=True)
    print(f"[synthmix] point workers at it: export MLFLOW_TRACKING_URI=http://{'127.0.0.1' if args.host == '0.0.0.0' else args.host}:{args.port}", flush=True)
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # the server execs gunicorn/uvicorn
    os.execv(mlflow, command)


if __name__ == "__main__":
    main()
