"""The web app in a real browser: ``python -m lmk2video.app`` on a free local port with tiny models, driven by
Playwright's Python API in Debian's headless Chromium (no browser download; ``.ci/run`` installs it).

Speech -> preview -> generate, checked in the page (playable videos of the speech's duration, the downloads),
the readable message of a face-less portrait and of a file that is no image, and the queue (one generation at
a time per model, the waiting job's place shown) with cancellation. Screenshots go to each test's tmp folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.app_fixtures import PORTRAIT, blank_image, speech, tiny_models, video_stats
from tests.conftest import PROJECT_ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECONDS = 1.0
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """The app serving tiny models from a temporary models/ folder, its temporary files in ``temp``."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    root = tmp_path_factory.mktemp("app_browser")
    models = tiny_models(root / "models")
    port = _free_port()
    no_ffmpeg = root / "bin"  # a PATH without ffmpeg: the app must serve its videos without it
    no_ffmpeg.mkdir()
    env = {
        **os.environ,
        "PATH": str(no_ffmpeg),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(root / "gradio"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    log = open(root / "app.log", "w")  # noqa: SIM115 - closed at teardown
    server = subprocess.Popen(
        [sys.executable, "-m", "lmk2video.app", "--models", str(models), "--temp-dir", str(root / "temp")],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            log.close()
            pytest.fail(f"the app did not start:\n{(root / 'app.log').read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield SimpleNamespace(
            url=url, root=root, temp=root / "temp", speech=speech(root / "speech.wav", SECONDS)
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(app) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


def open_page(browser, app):
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    page = context.new_page()
    page.goto(app.url)
    page.wait_for_selector("#speech-preview-button", timeout=60_000)
    return context, page


def video_of(page, element: str, timeout: float = 120_000) -> dict:
    """Wait until the video in ``element`` has decoded a frame; its duration, size and source."""
    page.wait_for_function(
        f"() => {{ const v = document.querySelector('#{element} video'); return v && v.src && v.readyState >= 2; }}",
        timeout=timeout,
    )
    return page.evaluate(
        f"() => {{ const v = document.querySelector('#{element} video'); "
        "return {duration: v.duration, width: v.videoWidth, height: v.videoHeight, src: v.src}; }"
    )


def upload(page, element: str, path: Path) -> None:
    page.locator(f"#{element} input[type=file]").set_input_files(str(path))


def error_text(page, timeout: float = 60_000) -> str:
    toast = page.locator(".toast-body").first
    toast.wait_for(timeout=timeout)
    return toast.inner_text()


def test_speech_to_video_in_the_browser(app, browser, tmp_path) -> None:
    context, page = open_page(browser, app)
    upload(page, "speech-portrait", PORTRAIT)
    upload(page, "speech-sound", app.speech)
    page.locator(
        "#speech-sound audio, #speech-sound .waveform-container, #speech-sound button"
    ).first.wait_for()
    page.click("#speech-preview-button")
    preview = video_of(page, "speech-preview")
    assert abs(preview["duration"] - SECONDS) < 0.1 and preview["width"] > preview["height"] > 0
    page.locator("#speech-blinks label", has_text="none").click()  # an adjustment redraws the preview
    page.wait_for_function(
        f"() => {{ const v = document.querySelector('#speech-preview video'); "
        f"return v && v.src && v.src !== {preview['src']!r} && v.readyState >= 2; }}",
        timeout=60_000,
    )
    page.locator("#steps input").fill("1")
    page.locator(".speech-generate:visible").click()
    result = video_of(page, "speech-result")
    assert abs(result["duration"] - SECONDS) < 0.1 and (result["width"], result["height"]) == (64, 64)
    page.wait_for_function("() => document.querySelectorAll('#speech-downloads a').length >= 3")
    names = page.locator("#speech-downloads").inner_text().replace("\n", "")
    assert "talking.mp4" in names and "talking.npz" in names and "talking_preview.mp4" in names
    served = tmp_path / "served.mp4"
    served.write_bytes(page.request.get(result["src"]).body())  # what the page plays: video and speech
    stats = video_stats(served)
    assert stats["frames"] == round(SECONDS * 30) and stats["audio"]
    page.screenshot(path=str(tmp_path / "speech_to_video.png"), full_page=True)
    assert "Traceback" not in page.content()
    context.close()  # the page is closed: its session's temporary files go
    deadline = time.monotonic() + 30
    while any(app.temp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(app.temp.iterdir())


def test_bad_portraits_show_one_readable_message(app, browser, tmp_path) -> None:
    context, page = open_page(browser, app)
    upload(page, "speech-portrait", blank_image(tmp_path / "grey.png"))
    upload(page, "speech-sound", app.speech)
    page.click("#speech-preview-button")
    message = error_text(page)
    assert "portrait 'grey.png': no face found" in message, message
    page.screenshot(path=str(tmp_path / "no_face.png"), full_page=True)
    page.locator(".toast-close").first.click()
    page.reload()
    page.wait_for_selector("#speech-preview-button")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not an image at all" * 50)
    upload(page, "speech-portrait", fake)
    upload(page, "speech-sound", app.speech)
    time.sleep(1)
    page.click("#speech-preview-button")
    message = error_text(page)
    assert "fake.png" in message and "not a readable image" in message, message
    assert "Traceback" not in page.content()
    context.close()


@pytest.mark.slow
def test_one_generation_at_a_time_per_model_and_cancel(app, browser, tmp_path) -> None:
    first_context, first = open_page(browser, app)
    second_context, second = open_page(browser, app)
    for page, steps in ((first, "1000"), (second, "1")):
        upload(page, "speech-portrait", PORTRAIT)
        upload(page, "speech-sound", app.speech)
        page.locator("#steps input").fill(steps)
        time.sleep(0.5)
    first.locator(".speech-generate:visible").click()
    first.wait_for_function(
        "() => document.querySelector('#speech-result').innerText.includes('denoising')", timeout=60_000
    )
    second.locator(".speech-generate:visible").click()
    second.wait_for_function(
        "() => /queue: ?1\\/1/.test(document.querySelector('#speech-result').innerText)", timeout=30_000
    )
    second.screenshot(path=str(tmp_path / "waiting.png"), full_page=True)
    first.click("#speech-cancel")
    video_of(second, "speech-result")  # runs once the first is cancelled
    assert first.evaluate("() => document.querySelector('#speech-result video') === null")
    first_context.close()
    second_context.close()
