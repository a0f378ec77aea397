"""The report in a real headless Chromium, opened from file:// (Debian's /usr/bin/chromium via Playwright).

Checks what only a browser can: no console error and no failed or non-local request, every shown picture
decoded, filters, sorting, pagination and the enlarged view working, the hostile file name inert, and the
Content-Security-Policy enforced on file://. A screenshot goes to test-artifacts/report.png.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guided_backprop.report import write_report

from .test_report import HOSTILE, HOSTILE_LABEL, make_run, make_topk_run

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PAGE_SIZE = 4

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(`apt-get install chromium`; `make test` installs it)"),
]


class Watch:
    """Everything the page reports that would mean something went wrong."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self.failed: list[str] = []
        self.foreign: list[str] = []
        self.dialogs: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("console", lambda msg: msg.type == "error" and self.console.append(msg.text))
        page.on("pageerror", lambda err: self.console.append(f"uncaught: {err}"))
        page.on("requestfailed", lambda req: self.failed.append(f"{req.url}: {req.failure}"))
        page.on("request", lambda req: None if req.url.startswith(("file:", "data:")) else self.foreign.append(req.url))

        def dialog(d: Any) -> None:
            self.dialogs.append(f"{d.type}: {d.message}")
            d.dismiss()

        page.on("dialog", dialog)

    def assert_clean(self) -> None:
        assert self.dialogs == [], "a dialog fired: a hostile name ran as code"
        assert self.console == [], "console errors"
        assert self.failed == [], "failed requests"
        assert self.foreign == [], "requests that left the file system"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report") / "out"
    make_run(folder, n_ok=9)  # 13 rows: 10 explained (cats, dogs, the hostile one), 1 without maps, 2 failed
    return write_report(folder, page_size=PAGE_SIZE)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run"],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser: Any, report: Path) -> Iterator[tuple[Any, Watch]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    watch = Watch()
    watch.attach(pg)
    pg.goto(report.as_uri())
    pg.wait_for_selector("body[data-ready='1']", timeout=10_000)
    try:
        yield pg, watch
    finally:
        context.close()


