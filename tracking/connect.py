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


def check_tracking() -> None:
    """The MLflow tracking store this process logs to answers (or is a local file / sqlite store)."""
    import mlflow

    check_reachable(mlflow.get_tracking_uri(), "MLflow tracking store",
                    "start it (make server) or point MLFLOW_TRACKING_URI at one that runs")


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
