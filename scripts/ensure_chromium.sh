#!/bin/sh
# Make sure Debian's headless-capable chromium is at /usr/bin/chromium (the dashboard's browser test drives it
# with Python playwright's executable_path; never `playwright install`). Idempotent.
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
    exit 0
fi
echo "chromium is not installed at /usr/bin/chromium; install it as root:" >&2
echo "  sudo apt-get update && sudo apt-get install -y chromium" >&2
exit 1
