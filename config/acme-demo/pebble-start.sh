#!/bin/sh
# Starts pebble for the acme-demo profile. Its own HTTPS listener needs a certificate: a demo CA
# and a leaf for the name `pebble` are made on first start in /pebble-ca (a volume the proxy
# mounts read-only, to trust the directory as `acme.directory_root`).
set -eu
ca=/pebble-ca
if [ ! -s "$ca/ca.pem" ]; then
  umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=pebble demo listener CA" -keyout "$ca/ca.key" -out "$ca/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pebble" \
    -keyout "$ca/listener.key" -out /tmp/listener.csr 2>/dev/null
  printf 'subjectAltName=DNS:pebble,DNS:localhost\nbasicConstraints=CA:FALSE\n' > /tmp/ext
  openssl x509 -req -in /tmp/listener.csr -CA "$ca/ca.pem" -CAkey "$ca/ca.key" -CAcreateserial \
    -days 3650 -extfile /tmp/ext -out "$ca/listener.pem" 2>/dev/null
  chmod 0644 "$ca/ca.pem"
fi
cat > /tmp/pebble.json <<JSON
{"pebble": {
  "listenAddress": "0.0.0.0:14000",
  "managementListenAddress": "0.0.0.0:15000",
  "certificate": "$ca/listener.pem",
  "privateKey": "$ca/listener.key",
  "httpPort": 80,
  "tlsPort": 443,
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false
}}
JSON
export PEBBLE_VA_NOSLEEP=1
exec pebble -config /tmp/pebble.json -dnsserver "${PEBBLE_DNS:-challtestsrv:8053}"
