"""dequant-app in a real browser: Debian's headless Chromium driven by Playwright, against a page serving the tiny
checkpoint. Installs chromium with apt-get when missing (as root, as CI runs); skips, saying why, when it cannot.

Screenshots of every step land in the test's tmp folder (`pytest --basetemp=DIR` keeps them somewhere known).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

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


@pytest.fixture(scope="module")
def server(tiny_ckpt: Path):
    """The page on 127.0.0.1 with the tiny checkpoint; yields its URL."""
    pytest.importorskip("gradio")
    from dequant.app.cli import build_parser, make_page

    port = _free_port()
    args = build_parser().parse_args(["--ckpt", str(tiny_ckpt), "--port", str(port)])
    _, demo = make_page(args)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=port, prevent_thread_lock=True, ssr_mode=False,
                footer_links=[], quiet=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


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


def _status(page, text: str) -> str:
    """Wait until the status line holds `text`; return the line."""
    status = page.locator("#status")
    status.filter(has_text=text).wait_for(timeout=STEP_MS)
    return status.inner_text()


def _upload(page, path: Path) -> None:
    with page.expect_file_chooser(timeout=STEP_MS) as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(path))


def _render_and_download(page, out: Path) -> Image.Image:
    page.locator("#render").click()
    _status(page, "rendered at")
    page.locator("#result img").wait_for(timeout=STEP_MS)
    with page.expect_download(timeout=STEP_MS) as dl:
        page.locator("#download a").first.click()
    dl.value.save_as(out)
    return Image.open(out).convert("RGB")


def test_edit_and_render_in_the_browser(server: str, browser, tiny_photos: list[Path], tmp_path: Path) -> None:
    """Upload a shipped photo, change a swatch, render, download at the photo's size; click a region and render
    it; a bad upload shows a message and the next good upload still renders."""
    photo = tiny_photos[0]  # chelsea.jpg downsized to 72x48
    source = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32)
    context = browser.new_context(viewport={"width": 1280, "height": 1300}, accept_downloads=True)
    page = context.new_page()
    elsewhere: list[str] = []  # the page must work offline: no font, script or ping from another host
    page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else elsewhere.append(r.url))
    try:
        page.goto(server, timeout=STEP_MS)
        page.locator("#upload").wait_for(timeout=STEP_MS)
        page.screenshot(path=tmp_path / "1_page.png", full_page=True)

        _upload(page, photo)
        assert "colors" in _status(page, "72x48")
        page.locator("#quantized img").wait_for(timeout=STEP_MS)
        page.screenshot(path=tmp_path / "2_uploaded.png", full_page=True)

        page.locator("#hex textarea, #hex input").first.fill("#e0218a")
        page.locator("#set-swatch").click()
        _status(page, "swatch 1 is now #e0218a")
        assert "#e0218a" in page.locator("#swatches").inner_text()
        page.screenshot(path=tmp_path / "3_swatch.png", full_page=True)

        result = _render_and_download(page, tmp_path / "download_1.png")
        assert result.size == (72, 48)
        assert np.abs(np.asarray(result, dtype=np.float32) - source).mean() > 1.0
        page.screenshot(path=tmp_path / "4_rendered.png", full_page=True)

        page.get_by_role("tab", name="Recolor a region").click()
        box = page.locator("#source img").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert "of the photo" in _status(page, "region at")
        page.locator("#region img").wait_for(timeout=STEP_MS)
        page.locator("#render-region").click()
        _status(page, "region rendered at 72x48")
        page.screenshot(path=tmp_path / "5_region.png", full_page=True)

        bad = tmp_path / "broken.png"
        bad.write_bytes(b"this is not an image")
        _upload(page, bad)
        assert "not a readable image" in _status(page, "not a readable image")
        page.screenshot(path=tmp_path / "6_bad_upload.png", full_page=True)

        _upload(page, tiny_photos[1])  # coffee.jpg downsized to 60x40
        _status(page, "60x40")
        again = _render_and_download(page, tmp_path / "download_2.png")
        assert again.size == (60, 40)
        page.screenshot(path=tmp_path / "7_rendered_again.png", full_page=True)
        assert not elsewhere, f"the page asked other hosts for {elsewhere[:5]}"
    finally:
        context.close()
