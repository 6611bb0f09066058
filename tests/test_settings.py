"""Settings: embedded defaults, one-line errors naming the variable, masking, the kept key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from camvoice.settings import ConfigError, Settings, load_settings
from tests.conftest import run_cli


def test_defaults_use_sqlite_in_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path / 'instance' / 'camvoice.db'}"
    assert settings.public_url == "http://127.0.0.1:8080"


def test_secret_key_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_settings(data_dir=tmp_path).key()
    second = load_settings(data_dir=tmp_path).key()
    assert first == second
    assert len(first) >= 48
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    assert load_settings(data_dir=tmp_path / "other").key() != first


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMVOICE_ACCESS_TOKEN_TTL", "forever")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith("CAMVOICE_ACCESS_TOKEN_TTL:")
    assert "\n" not in str(err.value)


def test_public_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match="CAMVOICE_PUBLIC_URL"):
        load_settings(public_url="camvoice.example.com")


def test_postgres_url_gets_psycopg3_driver() -> None:
    settings = load_settings(database_url="postgresql://u:pw@db.internal/camvoice")
    assert settings.sqlalchemy_url == "postgresql+psycopg://u:pw@db.internal/camvoice"


def test_masked_hides_secrets_and_database_password() -> None:
    settings = load_settings(
        database_url="postgresql://u:hunter2@db.internal/camvoice", secret_key="s3cr3t-value"
    )
    text = str(settings.masked())
    assert "hunter2" not in text
    assert "s3cr3t-value" not in text
    assert "u:***@db.internal" in text


def test_cli_config_masks_and_bad_value_exits_2(tmp_path: Path) -> None:
    env = {"CAMVOICE_DATA_DIR": str(tmp_path), "CAMVOICE_SECRET_KEY": "top-secret-key-123"}
    shown = run_cli("config", env=env)
    assert "CAMVOICE_SECRET_KEY = ********" in shown.stdout
    assert "top-secret-key-123" not in shown.stdout
    bad = run_cli("config", env={**env, "CAMVOICE_LOG_LEVEL": "loud"}, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("error: CAMVOICE_LOG_LEVEL")


def readme_variables() -> set[str]:
    """The variables README's settings table names; `CAMVOICE_X_CERT` / `_KEY` is two."""
    names: set[str] = set()
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for first_cell in re.findall(r"^\| (`CAMVOICE_[^|]+)\|", readme, re.MULTILINE):
        for group in re.split(r",", first_cell):
            full, *suffixes = re.findall(r"`([A-Z0-9_]+)`", group)
            names.add(full)
            names.update(full.rsplit("_", 1)[0] + suffix for suffix in suffixes)
    return names


def test_readme_table_names_every_setting_and_nothing_else() -> None:
    """A variable README documents that no setting reads is a promise nobody keeps, and a
    setting missing from the table is one nobody can find."""
    settings = {f"CAMVOICE_{name.upper()}" for name in Settings.model_fields}
    assert readme_variables() == settings
