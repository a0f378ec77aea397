"""The explorer in a real headless Chromium (Debian's /usr/bin/chromium via Playwright), served by uvicorn.

Each step clicks what a user clicks (an image, a class, a method, a class by name, a layer, a channel, a
unit) and checks that the picture shown changed and equals what the library computes for that choice on
its own (``attribute`` and ``explanation_panel``); and throughout: no console error, no request leaving
127.0.0.1, the hostile file name inert text, the corrupt image and an unknown layer answered by a
message while the app keeps working, no entry without the token and nothing outside the inputs.
Screenshots go to test-artifacts/ (explore.png: the default model on photos; with GBP_UPDATE_FIGURES=1 it
also replaces the README's docs/figures/explore.png).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from guided_backprop import attribute
from guided_backprop.explore import ExploreService
from guided_backprop.pictures.panels import explanation_panel
from guided_backprop.targets import Channel
from guided_backprop.units import grids as units
from guided_backprop.units.receptive import layer_table

from .fixtures.explore import HOSTILE, LABELS, TOKEN, make_inputs, running, tiny_loaded
from .test_report_browser import ARTIFACTS, CHROMIUM, browser  # noqa: F401 - the shared Chromium fixture

FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "explore.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


class Watch:
    """What the page reports that would mean something went wrong."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.console: list[str] = []
        self.refused: list[str] = []  # answers >= 400 (Chromium logs each as a console error) ...
        self.expected: list[str] = []  # ... which must be these (parts of "STATUS URL")
        self.foreign: list[str] = []
        self.dialogs: list[str] = []

    def attach(self, page: Any) -> None:
        def console(msg: Any) -> None:
            if msg.type == "error" and not msg.text.startswith("Failed to load resource: the server responded"):
                self.console.append(msg.text)

        page.on("console", console)
        page.on("response", lambda r: r.status >= 400 and self.refused.append(f"{r.status} {r.url}"))
        page.on("pageerror", lambda err: self.console.append(f"uncaught: {err}"))
        page.on("request", lambda req: None if req.url.startswith((self.base + "/", "blob:", "data:"))
                else self.foreign.append(req.url))

        def dialog(d: Any) -> None:
            self.dialogs.append(f"{d.type}: {d.message}")
            d.dismiss()

        page.on("dialog", dialog)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_inputs(tmp_path_factory.mktemp("explore-browser") / "photos")


@pytest.fixture(scope="module")
def service(inputs: list[Path]) -> ExploreService:
    return ExploreService(tiny_loaded(), inputs, names=[p.name for p in inputs])


@pytest.fixture(scope="module")
def base(service: ExploreService) -> Iterator[str]:
    with running(service) as url:
        yield url


@pytest.fixture
def page(browser: Any, base: str) -> Iterator[tuple[Any, Watch]]:  # noqa: F811 - the fixture imported above
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    watch = Watch(base)
    watch.attach(page)
    page.goto(f"{base}/?token={TOKEN}")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    try:
        yield page, watch
    finally:
        context.close()
    assert watch.dialogs == [], "a dialog fired: a name ran as code"
    assert watch.console == [], "console errors"
    assert watch.foreign == [], "requests that left the app"
    # each expected refusal happened, and nothing else was refused (a choice may be asked again when the
    # image changes meanwhile: the same refusal twice is fine)
    assert all(any(e in r for r in watch.refused) for e in watch.expected), watch.refused
    assert all(any(e in r for e in watch.expected) for r in watch.refused), watch.refused


def shown(page: Any, selector: str) -> np.ndarray:
    """The picture an <img> shows, read back through a canvas (lossless)."""
    url = page.evaluate("""(sel) => { const img = document.querySelector(sel);
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL('image/png'); }""", selector)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def base_of(page: Any) -> str:
    """``127.0.0.1:PORT`` of the page."""
    return str(page.url).split("/")[2]


def wait_key(page: Any, selector: str, key: str) -> None:
    page.wait_for_function("([sel, key]) => { const i = document.querySelector(sel); "
                           "return i.dataset.key === key && i.complete && i.naturalWidth > 0; }",
                           arg=[selector, key], timeout=60_000)


def panel_key(image: int, cls: int, methods: list[str], smooth: bool = False) -> str:
    return f"image={image}&class={cls}&methods={'%2C'.join(methods)}&smooth={int(smooth)}"


