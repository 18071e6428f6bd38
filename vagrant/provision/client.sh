#!/usr/bin/env bash
# Points fulcrumctl at the cluster for every login on the client VM.
set -euo pipefail
: "${MEMBERS:?the addresses of the load balancers, comma-separated}" "${ADMIN_TOKEN:?}"

endpoints=$(echo "$MEMBERS" | tr ',' '\n' | sed 's|.*|http://&:7100|' | paste -sd, -)
cat > /etc/profile.d/fulcrum.sh <<PROFILE
export FULCRUM_ENDPOINTS=$endpoints
export FULCRUM_TOKEN=$ADMIN_TOKEN
PROFILE
chmod 0644 /etc/profile.d/fulcrum.sh
echo "client.sh: fulcrumctl talks to $endpoints"
