#!/usr/bin/env bash
# The system packages the tests use, from Debian: PostgreSQL (a real server for the store's tests) and
# Chromium (the dashboard's browser tests). Installs what is missing when it can (root and apt-get);
# otherwise says what to install and fails, because the tests never skip for want of them.
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "the tests need these Debian packages: ${missing[*]}; install them (as root: apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "installing ${missing[*]} (Debian packages, for the tests)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null; }