def expected_panel(service: ExploreService, path: Path, cls: int, methods: list[str]) -> np.ndarray:
    """The panel from the library alone: attribute() per method, explanation_panel() as the command draws it."""
    pre, model = service.loaded.preprocessing, service.loaded.model
    x = pre(Image.open(path).convert("RGB"))[None]
    maps = {m: attribute(model, x, cls, m)[0] for m in methods}
    with torch.no_grad():
        prob = float(model(x).softmax(-1)[0, cls])
    return np.asarray(explanation_panel(pre.invert(x[0]), maps, class_name=service.loaded.label(cls),
                                        probability=prob))


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def top_class(service: ExploreService, path: Path, rank: int = 0) -> int:
    x = service.loaded.preprocessing(Image.open(path).convert("RGB"))[None]
    return int(service.loaded.model(x).detach().argsort(descending=True)[0, rank])


def test_image_class_method_and_name(page: tuple[Any, Watch], service: ExploreService, inputs: list[Path]) -> None:
    p, _ = page
    first = top_class(service, inputs[0])
    wait_key(p, "#panel", panel_key(0, first, ["guided_backprop"]))
    before = shown(p, "#panel")
    assert_same(before, expected_panel(service, inputs[0], first, ["guided_backprop"]))

    p.click("#strip button[data-index='1']")  # another image: its top class
    cls = top_class(service, inputs[1])
    wait_key(p, "#panel", panel_key(1, cls, ["guided_backprop"]))
    now = shown(p, "#panel")
    assert not np.array_equal(now, before)
    assert_same(now, expected_panel(service, inputs[1], cls, ["guided_backprop"]))
    assert p.locator("#seen-name").text_content() == "b.png"

    second = top_class(service, inputs[1], 1)  # the second of the top-k
    p.click(f"#classes button[data-cls='{second}']")
    wait_key(p, "#panel", panel_key(1, second, ["guided_backprop"]))
    assert_same(shown(p, "#panel"), expected_panel(service, inputs[1], second, ["guided_backprop"]))

    p.check("#methods input[value='gradcam']")  # several methods
    wait_key(p, "#panel", panel_key(1, second, ["guided_backprop", "gradcam"]))
    assert_same(shown(p, "#panel"), expected_panel(service, inputs[1], second, ["guided_backprop", "gradcam"]))

    p.uncheck("#methods input[value='guided_backprop']")
    p.check("#methods input[value='deconvnet']")
    p.fill("#class-name", LABELS[2])  # a class by name (the datalist completes it)
    p.click("#class-form button")
    wait_key(p, "#panel", panel_key(1, 2, ["deconvnet", "gradcam"]))
    assert_same(shown(p, "#panel"), expected_panel(service, inputs[1], 2, ["deconvnet", "gradcam"]))
    # the command line is fetched after the panel: wait for it to follow the last choice
    p.wait_for_function("() => (document.getElementById('command').textContent || '').includes('--target 2 ')")
    command = p.locator("#command").text_content() or ""
    assert "--methods deconvnet,gradcam --target 2 --panel" in command and "b.png" in command
    with p.expect_download() as png_download:  # the panel as PNG: the picture shown
        p.click("#download-png")
    downloaded = np.asarray(Image.open(png_download.value.path()).convert("RGB"))
    np.testing.assert_array_equal(downloaded, shown(p, "#panel"))
    with p.expect_download() as command_download:  # the command line that writes it
        p.click("#download-command")
    assert Path(command_download.value.path()).read_text(encoding="utf-8") == command + "\n"

    p.check("#smooth")  # SmoothGrad: the service's own computation with noise (seeded)
    wait_key(p, "#panel", panel_key(1, 2, ["deconvnet", "gradcam"], smooth=True))
    smooth = np.asarray(service.panel(1, 2, ["deconvnet", "gradcam"], smooth=True))
    assert_same(shown(p, "#panel"), smooth)


def test_a_superseding_click_wins(page: tuple[Any, Watch], service: ExploreService, inputs: list[Path]) -> None:
    p, _ = page
    p.wait_for_selector("#classes button[data-cls='1']")
    for cls in (0, 1, 2, 0, 1):  # a burst: only the last must show
        p.click(f"#classes button[data-cls='{cls}']", no_wait_after=True)
    wait_key(p, "#panel", panel_key(0, 1, ["guided_backprop"]))
    p.wait_for_function("() => !document.body.dataset.busypanel", timeout=60_000)
    assert_same(shown(p, "#panel"), expected_panel(service, inputs[0], 1, ["guided_backprop"]))


