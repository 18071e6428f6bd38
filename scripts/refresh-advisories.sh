#!/usr/bin/env bash
# Refreshes supply-chain/advisory-db/: the RustSec advisories (github.com/rustsec/advisory-db)
# of every crate named in Cargo.lock and fuzz/Cargo.lock, which the supply chain test
# (tests/tests/supply_chain.rs) checks the lockfiles against without a network. Run it with a checkout of the advisory database, then commit:
#   git clone https://github.com/rustsec/advisory-db /tmp/advisory-db
#   scripts/refresh-advisories.sh /tmp/advisory-db
set -euo pipefail
cd "$(dirname "$0")/.."
source_db="${1:?usage: scripts/refresh-advisories.sh <advisory-db checkout>}"
[ -d "$source_db/crates" ] || { echo "$source_db has no crates/ directory" >&2; exit 1; }

target=supply-chain/advisory-db
rm -rf "$target/crates"
mkdir -p "$target/crates"
copied=0
while read -r name; do
    if [ -d "$source_db/crates/$name" ]; then
        cp -r "$source_db/crates/$name" "$target/crates/"
        copied=$((copied + $(find "$source_db/crates/$name" -name '*.md' | wc -l)))
    fi
done < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.lock fuzz/Cargo.lock | sort -u)
commit=$(git -C "$source_db" log -1 --format='%H %cs' 2>/dev/null || echo "unknown")
cat > "$target/README.md" <<README
# RustSec advisories of Fulcrum's dependencies

Copied by \`scripts/refresh-advisories.sh\` from rustsec/advisory-db at $commit: the
advisories of every crate named in \`Cargo.lock\` and \`fuzz/Cargo.lock\` ($copied files). The
supply chain test (\`tests/tests/supply_chain.rs\`, with the \`rustsec\` crate that cargo-audit
is built on) checks the lockfiles against this copy, since CI has no network beyond the
package registries; \`cargo audit --db supply-chain/advisory-db --no-fetch --stale\` reads it
too. Refresh it when dependencies change and from time to time.
README
echo "copied $copied advisories from $commit into $target"
