"""The console in a real browser (Chromium through Selenium) against a live gateway and console.

The console is served by cheroot as ``vxgate web`` serves it; mail comes in over SMTP and is
judged by the vxCube emulator. An administrator logs in, finds the EICAR message, opens it,
releases it and sees it marked released, and the next hop gets the very bytes received; a
recipient opens the link of their digest, asks for a release, and an administrator approves
it. Assertions are on the live DOM. Skipped where no Chromium is installed, except in CI.
With VXGATE_SCREENSHOTS=1 the main pages are saved to docs/screenshots/ for the README.
"""
import email
import os
import re
import threading

import pytest

from salmon_app.web import digest
from salmon_app.web.server import make_server
from support.browser import browser_skip_reason, start_browser
from support.hostile import WEB_TEXT
from support.mail import EICAR, pe_image
from support.web import PASSWORD, quarantined, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIP = browser_skip_reason()
if SKIP and os.environ.get("CI"):
    raise RuntimeError("CI must run the browser tests, but: %s" % SKIP)
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


@pytest.fixture
def served(console):
    """The console's app served over HTTP on a free loopback port, as `vxgate web` does."""
    config = console.config.replace(WebSocket=console.config.WebSocket.__class__("127.0.0.1", 0))
    server = make_server(config, console.app)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    console.url = "http://127.0.0.1:%d" % server.bind_addr[1]
    yield console
    server.stop()


@pytest.fixture
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


def shoot(driver, name):
    if os.environ.get("VXGATE_SCREENSHOTS"):
        folder = os.path.join(ROOT, "docs", "screenshots")
        os.makedirs(folder, exist_ok=True)
        driver.save_screenshot(os.path.join(folder, name + ".png"))


def text_of(driver, css):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, css).text


# Chromedriver's words when an element it just found belongs to a page that a click is replacing;
# it raises these as a plain WebDriverException rather than a stale element.
REPLACED = ("does not belong to the document", "No node with given id")


