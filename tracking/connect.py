"""Reaching the tracking store and the Optuna storage, checked once where a command starts.

MLflow retries an unreachable tracking server for minutes before it gives up
with a long traceback, and SQLAlchemy waits on a dead database host just as
long. A stage checks the URI it was given first, with a short timeout, and
stops with one line naming it (exit 2).
"""
from __future__ import annotations

TIMEOUT_S = 5


def shown(uri: str) -> str:
    """The URI without its password."""
    if "://" not in uri or "@" not in uri.split("://", 1)[1]:
        return uri
    try:
        from sqlalchemy.engine import make_url

        return make_url(uri).render_as_string(hide_password=True)
    except Exception:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def check_reachable(uri: str, what: str, fix: str) -> None:
    """Raise InputError within a few seconds when `uri` (http(s) or a database URL) does not answer."""
    from imaging.errors import InputError

    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return  # something answers; MLflow will say what it thinks of the requests
        except Exception as error:
            reason = getattr(error, "reason", error)
            raise InputError(f"cannot reach the {what} at {shown(uri)} ({reason}); {fix}.") from None
    elif "://" in uri and not _known_database(uri):
        raise InputError(f"{shown(uri)} is not a database URL this install can open (no SQLAlchemy dialect for {uri.split('://', 1)[0]!r}); "
                         "use sqlite:///file.db or postgresql://user@host/db.")
    elif uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres", "mysql", "mssql"):
        import sqlalchemy

        try:
            arguments = {"connect_timeout": TIMEOUT_S} if uri.startswith(("postgres", "mysql")) else {}
            engine = sqlalchemy.create_engine(uri.replace("postgres://", "postgresql://", 1), connect_args=arguments)
            with engine.connect():
                pass
            engine.dispose()
        except Exception as error:
            reason = str(getattr(error, "orig", error)).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
            raise InputError(f"cannot reach the {what} at {shown(uri)} ({reason}); {fix}.") from None


def _known_database(uri: str) -> bool:
    """SQLAlchemy has a dialect (and its driver module) for this URL."""
    import sqlalchemy

    try:
        sqlalchemy.engine.make_url(uri.replace("postgres://", "postgresql://", 1)).get_dialect()
    except Exception:
        return False
    return True


FIX_TRACKING = "start it (make server) or point MLFLOW_TRACKING_URI at one that runs"


def check_environment() -> None:
    """What every command needs, checked where it starts: the synthmix cache folder and the tracking store."""
    import os
    from pathlib import Path

    from imaging.errors import InputError

    cache = os.environ.get("SYNTHMIX_CACHE")
    if cache and Path(cache).expanduser().exists() and not Path(cache).expanduser().is_dir():
        raise InputError(f"SYNTHMIX_CACHE={cache} is a file, not a folder; point it at a folder (it is created when missing) or unset it.")
    check_tracking()


