#!/usr/bin/env bash
# Makes the files deploy/install.sh installs from: the binaries (relay, relayctl, signaling) and
# their SHA256SUMS, in one directory to publish with each build (operators check what they
# install against it; install.sh refuses a binary whose checksum differs).
#
#   scripts/dist.sh                       release build (LTO), into dist/
#   scripts/dist.sh --out DIR --from DIR  binaries already built in DIR (no build), into DIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=dist from=""
while (($#)); do
    case $1 in
    --out) out=$2; shift 2 ;;
    --from) from=$2; shift 2 ;;
    *) echo "usage: scripts/dist.sh [--out DIR] [--from DIR]" >&2; exit 2 ;;
    esac
done
if [[ -z $from ]]; then
    cargo build --release --workspace --bins
    from=target/release
fi
mkdir -p "$out"
for bin in relay relayctl signaling; do
    [[ -x $from/$bin ]] || { echo "dist.sh: $from/$bin is missing" >&2; exit 1; }
    cp -f "$from/$bin" "$out/$bin"
done
(cd "$out" && sha256sum relay relayctl signaling >SHA256SUMS)
echo "dist: $(cd "$out" && pwd) (relay, relayctl, signaling, SHA256SUMS)"
