"""A page address opened first on a freshly started server, in a real headless Chromium.

Streamlit decides how to run a script per server: until some session has run `st.navigation`,
a `pages/` folder beside `app.py` makes it follow its older convention, where an address such as
/train runs `pages/train.py` on its own and the sidebar lists file names. Each test here starts
its own server so that its first visit is the server's first script run.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from browser_helpers import SLOW, Server, type_number, wait_for_value

NAMED_PAGES = ["Data", "Model", "Train", "Evaluate", "Predict", "Runs", "Class"]
SETTLE = 15_000  # milliseconds: the page is drawn, its run may still be sending messages
# The label of each link in the sidebar navigation, without its icon's ligature text.
LINK_LABELS = (
    "[...document.querySelectorAll('[data-testid=stSidebarNav] a')].map(a => { const c = a.cloneNode(true);"
    " c.querySelectorAll('[aria-hidden=true]').forEach(e => e.remove()); return c.innerText.trim(); })"
)


@pytest.fixture
def first_visit(browser, tmp_path, keras_home):
    """Opens `/<address>` as the first visit of a server started for this test alone."""
    server = Server(tmp_path, keras_home)
    context = None
    try:
        server.wait_healthy()
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(30_000)

        def visit(address: str, title: str):
            page.goto(f"{server.url}/{address}")
            page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=SLOW)
            return page

        yield visit
    finally:
        if context is not None:
            context.close()
        server.stop()


def navigation_links(page) -> list[str]:
    """The sidebar's page links, once they are the named pages or have had time to become them."""
    page.get_by_test_id("stSidebarNav").get_by_role("link").first.wait_for(timeout=SLOW)
    try:
        page.wait_for_function(
            f"(names) => JSON.stringify({LINK_LABELS}) === JSON.stringify(names)", arg=NAMED_PAGES, timeout=SETTLE
        )
    except PlaywrightTimeout:
        pass  # the assertion that follows shows what the sidebar lists instead
    return page.evaluate(f"() => {LINK_LABELS}")


@pytest.mark.parametrize(("address", "title"), [("train", "Train"), ("model", "Model"), ("runs", "Runs")])
def test_a_page_address_opened_first_shows_the_named_navigation(first_visit, address, title):
    page = first_visit(address, title)
    links = navigation_links(page)
    assert links == NAMED_PAGES, f"sidebar lists {links}"
    assert "app" not in links
    current = page.get_by_test_id("stSidebarNav").locator("a[aria-current='page']")
    assert urlparse(current.get_attribute("href")).path.rstrip("/").endswith(f"/{address}")
    assert title in current.inner_text()
    assert urlparse(page.url).path.rstrip("/").endswith(f"/{address}"), "the address keeps the page (and the workspace)"


def test_a_page_opened_first_keeps_what_the_user_enters_next(first_visit):
    # The page drawn by that first run and the one drawn by the next run (the user's first
    # change) must be the same widgets, or the change would be lost once.
    page = first_visit("train", "Train")
    type_number(page, "Epochs", 3)
    page.wait_for_timeout(2_000)  # a few reruns of the page's live parts
    wait_for_value(page, "Epochs", "3")
    assert navigation_links(page) == NAMED_PAGES
