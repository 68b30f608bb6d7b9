"""
The dashboard in a real headless Chromium (Debian's C{chromium} and
C{chromium-driver}), driven by Selenium, against a real bus: an active
publisher, the relay, the archive and the dashboard service on loopback.

Selenium calls block, so they run in a thread (C{deferToThread}) while the
reactor keeps serving the page.  Skipped when Chromium, chromedriver or
Selenium is not installed.

A screenshot is saved in the test's temporary directory; with
C{FEDMSG_UPDATE_SCREENSHOT=1} it also replaces C{docs/_static/dashboard.png}.
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import threads

from tests.test_web import WebTestCase
from tests.util import wait_for

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS_SHOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "_static", "dashboard.png")

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None

XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> & "quotes"'


def _skip_reason() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install selenium)"
    if not os.path.exists(CHROMEDRIVER) or not os.path.exists(CHROMIUM):
        return "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return None


if _skip_reason() and os.environ.get("FEDMSG_TEST_REQUIRE_BROWSER"):
    # CI installs the browser: its absence there is a failure, not a skip.
    raise RuntimeError(_skip_reason())


class DashboardBrowserTests(WebTestCase):
    skip = _skip_reason()
    timeout = 120

    async def browser(self):
        profile = self.mktemp()
        os.makedirs(profile)

        def start():
            opts = webdriver.ChromeOptions()
            opts.binary_location = CHROMIUM
            for flag in (
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,900",
                f"--user-data-dir={profile}",
            ):
                opts.add_argument(flag)
            return webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=opts)

        self.driver = await threads.deferToThread(start)
        self.addCleanup(lambda: threads.deferToThread(self.driver.quit))
        return self.driver

    def call(self, f, *a):
        return threads.deferToThread(f, *a)

    def until(self, predicate, what: str, timeout: float = 15.0):
        """
        Wait in a thread until C{predicate(driver)} is true (a safety-net timeout only).
        """

        def wait():
            def check(driver):
                try:
                    return predicate(driver)
                except StaleElementReferenceException:
                    return False

            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(check, what)

        return threads.deferToThread(wait)

    def shown(self, driver) -> list[tuple[int, str, str]]:
        """
        (seq, title, subtitle) of the visible messages, newest first.
        """
        return driver.execute_script(
            """
            return Array.from(document.querySelectorAll('#messages li.msg'))
              .filter(function (li) { return li.offsetParent !== null; })
              .map(function (li) { return [parseInt(li.dataset.seq, 10),
                   li.querySelector('.title').textContent,
                   li.querySelector('.subtitle').textContent]; });
            """
        )

    def seqs(self, driver) -> list[int]:
        return [s for s, _, _ in self.shown(driver)]

    async def test_live_filters_escaping_reload(self):
        await self.bus()
        await self.publish("log", {"log": "before the page loaded", "agent": "ralph"})
        await self.publish("update.comment", {"comment": {"text": "LGTM"}, "agent": "pingou",
                                              "update": {"title": "nethack-3.6.7-1.fc40"}}, modname="bodhi")
        await self.stored()
        driver = await self.browser()
        url = f"http://127.0.0.1:{self.port}/"
        await self.call(driver.get, url)
        await self.until(lambda d: self.seqs(d) == [2, 1], "the backlog")
        await self.until(lambda d: d.find_element(By.ID, "status").text == "live", "live status")

        # A message published after load shows up.
        await self.publish("log", {"log": "published after load", "agent": "ralph"})
        await self.until(lambda d: self.seqs(d) == [3, 2, 1], "the live message")
        (_, title, subtitle) = self.shown(driver)[0]
        self.assertIn("published after load", subtitle)

        # Markup in a message is shown as text and never runs.
        await self.publish("log", {"log": XSS, "agent": "mallory"})
        await self.until(lambda d: self.seqs(d)[:1] == [4], "the HTML message")
        subtitle = self.shown(driver)[0][2]
        self.assertIn('<img src=x onerror="window.__pwned=1">', subtitle)
        self.assertIn("<script>window.__pwned=2</script>", subtitle)
        state = await self.call(
            driver.execute_script,
            "return [window.__pwned === undefined, document.querySelectorAll('#messages img, #messages script').length];",
        )
        self.assertEqual(state, [True, 0])

        # A link that is not a web link never becomes one.
        await self.publish("announcement", {"message": "see this", "link": "javascript:window.__pwned=3"},
                           modname="announce")
        await self.until(lambda d: self.seqs(d)[:1] == [5], "the announcement")
        hrefs = await self.call(
            driver.execute_script,
            "return Array.from(document.querySelectorAll('#messages a')).map(function (a) { return a.href; });",
        )
        self.assertFalse([h for h in hrefs if not h.startswith(("http://", "https://"))], hrefs)

        # Filters: topic prefix, then free text, then none.
        topic = driver.find_element(By.ID, "filter-topic")
        text = driver.find_element(By.ID, "filter-text")
        await self.call(topic.send_keys, "org.fedoraproject.dev.bodhi")
        await self.until(lambda d: self.seqs(d) == [2], "topic filter")
        await self.call(topic.clear)
        await self.call(topic.send_keys, "bodhi")  # the short form works too
        await self.until(lambda d: self.seqs(d) == [2], "short topic filter")
        await self.call(driver.execute_script, "arguments[0].value=''; arguments[0].dispatchEvent(new Event('input'));", topic)
        await self.call(text.send_keys, "after load")
        await self.until(lambda d: self.seqs(d) == [3], "text filter")
        # A filter also applies to what arrives next.
        await self.publish("log", {"log": "late, and after load too"})
        await self.publish("log", {"log": "not matching"})
        await self.until(lambda d: self.seqs(d) == [6, 3], "filter on live messages")
        await self.call(driver.execute_script, "arguments[0].value=''; arguments[0].dispatchEvent(new Event('input'));", text)
        await self.until(lambda d: self.seqs(d) == [7, 6, 5, 4, 3, 2, 1], "no filter")

        # Statistics: per-service counts and the rate chart.
        await self.call(driver.refresh)
        await self.until(lambda d: self.seqs(d) == [7, 6, 5, 4, 3, 2, 1], "reloaded")
        await self.until(
            lambda d: d.execute_script(
                "var r = {}; document.querySelectorAll('#counts tbody tr').forEach(function (tr) {"
                " r[tr.children[0].textContent] = +tr.children[1].textContent; }); return r;"
            ) == {"logger": 5, "bodhi": 1, "announce": 1},
            "counts by service",
        )
        bars = await self.call(driver.execute_script, "return document.querySelectorAll('#chart rect').length;")
        self.assertGreaterEqual(bars, 1)
        total = await self.call(lambda: driver.find_element(By.ID, "total").text)
        self.assertEqual(total, "7")

        # A reload while messages arrive loses nothing.
        reload = self.call(driver.refresh)
        for n in range(3):
            await self.publish("log", {"log": f"during the reload {n}"})
        await reload
        await self.until(lambda d: self.seqs(d) == list(range(10, 0, -1)), "everything after the reload")

        # A network blip: the server drops the stream, messages arrive meanwhile,
        # EventSource reconnects with Last-Event-ID and gets them from the archive.
        await wait_for(lambda: self.web.clients, what="the page's stream")
        for client in list(self.web.clients):
            self.web._close(client)
        for n in range(2):
            await self.publish("log", {"log": f"during the blip {n}"})
        await self.stored()
        await self.until(lambda d: self.seqs(d) == list(range(12, 0, -1)), "everything after the blip")
        self.assertGreaterEqual(self.web.counters.get("events-opened", "last-event-id"), 1)

        # The screenshot: an artifact, and the docs' picture on request.
        for topic_, msg, mod in (
            ("update.request.stable", {"agent": "bowlofeggs", "update": {"title": "firefox-128.0-1.fc40"}}, "bodhi"),
            ("receive", {"commit": {"repo": "rpms/kernel", "username": "jforbes", "summary": "Update to 6.9"}}, "git"),
        ):
            await self.publish(topic_, msg, modname=mod)
        await self.until(lambda d: self.seqs(d)[:1] == [14], "the last messages")
        shot = os.path.abspath(os.path.join(self.mktemp() + ".png"))
        await self.call(driver.save_screenshot, shot)
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        if os.environ.get("FEDMSG_UPDATE_SCREENSHOT") == "1":
            os.makedirs(os.path.dirname(DOCS_SHOT), exist_ok=True)
            shutil.copyfile(shot, DOCS_SHOT)