def test_layer_channel_and_unit(page: tuple[Any, Watch], service: ExploreService, inputs: list[Path]) -> None:
    p, _ = page
    layer = "features.relu2"
    option = p.locator(f"#layer option[value='{layer}']").text_content() or ""
    row = next(r for r in layer_table(service.loaded.model, service.loaded.preprocessing) if r.name == layer)
    assert f"{row.shape_text} — field {row.field_text}" in option  # as 'guided-backprop layers' prints it
    assert "1x6x16x16" in option and "8x8 px" in option
    p.select_option("#layer", layer)
    p.wait_for_selector("#channels button")
    x = service.loaded.preprocessing(Image.open(inputs[0]).convert("RGB"))[None]
    act = service.loaded.model.features[:5](x)[0].detach()
    order = act.mean(dim=(1, 2)).argsort(descending=True).tolist()
    tiles = p.locator("#channels button").evaluate_all("bs => bs.map(b => Number(b.dataset.channel))")
    assert tiles == order

    channel = order[1]
    p.click(f"#channels button[data-channel='{channel}']")
    key = f"image=0&layer={layer}&channel={channel}"
    wait_key(p, "#unit-panel", key)
    maps = {m: attribute(service.loaded.model, x, Channel(layer, channel), m)[0]
            for m in ("guided_backprop", "deconvnet")}
    want = explanation_panel(service.loaded.preprocessing.invert(x[0]), maps, class_name=f"{layer} channel {channel}")
    channel_panel = shown(p, "#unit-panel")
    assert_same(channel_panel, np.asarray(want))

    box = p.locator("#unit-activation").bounding_box()
    assert box is not None
    p.mouse.click(box["x"] + box["width"] * (6.5 / 16), box["y"] + box["height"] * (5.5 / 16))  # unit (5, 6)
    wait_key(p, "#unit-panel", key + "&y=5&x=6")
    unit_panel = shown(p, "#unit-panel")
    assert not np.array_equal(unit_panel, channel_panel)
    fresh = ExploreService(tiny_loaded(), service.paths)  # the API on its own
    assert_same(unit_panel, np.asarray(fresh.unit_panel(0, layer, channel, (5, 6))))

    p.click("#top-button")  # what the channel responds to in the folder: computed in the background
    wait_key(p, "#top-images", f"layer={layer}&channel={channel}")
    grid = units.unit_grids_from_paths(service.loaded.model, service.paths, layer, service.loaded.preprocessing,
                                       channels=[channel], k=9, on_error="skip")[0]
    assert_same(shown(p, "#top-images"), np.asarray(grid.picture.convert("RGB")))
    listed = p.locator("#top-list li").all_text_contents()
    assert len(listed) == 9 and all(" at (y, x) = (" in t for t in listed)
    assert listed[0].startswith(Path(grid.top[0].source or "").name + " at (y, x) = "
                                f"({grid.top[0].y}, {grid.top[0].x})")
    ARTIFACTS.mkdir(exist_ok=True)
    p.screenshot(path=str(ARTIFACTS / "explore-tiny.png"), full_page=True)


