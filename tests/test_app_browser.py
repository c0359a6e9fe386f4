"""dequant-app as its console script serves it (the shipped parser, page and launch settings: `cli.serve`), in a
real browser: Debian's headless Chromium driven by Playwright, against a page serving the tiny checkpoint; and its
limits over HTTP (upload size cap, served paths, one render at a time, the cache purge). Installs chromium with
apt-get when missing (as root, as CI runs); skips, saying why, when it cannot.

Screenshots of every step land in the test's tmp folder (`pytest --basetemp=DIR` keeps them somewhere known).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import types
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEP_MS = 60_000


def _chromium() -> str:
    """The chromium binary, installed with apt-get when missing; skip with the reason when that cannot be."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("no chromium and no apt-get to install it: the browser test of dequant-app cannot run here")
    try:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if done.returncode:
                pytest.skip(f"chromium could not be installed ({' '.join(cmd)}: exit {done.returncode}: "
                            f"{done.stderr.strip()[-200:]}); the browser test of dequant-app did not run")
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"chromium could not be installed ({err}); the browser test of dequant-app did not run")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed no chromium binary; the browser test of dequant-app did not run")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The test photo is 72x48 (tiny_photos[0]); the page edits and renders it at this long side and resizes results back.
MAX_SIDE = 48


@pytest.fixture(scope="module")
def app(tiny_ckpt: Path):
    """dequant-app started as its console script starts it (`build_parser`, `make_page`, `serve`: its queue and
    launch settings), on a free port, not blocking, with `--max-side 48`. Yields url, page, demo and args."""
    pytest.importorskip("gradio")
    from dequant.app.cli import build_parser, make_page, serve

    for attempt in range(3):
        port = _free_port()
        args = build_parser().parse_args(["--ckpt", str(tiny_ckpt), "--port", str(port), "--max-side",
                                          str(MAX_SIDE)])
        page, demo = make_page(args)
        try:
            serve(demo, args, block=False)
            break
        except ValueError as err:
            # Gradio gives its new server one 3 s request to answer; on a machine busy with other work that can
            # fail, so it is asked again (on a fresh port) before the fixture gives up.
            demo.close()
            if "localhost is not accessible" not in str(err) or attempt == 2:
                raise
    try:
        yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}", page=page, demo=demo, args=args)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def server(app) -> str:
    """The running page's URL."""
    return app.url


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, no browser download) under Playwright."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_page_serves_no_file_outside_its_folders(server: str, tmp_path: Path) -> None:
    import httpx

    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    readme = Path(__file__).resolve().parents[1] / "README.md"
    for target in (secret, readme, Path("/etc/passwd")):
        for url in (f"{server}/gradio_api/file={target}", f"{server}/file={target}",
                    f"{server}/gradio_api/file=../../../..{target}"):
            resp = httpx.get(url, timeout=30)
            assert resp.status_code >= 400, url
            assert b"do not serve me" not in resp.content and b"root:" not in resp.content


def test_the_shipped_limits_hold(app, tiny_photos: list[Path]) -> None:
    """What `dequant-app` promises (docs/app.md), on the server its own settings started: 127.0.0.1 only, uploads
    over 100 MB refused unread and smaller ones kept in Gradio's cache (purged of files older than an hour every 10
    minutes), the editor's limits from the command line's defaults."""
    import httpx

    from dequant.app.cli import launch_settings

    settings = launch_settings(app.args)
    assert settings["server_name"] == "127.0.0.1" and "allowed_paths" not in settings
    upload = f"{app.url}/gradio_api/upload"
    big = httpx.post(upload, files={"files": ("big.png", b"x" * (100 * 2**20 + 1), "image/png")}, timeout=120)
    assert big.status_code == 413 and "maximum allowed size of 104857600 bytes" in big.text
    small = httpx.post(upload, files={"files": ("small.png", tiny_photos[0].read_bytes(), "image/png")}, timeout=60)
    assert small.status_code == 200
    (stored,) = small.json()
    assert Path(stored).name == "small.png" and not list(Path(stored).parents[1].rglob("big.png"))
    assert any(stored in files for files in app.demo.temp_file_sets), "uploads are not in the purged cache"
    assert app.demo.delete_cache == (600, 3600)
    assert app.page.max_side == MAX_SIDE and app.page.max_pixels == 20_000_000
    assert app.page.renderer.time_limit == 300.0 and app.page.store.capacity == 8


