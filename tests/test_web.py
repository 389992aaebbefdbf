"""The Gradio page in real Chromium, and its API through gradio_client."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    CHROMIUM,
    assert_ranked_as,
    free_port,
    ranking_by_vectors,
    run_cli,
    running_page,
    write_config,
)
from gradio_client import Client, handle_file

from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.store import open_store
from image_search.web_launch import is_loopback


@pytest.fixture
def page_url(settings: Settings, photos: list[Path], shared_embedder: Embedder) -> Iterator[str]:
    run_index(settings, shared_embedder)
    with running_page(settings, shared_embedder) as url:
        yield url


@pytest.mark.browser
def test_browser_upload_search_shows_gallery_and_folder(
    page_url: str, photos: list[Path], settings: Settings, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(page_url)
        expect(page.locator("#status")).to_contain_text(f"{len(photos)} images indexed")
        page.locator("#query-image input[type=file]").set_input_files(str(photos[0]))
        page.locator("#search").click()
        note = page.locator("#result-note")
        expect(note).to_contain_text("Result folder", timeout=60_000)
        expect(page.locator("#gallery")).to_contain_text(photos[0].name)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        text = note.inner_text()
        browser.close()
    folder = Path(text.split("Result folder:")[1].strip().strip("`"))
    assert (folder / photos[0].name).is_file()
    assert folder.parent == settings.output_directory


def test_api_gives_the_same_results_as_the_cli(
    page_url: str, photos: list[Path], settings: Settings, tmp_path: Path
) -> None:
    client = Client(page_url, verbose=False)
    *_, api_results = client.predict(handle_file(str(photos[3])), "", 4, api_name="/search")

    config = write_config(tmp_path / "config.json", settings)
    cli = run_cli(
        "search", "--env", str(config), "--image", str(photos[3]), "--top-k", "4", "--json"
    )
    assert cli.returncode == 0, cli.stderr
    cli_results = json.loads(cli.stdout)["results"]
    assert [r["file_path"] for r in api_results["results"]] == [r["file_path"] for r in cli_results]
    assert [r["score"] for r in api_results["results"]] == pytest.approx(
        [r["score"] for r in cli_results], abs=1e-5
    )


def test_a_corrupt_upload_gets_a_message_and_the_server_keeps_serving(
    page_url: str, photos: list[Path], tmp_path: Path
) -> None:
    client = Client(page_url, verbose=False)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(Exception, match="cannot be used as a query image"):
        client.predict(handle_file(str(bad)), "", 3, api_name="/search")
    *_, results = client.predict(handle_file(str(photos[1])), "", 3, api_name="/search")
    assert results["results"][0]["file_path"] == str(photos[1])


def test_text_query_through_the_api(
    page_url: str, settings: Settings, shared_embedder: Embedder
) -> None:
    """The two stored photos most like the text's vector, as the model's vectors rank them."""
    text = "a photo of an apple"
    client = Client(page_url, verbose=False)
    *_, results = client.predict(None, text, 2, api_name="/search")
    expected = ranking_by_vectors(settings, shared_embedder.embed_texts([text])[0])[:2]
    assert_ranked_as([(r["file_path"], r["score"]) for r in results["results"]], expected)


def test_an_empty_index_says_how_to_fill_it(
    settings: Settings, shared_embedder: Embedder, photos: list[Path]
) -> None:
    empty = dataclasses.replace(settings, table_name=settings.table_name + "_none")
    with running_page(empty, shared_embedder) as url:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="image-search index"):
            client.predict(handle_file(str(photos[0])), "", 3, api_name="/search")


def test_only_loopback_counts_as_private() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_25_concurrent_api_searches_are_all_answered_correctly(
    page_url: str, photos: list[Path]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def search(i: int) -> tuple[str, str]:
        photo = photos[i % len(photos)]
        client = Client(page_url, verbose=False)
        *_, results = client.predict(handle_file(str(photo)), "", 3, api_name="/search")
        return str(photo), results["results"][0]["file_path"], results["output_dir"]

    with ThreadPoolExecutor(max_workers=25) as pool:
        answers = list(pool.map(search, range(25)))
    assert len(answers) == 25
    assert all(asked == found for asked, found, _ in answers)
    assert len({folder for *_, folder in answers}) == 25  # no two searches share a folder


def test_an_oversized_upload_is_refused_with_a_message(page_url: str, tmp_path: Path) -> None:
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as out:
        out.truncate(60 * 1024 * 1024)  # over the 50 MB upload limit
    client = Client(page_url, verbose=False)
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(handle_file(str(huge)), "", 3, api_name="/search")


def test_the_page_never_shows_the_password(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    import urllib.request

    secret = "page-secret-Pw"
    with_password = dataclasses.replace(settings, postgres_password=secret)
    run_index(with_password, shared_embedder)
    with running_page(with_password, shared_embedder) as url:
        client = Client(url, verbose=False)
        answer = client.predict(handle_file(str(photos[0])), "", 3, api_name="/search")
        pages = [
            urllib.request.urlopen(f"{url}{path}").read().decode()
            for path in ("", "config", "gradio_api/info")
        ]
    assert all(secret not in page for page in pages)
    assert secret not in json.dumps(answer, default=str)


@pytest.mark.slow
def test_the_default_command_indexes_then_serves_until_ctrl_c(
    settings: Settings, photos: list[Path], tmp_path: Path, process_backend: dict[str, str]
) -> None:
    import signal

    from conftest import row_count, start_python, wait_until_serving

    config = write_config(tmp_path / "config.json", settings, **process_backend)
    port = free_port()
    process = start_python("-m", "image_search", "--env", str(config), "--port", str(port))
    try:
        wait_until_serving(process, f"http://127.0.0.1:{port}/")
        assert row_count(settings) == len(photos)  # indexed before serving
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        *_, results = client.predict(handle_file(str(photos[4])), "", 2, api_name="/search")
        assert results["results"][0]["file_path"] == str(photos[4])
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err  # Ctrl-C: stopped quietly, the shell's convention
    assert "Traceback" not in err
    assert f"Indexed: {len(photos)} scanned, {len(photos)} added" in out


def test_rescan_indexes_new_files_and_updates_the_count(
    page_url: str, photos: list[Path], settings: Settings
) -> None:
    from imagegen import write_photo

    write_photo(settings.source_directory / "later.png", seed=50)
    client = Client(page_url, verbose=False)
    summary, status = client.predict(api_name="/rescan")
    assert "1 added" in summary
    assert f"**{len(photos) + 1}** images indexed" in status


def test_auth_protects_the_page_and_its_api(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    import urllib.error
    import urllib.request

    run_index(settings, shared_embedder)
    protected = dataclasses.replace(settings, server_auth="alice:Wonder-land-9")
    with running_page(protected, shared_embedder) as url:
        with pytest.raises(Exception):  # noqa: B017 - refused, however gradio_client says it
            Client(url, verbose=False).predict(None, "cat", 2, api_name="/search")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url + "gradio_api/info")
        client = Client(url, auth=("alice", "Wonder-land-9"), verbose=False)
        *_, results = client.predict(None, "cat", 2, api_name="/search")
        assert len(results["results"]) == 2


def test_a_database_error_reaches_the_page_as_one_readable_line(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    run_index(settings, shared_embedder)
    with running_page(settings, shared_embedder) as url:
        with open_store(settings) as store, store.database.connection() as conn:
            conn.execute(f'ALTER TABLE "{settings.table_name}" RENAME COLUMN embedding TO lost')
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="database error: .*embedding") as raised:
            client.predict(None, "a cat", 2, api_name="/search")
        assert "\n" not in str(raised.value).strip()
