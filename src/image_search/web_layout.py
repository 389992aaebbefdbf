"""The page's layout: its tabs, fields and buttons, wired to the handlers of `web.WebApp`, and
the Blocks that deletes the page's cache when it closes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from .duplicates import DEFAULT_THRESHOLD
from .query import DEFAULT_TEXT_WEIGHT
from .web_inputs import MAX_TOP_K
from .web_text import ui

if TYPE_CHECKING:
    from .web import WebApp

# Runs in the browser before the handler it is attached to, and hands the input on.
CLOSE_TOASTS = (
    "(value) => { document.querySelectorAll('.toast-close').forEach((b) => b.click()); "
    "return value; }"
)
# A search asked for while one is still running is run after it. Gradio's default for a
# click ("once") drops it silently, and the results just shown keep the old query's name.
ANSWER_THE_LAST_ASKED = "always_last"
# Gradio lays gallery captions over the image, cut to one line ("astronaut.j…"): put them
# under the image instead, whole, wrapped where they need it.
PAGE_CSS = """
#gallery .thumbnail-item { display: flex; flex-direction: column; aspect-ratio: auto; }
#gallery .thumbnail-item > img { aspect-ratio: 4 / 3; height: auto; min-height: 0; }
#gallery .caption-label {
  position: static; max-width: 100%; opacity: 1; white-space: normal; overflow-wrap: anywhere;
  text-overflow: clip; border: 0; border-top: 1px solid var(--border-color-primary);
  border-radius: 0;
}
#duplicate-groups .group { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 18px; }
#duplicate-groups figure { margin: 0; width: 180px; }
#duplicate-groups img { width: 180px; height: 135px; object-fit: contain; background: #8881; }
#duplicate-groups figcaption { font-size: 0.8em; }
.path-part { display: inline-block; max-width: 100%; overflow-wrap: anywhere; }
"""


class Page(gr.Blocks):
    """The page's Blocks: closing it (Ctrl-C, SIGTERM, the end of a test) also stops a
    Rescan at a batch boundary and deletes the page's cache."""

    def __init__(self, web: WebApp, **options: Any) -> None:
        super().__init__(**options)
        self.web = web

    def close(self, verbose: bool = True) -> None:
        try:
            self.web.stop_rescans()  # before the database closes, as it does next
            super().close(verbose)
        finally:
            self.web.close()


def page_layout(web: WebApp) -> Page:
    """The page's layout, wired to the handlers of `web`."""
    with Page(web, title="image-search") as app:
        gr.Markdown(ui("intro"))
        status = gr.Markdown(elem_id="status")
        with gr.Tabs():
            with gr.Tab(ui("search_tab"), id="search-tab"):
                _search_tab(web, status)
            with gr.Tab(ui("duplicates_tab"), id="duplicates-tab"):
                _duplicates_tab(web)
        app.load(web.status, outputs=status, api_visibility="private")
        app.unload(web.page_closed)
    return app


def _search_tab(web: WebApp, status: gr.Markdown) -> None:
    with gr.Column():
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label=ui("query_image"),
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard", "webcam"],
                    elem_id="query-image",
                )
                with gr.Row():
                    text = gr.Textbox(
                        label=ui("text"),
                        elem_id="query-text",
                        placeholder=ui("text_placeholder"),
                    )
                    but_not = gr.Textbox(
                        label=ui("but_not"),
                        elem_id="query-not",
                        placeholder=ui("but_not_placeholder"),
                    )
                text_weight = gr.Slider(
                    0,
                    1,
                    value=DEFAULT_TEXT_WEIGHT,
                    step=0.05,
                    label=ui("text_weight"),
                    elem_id="text-weight",
                )
                words = gr.Textbox(
                    label=ui("words"),
                    elem_id="query-words",
                    placeholder=ui("words_placeholder"),
                )
                top_k = gr.Slider(
                    1,
                    MAX_TOP_K,
                    value=web.settings.top_k,
                    step=1,
                    label=ui("top_k"),
                    elem_id="top-k",
                )
                filters = _filter_controls()
                search = gr.Button(ui("search"), variant="primary", elem_id="search")
                with gr.Row():
                    rescan = gr.Button(ui("rescan"), elem_id="rescan")
                rescan_note = gr.HTML(elem_id="rescan-note")
            with gr.Column(scale=2):
                best = gr.Image(
                    label=ui("best_match"),
                    interactive=False,
                    elem_id="best-match",
                    height=420,
                    buttons=["fullscreen"],  # its download is the original, below
                )
                caption = gr.Markdown(elem_id="best-caption")
                original = gr.DownloadButton(
                    ui("download_original"), visible=False, size="sm", elem_id="best-original"
                )
                note = gr.Markdown(elem_id="result-note")
                gallery = gr.Gallery(
                    label=ui("ranked_results"),
                    columns=5,
                    object_fit="contain",
                    elem_id="gallery",
                    buttons=["download", "fullscreen"],  # no share: a private tool
                )
                selection = _selection_panel()
                with gr.Accordion(ui("results_json"), open=False):
                    results = gr.JSON(elem_id="results-json")
        searched = gr.on(
            triggers=[search.click, text.submit, but_not.submit, words.submit],
            fn=web.search,
            inputs=[image, text, top_k, text_weight, *filters, but_not, words],
            outputs=[best, gallery, note, results],
            api_name="search",
            preprocess=False,
            validator=web.check_search,
            trigger_mode=ANSWER_THE_LAST_ASKED,
        )
        searched.success(None, js=CLOSE_TOASTS, api_visibility="private")
        results.change(  # after a search or Find similar: caption and download
            web.best_shown,
            inputs=results,
            outputs=[caption, original],
            api_visibility="private",
        )
        image.upload(  # a RAW, HEIC, TIFF or JPEG XL shown as a JPEG
            web.preview, inputs=image, outputs=image, preprocess=False, api_visibility="private"
        )
        _wire_selection(
            web, searched, selection, gallery, results, top_k, filters, [best, gallery, note]
        )
        rescan.click(web.rescan, outputs=[rescan_note, status], api_name="rescan")


