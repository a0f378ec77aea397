"""The explorer's server and computing service, through Starlette's TestClient (no browser, no socket).

Safety (token, cookie, Host header, only the given inputs, CSP), bad input (a corrupt image, an unknown
layer or class, a model that fails on one input: a message, and the app goes on), the model coming back
as it was, concurrent requests not mixing maps, latest-wins, and the maps equal to the library's own.
"""

from __future__ import annotations

import copy
import gc
import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient
from torch import nn

from guided_backprop import attribute
from guided_backprop.explore import ExploreService, Superseded, create_app
from guided_backprop.explore.app import cookie_name
from guided_backprop.explore.server import allowed_hosts
from guided_backprop.pictures.panels import explanation_panel
from guided_backprop.targets import Neuron

from .fixtures.explore import HOSTILE, LABELS, TOKEN, make_inputs, tiny_loaded
from .fixtures.runs import MODELS, REPO

HOST = "127.0.0.1:8123"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_inputs(tmp_path_factory.mktemp("explore") / "photos")


def make_client(service: ExploreService, errors: list[str] | None = None, *, token: bool = True) -> TestClient:
    app = create_app(service, token=TOKEN, hosts=allowed_hosts("127.0.0.1", 8123),
                     report=(errors if errors is not None else []).append)
    client = TestClient(app, base_url=f"http://{HOST}")
    if token:
        client.headers["X-Token"] = TOKEN
    return client


@pytest.fixture
def service(inputs: list[Path]) -> ExploreService:
    return ExploreService(tiny_loaded(), inputs, names=[p.name for p in inputs])