def being_replaced(error):
    """True when ``error`` means the page is being replaced after a click: not yet, look again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    return isinstance(error, (NoSuchElementException, StaleElementReferenceException)) or any(
        words in (error.msg or "") for words in REPLACED)


def shows(driver, css, text):
    """True once the element ``css`` of the current page contains ``text`` (a page being replaced
    after a click answers "stale", "no such element" or "node does not belong": not yet)."""
    from selenium.common.exceptions import WebDriverException
    try:
        return text in text_of(driver, css)
    except WebDriverException as error:
        if being_replaced(error):
            return False
        raise


def row_ids(driver):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    try:
        return [r.get_attribute("data-id") for r in driver.find_elements(By.CSS_SELECTOR, "table.messages tbody tr[data-id]")]
    except WebDriverException as error:
        if being_replaced(error):
            return None
        raise


def click(driver, css):
    from selenium.webdriver.common.by import By
    driver.find_element(By.CSS_SELECTOR, css).click()


def log_in(driver, url):
    from selenium.webdriver.common.by import By
    driver.get(url + "/")
    assert "/login" in driver.current_url
    shoot(driver, "login")
    driver.find_element(By.NAME, "username").send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    click(driver, "form.login button[type=submit]")
    wait_until(lambda: "/login" not in driver.current_url, what="logged in")


def test_admin_finds_releases_and_the_next_hop_gets_the_same_bytes(served, browser):
    from selenium.webdriver.common.by import By
    gw = served.gw
    held = quarantined(gw, "Invoice for March", [("invoice.exe", pe_image(EICAR))], sender="mallory@evil.test",
                       to=["bob@y.test"])
    quarantined(gw, "quarantine me: newsletter", sender="news@list.test", to=["carol@y.test"])
    quarantined(gw, "quarantine me " + WEB_TEXT[0], sender="eve@evil.test", to=["dave@y.test"])
    stored = gw.gateway.spool.read(held.id)
    admin_notices = len(served.sink.messages)

    log_in(browser, served.url)
    shoot(browser, "list")
    # find it: quarantined, dangerous, from the sender
    search = browser.find_element(By.NAME, "sender")
    search.send_keys("evil.test")
    browser.find_element(By.CSS_SELECTOR, "form.filters select[name=verdict] option[value=dangerous]").click()
    click(browser, "form.filters button[type=submit]")
    wait_until(lambda: "sender=evil.test" in browser.current_url, what="the search's page")
    assert wait_until(lambda: row_ids(browser), what="rows") == [held.id]
    # the hostile subject is text in the DOM, not a script element
    browser.get(served.url + "/?sender=eve")
    assert WEB_TEXT[0] in text_of(browser, "td.subject")
    assert [s.get_attribute("src") for s in browser.find_elements(By.TAG_NAME, "script")] == [served.url + "/static/console.js"]

    browser.get(served.url + "/?sender=evil.test&verdict=dangerous")
    browser.find_element(By.LINK_TEXT, "Invoice for March").click()
    wait_until(lambda: shows(browser, "table.files", "invoice.exe"), what="the message page")
    assert held.id in browser.current_url and "dangerous" in text_of(browser, "table.files")
    shoot(browser, "message")
    click(browser, "button#release")
    wait_until(lambda: shows(browser, "#released", "released"), what="marked released")
    assert "released" in text_of(browser, "#released") and "admin" in text_of(browser, "#released")
    assert "released to bob@y.test" in text_of(browser, "ul.flash")
    arrived = wait_until(lambda: [m for m in served.sink.messages[admin_notices:] if m.rcpt_tos == ["bob@y.test"]],
                         what="the release at the next hop")
    assert arrived[0].data == stored                 # byte for byte
    browser.get(served.url + "/?released=yes")
    assert "released" in text_of(browser, "td.state")


def test_recipient_requests_from_the_digest_and_admin_approves(served, browser):
    from selenium.webdriver.common.by import By
    gw = served.gw
    held = quarantined(gw, "Signed contract", [("contract.exe", pe_image(EICAR))], sender="partner@vendor.test",
                       to=["bob@y.test", "carol@y.test"])
    stored = gw.gateway.spool.read(held.id)
    config = gw.gateway.config.replace(WebSecret=served.config.WebSecret, WebBaseUrl=served.url + "/")
    assert digest.send_digests(config, gw.gateway.inject) == 2       # bob and carol, through the relay path
    mail = wait_until(lambda: [m for m in served.sink.messages if m.rcpt_tos == ["bob@y.test"]
                               and b"Quarantine digest" in m.data], what="bob's digest")[0]
    body = email.message_from_bytes(mail.data).get_payload(decode=True).decode()
    assert "Signed contract" in body and "you can ask for its release" in body
    link = re.search(r"http://\S+/r/\S+", body).group(0)

    browser.get(link)
    assert "bob@y.test" in text_of(browser, "h1")
    shoot(browser, "recipient")
    browser.find_element(By.LINK_TEXT, "Signed contract").click()
    wait_until(lambda: shows(browser, "button#act", "Ask for its release"), what="the recipient's message page")
    click(browser, "button#act")
    wait_until(lambda: shows(browser, "#status", "request pending"), what="request pending")

    log_in(browser, served.url)
    browser.get(served.url + "/requests")
    assert "bob@y.test" in text_of(browser, "table.messages")
    shoot(browser, "requests")
    click(browser, "button.approve")
    wait_until(lambda: shows(browser, "ul.flash", "approved"), what="approved")
    released = wait_until(lambda: [m for m in served.sink.messages if m.rcpt_tos == ["bob@y.test"]
                                   and m.data == stored], what="bob's copy")
    assert released and not [m for m in served.sink.messages if m.rcpt_tos == ["carol@y.test"] and m.data == stored]
    told = wait_until(lambda: [m for m in served.sink.messages if m.rcpt_tos == ["bob@y.test"]
                               and b"Release request approved" in m.data], what="bob told")
    assert told
    browser.get(link)
    assert "released" in text_of(browser, "td.status")
