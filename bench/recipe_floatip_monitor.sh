#!/bin/bash
# Baseline for bench/ocf_monitor.py: the shape of the seed recipe's bash OCF agent `floatip`
# (see ../shared/do-api/README.md, "What the seed recipe's scripts did"), re-created for
# measurement only. Behaviour kept on purpose, because that is what is being measured:
#   - sources ocf-shellfuncs like any heartbeat-style shell agent;
#   - runs two metadata `curl`s on every call, whatever the action (even meta-data);
#   - monitor only asks whether *any* reserved IP is active on the droplet, and an empty
#     answer reads as "running".
# METADATA_URL points it at a local stand-in; the bench never lets it reach 169.254.169.254.
: "${OCF_ROOT:=/usr/lib/ocf}"
: "${OCF_FUNCTIONS_DIR:=${OCF_ROOT}/lib/heartbeat}"
if [ -r "${OCF_FUNCTIONS_DIR}/ocf-shellfuncs" ]; then
    # shellcheck disable=SC1091
    . "${OCF_FUNCTIONS_DIR}/ocf-shellfuncs"
fi
: "${OCF_SUCCESS:=0}" "${OCF_NOT_RUNNING:=7}" "${OCF_ERR_UNIMPLEMENTED:=3}"
METADATA_URL="${METADATA_URL:?set METADATA_URL to a local metadata stand-in}"

IP_ACTIVE=$(curl -s "${METADATA_URL}/reserved_ip/ipv4/active")
IP_ADDRESS=$(curl -s "${METADATA_URL}/reserved_ip/ipv4/ip_address")

case "$1" in
monitor|status)
    if [ "$IP_ACTIVE" = "false" ]; then
        exit "$OCF_NOT_RUNNING"
    fi
    exit "$OCF_SUCCESS"
    ;;
start|stop|meta-data|validate-all)
    # not measured by the bench; the recipe's start always exited 0 and stop was a no-op
    exit "$OCF_SUCCESS"
    ;;
*)
    echo "unused: $IP_ADDRESS" >/dev/null
    exit "$OCF_ERR_UNIMPLEMENTED"
    ;;
esac