def test_renders_run_one_at_a_time(app, tiny_photos: list[Path]) -> None:
    """Two sessions ask for a render at the same moment: the server runs them one after the other."""
    from gradio_client import Client, handle_file

    renderer = app.page.renderer
    spans: list[tuple[float, float]] = []
    real = renderer.transfer

    def slow_transfer(*args, **kwargs):
        start = time.monotonic()
        time.sleep(0.5)  # long enough that two renders allowed at once would overlap
        try:
            return real(*args, **kwargs)
        finally:
            spans.append((start, time.monotonic()))

    renderer.transfer = slow_transfer
    try:
        clients = [Client(app.url, verbose=False) for _ in range(2)]
        for client in clients:
            client.predict(handle_file(str(tiny_photos[0])), 8, "median cut", api_name="/load_upload")
        jobs = [client.submit(True, f"checkpoint's ({renderer.default_sampler})", None,
                              0, None, None, False, api_name="/render") for client in clients]
        results = [job.result(timeout=120) for job in jobs]
    finally:
        del renderer.transfer
    assert [r[0] for r in results] == ["rendered at 72x48"] * 2
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert a_end <= b_start, f"two renders ran at once: {spans}"


def _status(page, text: str) -> str:
    """Wait until the status line holds `text`; return the line."""
    status = page.locator("#status")
    status.filter(has_text=text).wait_for(timeout=STEP_MS)
    return status.inner_text()


def _upload(page, path: Path) -> None:
    with page.expect_file_chooser(timeout=STEP_MS) as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(path))


def _render_and_download(page, out: Path) -> tuple[Image.Image, Image.Image]:
    """Render, download the model's result; also the classical transfer the page shows beside it (its PNG)."""
    import io

    page.locator("#render").click()
    _status(page, "rendered at")
    page.locator("#result img").wait_for(timeout=STEP_MS)
    classical = page.locator("#classical img")
    classical.wait_for(timeout=STEP_MS)
    page.locator("#comparison").filter(has_text="classical (Reinhard, Lab)").wait_for(timeout=STEP_MS)
    shown = page.request.get(urljoin(page.url, classical.get_attribute("src")), timeout=STEP_MS)
    assert shown.ok, shown.status
    with page.expect_download(timeout=STEP_MS) as dl:
        page.locator("#download a").first.click()
    dl.value.save_as(out)
    return Image.open(out).convert("RGB"), Image.open(io.BytesIO(shown.body())).convert("RGB")


def _expected_render(app, photo: Path) -> tuple[np.ndarray, np.ndarray]:
    """What the page renders for `photo` with swatch 1 set to #e0218a and the default settings, computed in this
    process by the server's own Page (renders are seeded): the PNG the browser must download, and the classical
    transfer shown beside it."""
    from dequant.data.io import load_rgb

    state = app.page.load_upload(str(photo), 8, "median cut", {})[1]
    state = app.page.set_swatch("1. x", "#e0218a", state)[1]
    out = app.page.render(True, f"checkpoint's ({app.page.renderer.default_sampler})", None, 0, None, None, False,
                          state, progress=None)
    return (load_rgb(out[3]) * 255).round().byte().permute(1, 2, 0).numpy(), out[4]