def _filter_controls() -> list[gr.components.Component]:
    with gr.Accordion(ui("filters"), open=False, elem_id="filters"):
        under = gr.Textbox(
            label=ui("under"),
            lines=2,
            elem_id="filter-under",
        )
        with gr.Row():
            after = gr.Textbox(
                label=ui("taken_after"), placeholder="2024-05-31", elem_id="taken-after"
            )
            before = gr.Textbox(
                label=ui("taken_before"), placeholder="2024-06-30", elem_id="taken-before"
            )
        min_score = gr.Slider(
            0, 1, value=0, step=0.01, label=ui("min_score"), elem_id="min-score"
        )
    return [under, after, before, min_score]


def _selection_panel() -> dict[str, Any]:
    """Shown when a result is selected: its full path, Find similar, Open original."""
    with gr.Group(visible=False, elem_id="selection") as panel:
        path = gr.Textbox(
            label=ui("selected_path"),
            interactive=False,
            buttons=["copy"],
            elem_id="selected-path",
        )
        with gr.Row():
            similar = gr.Button(ui("find_similar"), elem_id="find-similar", scale=0)
            link = gr.HTML(elem_id="open-original-box", padding=True)
        words = gr.Textbox(
            label=ui("selected_words"), interactive=False, lines=2, elem_id="selected-words"
        )
    return {"panel": panel, "path": path, "similar": similar, "link": link, "words": words}


def _wire_selection(
    web: WebApp,
    searched: Any,
    selection: dict[str, Any],
    gallery: gr.Gallery,
    results: gr.JSON,
    top_k: gr.Slider,
    filters: list[gr.components.Component],
    shown: list[gr.components.Component],
) -> None:
    gallery.select(
        web.select_result,
        inputs=[results],
        outputs=[selection["panel"], selection["path"], selection["link"], selection["words"]],
        api_visibility="private",
    )
    similar = selection["similar"].click(
        web.find_similar,
        inputs=[selection["path"], top_k, *filters],
        outputs=[*shown, results],
        api_name="similar",
        preprocess=False,  # raw inputs, checked by our validator with the field's label
        validator=web.check_similar,
        trigger_mode=ANSWER_THE_LAST_ASKED,
    )
    for answered in (searched, similar):  # new results: nothing selected among them
        answered.success(
            web.clear_selection,
            outputs=[selection["panel"], selection["path"], selection["link"]],
            api_visibility="private",
        )


def _duplicates_tab(web: WebApp) -> None:
    gr.Markdown(ui("duplicates_intro"))
    with gr.Row():
        threshold = gr.Slider(
            0.5,
            1,
            value=DEFAULT_THRESHOLD,
            step=0.005,
            label=ui("threshold"),
            elem_id="duplicate-threshold",
        )
        under = gr.Textbox(
            label=ui("duplicate_under"), lines=2, elem_id="duplicate-under"
        )
    find = gr.Button(ui("find_duplicates"), variant="primary", elem_id="find-duplicates")
    note = gr.Markdown(elem_id="duplicates-note")
    groups = gr.HTML(elem_id="duplicate-groups")
    with gr.Accordion(ui("groups_json"), open=False):
        as_json = gr.JSON(elem_id="duplicates-json")
    find.click(
        web.duplicates,
        inputs=[threshold, under],
        outputs=[note, groups, as_json],
        api_name="duplicates",
        preprocess=False,  # raw inputs, checked by our validator with the field's label
        validator=web.check_duplicates,
    )
