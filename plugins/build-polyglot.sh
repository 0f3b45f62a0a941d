#!/usr/bin/env bash
# Builds the non-Rust target adapters (JavaScript and Python) into
# WebAssembly components, installing their pinned toolchains into the repo:
#
#   plugins/js/crm/crm.js         --componentize-js-->  plugins/target/polyglot/crm-js.wasm
#   plugins/python/analytics/*.py --componentize-py-->  plugins/target/polyglot/analytics-py.wasm
#   plugins/js/boom/boom.js, plugins/python/boom/app.py (test fixtures that throw/raise
#   "boom 42")                                      -->  boom-js.wasm, boom-py.wasm
#
# Toolchains (pinned, installed on first use or when their pins change):
#   plugins/js/node_modules     `npm ci` from plugins/js/package-lock.json
#   plugins/python/.venv        `pip install --require-hashes -r plugins/python/requirements.txt`
#
# Idempotent: a component is rebuilt only when the sha256 of its inputs (its
# sources, the WIT, the toolchain pins and this script) differs from the one
# recorded beside it (`<name>.wasm.inputs`). Needs bash, node + npm, python3
# (3.11+) and sha256sum; nothing else.
#
# Usage: plugins/build-polyglot.sh [--force]
#   OUTBOXD_POLYGLOT_OUT   output directory (default plugins/target/polyglot)
set -euo pipefail

PLUGINS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$PLUGINS")"
WIT="$ROOT/wit"
OUT="${OUTBOXD_POLYGLOT_OUT:-$PLUGINS/target/polyglot}"
JS="$PLUGINS/js"
PY="$PLUGINS/python"
VENV="$PY/.venv"
FORCE=0

case "${1:-}" in
  "") ;;
  --force) FORCE=1 ;;
  -h | --help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "build-polyglot: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

say() { echo "build-polyglot: $*" >&2; }
die() { say "error: $*"; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "\`$1\` is not on PATH ($2)"
}

# sha256 of the named files' contents and names, in the order given.
digest() {
  local f
  for f in "$@"; do
    printf '%s\n' "${f#"$ROOT"/}"
    cat "$f"
  done | sha256sum | cut -d' ' -f1
}

# Milliseconds since the epoch (GNU date).
now_ms() { date +%s%3N; }

# --- toolchains --------------------------------------------------------------

# Installs node_modules from the lock file when it is missing or stale.
ensure_js_toolchain() {
  need node "install Node.js 20+"
  need npm "install npm"
  local stamp="$JS/node_modules/.outboxd-lock.sha256"
  local want
  want="$(digest "$JS/package.json" "$JS/package-lock.json")"
  if [[ -x "$JS/node_modules/.bin/componentize-js" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  say "installing the JS toolchain (npm ci in ${JS#"$ROOT"/})"
  local started
  started="$(now_ms)"
  (cd "$JS" && npm ci --no-audit --no-fund --loglevel=error) >&2
  printf '%s\n' "$want" >"$stamp"
  say "JS toolchain installed in $(($(now_ms) - started)) ms"
}

# Creates the venv and installs the hash-pinned componentize-py when missing or stale.
ensure_python_toolchain() {
  need python3 "install Python 3.11+ with the venv module"
  local stamp="$VENV/.outboxd-requirements.sha256"
  local want
  want="$(digest "$PY/requirements.txt")"
  if [[ -x "$VENV/bin/componentize-py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  say "installing the Python toolchain (venv in ${VENV#"$ROOT"/})"
  local started
  started="$(now_ms)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --require-hashes --only-binary=:all: -r "$PY/requirements.txt" >&2
  printf '%s\n' "$want" >"$stamp"
  say "Python toolchain installed in $(($(now_ms) - started)) ms"
}

# --- components --------------------------------------------------------------

# build NAME INPUTS_DIGEST COMMAND...: runs COMMAND (which must write
# "$OUT/NAME.wasm.tmp") unless "$OUT/NAME.wasm" was built from the same inputs.
build() {
  local name="$1" inputs="$2"
  shift 2
  local wasm="$OUT/$name.wasm" stamp="$OUT/$name.wasm.inputs"
  if [[ $FORCE == 0 && -f "$wasm" && -f "$stamp" && "$(cat "$stamp")" == "$inputs" ]]; then
    say "$name.wasm is up to date ($(stat -c %s "$wasm") bytes)"
    return
  fi
  say "building $name.wasm"
  local started
  started="$(now_ms)"
  rm -f "$wasm.tmp"
  "$@" >&2
  [[ -s "$wasm.tmp" ]] || die "$name: the build wrote no component"
  mv -f "$wasm.tmp" "$wasm"
  printf '%s\n' "$inputs" >"$stamp"
  say "built $name.wasm: $(stat -c %s "$wasm") bytes in $(($(now_ms) - started)) ms"
}

# The WIT files, sorted, as absolute paths.
wit_files() { find "$WIT" -name '*.wit' -type f | LC_ALL=C sort; }

# build_js_app DIR ENTRY NAME: plugins/js/DIR/ENTRY -> NAME.wasm
build_js_app() {
  local dir="$1" entry="$2" name="$3"
  local -a inputs
  mapfile -t inputs < <(find "$JS/$dir" -name '*.js' -type f | LC_ALL=C sort; wit_files)
  # `http` and `fetch-event` are disabled: the host grants no wasi:http.
  build "$name" "$(digest "${inputs[@]}" "$JS/package-lock.json" "${BASH_SOURCE[0]}")" \
    "$JS/node_modules/.bin/componentize-js" "$JS/$dir/$entry" \
    --wit "$WIT" --world-name target --disable http fetch-event \
    --out "$OUT/$name.wasm.tmp"
}

build_js() {
  ensure_js_toolchain
  build_js_app crm crm.js crm-js
  build_js_app boom boom.js boom-js
}

# build_python_app DIR NAME: plugins/python/DIR/app.py -> NAME.wasm
build_python_app() {
  local dir="$1" name="$2"
  local -a inputs
  mapfile -t inputs < <(find "$PY/$dir" -name '*.py' -type f | LC_ALL=C sort; wit_files)
  # Only the app's own directory is on the Python path: the venv's
  # site-packages (pip, the tool itself) must not be bundled.
  build "$name" "$(digest "${inputs[@]}" "$PY/requirements.txt" "${BASH_SOURCE[0]}")" \
    env -u VIRTUAL_ENV PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/componentize-py" --quiet \
    --wit-path "$WIT" --world target componentize --python-path "$PY/$dir" app \
    --output "$OUT/$name.wasm.tmp"
}

build_python() {
  ensure_python_toolchain
  build_python_app analytics analytics-py
  build_python_app boom boom-py
}

mkdir -p "$OUT"
build_js
build_python
echo "$OUT"
