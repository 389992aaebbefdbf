"""What a hostile client, a changed photo folder and an ordinary stop find on the page (issue
18, items 1-6 and Find similar's paths): only uploads are read, every file is checked when it
is served, nothing private stays behind, failures and wrong inputs are one readable line."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pytest
from conftest import (
    CHROMIUM,
    EMBEDDING_DIM,
    PageEvents,
    free_port,
    start_serve,
    stored_rows,
    wait_until_serving,
    write_config,
)
from gradio_client import Client, handle_file
from imagegen import write_photo

from image_search.cli import main
from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder, load_model
from image_search.store import Database
from image_search.web_files import CACHE_FOLDER, GRADIO_FOLDER, NOT_UPLOADED
from image_search.web_inputs import AFTER_LABEL, TEXT_WEIGHT_LABEL, THRESHOLD_LABEL
from image_search.web_launch import launch
from image_search.web_layout import Page

SECRET = b'{"postgres-password": "not-for-the-page"}\n'
# /search's inputs after the image, as a raw HTTP call must give them all: text, top-k,
# weight, filters, but not, words.
NO_TEXT_NOR_FILTERS = ["", 3, 0.5, "", "", "", 0, "", ""]


@contextmanager
def served(settings: Settings, embedder: Embedder) -> Iterator[tuple[str, Page]]:
    """The page as `serve` runs it, and its Blocks (whose `web` holds the handlers)."""
    port = free_port()
    with Database(settings) as database:
        app = launch(settings, embedder, database, "127.0.0.1", port)
        try:
            yield f"http://127.0.0.1:{port}/", app
        finally:
            app.close()


@pytest.fixture
def indexed(settings: Settings, photos: list[Path], shared_embedder: Embedder) -> list[Path]:
    run_index(settings, shared_embedder)
    return photos


def call(url: str, api: str, data: list) -> tuple[str, str]:
    """A raw call of a named endpoint, as any HTTP client can make it: (event, data) of the
    answer's last message (event "complete" or "error"), or the HTTP status of a refusal."""
    request = urllib.request.Request(
        f"{url}gradio_api/call/{api}",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        event_id = json.load(urllib.request.urlopen(request, timeout=30))["event_id"]
    except urllib.error.HTTPError as refused:  # refused before it ran (Gradio's own checks)
        return f"HTTP {refused.code}", refused.read().decode()
    with urllib.request.urlopen(f"{url}gradio_api/call/{api}/{event_id}", timeout=60) as answer:
        lines = answer.read().decode().splitlines()
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    payloads = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return events[-1], payloads[-1]


def file_data(path: str) -> dict:
    """A file named by its server path. Without Gradio's "meta" mark, Gradio itself lets it
    through to the handler (with the mark, Gradio refuses a file it did not receive)."""
    return {"path": path}


def cache_files(app: Page) -> dict[Path, bytes]:
    folder = app.web.cache.folder
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


# -- 1. /search reads only what was uploaded to this page ---------------------------------


def test_search_reads_only_images_uploaded_to_this_page(
    settings: Settings, indexed: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    outside = write_photo(tmp_path / "elsewhere" / "private.png", seed=91)
    with served(settings, shared_embedder) as (url, app):
        answers = {
            path: call(url, "search", [file_data(path), *NO_TEXT_NOR_FILTERS])
            for path in (str(outside), str(tmp_path / "no-such.png"), "/dev/zero")
        }
        fifo = app.web.cache.folder / "pipe.png"  # even inside the upload folder
        os.mkfifo(fifo)
        started = time.monotonic()
        answers["fifo"] = call(url, "search", [file_data(str(fifo)), *NO_TEXT_NOR_FILTERS])
        assert time.monotonic() - started < 20  # refused, not waiting on the pipe
        client = Client(url, verbose=False)
        *_, uploaded = client.predict(handle_file(str(indexed[2])), "", 3, api_name="/search")
    assert uploaded["results"][0]["file_path"] == str(indexed[2])
    assert {event for event, _ in answers.values()} == {"error"}
    # The same words whether the file exists or not.
    assert len({data for _, data in answers.values()}) == 1
    assert NOT_UPLOADED in answers[str(outside)][1]
    folders = list(settings.output_directory.iterdir())
    assert [uploaded["output_dir"]] == [str(f) for f in folders]  # none for the refused ones
    assert outside.read_bytes() not in {p.read_bytes() for p in folders[0].iterdir()}


# -- 2. every file is checked when it is served -------------------------------------------


def test_a_photo_replaced_by_a_link_to_a_secret_is_not_served(
    settings: Settings, indexed: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    secret = tmp_path / "config.json"
    secret.write_bytes(SECRET)
    replaced, changed, touched = indexed[0], indexed[1], indexed[2]
    processed = {r["file_path"]: r["processed_path"] for r in stored_rows(settings)}
    with served(settings, shared_embedder) as (url, app):
        replaced.unlink()
        replaced.symlink_to(secret)
        changed.write_bytes(indexed[3].read_bytes())  # another picture under the old name
        os.utime(touched, ns=(0, 10**18))  # same bytes, another mtime: still the one indexed
        Path(processed[str(indexed[4])]).unlink()
        Path(processed[str(indexed[4])]).symlink_to(secret)

        web = app.web
        assert "outside source-directory" in web.original_link(str(replaced))
        assert "changed since it was indexed" in web.original_link(str(changed))
        assert 'id="open-original"' in web.original_link(str(touched))
        for path in (replaced, changed):
            hidden = web.best_original({"results": [{"file_path": str(path)}]})
            assert hidden["visible"] is False
        client = Client(url, verbose=False)
        *_, everything = client.predict(None, "a photo", 6, api_name="/search")
        served_bytes = cache_files(app).values()
        # Gradio's own file route serves none of the folders themselves.
        refused = []
        result_file = next(settings.output_directory.rglob("results.jsonl"))
        for path in (touched, Path(processed[str(touched)]), result_file):
            try:
                urllib.request.urlopen(f"{url}gradio_api/file={path}")
            except urllib.error.HTTPError as error:
                refused.append(error.code)
    assert len(everything["results"]) == 6
    assert SECRET not in served_bytes and changed.read_bytes() not in served_bytes
    assert touched.read_bytes() in served_bytes
    assert refused == [403, 403, 403]


def test_an_original_outside_source_directory_is_not_served(
    settings: Settings, indexed: list[Path], shared_embedder: Embedder
) -> None:
    import dataclasses

    narrower = dataclasses.replace(settings, source_directory=settings.source_directory / "sub")
    inside = next(p for p in indexed if p.parent.name == "sub")
    with served(narrower, shared_embedder) as (_, app):
        assert "outside source-directory" in app.web.original_link(str(indexed[0]))
        assert 'id="open-original"' in app.web.original_link(str(inside))


# -- 3. nothing private stays behind ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_nothing_private_stays_after_the_page_stops(
    settings: Settings, indexed: list[Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    config = write_config(tmp_path / "config.json", settings, **{"save-results": False})
    temp = tmp_path / "tmp"
    temp.mkdir()
    caches = settings.data_directory / CACHE_FOLDER
    caches.mkdir(exist_ok=True)
    crashed = caches / "run-crashed"  # a run killed before it could clean up
    crashed.mkdir(exist_ok=True)
    (crashed / "upload.jpg").write_bytes(indexed[0].read_bytes())
    port = free_port()
    process = start_serve(config, port, env={"TMPDIR": str(temp)})
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(process, url)
        ours = [f for f in caches.iterdir() if f.is_dir() and f != crashed]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#query-image input[type=file]").set_input_files(str(indexed[1]))
            page.locator("#search").click()
            expect(page.locator("#best-original")).to_be_visible(timeout=60_000)
            counts = [count_files(caches)]
            page.locator("#search").click()  # the same search again adds no copy
            page.wait_for_timeout(3000)
            expect(page.locator("#best-original")).to_be_visible()
            counts.append(count_files(caches))
            page.locator("#gallery .thumbnail-item").first.click()
            href = page.locator("#open-original").get_attribute("href")
            assert page.request.get(url + href).body() == indexed[1].read_bytes()
            browser.close()
        running = [f for f in caches.iterdir() if f.is_dir()]
        modes = {stat.S_IMODE(f.stat().st_mode) for f in [caches, *running]}
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert not crashed.exists()  # removed at the start
    assert len(ours) == 1 and running == ours and modes == {0o700}
    assert counts[0] == counts[1]
    assert not ours[0].exists(), err  # removed on stop
    # Nothing of ours in the system temp folder: no upload, copy, Gradio folder or lock file.
    assert list(temp.rglob("*")) == []
    assert (settings.data_directory / GRADIO_FOLDER).is_dir()  # where Gradio's own went
    assert "Traceback" not in err


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


# -- 4. Rescan shows any failure as one line ----------------------------------------------


class OutOfMemoryEmbedder(Embedder):
    """The tiny model, failing as a GPU out of memory does."""

    def __init__(self, model: Path) -> None:
        super().__init__(str(model), "cpu", EMBEDDING_DIM, loader=load_model)

    def embed_images(self, images):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")


def test_rescan_shows_any_failure_as_its_one_line(
    settings: Settings, indexed: list[Path], tiny_clip: Path
) -> None:
    write_photo(settings.source_directory / "new.png", seed=60)
    failing = OutOfMemoryEmbedder(tiny_clip)
    with (
        served(settings, failing) as (url, _),
        pytest.raises(Exception, match="RuntimeError: CUDA out of memory") as raised,
    ):
        Client(url, verbose=False).predict(api_name="/rescan")
    assert "KeyError" not in str(raised.value) and "\n" not in str(raised.value).strip()


# -- 5. wrong inputs: next to the field on the page, one message from the API -------------


@pytest.mark.browser
def test_a_bad_date_shows_next_to_its_field_and_the_results_stay(
    settings: Settings, indexed: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with served(settings, shared_embedder) as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        events = PageEvents(page)
        page.goto(url)
        page.locator("#query-text textarea").fill("a photo")
        page.locator("#search").click()
        note = page.locator("#result-note")
        expect(note).to_contain_text("Result folder", timeout=60_000)
        events.settle()
        shown = note.inner_text()
        page.locator("#filters").click()
        page.locator("#taken-after textarea").fill("someday")
        page.locator("#search").click()
        field = page.locator("#taken-after")
        expect(field).to_contain_text(f"{AFTER_LABEL}: expected a date", timeout=30_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "filter-error.png"), full_page=True)
        pills = page.get_by_text("Error", exact=True).count()
        kept = (note.inner_text(), page.locator("#gallery .thumbnail-item").count())
        page.locator("#taken-after textarea").fill("2000")
        page.locator("#search").click()
        expect(note).to_contain_text("taken from 2000-01-01", timeout=30_000)
        expect(field).not_to_contain_text("expected a date")
        browser.close()
    assert pills == 0 and kept == (shown, settings.top_k)


def test_the_api_answers_a_wrong_input_with_a_message_not_a_traceback(
    settings: Settings, indexed: list[Path], shared_embedder: Embedder, capfd
) -> None:
    with served(settings, shared_embedder) as (url, _):
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match=re.escape(TEXT_WEIGHT_LABEL)):
            client.predict(None, "a cat", 3, "heavy", api_name="/search")
        with pytest.raises(Exception, match=f"{AFTER_LABEL}: expected a date"):
            client.predict(str(indexed[0]), 3, "", "2024-13", api_name="/similar")
        with pytest.raises(Exception, match=re.escape(THRESHOLD_LABEL)):
            client.predict("very", "", api_name="/duplicates")
        event, data = call(url, "search", [{"path": 5}, ["a cat"], "3", *NO_TEXT_NOR_FILTERS[3:]])
        *_, results = client.predict(None, "a cat", 3, 0.5, "", "", "", 0, api_name="/search")
    assert event in ("error", "HTTP 400", "HTTP 422") and len(results["results"]) == 3
    log = capfd.readouterr()
    assert "Traceback" not in log.err + log.out and "ValueError" not in log.err + log.out


# -- 18. Find similar finds a path as --like does; malformed results JSON -----------------


def test_find_similar_normalises_the_path_and_malformed_results_are_ignored(
    settings: Settings, indexed: list[Path], shared_embedder: Embedder
) -> None:
    roundabout = indexed[0].parent / "sub" / ".." / indexed[0].name
    with served(settings, shared_embedder) as (url, app):
        *_, similar = Client(url, verbose=False).predict(str(roundabout), 3, api_name="/similar")
        web = app.web
        malformed = [None, "x", {"results": "x"}, {"results": [{}]}, {"results": [{"rank": 1}]}]
        buttons = [web.best_original(result) for result in malformed]
        event = gr.SelectData(None, {"index": 0, "value": None})
        selected = [web.select_result(result, event) for result in malformed]
    assert similar["results"][0]["file_path"] == str(indexed[0])
    assert all(button["visible"] is False for button in buttons)
    assert all(panel["visible"] is False for panel, *_ in selected)


# -- 6. the page's password on the command line -------------------------------------------


def test_a_password_on_the_command_line_is_warned_about_once(
    settings: Settings, indexed: list[Path], tmp_path: Path, caplog, capsys, monkeypatch
) -> None:
    config = write_config(tmp_path / "config.json", settings)
    for key in [k for k in os.environ if k.startswith("IMAGE_SEARCH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # main() would take over SIGTERM
    with caplog.at_level(logging.WARNING, logger="image_search"):
        assert main(["status", "--env", str(config), "--auth", "alice:Pw-on-the-line"]) == 0
    warned = [r.getMessage() for r in caplog.records if "ps" in r.getMessage()]
    caplog.clear()
    monkeypatch.setenv("IMAGE_SEARCH_SERVER_AUTH", "alice:Pw-in-the-environment")
    with caplog.at_level(logging.WARNING, logger="image_search"):
        assert main(["status", "--env", str(config)]) == 0
    assert len(warned) == 1 and "IMAGE_SEARCH_SERVER_AUTH" in warned[0]
    assert "Pw-on-the-line" not in warned[0]
    assert not [r for r in caplog.records if "ps" in r.getMessage()]
    assert "Pw-" not in capsys.readouterr().out
