#!/usr/bin/env bash
# Points fulcrumctl at the cluster (over TLS, trusting the cluster CA) for every login on the
# client VM.
set -euo pipefail
: "${MEMBERS:?the addresses of the load balancers, comma-separated}" "${ADMIN_TOKEN:?}"
: "${CA_KEY:?the cluster CA key, PEM}"

# The CA certificate, made from the CA's key as every load balancer makes its own.
if [ ! -f /etc/fulcrum/ca.pem ]; then
    ca_key=$(mktemp)
    trap 'rm -f "$ca_key"' EXIT
    printf '%s\n' "$CA_KEY" > "$ca_key"
    /usr/local/bin/fulcrumd pki ca --key "$ca_key" --out /etc/fulcrum >/dev/null
fi

endpoints=$(echo "$MEMBERS" | tr ',' '\n' | sed 's|.*|https://&:7100|' | paste -sd, -)
cat > /etc/profile.d/fulcrum.sh <<PROFILE
export FULCRUM_ENDPOINTS=$endpoints
export FULCRUM_TOKEN=$ADMIN_TOKEN
export FULCRUM_CA_FILE=/etc/fulcrum/ca.pem
PROFILE
chmod 0644 /etc/profile.d/fulcrum.sh
echo "client.sh: fulcrumctl talks to $endpoints"

# The VIP announced over BGP is reached through the router (for this boot).
if [ -n "${ROUTER:-}" ] && [ -n "${BGP_VIP:-}" ]; then
    ip route replace "$BGP_VIP/32" via "$ROUTER"
    echo "client.sh: $BGP_VIP through the router $ROUTER"
fi
