#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust; idempotent, quick when all is present.
#   - py-consul: a real Consul client library, driven by tests/client_compat.rs.
set -euo pipefail
if ! python3 -c 'import consul' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'py-consul==1.8.0'
fi
