#!/bin/sh
# Builds dist/{{name}}.wasm, the component to deploy, with componentize-py. The first run
# installs the pinned toolchain into .venv (`pip install --require-hashes`).
set -eu
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ] || [ requirements.txt -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    --require-hashes --only-binary=:all: -r requirements.txt
  touch .venv/.installed
fi
mkdir -p dist
# Only src/ is on the component's Python path (not the venv's site-packages).
env -u VIRTUAL_ENV PYTHONDONTWRITEBYTECODE=1 .venv/bin/componentize-py --quiet \
  --wit-path wit --world {{world}} componentize --python-path src app \
  --output dist/{{name}}.wasm.tmp
mv -f dist/{{name}}.wasm.tmp dist/{{name}}.wasm
echo dist/{{name}}.wasm