def png(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


# ------------------------------------------------------------------------------------------- safety


def test_every_request_needs_the_token(service: ExploreService) -> None:
    client = make_client(service, token=False)
    for path in ("/", "/api/info", "/api/images/0/thumb.png", "/static/app.js", "/api/panel.png?image=0&class=0"):
        assert client.get(path).status_code == 403, path
    assert client.get("/api/info?token=wrong").status_code == 403
    assert client.get("/api/info", headers={"X-Token": "wrong"}).status_code == 403
    client.cookies.set(cookie_name(TOKEN), "wrong")
    assert client.get("/api/info").status_code == 403


def test_the_printed_url_sets_a_cookie_and_drops_the_token(service: ExploreService) -> None:
    client = make_client(service, token=False)
    first = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{cookie_name(TOKEN)}={TOKEN}") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get("/")  # the cookie alone now
    assert page.status_code == 200 and "<script src=\"/static/app.js\"" in page.text
    assert client.get("/api/info").status_code == 200


def test_host_header_is_checked(service: ExploreService) -> None:
    client = make_client(service)
    for host in ("evil.example:8123", "127.0.0.1:9999", "localhost.evil.example:8123", ""):
        response = client.get("/api/info", headers={"Host": host})
        assert response.status_code == 403, host
    assert client.get("/api/info", headers={"Host": "localhost:8123"}).status_code == 200
    assert allowed_hosts("::1", 5) == ["[::1]:5"]


def test_csp_forbids_anything_but_the_app(service: ExploreService) -> None:
    client = make_client(service)
    for path in ("/", "/api/info", "/static/app.js", "/nope"):
        csp = client.get(path).headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "http" not in csp and "*" not in csp and "unsafe" not in csp
    refused = make_client(service, token=False).get("/")
    assert "default-src 'none'" in refused.headers["content-security-policy"]


def test_page_and_static_files_are_the_apps_own(service: ExploreService) -> None:
    client = make_client(service)
    page = client.get("/").text
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "nothing from outside the app"
    script = client.get("/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text and "eval(" not in script.text


@pytest.mark.parametrize("path", [
    "/static/../service.py", "/static/..%2Fservice.py", "/static/%2e%2e/app.py", "/static/index.html",
    "/api/images/4/thumb.png", "/api/images/-1/thumb.png", "/api/images/..%2F..%2Fetc%2Fpasswd/thumb.png",
    "/etc/passwd", "/api/images/0/../../../../etc/passwd",
])
def test_nothing_outside_the_inputs_is_served(service: ExploreService, path: str) -> None:
    response = make_client(service).get(path)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert b"root:" not in response.content and b"import" not in response.content


def test_names_go_out_as_data(service: ExploreService, inputs: list[Path]) -> None:
    info = make_client(service).get("/api/info").json()
    assert [i["name"] for i in info["images"]] == [p.name for p in inputs]
    assert HOSTILE in [i["name"] for i in info["images"]] and info["labels"] == LABELS
    assert [m["title"] for m in info["methods"]] == ["Guided backprop", "Deconvnet", "Saliency", "Grad-CAM",
                                                      "Guided Grad-CAM"]


# ------------------------------------------------------------------------------------------ bad input


def test_a_corrupt_image_is_a_message_and_the_app_goes_on(service: ExploreService) -> None:
    errors: list[str] = []
    client = make_client(service, errors)
    for path in ("/api/images/3/input.png", "/api/images/3/classes", "/api/panel.png?image=3&class=0"):
        response = client.get(path)
        assert response.status_code == 422
        assert "corrupt.png" in response.json()["error"] and "not an image" in response.json()["error"]
    assert len(errors) == 3 and all("corrupt.png" in e for e in errors)
    thumb = png(client.get("/api/images/3/thumb.png"))  # the strip shows a crossed square for it
    assert thumb.shape == (96, 96, 3) and len(errors) == 3
    png(client.get("/api/panel.png?image=0&class=0&methods=guided_backprop"))


def test_unknown_layer_class_method_are_messages(service: ExploreService) -> None:
    errors: list[str] = []
    client = make_client(service, errors)
    layer = client.get("/api/channels?image=0&layer=features.relu9")
    assert layer.status_code == 400 and "features.relu9" in layer.json()["error"] and "relu3" in layer.json()["error"]
    cls = client.get("/api/panel.png?image=0&class=tabbby")
    assert cls.status_code == 400 and "'tabbby'" in cls.json()["error"] and "tabby" in cls.json()["error"]
    assert client.get("/api/panel.png?image=0&class=7").status_code == 400
    method = client.get("/api/panel.png?image=0&class=0&methods=nope")
    assert method.status_code == 400 and "nope" in method.json()["error"]
    channel = client.get("/api/unit.png?image=0&layer=features.relu2&channel=99")
    assert channel.status_code == 400 and "99" in channel.json()["error"]
    assert client.get("/api/panel.png?image=x&class=0").status_code == 400
    assert len(errors) == 6
    png(client.get("/api/unit.png?image=0&layer=features.relu2&channel=1"))


class _FailsOnWide(nn.Module):
    """UnitNet that raises on inputs wider than tall (the user's model failing on one input)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = tiny_loaded().model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > x.shape[-2]:
            raise ValueError("this model takes portrait pictures only")
        return self.net(x)


def test_a_model_failing_on_one_input_is_a_message(tmp_path: Path) -> None:
    tall, wide = tmp_path / "tall.png", tmp_path / "wide.png"
    Image.new("RGB", (20, 30), (90, 10, 10)).save(tall)
    Image.new("RGB", (30, 20), (10, 90, 10)).save(wide)
    errors: list[str] = []
    service = ExploreService(tiny_loaded(_FailsOnWide(), crop=None), [tall, wide], names=["tall.png", "wide.png"])
    client = make_client(service, errors)
    response = client.get("/api/images/1/classes")
    assert response.status_code == 400 and "portrait pictures only" in response.json()["error"]
    assert "wide.png" in response.json()["error"] and errors
    png(client.get("/api/panel.png?image=0&class=1&methods=guided_backprop,gradcam"))


# ------------------------------------------------------------------------------------ model and maps


def test_model_comes_back_as_it_was(service: ExploreService) -> None:
    model = service.loaded.model
    model.train()  # the user's flag, which the engine must restore
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    client = make_client(service)
    for path in ("/api/panel.png?image=0&class=1&methods=guided_backprop,deconvnet,saliency,gradcam,guided_gradcam",
                 "/api/panel.png?image=1&class=0&smooth=1", "/api/channels?image=0&layer=features.relu2",
                 "/api/unit.png?image=0&layer=features.relu2&channel=2&y=3&x=4", "/api/layers",
                 "/api/channels?image=0&layer=nope"):
        client.get(path)
        assert all(m.training for m in model.modules())
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
        assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
        assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "saliency", "gradcam", "guided_gradcam"])
def test_maps_equal_the_library(service: ExploreService, inputs: list[Path], method: str) -> None:
    client = make_client(service)
    got = np.load(io.BytesIO(client.get(f"/api/map.npy?image=1&class=2&methods={method}").content))
    pre = service.loaded.preprocessing
    x = pre(Image.open(inputs[1]).convert("RGB"))[None]
    model64 = copy.deepcopy(service.loaded.model).double()  # an independent float64 reference
    want = attribute(model64, x.double(), 2, method)[0]
    assert float(want.abs().max()) > 0
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_panel_is_the_commands_panel(service: ExploreService, inputs: list[Path]) -> None:
    client = make_client(service)
    methods = ["guided_backprop", "gradcam"]
    shown = png(client.get(f"/api/panel.png?image=0&class=tiger cat&methods={','.join(methods)}"))
    pre = service.loaded.preprocessing
    x = pre(Image.open(inputs[0]).convert("RGB"))[None]
    maps = {m: attribute(service.loaded.model, x, 1, m)[0] for m in methods}
    prob = float(service.loaded.model(x).detach().softmax(-1)[0, 1])
    want = np.asarray(explanation_panel(pre.invert(x[0]), maps, class_name="tiger cat", probability=prob))
    assert shown.shape == want.shape
    assert np.abs(shown.astype(int) - want.astype(int)).max() <= 1


def test_unit_maps_and_field(service: ExploreService, inputs: list[Path]) -> None:
    got = service.unit_maps(0, "features.relu2", 3, (5, 6))
    pre = service.loaded.preprocessing
    x = pre(Image.open(inputs[0]).convert("RGB"))[None]
    want = attribute(service.loaded.model, x, Neuron("features.relu2", 3, 5, 6), "guided_backprop")[0]
    np.testing.assert_allclose(got["guided_backprop"], want.numpy(), atol=1e-6)
    # the outline is the unit's receptive field: relu2 of UnitNet sees 8x8 px at stride 2 (conv 3, pool 2, conv 3)
    rf = service.field("features.relu2", (32, 32))
    assert rf.size == (8, 8) and rf.jump == (2, 2)
    plain = np.asarray(service.unit_panel(0, "features.relu2", 3))
    outlined = np.asarray(service.unit_panel(0, "features.relu2", 3, (5, 6)))
    assert plain.shape == outlined.shape and (plain != outlined).any()


def test_channels_strongest_first(service: ExploreService, inputs: list[Path]) -> None:
    body = make_client(service).get("/api/channels?image=0&layer=features.relu2").json()
    pre = service.loaded.preprocessing
    x = pre(Image.open(inputs[0]).convert("RGB"))[None]
    act = service.loaded.model.features[:5](x)[0].detach()
    assert body["shape"] == list(act.shape)
    assert [c["channel"] for c in body["channels"]] == act.mean(dim=(1, 2)).argsort(descending=True).tolist()
    picture = png(make_client(service).get("/api/activation.png?image=0&layer=features.relu2&channel=0"))
    assert picture.shape[0] >= 64 and picture.shape[0] % act.shape[1] == 0


def test_concurrent_requests_do_not_mix_maps(service: ExploreService) -> None:
    client = make_client(service)
    asks = [(i % 3, i % 3 if i % 3 != 2 else 0, m) for i, m in enumerate(["guided_backprop", "deconvnet",
                                                                          "saliency", "gradcam"] * 3)]
    alone = {a: ExploreService(tiny_loaded(), service.paths).maps(a[0], a[1], [a[2]])[a[2]] for a in asks}
    results: dict[Any, np.ndarray] = {}

    def ask(a: tuple[int, int, str]) -> None:
        r = client.get(f"/api/map.npy?image={a[0]}&class={a[1]}&methods={a[2]}")
        results[a] = np.load(io.BytesIO(r.content))

    threads = [threading.Thread(target=ask, args=(a,)) for a in asks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a in asks:
        np.testing.assert_allclose(results[a], alone[a], atol=1e-6, err_msg=str(a))


def test_latest_request_wins(service: ExploreService) -> None:
    ran: list[int] = []
    outcome: dict[int, str] = {}

    def ask(seq: int) -> None:
        try:
            service.run(lambda: ran.append(seq), client="c", seq=seq)
            outcome[seq] = "ran"
        except Superseded:
            outcome[seq] = "superseded"

    def arrived(seq: int) -> None:
        deadline = time.monotonic() + 30
        while service._latest.get("c") != seq and time.monotonic() < deadline:
            time.sleep(0.01)

    with service.lock:  # the model is busy: both wait, the newer one arrives second
        first = threading.Thread(target=ask, args=(1,))
        first.start()
        arrived(1)
        second = threading.Thread(target=ask, args=(2,))
        second.start()
        arrived(2)
    first.join()
    second.join()
    assert outcome == {1: "superseded", 2: "ran"} and ran == [2]
    service.run(lambda: ran.append(0), client="other", seq=0)  # another client is not affected
    assert ran == [2, 0]


def test_command_reproduces_the_panel(service: ExploreService, inputs: list[Path]) -> None:
    service.model_args = ["--model", "my net.py:build"]
    body = make_client(service).get("/api/command?image=2&class=1&methods=gbp,gradcam&smooth=1").json()
    words = shlex.split(body["command"])
    assert words[:2] == ["guided-backprop", str(inputs[2])]
    assert words[words.index("--methods") + 1] == "guided_backprop,gradcam"
    assert words[words.index("--target") + 1] == "1" and "--panel" in words
    assert words[words.index("--smooth") + 1] == str(service.smooth_samples)
    assert words[-2:] == ["--model", "my net.py:build"]


# ------------------------------------------------------------------------------------------- command


def _start(args: list[str], tmp: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BROWSER": "false"}
    return subprocess.Popen([sys.executable, "-m", "guided_backprop", "explore", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_url(proc: subprocess.Popen[str]) -> tuple[str, list[str]]:
    lines: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        found = re.search(r"http://\S+", line)
        if found:
            return found.group(0), lines
    raise AssertionError("no URL printed: " + "".join(lines))


@pytest.mark.slow
def test_command_serves_on_localhost_and_stops_on_ctrl_c(inputs: list[Path], tmp_path: Path) -> None:
    import httpx

    proc = _start([str(inputs[0].parent), "--model", f"{MODELS}:tiny", "--input-size", "32", "--no-browser"],
                  tmp_path)
    try:
        url, lines = _read_url(proc)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{20,}", url), url
        assert not any("warning" in line for line in lines)
        base = url.split("/?")[0]
        assert httpx.get(base + "/api/info").status_code == 403
        with httpx.Client(follow_redirects=True) as client:
            assert client.get(url).status_code == 200  # redirect to / with the cookie
            info = client.get(base + "/api/info").json()
            assert len(info["images"]) == 4 and HOSTILE in [i["name"] for i in info["images"]]
            assert client.get(base + "/api/panel.png?image=0&class=3").headers["content-type"] == "image/png"
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "explorer stopped" in err and "Traceback" not in err


@pytest.mark.slow
def test_another_host_needs_the_flag_and_warns(inputs: list[Path], tmp_path: Path) -> None:
    import httpx

    proc = _start([str(inputs[0]), "--model", f"{MODELS}:tiny", "--input-size", "32", "--no-browser",
                   "--host", "0.0.0.0"], tmp_path)
    try:
        url, lines = _read_url(proc)
        assert url.startswith(f"http://{socket.gethostname()}:")  # all interfaces: the machine's name
        assert any("warning: --host 0.0.0.0" in line for line in lines)
        port = url.split(":")[2].split("/")[0]
        for host, status in ((f"{socket.gethostname()}:{port}", 200), (f"127.0.0.1:{port}", 200),
                             (f"evil.example:{port}", 403)):
            answer = httpx.get(url, headers={"Host": host}, follow_redirects=False)
            assert answer.status_code in ((303,) if status == 200 else (403,)), host
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_command_without_images_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from guided_backprop.cli.commands import main

    result = CliRunner().invoke(main, ["explore", str(tmp_path / "missing"), "--no-browser"])
    assert result.exit_code == 2 and "missing" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------ what a unit responds to


def _wait(job: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while job.state not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
    return job.status()


def test_top_images_in_background_cached_and_reused_by_units(inputs: list[Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from guided_backprop.cli.commands import main
    from guided_backprop.cli.options import model_spec
    from guided_backprop.units import cache as unit_cache
    from guided_backprop.units import grids as units

    flags = ["x.png", "-o", "o", "--layer", "1", "--model", f"{MODELS}:tiny", "--input-size", "32"]
    loaded = model_spec(dict(main.commands["units"].make_context("units", flags).params)).load()  # as the command
    out = tmp_path / "units"
    service = ExploreService(loaded, inputs, units_folder=out)
    client = make_client(service)
    first = client.get("/api/top-images?layer=1&channel=2").json()
    assert first["state"] in ("waiting", "running", "done") and first["total"] == 4
    status = _wait(service.top_images("1", 2))
    assert status["state"] == "done" and status["done"] == 4 and not status["reused"], status
    assert len(status["top"]) == 9 and {t["name"] for t in status["top"]} <= {str(p) for p in inputs[:3]}
    shown = png(client.get("/api/top-images.png?layer=1&channel=2"))
    want = units.unit_grids_from_paths(loaded.model, inputs, "1", loaded.preprocessing, channels=[2], k=9,
                                       on_error="skip")[0]
    assert [(t.image, t.y, t.x) for t in want.top] == [(t["image"], t["y"], t["x"]) for t in status["top"]]
    np.testing.assert_array_equal(shown, np.asarray(want.picture.convert("RGB")))
    cached = list((out / unit_cache.CACHE_FOLDER).glob("1_c2_*.json"))
    assert len(cached) == 1

    def no_pass(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pass over the images ran again")

    monkeypatch.setattr(unit_cache, "top_activations", no_pass)
    again = ExploreService(loaded, inputs, units_folder=out)  # a new explorer on the same folder: from the disk
    assert _wait(again.top_images("1", 2))["reused"] is True
    result = CliRunner().invoke(main, ["units", str(inputs[0].parent), "--layer", "1", "--channel", "2", "-o",
                                       str(out), "--model", f"{MODELS}:tiny", "--input-size", "32", "-q"])
    assert result.exit_code == 1, result.output  # the units command reused it too, and names the unreadable file
    assert "corrupt.png" in result.output and "ran again" not in result.output
    written = np.asarray(Image.open(out / "unit_1_c2.png").convert("RGB"))
    np.testing.assert_array_equal(written, np.asarray(want.picture.convert("RGB")))

    os.utime(inputs[0], ns=(1, 1))  # a changed input: the cache no longer applies
    assert _wait(ExploreService(loaded, inputs, units_folder=out).top_images("1", 2))["state"] == "failed"


def test_top_images_of_an_unknown_layer_or_channel(service: ExploreService) -> None:
    client = make_client(service)
    assert "relu9" in client.get("/api/top-images?layer=features.relu9&channel=0").json()["error"]
    assert "out of range" in client.get("/api/top-images?layer=features.relu2&channel=6").json()["error"]
    assert client.get("/api/top-images.png?layer=features.relu2&channel=1").status_code == 400


def test_reproducing_command_takes_the_model_options_back() -> None:
    from guided_backprop import ModelSpec
    from guided_backprop.cli.commands import _model_words, main
    from guided_backprop.cli.options import model_spec

    given = ModelSpec("my net.py:build", weights="w.pt", num_classes=7, trust_checkpoint=True, device="cpu",
                      preprocessing={"input_size": 64, "resize": None, "crop": 48, "mean": (0.5,), "std": (0.25,),
                                     "channels": 1})
    words = _model_words(given)
    ctx = main.commands["run"].make_context("run", ["x.png", "-o", "out", *words])
    assert model_spec(dict(ctx.params)) == given
    assert _model_words(ModelSpec()) == []


def test_reproducing_command_of_the_default_options_adds_no_word() -> None:
    # the command line's own defaults (--resize/--crop parse to the KEEP sentinel, not the string 'model')
    from guided_backprop import ModelSpec
    from guided_backprop.cli.commands import _model_words, main
    from guided_backprop.cli.options import model_spec

    ctx = main.commands["explore"].make_context("explore", ["x.png"])
    assert model_spec(dict(ctx.params)) == ModelSpec()
    assert _model_words(model_spec(dict(ctx.params))) == []


def test_warm_up_fills_the_cache_of_the_first_readable_image(inputs: list[Path]) -> None:
    service = ExploreService(tiny_loaded(), [inputs[3], inputs[1]])  # the corrupt file first
    service.warm_up()
    assert list(service._cache) == [1]
    top = service.top_classes(1, 1)[0]["index"]
    assert {"guided_backprop", "gradcam", "saliency"} <= set(service._cache[1].maps[(top, 0)])


def test_a_port_in_use_is_a_usage_error(inputs: list[Path]) -> None:
    from click.testing import CliRunner

    from guided_backprop.cli.commands import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["explore", str(inputs[0]), "--model", f"{MODELS}:tiny", "--input-size",
                                           "32", "--no-browser", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output
    assert "Traceback" not in result.output


def finish_prefetch(service: ExploreService) -> None:
    """Wait for the background worker to empty its queue."""
    deadline = time.monotonic() + 120
    while service._worker is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service._worker is None


def test_a_click_computes_its_methods_and_the_background_the_rest(inputs: list[Path]) -> None:
    service = ExploreService(tiny_loaded(), inputs, prefetch=False)
    top = [c["index"] for c in service.top_classes(0, 3)]
    service.maps(0, top[0], ["deconvnet"])
    item = service._cache[0]
    assert set(item.maps) == {(top[0], 0)} and set(item.maps[(top[0], 0)]) == {"deconvnet", "gradcam"}
    service.maps(0, top[0], ["guided_gradcam"])  # its passes also give guided backprop (and Grad-CAM, kept)
    assert set(item.maps[(top[0], 0)]) == {"deconvnet", "gradcam", "guided_backprop", "guided_gradcam"}
    assert service.maps(0, top[0], ["saliency"]).keys() == {"saliency"} and len(item.maps[(top[0], 0)]) == 5


def test_other_methods_and_top_classes_are_prefetched_while_idle(inputs: list[Path]) -> None:
    service = ExploreService(tiny_loaded(), inputs)
    forwards: list[int] = []
    handle = service.loaded.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        top = [c["index"] for c in service.top_classes(0, 3)]
        service.maps(0, top[1], ["guided_backprop"])  # queues the rest of this class, then the other top-3
        finish_prefetch(service)
    finally:
        handle.remove()
    item = service._cache[0]
    assert forwards == [1]  # the image's recorded forward serves every class: backward passes only
    assert item.prefetched and all(len(item.maps[(c, 0)]) == 5 for c in top)
    fresh = ExploreService(tiny_loaded(), inputs, prefetch=False)
    for cls in top:
        got = item.maps[(cls, 0)]
        want = fresh.maps(0, cls, list(got))
        for m in got:
            np.testing.assert_array_equal(got[m], want[m], err_msg=f"{m} of class {cls}")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in service.loaded.model.modules())


def test_prefetch_waits_while_a_request_is_under_way(inputs: list[Path]) -> None:
    service = ExploreService(tiny_loaded(), inputs)
    top = [c["index"] for c in service.top_classes(0, 3)]
    item = service._cache[0]
    release = threading.Event()
    busy = threading.Thread(target=lambda: service.run(lambda: release.wait(30)))
    busy.start()  # a request under way (it holds the model)
    while not service._active:
        time.sleep(0.01)
    service._prefetch(item, top[0])  # as a click on the first class would leave it
    time.sleep(0.5)
    assert not item.maps and service._worker is not None  # nothing computed meanwhile
    release.set()
    busy.join()
    finish_prefetch(service)
    assert all(len(item.maps[(c, 0)]) == 5 for c in top)


def test_terminal_lines_show_control_characters_as_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    from guided_backprop.explore.app import _stderr

    _stderr("cannot read image 'a\x1b[2Jb\u202e.png'")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u202e" not in err and "\\x1b[2J" in err and err.count("\n") == 1


def test_a_superseded_request_is_answered_with_no_content(service: ExploreService) -> None:
    client = make_client(service)
    service.run(lambda: None, client="page", seq=5)  # the client's newer request came first
    late = client.get("/api/panel.png?image=0&class=0&client=page&seq=4")
    assert late.status_code == 204 and late.headers["x-superseded"] == "1" and late.content == b""
    png(client.get("/api/panel.png?image=0&class=0&client=page&seq=6"))


def test_one_forward_per_image_serves_every_class_and_method(inputs: list[Path]) -> None:
    service = ExploreService(tiny_loaded(), inputs, names=[p.name for p in inputs], prefetch=False)
    model = service.loaded.model
    forwards: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))  # counts every forward of the model
    client = make_client(service)
    asked = [(0, "guided_backprop"), (1, "deconvnet,saliency"), (2, "gradcam"), (0, "guided_gradcam"),
             (1, "guided_backprop,gradcam"), (2, "deconvnet")]
    try:
        shown = {(cls, m): np.load(io.BytesIO(client.get(f"/api/map.npy?image=1&class={cls}&methods={m}").content))
                 for cls, m in asked if "," not in m}
        for cls, ms in asked:
            png(client.get(f"/api/panel.png?image=1&class={cls}&methods={ms}"))
        assert client.get("/api/images/1/classes").status_code == 200
        assert client.get("/api/images/1/input.png").status_code == 200
    finally:
        handle.remove()
    assert forwards == [1] and service.forwards == 1  # three classes, five methods: one forward
    x = service.prepared(1).x
    for (cls, method), got in shown.items():  # equal to a fresh call of the library, bit for bit
        np.testing.assert_array_equal(got, attribute(model, x, cls, method)[0].numpy(), err_msg=f"{method} {cls}")


def test_graphs_beyond_the_limit_are_freed_and_recorded_again(inputs: list[Path]) -> None:
    service = ExploreService(tiny_loaded(), inputs, prefetch=False, graphs=1)
    service.maps(0, 0, ["guided_backprop"])
    first = service._cache[0]
    graph = weakref.ref(first.recorded._logits)  # type: ignore[union-attr]  # the output node of its graph
    service.maps(1, 0, ["guided_backprop"])  # the second image's graph pushes the first one out
    gc.collect()
    assert first.recorded is None and graph() is None and service.forwards == 2
    assert list(service._graphs.values()) == [service._cache[1]]
    got = service.maps(0, 1, ["deconvnet"])["deconvnet"]  # a new class of the first image: recorded again
    assert service.forwards == 3 and service._cache[1].recorded is None
    np.testing.assert_array_equal(got, attribute(service.loaded.model, first.x, 1, "deconvnet")[0].numpy())
    assert service.maps(0, 0, ["guided_backprop"])["guided_backprop"] is first.maps[(0, 0)]["guided_backprop"]


def test_layer_list_has_unit_layers_only_with_the_images_shapes(inputs: list[Path]) -> None:
    from collections import OrderedDict

    from guided_backprop.units.receptive import layer_table

    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 4, 3, padding=1)), ("relu1", nn.ReLU()), ("skip", nn.Identity()),
        ("drop", nn.Dropout2d(0.1)), ("pool", nn.MaxPool2d(2)), ("conv2", nn.Conv2d(4, 5, 3)), ("relu2", nn.ReLU()),
        ("gap", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(5, 3))]))
    service = ExploreService(tiny_loaded(net.eval(), crop=None), inputs, prefetch=False)  # 40x44 pictures as they are
    client = make_client(service)
    rows = client.get("/api/layers?image=0").json()
    assert [r["name"] for r in rows] == ["conv1", "relu1", "pool", "conv2", "relu2"]  # no Identity, Dropout, 1x1
    real = {r.name: r for r in layer_table(net, service.loaded.preprocessing, input_size=(40, 44))}
    assert [r["shape"] for r in rows] == [real[r["name"]].shape_text for r in rows]
    assert rows[0]["shape"] == "1x4x40x44" and rows[-1]["shape"] == "1x5x18x20"
    assert [r["field"] for r in rows] == [real[r["name"]].field_text for r in rows]
    nominal = client.get("/api/layers").json()  # before an image is chosen: the preprocessing's nominal size
    assert [r["name"] for r in nominal] == [r["name"] for r in rows] and nominal[0]["shape"] == "1x4x224x224"
    assert not any(m._forward_hooks for m in net.modules())


def test_explore_shares_runs_gradcam_layer_and_noise_options() -> None:
    from guided_backprop.cli.commands import main

    def option(command: str, name: str) -> dict[str, Any]:
        found = next(p for p in main.commands[command].params if p.name == name)
        info = found.to_info_dict()
        return {k: info[k] for k in ("opts", "type", "default", "help")} | {"metavar": found.metavar}

    for name in ("gradcam_layer", "noise"):
        assert option("explore", name) == option("run", name), name
    assert option("evaluate", "gradcam_layer") == option("run", "gradcam_layer")


@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 1, 3), (1, 9, 3), (8, 1, 3), (6, 4), (1, 1), (300, 451, 3)])
def test_fast_png_decodes_to_the_same_pixels(shape: tuple[int, ...]) -> None:
    from skimage import data

    from guided_backprop.explore.service import png_bytes

    rng = np.random.default_rng(sum(shape))
    a = data.chelsea()[: shape[0], : shape[1]] if shape == (300, 451, 3) else rng.integers(0, 256, shape, np.uint8)
    for picture in (a, Image.fromarray(a), a[::-1]):  # an array, a picture, a view with negative strides
        data_ = png_bytes(picture)
        back = Image.open(io.BytesIO(data_))
        back.load()  # checks the CRCs and the zlib stream
        assert back.mode == ("RGB" if len(shape) == 3 else "L")
        np.testing.assert_array_equal(np.asarray(back), np.asarray(picture))
        idat = data_[data_.index(b"IDAT") + 4:data_.index(b"IEND") - 8]  # one IDAT chunk: the zlib stream
        rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(shape[0], -1)
        assert (rows[:, 0] == 1).all()  # every row "Sub"-filtered: one fixed filter, not Pillow's five tried per row
    if shape == (300, 451, 3):  # about as small as Pillow's own encoder makes it
        pil = io.BytesIO()
        Image.fromarray(a).save(pil, format="PNG", compress_level=1)
        assert len(png_bytes(a)) < 1.3 * len(pil.getvalue())
    rgba = Image.fromarray(rng.integers(0, 256, (3, 4, 4), np.uint8), "RGBA")  # others: Pillow's encoder
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(rgba)))), np.asarray(rgba))


def test_a_model_without_gradients_shows_its_classes_and_says_why_no_map(inputs: list[Path]) -> None:
    class Frozen(nn.Module):  # its forward runs under no_grad: top classes yes, maps no
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(4, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.net(x)

    errors: list[str] = []
    service = ExploreService(tiny_loaded(Frozen().eval()), inputs, prefetch=False)
    client = make_client(service, errors)
    assert len(client.get("/api/images/0/classes").json()) == 3 and service._cache[0].recorded is None
    response = client.get("/api/panel.png?image=0&class=1&methods=saliency")  # the asked method's own message
    assert response.status_code == 400 and "does not depend on the input" in response.json()["error"]
    assert errors
    assert client.get("/api/images/1/input.png").status_code == 200  # the app goes on
