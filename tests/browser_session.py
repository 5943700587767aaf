"""One browser session against a served web app (run by tests/test_app_browser.py in its own process, so that
Playwright's event loop, like the app's server, never shares the test process with the native runtimes).

Usage: python browser_session.py URL AUDIO_FILE CHROMIUM [SCREENSHOT]; prints what the page shows as JSON."""

import json
import sys

from playwright.sync_api import sync_playwright


def read_page(url: str, upload: str, chromium: str, screenshot: str | None = None) -> dict:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1600})
        page.goto(url, wait_until="domcontentloaded")
        page.locator("#track input[type=file]").set_input_files(upload)
        page.locator("#analyze").click()
        page.locator("#timeline img").wait_for(state="visible", timeout=120_000)
        csv_link = page.locator("#downloads a[download='results.csv']")
        csv_link.wait_for(timeout=30_000)
        shown = {
            "csv": page.request.get(csv_link.get_attribute("href")).text(),
            "styles": page.locator("#styles").inner_text(),
            "neighbours": page.locator("#neighbours").inner_text(),
            "players": page.locator("[id^=neighbour-]:visible").count(),
            "timeline_width": page.locator("#timeline img").evaluate("image => image.naturalWidth"),
        }
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        browser.close()
    return shown


if __name__ == "__main__":
    print(json.dumps(read_page(*sys.argv[1:])))