def test_bad_input_and_hostile_name(page: tuple[Any, Watch], service: ExploreService) -> None:
    p, watch = page
    hostile = p.locator("#strip button[data-index='2'] span")
    assert hostile.text_content() == HOSTILE  # shown as text
    assert p.locator("#strip img[src='x']").count() == 0
    labels = p.locator("#labels option").evaluate_all("os => os.map(o => o.value)")
    assert labels == LABELS
    p.fill("#filter", "onerror")
    assert p.locator("#strip li:not([hidden])").count() == 1
    p.fill("#filter", "")

    watch.expected = ["422 http", "400 http"]  # the corrupt file, the unknown layer
    watch.expected = [watch.expected[0] + "://" + base_of(p) + "/api/images/3/",
                      "400 http://" + base_of(p) + "/api/channels?image=2&layer=features.relu9&"]
    p.click("#strip button[data-index='3']")  # the corrupt file
    p.wait_for_function("() => (document.getElementById('error').textContent || '').includes('corrupt.png')")
    assert p.locator("#error").is_visible()
    p.click("#strip button[data-index='2']")  # the app goes on
    wait_key(p, "#panel", panel_key(2, top_class(service, service.paths[2]), ["guided_backprop"]))
    assert p.locator("#error").is_hidden()

    p.evaluate("""() => { const o = document.createElement('option'); o.value = 'features.relu9';
        o.textContent = 'features.relu9'; document.getElementById('layer').append(o); }""")
    p.select_option("#layer", "features.relu9")  # a layer the model does not have
    # several requests follow a layer change; wait for the one that names the layer
    p.wait_for_function("() => (document.getElementById('error').textContent || '').includes('features.relu9')")
    assert "unknown layer 'features.relu9'" in (p.locator("#error").text_content() or "")
    p.select_option("#layer", "features.relu1")
    p.wait_for_selector("#channels button")
    assert p.locator("#error").is_hidden()


def test_no_entry_without_token_nor_outside_the_inputs(browser: Any, base: str) -> None:  # noqa: F811
    context = browser.new_context()
    page = context.new_page()
    try:
        refused = page.goto(base + "/")
        assert refused is not None and refused.status == 403
        assert page.locator("script").count() == 0
        assert context.request.get(base + "/api/info").status == 403
        page.goto(f"{base}/?token={TOKEN}")  # now with the cookie
        for path in ("/static/..%2Fservice.py", "/static/%2e%2e%2fapp.py", "/api/images/9/thumb.png",
                     "/api/images/..%2f..%2fetc%2fpasswd/thumb.png"):
            answer = context.request.get(base + path)
            assert answer.status in (400, 404), path
            assert b"import" not in answer.body() and b"root:" not in answer.body()
        assert context.request.get(base + "/api/info").status == 200
    finally:
        context.close()


def test_default_model_on_photos(browser: Any, tmp_path: Path) -> None:  # noqa: F811
    """The default model (efficientnet_lite0, offline) on real photos: the page as the README shows it."""
    from skimage import data

    from guided_backprop.models import load_model

    folder = tmp_path / "samples"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    paths = sorted(folder.glob("*.png"))
    service = ExploreService(load_model(), paths, names=[p.name for p in paths])
    with running(service) as base:
        context = browser.new_context(viewport={"width": 1200, "height": 1300})
        p = context.new_page()
        watch = Watch(base)
        watch.attach(p)
        try:
            p.goto(f"{base}/?token={TOKEN}")
            p.wait_for_selector("body[data-ready='1']", timeout=120_000)
            cls = int(p.locator("#classes button").first.get_attribute("data-cls") or -1)
            assert p.locator("#classes button").first.text_content().startswith(service.loaded.label(cls))
            methods = ["guided_backprop", "gradcam", "guided_gradcam"]
            p.check("#methods input[value='gradcam']")
            p.check("#methods input[value='guided_gradcam']")
            wait_key(p, "#panel", panel_key(0, cls, methods))
            assert_same(shown(p, "#panel"), expected_panel(service, paths[0], cls, methods))
            p.select_option("#layer", "blocks.3")
            p.wait_for_selector("#channels button")
            p.click("#channels button >> nth=0")
            p.wait_for_function("() => document.querySelector('#unit-panel').dataset.key", timeout=120_000)
            box = p.locator("#unit-activation").bounding_box()
            assert box is not None
            p.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.4)  # a unit near the eyes
            p.wait_for_function("() => document.querySelector('#unit-panel').dataset.key.includes('&y=')",
                                timeout=120_000)
            p.click("#top-button")
            p.wait_for_function("() => document.querySelector('#top-images').dataset.key", timeout=300_000)
            p.wait_for_function("() => document.querySelector('#unit-panel').complete")
            ARTIFACTS.mkdir(exist_ok=True)
            p.screenshot(path=str(ARTIFACTS / "explore.png"), full_page=True)
            if os.environ.get("GBP_UPDATE_FIGURES"):  # the README's figure
                shutil.copyfile(ARTIFACTS / "explore.png", FIGURE)
        finally:
            context.close()
    assert watch.console == [] and watch.foreign == [] and watch.dialogs == [] and watch.refused == []
