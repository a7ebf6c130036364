#!/bin/sh
# Build the native library and place it under the PowerShell module for this platform:
#   powershell/ServiceConnection/lib/<rid>/<library file>   (git-ignored)
# Usage: powershell/build.sh [release|debug] [--no-build]   (default: release)
#   --no-build  copy the library the last cargo build of that profile left in target/
#               (.ci/setup passes it right after building the whole workspace: a
#               `cargo build --lib` of the root package alone resolves the dependencies'
#               features differently and would compile about 60 crates again)
# The module loads the library from there by full path (or from $SCT_NATIVE_LIBRARY).
set -eu

profile="${1:-release}"
build=yes
case "${2:-}" in
    "") ;;
    --no-build) build=no ;;
    *) echo "usage: $0 [release|debug] [--no-build]" >&2; exit 2 ;;
esac
case "$profile" in
    release) cargo_flags="--release" ;;
    debug | dev) profile=debug; cargo_flags="" ;;
    *) echo "usage: $0 [release|debug]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"

case "$(uname -s)" in
    Linux) os=linux; file=libserviceconnection.so ;;
    Darwin) os=osx; file=libserviceconnection.dylib ;;
    MINGW* | MSYS* | CYGWIN*) os=win; file=serviceconnection.dll ;;
    *) echo "build.sh: unsupported operating system $(uname -s)" >&2; exit 1 ;;
esac
case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "build.sh: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
rid="$os-$arch"

if [ "$build" = yes ]; then
    # shellcheck disable=SC2086 # cargo_flags is empty or one flag
    (cd "$repo" && cargo build $cargo_flags --lib)
fi

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
src="$target_dir/$profile/$file"
if [ ! -f "$src" ]; then
    echo "build.sh: cargo finished but $src is missing" >&2
    exit 1
fi
dest_dir="$here/ServiceConnection/lib/$rid"
mkdir -p "$dest_dir"
# Copy under a temporary name and rename, so a running pwsh never maps a half-written file.
cp "$src" "$dest_dir/.$file.tmp"
mv -f "$dest_dir/.$file.tmp" "$dest_dir/$file"
echo "placed $dest_dir/$file ($profile)"
