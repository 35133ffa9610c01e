"""The page of ``s2s serve`` in a real browser: Debian's Chromium, headless, driven by Playwright.

The real server (uvicorn on a free loopback port, in a thread) serves a tiny attention model
trained here and a plain RNN without attention. The page is used as a person would: pick the
search, type, press Generate, read the output, the n-best list and the heatmap, hover an output
piece; errors of the API and of the network must show. Screenshots go to tmp_path (paths printed).

Chromium is ``$SEQ2SEQKIT_CHROMIUM`` or the first of ``chromium``/``chromium-browser`` on PATH
(``apt-get install chromium``; ``.ci/run`` installs it). Playwright's own browser download is
not used. Without Playwright or a Chromium the tests are skipped with the reason (``-rs``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import tiny_config, tiny_model

import uvicorn
from fastapi.testclient import TestClient

from seq2seqkit.serve import Limits, create_app
from seq2seqkit.training import Trainer
from seq2seqkit.translate import Translator

MAX_CHARS = 300  # the server's per-input limit here (an input over it must show an error on the page)
PHONE = {"width": 390, "height": 844}


def find_chromium() -> str | None:
    """Debian's Chromium (or one named by $SEQ2SEQKIT_CHROMIUM)."""
    named = os.environ.get("SEQ2SEQKIT_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    return next((path for path in map(shutil.which, ("chromium", "chromium-browser")) if path), None)


def train(tmp: Path, family: str, steps: int) -> Path:
    cfg = tiny_config(tmp, max_steps=steps, validate_every=10**6, checkpoint_every=10**6, num_threads=1)
    cfg.model = tiny_model(family, embed_dim=16, hidden_size=48)
    Trainer(cfg).train()
    return Path(cfg.output_dir)


@pytest.fixture(scope="module")
def translators(tmp_path_factory) -> dict[str, Translator]:
    """An attention GRU partly trained on the reverse task (its outputs are not empty) and a
    plain GRU encoder-decoder (no attention: the page must not offer a heatmap)."""
    attn = train(tmp_path_factory.mktemp("attn"), "attention", 60)
    plain = train(tmp_path_factory.mktemp("plain"), "rnn", 2)
    return {"reverse-attention": Translator.load(attn), "reverse-plain": Translator.load(plain)}


@pytest.fixture(scope="module")
def server(translators) -> Iterator[str]:
    """The real app on uvicorn, on a free loopback port; its base URL."""
    app = create_app(translators, Limits(max_chars=MAX_CHARS))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)")
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found: apt-get install chromium (or set SEQ2SEQKIT_CHROMIUM to its path)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=chromium, headless=True)
        except sync_api.Error as e:
            pytest.skip(f"Chromium at {chromium} does not start headless: {str(e).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture
def page(browser, server) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.goto(server)
    pg.wait_for_function("document.querySelectorAll('#model option').length === 2")
    yield pg
    context.close()
    # Chromium itself logs each failed request ("Failed to load resource: ..."); nothing else may show.
    assert not [p for p in problems if "Failed to load resource" not in p], problems


def test_page_and_its_assets_are_served_locally(translators):
    """Without a browser: / is the page, everything it loads comes from this server."""
    with TestClient(create_app(translators)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        refs = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert {"static/app.js", "static/style.css"} <= set(refs)
        for ref in refs:
            assert ":" not in ref and not ref.startswith("/"), ref  # relative: no other host, works under a prefix
            assert client.get(f"/{ref}").status_code == 200, ref
        script = client.get("/static/app.js")
        assert "javascript" in script.headers["content-type"]
        assert not re.search(r"https?:", script.text)
        assert "/" not in client.get("/openapi.json").json()["paths"]  # the page is no API


def generate(pg, text: str) -> dict:
    """Type ``text``, press Generate; the API's JSON answer (the page must show it)."""
    pg.fill("#text", text)
    with pg.expect_response(lambda r: r.url.endswith("/v1/generate")) as response:
        pg.click("#submit")
    pg.wait_for_selector("#results .result")
    return response.value.json()


def test_page_shows_output_nbest_and_a_heatmap_that_highlights(page, translators, tmp_path):
    pg = page
    assert "attention: yes" in pg.inner_text("#model-info")
    pg.check('input[name="method"][value="beam"]')
    pg.fill("#beam_size", "3")
    pg.fill("#n_best", "3")
    assert pg.is_hidden("#top_k")  # the sampling controls are out of the way of beam search
    body = generate(pg, "a b c d\nf e d c b a")
    assert len(body["results"]) == 2 and body["model"] == "reverse-attention"

    alone = copy.copy(translators["reverse-attention"])  # not the served one: its settings stay
    alone.cfg = alone.cfg.model_copy(update={"search": alone.cfg.search.model_copy(update=dict(beam_size=3, nbest=3))})
    expected = alone.nbest(["a b c d", "f e d c b a"])
    cards = pg.locator("#results .result")
    assert cards.count() == 2
    for i, (result, alone) in enumerate(zip(body["results"], expected)):
        card = cards.nth(i)
        assert result["output"] == alone[0][0] != ""  # the model's own beam output, shown
        assert card.locator(".output").inner_text() == result["output"]
        items = card.locator(".nbest li")
        assert items.count() == 3
        for j, hyp in enumerate(result["n_best"]):
            assert items.nth(j).locator(".hyp").inner_text() == hyp["output"]
            assert items.nth(j).locator(".score").inner_text() == f"score {hyp['score']:.4f}"

    # The heatmap: one row per output piece, one column per source piece, coloured by weight.
    att = body["results"][1]["attention"]
    table = cards.nth(1).locator("table.attn")
    assert table.locator("thead th.src-piece").all_inner_texts() == att["source_pieces"]
    assert table.locator("tbody th.out-piece").all_inner_texts() == att["output_pieces"]
    assert table.locator("tbody td").count() == len(att["output_pieces"]) * len(att["source_pieces"])
    colours = set(table.locator("tbody td").evaluate_all("cells => cells.map(c => getComputedStyle(c).backgroundColor)"))
    assert len(colours) > 1

    # Hovering an output piece highlights the source pieces it attended to most.
    for row, weights in enumerate(att["weights"][:3]):
        table.locator("tbody th.out-piece").nth(row).hover()
        top = max(weights)
        assert table.locator("thead th.src-piece.top").all_inner_texts() == [
            att["source_pieces"][j] for j, w in enumerate(weights) if w == top]
        marked = table.locator("thead th.src-piece").evaluate_all("hs => hs.map(h => h.classList.contains('hl'))")
        assert marked == [w >= 0.5 * top for w in weights]
        assert cards.nth(1).locator(".focus-note").inner_text().startswith(f"“{att['output_pieces'][row]}” attended most to")
        assert table.locator("tbody tr.active").count() == 1
    # The keyboard does the same: focusing an output piece (Tab) highlights its row.
    table.locator("tbody th.out-piece").last.focus()
    assert table.locator("tbody tr.active th.out-piece").inner_text() == att["output_pieces"][-1]
    # Highlight colours differ from the plain header's: a person sees them.
    top_bg = table.locator("thead th.src-piece.top").first.evaluate("h => getComputedStyle(h).backgroundColor")
    assert top_bg != "rgba(0, 0, 0, 0)"

    shot = tmp_path / "serve-page.png"
    pg.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_page_without_attention_and_with_sampling(page):
    pg = page
    pg.select_option("#model", "reverse-plain")
    assert "attention: no" in pg.inner_text("#model-info")
    assert pg.is_disabled("#attention")
    pg.check('input[name="method"][value="sample"]')
    assert pg.is_hidden("#beam_size") and pg.is_visible("#temperature")
    pg.fill("#n_best", "2")
    with pg.expect_request(lambda r: r.url.endswith("/v1/generate")) as request:
        body = generate(pg, "a b c")
    sent = json.loads(request.value.post_data)
    assert sent["model"] == "reverse-plain" and sent["sample"] is True and sent["n_best"] == 2
    assert sent["attention"] is False and "beam_size" in sent and sent["beam_size"] == 1
    assert body["results"][0]["attention"] is None
    assert pg.locator("#results .result .nbest li").count() == 2
    assert pg.is_hidden("#results .attention-block")


def test_page_shows_api_and_network_errors(page, tmp_path):
    pg = page
    # The whole text as one input, over the server's limit of characters: the API's 4xx shows.
    pg.check('input[name="split"][value="whole"]')
    pg.fill("#text", "a b\n" * (MAX_CHARS // 4 + 1))
    with pg.expect_response(lambda r: r.url.endswith("/v1/generate")) as response:
        pg.click("#submit")
    assert 400 <= response.value.status < 500
    error = response.value.json()["error"]
    box = pg.locator("#error")
    box.wait_for(state="visible")
    text = box.inner_text()
    assert text.startswith(f"HTTP {response.value.status}") and error["message"] in text
    assert pg.locator("#results .result").count() == 0
    shot = tmp_path / "serve-page-error.png"
    pg.screenshot(path=str(shot))
    print(f"screenshot: {shot}")

    # A good request clears the box.
    pg.check('input[name="split"][value="lines"]')
    generate(pg, "a b")
    assert pg.is_hidden("#error")

    # The server cannot be reached: that shows too.
    pg.route("**/v1/generate", lambda route: route.abort("connectionrefused"))
    pg.click("#submit")
    box.wait_for(state="visible")
    assert "Could not reach the server" in box.inner_text()
    assert pg.is_enabled("#submit")


def test_page_fits_a_phone_screen(browser, server, tmp_path):
    """At phone width the page is one column and never wider than the screen; only the
    heatmap of a long input scrolls, inside its own box."""
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.goto(server)
    pg.wait_for_function("document.querySelectorAll('#model option').length === 2")
    long_input = " ".join("abcdef"[i % 6] for i in range(40))
    generate(pg, long_input)
    pg.wait_for_selector("#results table.attn")
    sizes = pg.evaluate("""() => {
        const root = document.documentElement, map = document.querySelector('.heatmap');
        const wide = [...document.querySelectorAll('body *')].filter(e => !map.contains(e) && !e.closest('.sr-only')
            && e.getBoundingClientRect().right > root.clientWidth + 1).map(e => e.tagName + '.' + e.className);
        return {page: root.scrollWidth, screen: root.clientWidth, map: map.scrollWidth, box: map.clientWidth, wide};
    }""")
    assert sizes["page"] <= sizes["screen"], sizes  # no sideways scrolling of the page
    assert sizes["wide"] == [], sizes
    assert sizes["map"] > sizes["box"], sizes  # the heatmap scrolls in its own box
    x = [pg.locator(sel).bounding_box()["x"] for sel in (".input-panel", ".search-panel")]
    assert x[0] == x[1]  # one column: search below the input
    shot = tmp_path / "serve-page-phone.png"
    pg.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    context.close()
