"""The web UI in a real browser (headless Chromium through Selenium): log in, read the
overview, find a queue, get and publish messages, purge — against a running broker.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); the UI
itself is static files with nothing to build.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest

from tests.helpers import RunningBroker, free_port, make_config

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver (installed by .ci/run)",
    ),
    pytest.mark.timeout(120),
]
WAIT = 20


@pytest.fixture
def managed(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    config = make_config(tmp_path)
    config.ports["http"] = free_port()
    return start_broker(config)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    # a phone's screen (a desktop window cannot be narrower than about 500 px)
    options.add_experimental_option(
        "mobileEmulation", {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 3}}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def ready(managed: RunningBroker) -> int:
    """Ready messages of the test's queue (run on the broker's loop by `wait_until`)."""
    return len(managed.core.vhosts["/"].queues["ui-orders"].ready)


def wait_text(driver: object, css: str, text: str) -> None:
    try:
        WebDriverWait(driver, WAIT).until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text)
        )
    except TimeoutException:
        pytest.fail(
            f"{css!r} never showed {text!r}: {driver.find_element(By.TAG_NAME, 'main').text}"
        )  # type: ignore[attr-defined]


def test_ui_on_a_phone_sized_screen(managed: RunningBroker, browser: object) -> None:
    driver = browser
    connection = pika.BlockingConnection(pika.URLParameters(managed.url))
    channel = connection.channel()
    channel.queue_declare("ui-orders", durable=True)
    for i in range(3):
        channel.basic_publish("", "ui-orders", f"order {i}".encode())
    connection.process_data_events(0)
    base = f"http://127.0.0.1:{managed.daemon.ports['http']}"
    with urllib.request.urlopen(base + "/") as page:
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    try:
        driver.get(base + "/")  # type: ignore[attr-defined]
        find = driver.find_element  # type: ignore[attr-defined]
        # a wrong password is refused on the page
        find(By.NAME, "user").send_keys("guest")
        find(By.NAME, "password").send_keys("nope")
        find(By.CSS_SELECTOR, "#login button").click()
        wait_text(driver, "#login-error", "Login failed")
        find(By.NAME, "password").clear()
        find(By.NAME, "password").send_keys("guest")
        find(By.CSS_SELECTOR, "#login button").click()
        wait_text(driver, "#ready", "3")
        assert find(By.ID, "chart").is_displayed()
        wait_text(driver, "#published", "3")  # the message counters (`broker.stats`)
        assert find(By.ID, "rate-chart").is_displayed()
        assert find(By.ID, "role").text == "single node"  # no failover configured
        # the queues page: filter, then open the queue
        find(By.LINK_TEXT, "Queues").click()
        WebDriverWait(driver, WAIT).until(ec.presence_of_element_located((By.ID, "queues-table")))
        find(By.CSS_SELECTOR, "#queues-table input").send_keys("ui-")
        find(By.LINK_TEXT, "ui-orders").click()
        wait_text(driver, "#ready", "3")
        assert find(By.ID, "queue-rate-chart").is_displayed()
        # get two messages without removing them
        count = find(By.CSS_SELECTOR, "#get-form input[name=count]")
        count.clear()
        count.send_keys("2")
        find(By.CSS_SELECTOR, "#get-form button").click()
        wait_text(driver, "#messages", "order 1")
        assert "order 0" in find(By.ID, "messages").text
        # publish one through the form
        find(By.CSS_SELECTOR, "#publish-form textarea").send_keys("from the browser")
        find(By.CSS_SELECTOR, "#publish-form button").click()
        wait_text(driver, "#publish-form .ok", "Published")
        assert managed.wait_until(lambda: ready(managed) == 4)
        # purge, confirming the dialog
        find(By.ID, "purge").click()
        WebDriverWait(driver, WAIT).until(ec.alert_is_present())
        driver.switch_to.alert.accept()  # type: ignore[attr-defined]
        assert managed.wait_until(lambda: ready(managed) == 0)
        # connections of the pika client
        find(By.LINK_TEXT, "Connections").click()
        wait_text(driver, "#connections-table", "AMQP 0-9-1")
        # nothing overflows a phone's width except inside scrolling tables
        script = "return [document.documentElement.scrollWidth, window.innerWidth]"
        width, viewport = driver.execute_script(script)  # type: ignore[attr-defined]
        assert viewport == 390
        assert width <= viewport
    finally:
        connection.close()
