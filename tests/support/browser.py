"""How this project runs Chromium (the browser tests, the screenshot): Debian's binary, never a downloaded one,
headless, and with the background services off (on a closed network they fail, many at a time)."""

import os

CHROMIUM = os.environ.get("ABRAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
