#!/usr/bin/env bash
# A convenience, not a requirement: `cargo run --release` and `cargo test` do all the setup on
# their own (the data directory, the database and its migrations are created on first start).
# This script checks the toolchain, creates a .env you can edit, and builds the three binaries.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: get Rust from https://rustup.rs, then run this again." >&2
  exit 1
fi

if [ ! -f .env ]; then
  cp .env.example .env
  echo "Created .env from .env.example (every line is a default; edit what you need)."
fi

# The dashboard's browser tests drive Debian's headless Chromium through chromedriver; they skip
# (outside CI) when it is missing. Installed only if missing, and only where apt-get can run.
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

mkdir -p data
cargo build --release --bins

cat <<'DONE'

Built. Next:
  cargo run --release                                  # the server on http://localhost:8000 (docs at /docs)
  cargo run --release --bin callback-server            # a callback receiver on :9000
  cargo run --release --bin loadtest -- --mode compare # sync against async, with an HTML report
  cargo test                                           # the test suite
DONE
