#!/usr/bin/env bash
# Build (or reuse) the Go peers of the end-to-end benchmark and the interop tests.
#
#   benches/peers/build.sh [OUT_DIR]        (default OUT_DIR: <repo>/target/peers)
#
# Prints the absolute path of OUT_DIR as the last line on stdout; the peers are
# OUT_DIR/clientgo-peer. Skipped when the stamp (sha256 of the sources and the Go version) matches.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out_dir="${1:-$repo/target/peers}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
command -v go >/dev/null || { echo "peers/build.sh: 'go' not found in PATH (Go >= 1.26 needed)" >&2; exit 1; }

stamp="$(cd "$here" && { cat go.mod go.sum ./*/*.go; go version; } | sha256sum | cut -d' ' -f1)"
if command -v flock >/dev/null; then
    exec 9>"$out_dir/.build.lock"
    flock 9
fi
if [[ -f "$out_dir/stamp" && "$(cat "$out_dir/stamp")" == "$stamp" ]]; then
    echo "peers/build.sh: $out_dir is up to date" >&2
    echo "$out_dir"
    exit 0
fi
start=$(date +%s)
rm -f "$out_dir/stamp"
for cmd in "$here"/*/; do
    name="$(basename "$cmd")-peer"
    echo "peers/build.sh: building $out_dir/$name..." >&2
    (cd "$here" && CGO_ENABLED=0 nice -n 19 go build -mod=readonly -trimpath -buildvcs=false \
        -ldflags='-s -w' -o "$out_dir/$name.tmp.$$" "./$(basename "$cmd")")
    mv -f "$out_dir/$name.tmp.$$" "$out_dir/$name"
done
echo "$stamp" > "$out_dir/stamp"
echo "peers/build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$out_dir"
