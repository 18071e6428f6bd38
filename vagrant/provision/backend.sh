#!/usr/bin/env bash
# Runs the lab backend (HTTP on :8080, TCP echo on :9000) on this VM as a systemd service.
set -euo pipefail
: "${NAME:?the backend name}" "${ADDRESS:?the address of this VM}"

cat > /etc/systemd/system/fulcrum-backend.service <<UNIT
[Unit]
Description=Fulcrum demo backend $NAME
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/fulcrum-lab backend --name $NAME --http $ADDRESS:8080 --tcp-echo $ADDRESS:9000
DynamicUser=yes
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now fulcrum-backend.service
echo "backend.sh: $NAME serves http://$ADDRESS:8080/ and tcp://$ADDRESS:9000"
