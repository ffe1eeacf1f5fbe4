"""Paths in config.yaml stay in the configured folders: ``$FINOPS_HOME`` and the config file's own folder.

A config file is often edited by more people than the machine it runs on; the one file path it can set today, the
SQLite file of ``ledger.url``, must not reach outside those folders — not with ``..``, not as an absolute path
elsewhere, not through a symlink. A relative path resolves against the config file's folder (never the
process's working directory, which differs between the scheduler, workers, the triggerer and the CLI). Every
refusal is a ConfigError naming the file, the key and the fix, raised before anything is created.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finops_provider.core.config import ConfigError, load_config


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """``home`` ($FINOPS_HOME), ``conf`` (the config file's folder), ``out`` (outside both) and symlinks:
    ``home/out_link -> out``, ``home/in_link -> conf``, ``home/ledger_link.db -> out/ledger.db``."""
    f = {name: tmp_path / name for name in ("home", "conf", "out", "cwd")}
    for p in f.values():
        p.mkdir()
    (f["home"] / "out_link").symlink_to(f["out"], target_is_directory=True)
    (f["home"] / "in_link").symlink_to(f["conf"], target_is_directory=True)
    (f["home"] / "ledger_link.db").symlink_to(f["out"] / "ledger.db")
    (f["conf"] / "up_link").symlink_to(tmp_path, target_is_directory=True)
    monkeypatch.setenv("FINOPS_HOME", str(f["home"]))
    monkeypatch.chdir(f["cwd"])  # relative paths must not land here
    return f


def _config(folders: dict[str, Path], url: str) -> Path:
    path = folders["conf"] / "config.yaml"
    path.write_text(f"ledger:\n  url: {url!r}\n", encoding="utf-8")
    return path


def _db(url: str) -> Path:
    return Path(str(sa.make_url(url).database))


ALLOWED = [
    pytest.param("sqlite:///ledger.db", "conf/ledger.db", id="relative-to-config-folder"),
    pytest.param("sqlite:///./data/ledger.db", "conf/data/ledger.db", id="relative-subfolder"),
    pytest.param("sqlite:///{home}/ledger.db", "home/ledger.db", id="absolute-in-finops-home"),
    pytest.param("sqlite:///{conf}/x/ledger.db", "conf/x/ledger.db", id="absolute-in-config-folder"),
    pytest.param("sqlite:///{home}/in_link/ledger.db", "home/in_link/ledger.db", id="symlink-between-the-folders"),
]


@pytest.mark.parametrize(("url", "where"), ALLOWED)
def test_paths_inside_the_folders_load_and_resolve_against_the_config_folder(
    folders: dict[str, Path], url: str, where: str
) -> None:
    from finops_provider.settings import get_ledger

    path = _config(folders, url.format(**{k: str(v) for k, v in folders.items()}))
    cfg = load_config(path)
    assert cfg.ledger.url is not None
    db = _db(cfg.ledger.url)
    assert db.is_absolute() and db == folders["home"].parent / where
    with get_ledger(config=cfg) as led:  # the ledger opens there, whatever the working directory
        assert led.count() == 0
    assert db.is_file() and not any(folders["cwd"].iterdir()) and not any(folders["out"].iterdir())


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "postgresql+psycopg://finops:pw@db.example:5432/finops", None]
)
def test_urls_without_a_file_are_left_alone(folders: dict[str, Path], url: str | None) -> None:
    path = folders["conf"] / "config.yaml"
    path.write_text("currency: USD\n" if url is None else f"ledger: {{url: {url!r}}}\n", encoding="utf-8")
    assert load_config(path).ledger.url == url


REFUSED = [
    pytest.param("sqlite:///../ledger.db", "contains '..'", id="dot-dot"),
    pytest.param("sqlite:///data/../../ledger.db", "contains '..'", id="dot-dot-inside"),
    pytest.param("sqlite:///{home}/../out/ledger.db", "contains '..'", id="absolute-with-dot-dot"),
    pytest.param("sqlite:///{home}/sub/../ledger.db", "contains '..'", id="dot-dot-that-stays-inside"),
    pytest.param("sqlite:///{out}/ledger.db", "is outside the allowed folders", id="absolute-outside"),
    pytest.param("sqlite:////etc/finops-ledger.db", "is outside the allowed folders", id="etc"),
    pytest.param("sqlite:///~/finops-ledger.db", "is outside the allowed folders", id="home-tilde"),
    pytest.param("sqlite:///{home}/out_link/ledger.db", "leads through a symlink", id="symlinked-folder-escape"),
    pytest.param("sqlite:///{home}/ledger_link.db", "leads through a symlink", id="symlinked-file-escape"),
    pytest.param("sqlite:///up_link/out/ledger.db", "leads through a symlink", id="relative-symlink-escape"),
    pytest.param("sqlite:///file:ledger.db?uri=true", "URI file names are not supported", id="sqlite-uri"),
    pytest.param("not a url at all", "not a database URL", id="unparseable"),
]


@pytest.mark.parametrize(("url", "problem"), REFUSED)
def test_paths_leaving_the_folders_are_refused_naming_file_key_and_fix(
    folders: dict[str, Path], url: str, problem: str, figures
) -> None:
    path = _config(folders, url.format(**{k: str(v) for k, v in folders.items()}))
    figures.bad_input("config:path-escape")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ledger.url: ") and problem in msg
    assert msg.endswith(")") and ("(" in msg)  # the fix, in parentheses, like every config error
    if "allowed folders" in msg:
        assert str(folders["home"]) in msg and str(folders["conf"]) in msg and "FINOPS_LEDGER_URL" in msg
    assert not any(folders["out"].iterdir()) and not any(folders["cwd"].iterdir())  # nothing was created


def test_an_unparseable_url_error_keeps_the_password_out(folders: dict[str, Path], figures) -> None:
    path = _config(folders, "postgresql+psycopg://finops:Pw-9x7-secret@db.example:notaport/finops")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    figures.secret_probes += 1
    assert "Pw-9x7-secret" not in str(err.value) and "ledger.url: not a database URL" in str(err.value)


def test_every_entry_point_uses_the_same_rule(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """settings.get_config (callbacks, operators, the dashboard), the triggers' fresh reads and
    ``finops validate-config`` all refuse the same escaping path."""
    from typer.testing import CliRunner

    from finops_provider.cli import app
    from finops_provider.settings import get_config
    from finops_provider.triggers.budget import budget_headroom

    path = _config(folders, f"sqlite:///{folders['home']}/out_link/ledger.db")
    path.write_text(path.read_text() + "budgets: [{name: b, scope: {dag: etl}, amount: '1'}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="leads through a symlink"):
        get_config(path)
    with pytest.raises(ConfigError, match="leads through a symlink"):
        budget_headroom("b", "100", config_path=str(path))
    res = CliRunner().invoke(app, ["validate-config", str(path)])
    assert res.exit_code == 2 and "ledger.url" in res.output
    monkeypatch.setenv("FINOPS_CONFIG", str(path))
    res = CliRunner().invoke(app, ["report", "--format", "json"])
    assert res.exit_code == 2 and "leads through a symlink" in res.output
    assert not any(folders["out"].iterdir())


# ------------------------------------------------------------------------------------------ property
SEGMENTS = ["a", "b", "..", ".", "out_link", "in_link", "ledger_link.db", "up_link", "x.db"]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    anchor=st.sampled_from(["", "home", "conf", "out", "tmp", "~"]),
    parts=st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5),
)
def test_any_path_loads_only_if_it_really_stays_inside(
    folders: dict[str, Path], anchor: str, parts: list[str], figures
) -> None:
    """Oracle: a path loads iff it has no ``..`` and its fully resolved location (``os.path.realpath``) is inside
    the resolved FINOPS_HOME or config folder; when it loads, the URL names that place."""
    base: dict[str, Any] = {
        "": None,
        "~": "~",
        "tmp": folders["home"].parent,
        **{k: folders[k] for k in ("home", "conf", "out")},
    }
    start = base[anchor]
    raw = os.path.join(*([str(start)] if start is not None else []), *parts)
    figures.bad_input("config:random-path")
    path = _config(folders, f"sqlite:///{raw}")
    full = os.path.expanduser(raw)
    full = full if os.path.isabs(full) else os.path.join(folders["conf"], full)
    real = os.path.realpath(full)
    roots = [os.path.realpath(folders["home"]), os.path.realpath(folders["conf"])]
    inside = any(real == r or real.startswith(r + os.sep) for r in roots)
    should_load = ".." not in Path(os.path.expanduser(raw)).parts and inside
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert not should_load, (raw, str(e))
        assert str(e).startswith(f"{path}: ledger.url: ")
    else:
        assert should_load, raw
        assert cfg.ledger.url is not None
        assert os.path.realpath(_db(cfg.ledger.url)) == real
    assert not any(folders["out"].iterdir()) and not any(folders["cwd"].iterdir())
