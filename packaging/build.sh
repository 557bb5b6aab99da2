#!/usr/bin/env bash
# Builds the release binary and the .deb and .rpm packages from it:
#   target/debian/cairn_<version>-1_<arch>.deb and target/generate-rpm/cairn-<version>-1.<arch>.rpm
#
#   bash packaging/build.sh                  # version from Cargo.toml
#   bash packaging/build.sh --version 0.1.1  # package version override (Cargo.toml untouched;
#                                            # the binary still reports Cargo.toml's version)
#
# Installs the pinned cargo-deb and cargo-generate-rpm with `cargo install --locked` if missing.
# Prints the paths of the two packages as its last two lines.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

version=""
while [ $# -gt 0 ]; do
    case "$1" in
        --version) version="${2:?--version needs a value}"; shift 2 ;;
        --version=*) version="${1#--version=}"; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$version" ]; then
    version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
fi
# A SemVer pre-release (0.2.0-rc.1) becomes 0.2.0~rc.1, which both formats sort before 0.2.0;
# '-' would be taken as the revision/release separator.
version="${version//-/\~}"
if ! [[ "$version" =~ ^[0-9][0-9A-Za-z.+~]*$ ]]; then
    echo "build.sh: bad version '$version' (a digit first, then [0-9A-Za-z.+~])" >&2
    exit 2
fi

# Installs tool $1 (cargo subcommand binary cargo-$1) at version $2 unless that version is there.
ensure_tool() {
    local name="$1" want="$2" have=""
    if command -v "cargo-$name" >/dev/null; then
        have=$(cargo "$name" --version 2>/dev/null | awk '{ print $NF }' || true)
    fi
    if [ "$have" != "$want" ]; then
        echo "build.sh: installing cargo-$name $want (found: ${have:-none})"
        cargo install --locked "cargo-$name" --version "$want"
    fi
}
ensure_tool deb "$CARGO_DEB_VERSION"
ensure_tool generate-rpm "$CARGO_GENERATE_RPM_VERSION"

echo "build.sh: cargo build --release --locked"
cargo build --release --locked --bin cairn

# Neither tool builds here: both package target/release/cairn as just built.
deb_version="$version-1"
cargo deb --no-build --locked --deb-version "$deb_version" >/dev/null
rpm_release=$(awk -F'"' '/^\[package.metadata.generate-rpm\]/ { f = 1 } f && /^release = / { print $2; exit }' Cargo.toml)
cargo generate-rpm --set-metadata "version = \"$version\"" >/dev/null

deb_arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
deb="target/debian/cairn_${deb_version}_${deb_arch}.deb"
rpm="target/generate-rpm/cairn-${version}-${rpm_release}.$(uname -m).rpm"
for f in "$deb" "$rpm"; do
    [ -f "$f" ] || { echo "build.sh: expected $f, not found" >&2; exit 1; }
done
echo "$deb"
echo "$rpm"
