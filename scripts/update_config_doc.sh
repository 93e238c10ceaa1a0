#!/usr/bin/env bash
# Regenerates the key table of docs/config.md from `ltrain config reference` (the test
# Config.DocsConfigReferenceIsCurrent fails until this is run after a config key changes).
set -euo pipefail
cd "$(dirname "$0")/.."
LTRAIN=${LTRAIN:-build/ltrain}
doc=docs/config.md
head=$(sed '/^| key | default | meaning |$/,$d' "$doc")
{ printf '%s\n' "$head"; "$LTRAIN" config reference; } > "$doc.tmp"
mv "$doc.tmp" "$doc"
echo "updated $doc"
