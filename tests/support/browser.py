"""A real browser for the console tests: Debian's chromium driven by chromium-driver through Selenium.

``browser_skip_reason()`` says why no browser can run here (None when one can); in CI (the
``CI`` environment variable set, as .ci/run runs) a missing browser is a failure, never a
skip, because .ci/run installs it. Chromium runs headless in a fresh profile with every
phone-home feature off, so a test neither depends on nor reaches the network.
"""
import os
import shutil
import tempfile

CHROMIUM = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


def _first(paths, name):
    return next((p for p in paths if os.access(p, os.X_OK)), None) or shutil.which(name)


def browser_skip_reason():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[test])"
    if not _first(CHROMIUM, "chromium"):
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if not _first(DRIVER, "chromedriver"):
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


def start_browser():
    """A headless Chromium (webdriver.Chrome) with a fresh profile; .quit() removes the profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="vxgate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = _first(CHROMIUM, "chromium")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument("--user-data-dir=%s" % profile)
    driver = webdriver.Chrome(service=Service(executable_path=_first(DRIVER, "chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    quit_driver = driver.quit

    def quit():
        try:
            quit_driver()
        finally:
            shutil.rmtree(profile, ignore_errors=True)
    driver.quit = quit
    return driver
