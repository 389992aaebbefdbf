"""What a new user hit (issue 12): messages, help, the shutdown, the result folder, and the
page in Chromium."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    CHROMIUM,
    EMBEDDING_DIM,
    free_port,
    run_cli,
    running_page,
    start_serve,
    write_config,
)
from imagegen import write_photo

from image_search.config import Settings, load_settings
from image_search.errors import ConfigError, one_line
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.status import human_size

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- messages


def test_a_model_mismatch_names_the_tables_model_and_how_to_use_it(
    settings: Settings, photos: list[Path], tmp_path: Path
) -> None:
    indexed = write_config(tmp_path / "tiny.json", settings)
    assert run_cli("index", "--env", str(indexed)).returncode == 0
    readme_default = dataclasses.replace(settings, model_name="jinaai/jina-clip-v2", dimension=1024)
    config = write_config(tmp_path / "config.json", readme_default)

    searched = run_cli("search", "--env", str(config), "--text", "a cat")

    assert searched.returncode == 2
    message = searched.stderr.strip()
    assert len(message.splitlines()) == 1
    assert f"--model-name {settings.model_name} --dimension {settings.dimension}" in message
    assert "config.json" in message
    status = run_cli("status", "--env", str(config))
    assert status.returncode == 0, status.stderr
    assert f"model: {settings.model_name} ({settings.dimension}-d" in status.stdout
    assert "note: the settings ask for jinaai/jina-clip-v2 (1024-d)" in status.stdout
    shown = json.loads(run_cli("status", "--env", str(config), "--json").stdout)
    assert shown["settings_match_table"] is False
    assert shown["configured_model"] == "jinaai/jina-clip-v2"


def test_a_model_id_that_cannot_be_reached_fails_fast_in_one_line(
    settings: Settings, photos: list[Path], tmp_path: Path
) -> None:
    offline = dataclasses.replace(settings, model_name="nobody/no-such-model-here")
    config = write_config(tmp_path / "config.json", offline)
    started = time.monotonic()
    done = run_cli("index", "--env", str(config))
    assert done.returncode == 1
    assert time.monotonic() - started < 30  # imports included; no half minute of retries
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("image-search: error: cannot download model 'nobody/no-such-model")
    assert "No internet for models?" in last
    assert "Retry" not in done.stderr and "Converting" not in done.stderr


def test_a_port_in_use_is_one_line_naming_port_and_nothing_before_it(
    settings: Settings, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.json", settings)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--env", str(config), "--port", str(port))
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "--port" in done.stderr and "GRADIO_SERVER_PORT" not in done.stderr


def test_a_missing_source_folder_is_named_as_the_user_gave_it(
    settings: Settings, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.json", settings)
    missing = tmp_path / "no-such-folder"
    done = run_cli("index", "--env", str(config), "--source", str(missing))
    assert done.returncode == 2
    expected = f"image-search: error: --source {missing}: {missing} does not exist"
    assert done.stderr.strip() == expected
    gone = write_config(tmp_path / "gone.json", settings, **{"source-directory": str(missing)})
    by_key = run_cli("index", "--env", str(gone))
    assert by_key.returncode == 2
    assert "configuration key 'source-directory'" in by_key.stderr
    assert "Scanning" not in by_key.stderr


def test_usage_errors_come_first_and_help_is_per_command() -> None:
    wrong = run_cli("search", "--text", "a cat", "--top-k")
    assert wrong.returncode == 2
    lines = wrong.stderr.strip().splitlines()
    assert lines[0] == "image-search search: error: argument --top-k: expected one argument"
    assert len(lines) == 2 and "--help" in lines[-1]
    no_query = run_cli("search", "--top-k", "3")
    assert no_query.returncode == 2
    assert len(no_query.stderr.strip().splitlines()) == 1 and "--image" in no_query.stderr

    index_help = run_cli("index", "--help").stdout
    assert "--keep-missing" in index_help and "--postgres-host" not in index_help
    assert "image-search help config" in index_help.replace("'", "")
    keys = run_cli("help", "config").stdout
    for key in ("model-name", "postgres-host", "server-auth", "save-results", "trust-remote-code"):
        assert f"  {key} " in keys
    serve_help = run_cli("serve", "--help").stdout
    assert serve_help.count("--server-auth USER:PASSWORD") == 2  # usage line and option list
    assert "--auth USER" not in serve_help


def test_status_sizes_suggestions_and_sentences(tmp_path: Path) -> None:
    assert human_size(8_722_111) == "8.7 MB" and human_size(512) == "512 bytes"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_name": "x"}))
    with pytest.raises(ConfigError, match="did you mean model-name\\?"):
        load_settings(config, environ={})
    refused = OSError(
        'connection to server at "127.0.0.1", port 5433 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?"
    )
    assert one_line(refused).endswith(
        "failed: Connection refused. Is the server running on that host and accepting TCP/IP "
        "connections?"
    )


# ---------------------------------------------------------------- stopping


def serve_in_its_own_group(config: Path, port: int) -> subprocess.Popen:
    # A terminal of its own: Ctrl-C reaches the whole group.
    process = start_serve(config, port, start_new_session=True)
    assert process.stdout is not None
    assert "Serving image-search on" in process.stdout.readline()
    return process


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exit_code"), [("SIGTERM", 0), ("SIGINT", 130)])
def test_stopping_stops_the_embedded_server_and_exits_quietly(
    make_settings, tmp_path: Path, name: str, exit_code: int
) -> None:
    """A data directory of its own, so that this process is the server's only user."""
    settings = make_settings(data_directory=tmp_path / "data")
    config = write_config(tmp_path / "config.json", settings)
    process = serve_in_its_own_group(config, free_port())
    pid_file = settings.data_directory / "pgdata" / "postmaster.pid"
    assert pid_file.exists()

    if name == "SIGINT":
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        process.send_signal(signal.SIGTERM)  # systemd, docker stop, kill
    _, err = process.communicate(timeout=60)

    assert process.returncode == exit_code
    assert err.strip() == ""
    deadline = time.monotonic() + 20
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_file.exists()  # the embedded PostgreSQL is not left running


