"""Secrets stay secret (issue 24 item 9): the database password and the page's login never in
a repr of the settings, a log line or a task Ray pickles; a Ray worker gets the password from
its environment, which the driver sets for the run."""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from pathlib import Path

import pytest
from conftest import run_cli, write_config

from image_search.cluster import worker_settings
from image_search.config import Settings, load_settings, worker_environment

pytestmark = pytest.mark.fast

PASSWORD = "Pw-not;for'logs"
LOGIN = "alice:Login-not-for-logs"


def secret_settings(tmp_path: Path) -> Settings:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"postgres-host": "db.example.org", "postgres-password": PASSWORD,
                                  "server-auth": LOGIN, "ray-address": "auto"}))
    return load_settings(config, environ={})


def test_no_repr_of_the_settings_shows_a_secret(tmp_path: Path) -> None:
    for settings in (
        secret_settings(tmp_path),
        Settings(postgres_password=PASSWORD, server_auth=LOGIN),
        dataclasses.replace(Settings(), postgres_password=PASSWORD, server_auth=LOGIN),
    ):
        shown = repr(settings) + str(settings) + f"{settings!r}"
        assert PASSWORD not in shown and "Login-not" not in shown
        assert "postgres_password='***'" in shown and "server_auth='***'" in shown
        # ... while the code that needs them still gets the text itself.
        assert settings.postgres_password == PASSWORD and settings.server_auth == LOGIN
        assert f"{settings.postgres_password}" == PASSWORD
        assert settings.redacted()["postgres-password"] == "***"


def test_a_pickled_task_carries_no_secret_and_a_worker_reads_it_from_its_environment(
    tmp_path: Path, monkeypatch
) -> None:
    settings = secret_settings(tmp_path)
    monkeypatch.delenv("IMAGE_SEARCH_POSTGRES_PASSWORD", raising=False)
    monkeypatch.delenv("IMAGE_SEARCH_SERVER_AUTH", raising=False)

    blob = pickle.dumps(worker_settings(settings))  # what Ray sends with each task

    assert PASSWORD.encode() not in blob and b"Login-not" not in blob
    assert pickle.loads(blob).postgres_password is None  # a worker without the variable
    environment = worker_environment(settings)  # what the driver gives the run's workers
    assert environment == {"IMAGE_SEARCH_POSTGRES_PASSWORD": PASSWORD}
    monkeypatch.setenv("IMAGE_SEARCH_POSTGRES_PASSWORD", PASSWORD)
    on_a_worker = pickle.loads(blob)
    assert on_a_worker.postgres_password == PASSWORD
    assert on_a_worker.server_auth is None  # the page's login is no worker's business
    assert repr(on_a_worker).count("***") == 1


def test_no_log_line_shows_a_secret(settings: Settings, tmp_path: Path, caplog) -> None:
    """Every log line of a command, with --debug, the settings logged by any module."""
    config = write_config(tmp_path / "config.json", settings, **{"server-auth": LOGIN})
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("image_search").debug("settings: %r", load_settings(config))
        done = run_cli("status", "--env", str(config), "--debug",
                       env={"IMAGE_SEARCH_POSTGRES_PASSWORD": PASSWORD})
    assert done.returncode == 0, done.stderr
    seen = caplog.text + done.stdout + done.stderr
    assert PASSWORD not in seen and "Login-not" not in seen
