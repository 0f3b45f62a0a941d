#!/bin/sh
# Builds dist/{{name}}.wasm, the component to deploy: cargo for the wasm32-wasip2 target
# (added through rustup when missing). Honours CARGO_TARGET_DIR.
set -eu
cd "$(dirname "$0")"
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2
mkdir -p dist
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" dist/{{name}}.wasm.tmp
mv -f dist/{{name}}.wasm.tmp dist/{{name}}.wasm
echo dist/{{name}}.wasm