# ---------------------------------------------------------------- the result folder


def test_result_folder_password_is_null_unless_set_and_files_share_permissions(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    from image_search.search import Searcher
    from image_search.store import open_store

    run_index(settings, shared_embedder)
    with open_store(settings) as store:
        result = Searcher(settings, store, shared_embedder).by_image(photos[0])
    folder = result.output_dir
    written = json.loads((folder / "config.json").read_text())
    assert written["postgres-password"] is None and written["server-auth"] is None
    mode = stat.S_IMODE((folder / "config.json").stat().st_mode)
    assert stat.S_IMODE((folder / "query.jpg").stat().st_mode) == mode


def test_save_results_false_writes_no_folder(
    settings: Settings, photos: list[Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.json", settings, **{"save-results": False})
    assert run_cli("index", "--env", str(config)).returncode == 0
    done = run_cli("search", "--env", str(config), "--image", str(photos[2]), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["output_dir"] is None and result["results"][0]["file_path"] == str(photos[2])
    assert not settings.output_directory.exists()


@pytest.mark.slow
def test_a_missing_chromium_stops_the_page_tests_with_one_line() -> None:
    environment = {**os.environ, "CHROMIUM_PATH": "/nonexistent/chromium"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_web.py"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "apt-get install chromium" in done.stdout
    assert "Traceback" not in done.stdout and " passed" not in done.stdout


# ---------------------------------------------------------------- the page


class HeldEmbedder(Embedder):
    """The real tiny model, whose image embedding waits while `gate` is closed: a Rescan
    can then be caught mid-run on any machine, however fast."""

    def __init__(self, model_path: Path) -> None:
        super().__init__(str(model_path), "cpu", EMBEDDING_DIM)
        self.gate = threading.Event()
        self.gate.set()

    def embed_images(self, images):  # type: ignore[no-untyped-def]
        assert self.gate.wait(timeout=120), "the test never opened the gate"
        return super().embed_images(images)


@pytest.mark.browser
def test_page_best_match_caption_download_empty_search_and_rescan_bar(
    settings: Settings, photos: list[Path], tiny_clip: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    embedder = HeldEmbedder(tiny_clip)
    run_index(settings, embedder)
    for i in range(80):
        later = settings.source_directory / "later" / f"new-{i:02d}.jpg"
        write_photo(later, seed=100 + i, width=1600, height=1200)
    with running_page(settings, embedder) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1100}, accept_downloads=True)
        page.goto(url)
        expect(page.locator("#status")).to_contain_text(str(settings.source_directory))

        page.locator("#search").click()  # nothing entered: a hint, no red error
        expect(page.locator("#result-note")).to_contain_text("Drop an image or type")
        assert page.locator(".toast-body").count() == 0
        assert page.locator(".error").count() == 0

        page.locator("#query-image input[type=file]").set_input_files(str(photos[1]))
        page.locator("#search").click()
        caption = page.locator("#best-caption")
        expect(caption).to_contain_text(photos[1].name, timeout=60_000)
        expect(caption).to_contain_text(str(photos[1]))
        expect(caption).to_contain_text("score 1.000")
        with page.expect_download() as download:
            page.locator("#best-original").click()
        assert Path(download.value.path()).read_bytes() == photos[1].read_bytes()
        assert page.locator("[aria-label='Share'], [title='Share']").count() == 0

        embedder.gate.clear()  # the Rescan's first batch waits until its bar has been seen
        page.locator("#rescan").click()
        expect(page.locator("#rescan-progress")).to_be_visible(timeout=60_000)
        expect(page.locator("#rescan-note")).to_contain_text(" / ", timeout=60_000)
        embedder.gate.set()
        expect(page.locator("#rescan-note")).to_contain_text("Rescan finished", timeout=120_000)
        expect(page.locator("#status")).to_contain_text(f"{len(photos) + 80}")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()


@pytest.mark.browser
def test_an_error_toast_goes_after_a_successful_search(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    run_index(settings, shared_embedder)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with running_page(settings, shared_embedder) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        page.goto(url)
        page.locator("#query-image input[type=file]").set_input_files(str(broken))
        page.locator("#search").click()
        expect(page.locator(".toast-body")).to_contain_text("cannot be used", timeout=60_000)
        page.locator("#query-image button[aria-label='Remove Image']").first.click()
        page.locator("#query-text textarea").fill("a red apple")
        page.locator("#search").click()
        expect(page.locator("#best-caption")).to_contain_text("score", timeout=60_000)
        expect(page.locator(".toast-body")).to_have_count(0)
        browser.close()


@pytest.mark.slow
def test_serving_prints_no_share_hint_and_no_starlette_warnings(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    from gradio_client import Client

    run_index(settings, shared_embedder)
    config = write_config(tmp_path / "config.json", settings)
    process = serve_in_its_own_group(config, port := free_port())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for _ in range(2):  # Gradio touched the deprecated name on every request
            client.predict(None, "a red apple", 2, api_name="/search")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert "share=True" not in out + err
    assert "StarletteDeprecationWarning" not in err