def check_tracking() -> None:
    """The MLflow tracking store this process logs to answers and is MLflow's (a server, a database, a SQLite file
    or a local folder); a new database store is created under a lock, so commands started together do not race to migrate it."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        _check_mlflow_server(uri)  # one request says both whether it answers and whether it is MLflow
        return
    check_reachable(uri, "MLflow tracking store", FIX_TRACKING)
    if uri.startswith("sqlite:"):
        _check_sqlite_file(uri)
    if uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "postgres", "mysql", "mssql"):
        _create_store(uri)


def _check_mlflow_server(uri: str) -> None:
    """Something answers at `uri`: is it an MLflow tracking server (a JSON answer to its REST API)?"""
    import json
    import urllib.error
    import urllib.request

    from imaging.errors import InputError

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body = response.read(65536)
    except urllib.error.HTTPError as error:
        body = error.read(65536)
    except Exception as error:
        raise InputError(f"cannot reach the MLflow tracking store at {shown(uri)} ({getattr(error, 'reason', error)}); {FIX_TRACKING}.") from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ({"experiment", "error_code"} & set(answer)):
        raise InputError(f"{shown(uri)} answers, but not as an MLflow tracking server (its REST API gave no MLflow reply); point MLFLOW_TRACKING_URI at the MLflow server's address.")


def _check_sqlite_file(uri: str) -> None:
    """A sqlite:/// store: refuse a folder, a file that is not a SQLite database, or a missing folder, before anything touches it."""
    from pathlib import Path

    from imaging.errors import InputError

    path = Path(uri.split(":///", 1)[1].split("?", 1)[0]) if ":///" in uri else None
    if path is None or str(path) in ("", ":memory:"):
        return
    if path.is_dir():
        raise InputError(f"MLFLOW_TRACKING_URI={uri} names a folder, not a SQLite file; use sqlite:///<folder>/mlflow.db or the folder itself as a file store.")
    if path.exists() and path.stat().st_size and path.read_bytes()[:16] != b"SQLite format 3\x00":
        raise InputError(f"MLFLOW_TRACKING_URI={uri}: {path} is not a SQLite database; point it at MLflow's .db file, or at a new path to create one.")
    if not path.parent.is_dir():
        raise InputError(f"MLFLOW_TRACKING_URI={uri}: the folder {path.parent} does not exist; create it or choose another path.")


def _create_store(uri: str) -> None:
    """Open a database store once under the lock every command on it shares (storage_lock: a PostgreSQL advisory
    lock, else a file lock on this machine): commands started together on a new store would race to create and
    migrate MLflow's tables; the first creates them, the others wait."""
    from mlflow.tracking import MlflowClient

    from imaging.errors import InputError

    with storage_lock(uri, f"mlflow-store {uri}"), _quiet("mlflow.store.db.utils", "alembic"):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as error:
            raise InputError(f"MLFLOW_TRACKING_URI={shown(uri)} could not be opened as an MLflow store ({error.__class__.__name__}: {str(error).splitlines()[0][:200]}); "
                             "point it at MLflow's store, or at a new path to create one.") from None


def _quiet(*loggers: str):
    """Those loggers' INFO lines ("Creating initial MLflow database tables...") kept off stderr for the block,
    so that a command that then stops on bad input prints its one error line and nothing else."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def block():
        levels = {name: logging.getLogger(name).level for name in loggers}
        for name in loggers:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)

    return block()


def storage_lock(url: str, name: str):
    """A lock shared by every worker of one storage: a PostgreSQL advisory lock, else a file lock on this machine."""
    import contextlib
    import hashlib

    number = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)

    @contextlib.contextmanager
    def lock():
        if url.startswith(("postgresql", "postgres")):
            import sqlalchemy

            engine = sqlalchemy.create_engine(url.replace("postgres://", "postgresql://", 1))
            try:
                with engine.connect() as connection:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:n)"), {"n": number})
                    try:
                        yield
                    finally:
                        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:n)"), {"n": number})
            finally:
                engine.dispose()
        else:
            import fcntl
            import tempfile
            from pathlib import Path

            path = Path(tempfile.gettempdir()) / f"synthmix-{number:x}.lock"
            with path.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    return lock()


def open_study(storage_url: str, name: str, *, direction: str | None = None, sampler=None, pruner=None, heartbeat: int | None = None, on_stale=None):
    """The Optuna study `name` in `storage_url` (created when missing), heartbeats on for database storage."""
    import warnings

    import optuna

    check_reachable(storage_url, "Optuna storage", "start the database or fix --storage")
    kwargs = {}
    if heartbeat:
        kwargs = {"heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat, "heartbeat_stale_trial_callback": on_stale}
    # workers started at once on a fresh database would race to create Optuna's tables and the study
    with storage_lock(storage_url, f"optuna-{name}"), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are marked experimental
        storage = optuna.storages.RDBStorage(storage_url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
        return optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True)