def test_edit_and_render_in_the_browser(app, browser, tiny_photos: list[Path], tmp_path: Path) -> None:
    """Upload a photo larger than --max-side, change a swatch, render, download at the photo's own size: exactly
    the page's render, with the classical transfer (Reinhard, Lab) beside it at the same size and both results'
    scores; click a region and render it; a bad upload shows a message and the next good upload still renders."""
    server = app.url
    photo = tiny_photos[0]  # chelsea.jpg downsized to 72x48: edited at 48x32
    renders: list[tuple[int, ...]] = []  # the size of each hint the model got
    model = app.page.renderer.model
    real_render = model.render
    model.render = lambda h, *a, **k: renders.append(tuple(h.shape)) or real_render(h, *a, **k)
    context = browser.new_context(viewport={"width": 1280, "height": 1300}, accept_downloads=True)
    page = context.new_page()
    elsewhere: list[str] = []  # the page must work offline: no font, script or ping from another host
    page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else elsewhere.append(r.url))
    try:
        page.goto(server, timeout=STEP_MS)
        page.locator("#upload").wait_for(timeout=STEP_MS)
        page.screenshot(path=tmp_path / "1_page.png", full_page=True)

        _upload(page, photo)
        assert "colors" in _status(page, "72x48")  # the photo's own size
        page.locator("#quantized img").wait_for(timeout=STEP_MS)
        page.screenshot(path=tmp_path / "2_uploaded.png", full_page=True)

        page.locator("#hex textarea, #hex input").first.fill("#e0218a")
        page.locator("#set-swatch").click()
        _status(page, "swatch 1 is now #e0218a")
        assert "#e0218a" in page.locator("#swatches").inner_text()
        page.screenshot(path=tmp_path / "3_swatch.png", full_page=True)

        result, classical = _render_and_download(page, tmp_path / "download_1.png")
        # Rendered at the working size (long side --max-side), resized back to the photo's own size, and exactly
        # the page's render of the photo with that swatch; the classical transfer beside it at the same size.
        assert renders == [(7, 32, 48)] and result.size == classical.size == (72, 48)
        expected, expected_classical = _expected_render(app, photo)
        assert np.array_equal(np.asarray(result), expected)
        assert np.array_equal(np.asarray(classical), expected_classical)
        assert not np.array_equal(np.asarray(classical), expected)
        assert "palette ΔE00" in page.locator("#comparison").inner_text()
        page.screenshot(path=tmp_path / "4_rendered.png", full_page=True)

        page.get_by_role("tab", name="Recolor a region").click()
        # The results and the comparison table make the page taller than the window: the download scrolled it.
        page.locator("#source img").scroll_into_view_if_needed(timeout=STEP_MS)
        box = page.locator("#source img").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert "of the photo" in _status(page, "region at")
        page.locator("#region img").wait_for(timeout=STEP_MS)
        page.locator("#render-region").click()
        _status(page, "region rendered at 72x48")
        assert len(renders) == 3 and renders[-1] == (7, 32, 48)
        page.locator("#comparison").filter(has_text="not of a region").wait_for(timeout=STEP_MS)
        assert page.locator("#classical img").count() == 0, "a region render shows no classical transfer"
        page.screenshot(path=tmp_path / "5_region.png", full_page=True)

        bad = tmp_path / "broken.png"
        bad.write_bytes(b"this is not an image")
        _upload(page, bad)
        assert "not a readable image" in _status(page, "not a readable image")
        page.screenshot(path=tmp_path / "6_bad_upload.png", full_page=True)

        _upload(page, tiny_photos[1])  # coffee.jpg downsized to 60x40
        _status(page, "60x40")
        again, classical_again = _render_and_download(page, tmp_path / "download_2.png")
        assert again.size == classical_again.size == (60, 40)
        page.screenshot(path=tmp_path / "7_rendered_again.png", full_page=True)
        assert not elsewhere, f"the page asked other hosts for {elsewhere[:5]}"
    finally:
        context.close()
        del model.render


def test_the_installed_command_serves_the_shipped_model(browser, tmp_path: Path) -> None:
    """`dequant-app` with no --ckpt (what `make app` runs right after `make install`): the installed console script
    serves the shipped model, and a shipped photo rendered in another palette comes back at the photo's size."""
    import sys
    import urllib.request

    port = _free_port()
    log = tmp_path / "app.log"
    exe = Path(sys.executable).with_name("dequant-app")
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), "--port", str(port), "--max-side", "96"], stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "dequant-app did not answer within 240 s:\n" + log.read_text()[-2000:]
            time.sleep(1)
        assert "assets/pretrained on cpu" in log.read_text(), log.read_text()[-2000:]

        from dequant.config import assets_path

        photo = Path(assets_path("images")) / "flower.jpg"
        size = Image.open(photo).size
        context = browser.new_context(viewport={"width": 1280, "height": 1300}, accept_downloads=True)
        page = context.new_page()
        try:
            page.goto(url, timeout=STEP_MS)
            page.locator("#upload").wait_for(timeout=STEP_MS)
            _upload(page, photo)
            _status(page, f"{size[0]}x{size[1]}")
            page.locator("#hex textarea, #hex input").first.fill("#1f6f8b")
            page.locator("#set-swatch").click()
            _status(page, "swatch 1 is now #1f6f8b")
            result, classical = _render_and_download(page, tmp_path / "shipped.png")
            page.screenshot(path=tmp_path / "shipped_model.png", full_page=True)
        finally:
            context.close()
        assert result.size == classical.size == size
        rendered = np.asarray(result.convert("RGB"), dtype=np.float32)
        source = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32)
        assert np.abs(rendered - source).mean() > 2.0  # the palette changed: not the photo handed back
    finally:
        proc.terminate()
        proc.wait(timeout=60)
