#!/bin/sh
# Builds dist/{{name}}.wasm, the component to deploy, with componentize-js. The first run
# installs the pinned toolchain into node_modules (`npm ci`, from package-lock.json).
set -eu
cd "$(dirname "$0")"
if [ ! -x node_modules/.bin/componentize-js ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
mkdir -p dist
# `--disable http fetch-event`: outboxd grants no wasi:http; requests go through its http import.
node_modules/.bin/componentize-js src/index.js --wit wit --world-name {{world}} \
  --disable http fetch-event --out dist/{{name}}.wasm.tmp
mv -f dist/{{name}}.wasm.tmp dist/{{name}}.wasm
echo dist/{{name}}.wasm
