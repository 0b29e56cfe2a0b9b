"""The server's web page in headless chromium, driven by playwright as a user would use it:
the API key given when the page asks, a prompt typed (or, given MAP_PNG, a semantic map
chosen), Generate clicked, the progress bar seen moving, the image shown.

    python page_test.py BASE_URL API_KEY OUT_DIR [MAP_PNG]

The chromium is $LDM_CHROMIUM (default: chromium on the PATH); playwright downloads none.
Writes OUT_DIR/serve-page.png, a screenshot of the page at the end; prints a JSON summary; exits non-zero with the reason when a step fails.
"""

import json
import os
import shutil
import sys
import time

from playwright.sync_api import sync_playwright


def main():
    base, key, out = sys.argv[1:4]
    semantic_map = sys.argv[4] if len(sys.argv) > 4 else None
    chromium = os.environ.get("LDM_CHROMIUM") or shutil.which("chromium")
    summary = {"progress": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 900, "height": 760})
        asked = []
        page.on("dialog", lambda d: (asked.append(d.message), d.accept(key)))
        page.goto(base + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 0",
                               timeout=30_000)
        summary["models"] = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
        if semantic_map:
            page.set_input_files("#semantic", semantic_map)
        else:
            page.fill("#prompt", "red apple, twemoji style")
        page.fill("#steps", "20")
        page.fill("#seed", "7")
        page.click("#generate")
        # The progress bar, read every few milliseconds until the image is shown.
        deadline = time.monotonic() + 120
        while page.locator("#results img").count() == 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"no image in 2 minutes; page says: {page.inner_text('#error')}")
            value = page.eval_on_selector("#progress", "p => p.value")
            if not summary["progress"] or summary["progress"][-1] != value:
                summary["progress"].append(value)
            time.sleep(0.01)
        image = page.locator("#results img").first
        image.wait_for(state="visible")
        page.wait_for_function("document.querySelector('#results img').naturalWidth > 0")
        summary["image"] = page.eval_on_selector(
            "#results img", "i => [i.naturalWidth, i.naturalHeight]")
        summary["status"] = page.inner_text("#status")
        summary["key_asked"] = asked
        page.screenshot(path=os.path.join(out, "serve-page.png"), full_page=True)
        browser.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
