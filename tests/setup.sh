#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust; idempotent, quick when all is present.
#   - py-consul: a real Consul client library, driven by tests/client_compat.rs.
#   - dnsmasq and dig: the end-to-end resolver set-up in tests/dnsmasq_e2e.rs.
#   - openssl: a self-signed certificate for the HTTPS check test in tests/agent_checks.rs.
#   - chromium and chromium-driver: the web UI tests in a real headless browser (tests/ui.rs).
#   - iproute2, nftables and iptables: the fault harness's network namespaces and link faults
#     (tests/faults/net.rs, delay.rs); without them (or without root) it runs on loopback and
#     says so.
set -euo pipefail
if ! python3 -c 'import consul' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'py-consul==1.8.0'
fi
if ! command -v dnsmasq >/dev/null || ! command -v dig >/dev/null || ! command -v openssl >/dev/null \
    || ! command -v ip >/dev/null || ! command -v nft >/dev/null || ! command -v iptables >/dev/null \
    || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dnsmasq-base bind9-dnsutils openssl iproute2 nftables iptables \
        chromium chromium-driver >/dev/null
fi