@contextlib.contextmanager
def opened(browser: Any, report: Path, *, width: int = 1280, timeout: int = 10_000) -> Iterator[tuple[Any, Watch]]:
    """The report in a fresh browser context, loaded and ready, with a :class:`Watch` on it."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    pg = context.new_page()
    watch = Watch()
    watch.attach(pg)
    try:
        pg.goto(report.as_uri())
        pg.wait_for_selector("body[data-ready='1']", timeout=timeout)
        yield pg, watch
    finally:
        context.close()


def names(pg: Any) -> list[str]:
    return pg.locator("#rows .row .meta .name").all_text_contents()


def all_images_decoded(pg: Any) -> None:
    """Scroll through the page so lazy pictures load, then require each shown one to be decoded."""
    pg.evaluate("async () => { for (let y = 0; y < document.body.scrollHeight; y += innerHeight / 2) "
                "{ scrollTo(0, y); await new Promise(r => requestAnimationFrame(r)); } }")
    pg.wait_for_function(
        "() => [...document.querySelectorAll('#rows img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=10_000,
    )
    count = pg.evaluate("document.querySelectorAll('#rows img').length")
    assert count > 0


def test_loads_clean_and_every_picture_decodes(page: tuple[Any, Watch]) -> None:
    pg, watch = page
    assert pg.locator("#rows .row").count() == PAGE_SIZE
    assert pg.locator("#rows .row").first.locator("img").count() == 5  # input + 4 maps
    assert pg.eval_on_selector_all("#rows img", "imgs => imgs.every(i => i.loading === 'lazy')")
    all_images_decoded(pg)
    assert pg.locator("#failed-list li").count() == 2
    assert "cannot identify image file" in pg.locator("#failed-list").inner_text()
    assert pg.locator("#settings").inner_text().count("efficientnet_lite0") == 1
    pg.evaluate("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
    watch.assert_clean()


def test_pagination(page: tuple[Any, Watch]) -> None:
    pg, watch = page
    first = names(pg)
    assert pg.locator("#pager-top .page-info").inner_text() == "page 1 of 4"
    pg.locator("#pager-top [data-action=next]").click()
    assert pg.locator("#pager-top .page-info").inner_text() == "page 2 of 4"
    second = names(pg)
    assert len(second) == PAGE_SIZE and not set(first) & set(second)
    all_images_decoded(pg)
    pg.locator("#pager-bottom [data-action=last]").click()
    assert pg.locator("#pager-top .page-info").inner_text() == "page 4 of 4"
    assert len(names(pg)) == 13 - 3 * PAGE_SIZE
    assert pg.locator("#pager-top [data-action=next]").is_disabled()
    assert "page=4" in pg.url
    pg.reload()  # the page number survives a reload (kept in the #hash)
    pg.wait_for_selector("body[data-ready='1']")
    assert pg.locator("#pager-top .page-info").inner_text() == "page 4 of 4"
    watch.assert_clean()


def test_filter_by_class_and_name_and_sort(page: tuple[Any, Watch]) -> None:
    pg, watch = page
    options = pg.locator("#filter-class option").all_text_contents()
    assert options[:3] == ["all classes", "tabby (6)", "golden retriever (4)"]
    pg.select_option("#filter-class", "golden retriever")
    assert names(pg) == ["dog_1.jpg", "dog_3.jpg", "dog_5.jpg", "dog_7.jpg"]
    assert pg.locator("#match-count").inner_text() == "4 of 13 inputs match"
    pg.select_option("#filter-class", "")
    pg.fill("#filter-name", "CAT_")
    assert names(pg) == ["cat_0.jpg", "cat_2.jpg", "cat_4.jpg", "cat_6.jpg"]
    assert pg.locator("#pager-top .page-info").inner_text() == "page 1 of 2"
    pg.fill("#filter-name", "no such file")
    assert names(pg) == [] and pg.locator("#empty").is_visible()
    pg.fill("#filter-name", "")
    pg.select_option("#filter-status", "failed")
    assert names(pg) == ["broken.jpg", "evil</script><script>alert(2)</script>.jpg"]
    pg.select_option("#filter-status", "ok")
    pg.select_option("#sort", "conf-desc")
    shown = [float(t.rstrip("%")) for t in pg.locator("#rows .top5 li:first-child .p").all_text_contents()]
    assert shown == sorted(shown, reverse=True) and shown[0] == 90.0
    pg.select_option("#sort", "conf-asc")
    shown = [float(t.rstrip("%")) for t in pg.locator("#rows .top5 li:first-child .p").all_text_contents()]
    assert shown == sorted(shown) and len(shown) == PAGE_SIZE
    watch.assert_clean()


def test_click_enlarges_and_escape_closes(page: tuple[Any, Watch]) -> None:
    pg, watch = page
    box = pg.locator("#lightbox")
    assert box.is_hidden()
    pg.locator("#rows .row").first.locator(".cell button").nth(1).click()
    assert box.is_visible()
    pg.wait_for_function("() => { const i = document.getElementById('lightbox-img'); "
                         "return i.complete && i.naturalWidth > 0; }")
    assert pg.eval_on_selector("#lightbox-img", "i => i.getAttribute('src')") == "guided_backprop_0_class_281.png"
    assert pg.eval_on_selector("#lightbox-img", "i => i.naturalWidth") == 200  # the full picture, not the thumb
    assert pg.eval_on_selector("#lightbox-img", "i => i.getBoundingClientRect().width") > 300
    assert "Guided backprop" in pg.locator("#lightbox-caption").inner_text()
    pg.keyboard.press("ArrowRight")
    assert pg.eval_on_selector("#lightbox-img", "i => i.getAttribute('src')") == "deconvnet_0_class_281.png"
    pg.keyboard.press("Escape")
    assert box.is_hidden()
    watch.assert_clean()


def test_hostile_name_is_text_and_runs_nothing(page: tuple[Any, Watch]) -> None:
    pg, watch = page
    pg.fill("#filter-name", "onerror")
    assert names(pg) == [HOSTILE]
    row = pg.locator("#rows .row").first
    assert row.locator(".top5 li:first-child .label").inner_text() == HOSTILE_LABEL
    all_images_decoded(pg)  # the picture file with the hostile name loads through its quoted URL
    row.locator(".cell button").first.click()
    pg.wait_for_function("() => document.getElementById('lightbox-img').naturalWidth > 0")
    assert HOSTILE in pg.locator("#lightbox-caption").inner_text()
    pg.keyboard.press("Escape")
    injected = pg.evaluate(
        "() => [document.querySelectorAll('img[src=\"x\"], b[onmouseover], #rows script').length, "
        "[...document.querySelectorAll('*')].filter(e => [...e.attributes].some(a => /^on/i.test(a.name))).length]"
    )
    assert injected == [0, 0]
    pg.select_option("#filter-status", "failed")
    pg.fill("#filter-name", "evil")
    assert names(pg) == ["evil</script><script>alert(2)</script>.jpg"]
    pg.wait_for_timeout(200)  # let any injected handler have its chance to fire
    assert pg.evaluate("document.scripts.length") == 2
    watch.assert_clean()


def test_csp_blocks_network_on_file_urls(page: tuple[Any, Watch]) -> None:
    pg, watch = page
    watch.assert_clean()
    csp = pg.get_attribute("meta[http-equiv='Content-Security-Policy']", "content")
    assert csp is not None and re.search(r"default-src 'none'", csp)
    blocked = pg.evaluate(
        """() => new Promise(resolve => {
             document.addEventListener('securitypolicyviolation', e => resolve(e.effectiveDirective));
             new Image().src = 'http://127.0.0.1:9/probe.png';
             setTimeout(() => resolve('not blocked'), 3000);
           })"""
    )
    assert blocked == "img-src"
    # defence in depth: even markup injected past the escaping could not run a handler (the policy
    # allows the page's own script by hash, which turns off inline handlers)
    ran = pg.evaluate(
        """() => new Promise(resolve => {
             const d = document.createElement('div');
             d.innerHTML = '<img src="data:," onerror="window.__ran = 1">';
             document.body.append(d);
             setTimeout(() => resolve(window.__ran === 1), 500);
           })"""
    )
    assert ran is False
    assert watch.foreign == [] or all(u.startswith("http://127.0.0.1:9/") for u in watch.foreign)
    assert any("Content Security Policy" in m for m in watch.console)  # the browser says it blocked it


def test_thousands_of_rows_render_one_page(browser: Any, tmp_path: Path) -> None:
    """2,000 rows (over a few shared pictures): only one page is in the DOM, the filters search all rows."""
    rows = make_run(tmp_path, n_ok=3, big=48)
    ok = [r for r in rows if r["status"] == "ok" and r["input"] != "/photos/gone.jpg"]
    with open(tmp_path / "index.jsonl", "w", encoding="utf-8") as fh:
        for i in range(2000):
            fh.write(json.dumps(dict(ok[i % len(ok)], idx=i, input=f"/photos/img_{i:05d}.jpg")) + "\n")
    report = write_report(tmp_path, page_size=100)
    with opened(browser, report, timeout=20_000) as (pg, watch):
        assert pg.locator("#rows .row").count() == 100
        assert pg.locator("#pager-top .page-info").inner_text() == "page 1 of 20"
        pg.fill("#filter-name", "img_01999")
        assert names(pg) == ["img_01999.jpg"]
        pg.fill("#filter-name", "")
        pg.locator("#pager-top [data-action=last]").click()
        assert names(pg)[-1] == "img_01999.jpg"
        all_images_decoded(pg)
        watch.assert_clean()


def test_top_k_runs_show_a_class_by_method_grid_and_link_the_panel(browser: Any, tmp_path: Path) -> None:
    make_topk_run(tmp_path / "out", n_ok=3)
    report = write_report(tmp_path / "out")
    with opened(browser, report, width=1400) as (pg, watch):
        heads = pg.locator("#head-row span").all_text_contents()
        assert heads == ["Input and top-5 classes", "Input (as the network saw it)", "Explained class",
                         "Guided backprop", "Deconvnet", "Saliency", "Guided Grad-CAM"]
        row = pg.locator("#rows .row.ranked").first
        labels = row.locator(".class-label").all_inner_texts()
        assert [t.split("\n")[1] for t in labels] == ["tabby", "Egyptian cat", "class 282"]
        assert "90.0%" in labels[0]
        assert row.locator("img").count() == 1 + 3 * 4  # the input once, then 3 classes x 4 methods
        boxes = [row.locator(".cell").nth(i).bounding_box() for i in range(1 + 12)]
        grid_ys = sorted({round(b["y"]) for b in boxes[1:]})
        assert len(grid_ys) == 3  # three rows of maps
        xs = sorted({round(b["x"]) for b in boxes[1:]})
        head_xs = [round(pg.locator("#head-row span").nth(i).bounding_box()["x"]) for i in range(3, 7)]
        assert all(abs(a - b) <= 2 for a, b in zip(xs, head_xs, strict=True))  # each method under its header
        link = row.locator("a.panel-link")
        assert link.get_attribute("href") == "panel%200.png" and link.get_attribute("target") == "_blank"
        all_images_decoded(pg)
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "report-topk.png"), full_page=True)
        watch.assert_clean()


def test_a_right_to_left_override_in_a_name_reorders_nothing(browser: Any, tmp_path: Path) -> None:
    """``holiday\\u202egnp.exe`` must not show as "holidayexe.png", nor reverse the error text after it."""
    rlo = "\u202e"
    rows = make_run(tmp_path / "out", n_ok=1)
    ok, failed = rows[0], next(r for r in rows if r["status"] == "error")
    ok["input"] = f"/photos/holiday{rlo}gnp.exe"
    failed["input"] = f"/photos/bad{rlo}gnp.exe"
    failed["error"] = "cannot read image: truncated file"
    (tmp_path / "out" / "index.jsonl").write_text("\n".join(json.dumps(r) for r in (ok, failed)) + "\n")
    report = write_report(tmp_path / "out")
    with opened(browser, report) as (pg, watch):
        assert rlo not in pg.evaluate("document.body.innerText")
        assert names(pg)[0] == "holiday\\u202egnp.exe"  # the override, spelled out where it is
        # every character of the failed line, and of the row's name, is drawn left of the next one
        lefts = pg.evaluate(
            """(sel) => [...document.querySelectorAll(sel)].map(box => {
                 const xs = [];
                 const walk = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
                 for (let node = walk.nextNode(); node; node = walk.nextNode()) {
                   for (let i = 0; i < node.length; i++) {
                     if (!node.data[i].trim()) continue;
                     const range = document.createRange();
                     range.setStart(node, i); range.setEnd(node, i + 1);
                     const rect = range.getBoundingClientRect();
                     if (rect.width) xs.push([Math.round(rect.top), rect.left]);
                   }
                 }
                 return xs;
               })""",
            "#failed-list li, #rows .row .meta .name",
        )
        assert len(lefts) == 3  # the failed list, and both rows of the gallery
        for xs in lefts:
            assert len(xs) > 10
            for (top_a, a), (top_b, b) in zip(xs, xs[1:]):
                assert top_b > top_a or b > a, "a character is drawn left of the one before it"
        watch.assert_clean()
