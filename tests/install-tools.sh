#!/usr/bin/env bash
# Installs the pinned tools of the operator-view end-to-end tests into the repo:
#
#   tests/browser/node_modules   `npm ci` from tests/browser/package-lock.json (playwright-core,
#                                which drives Debian's /usr/bin/chromium: it never downloads
#                                a browser of its own)
#   tests/.tools/venv            `pip install -r tests/tools/requirements.txt` (schemathesis,
#                                prometheus_client)
#
# Idempotent: each is reinstalled only when its pins change (a sha256 stamp beside it).
# `cargo xtask test` runs it and points the tests at the results (OUTBOXD_TEST_BROWSER_DIR,
# OUTBOXD_TEST_PYTHON). Needs node + npm, python3 (3.11+) with venv, and sha256sum.
set -euo pipefail

TESTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BROWSER="$TESTS/browser"
VENV="$TESTS/.tools/venv"

say() { echo "install-tools: $*" >&2; }
die() { say "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "\`$1\` is not on PATH ($2)"; }
digest() { cat "$@" | sha256sum | cut -d' ' -f1; }

need node "install Node.js 18+"
need npm "install npm"
need python3 "install Python 3.11+ with the venv module"
need sha256sum "install coreutils"

stamp="$BROWSER/node_modules/.outboxd-lock.sha256"
want="$(digest "$BROWSER/package.json" "$BROWSER/package-lock.json")"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  say "npm ci in tests/browser (playwright-core)"
  (cd "$BROWSER" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) >&2
  printf '%s\n' "$want" >"$stamp"
fi

stamp="$VENV/.outboxd-requirements.sha256"
want="$(digest "$TESTS/tools/requirements.txt")"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  say "installing tests/tools/requirements.txt into tests/.tools/venv"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$TESTS/tools/requirements.txt" >&2
  printf '%s\n' "$want" >"$stamp"
fi
