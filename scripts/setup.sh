#!/usr/bin/env bash
# Set up a Debian 12 machine (as root) for hafloatd: system packages and .venv.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if [ "${HAFLOATD_SKIP_APT:-0}" != 1 ]; then
  apt-get update -q
  # pacemaker/corosync/resource-agents: the real cluster and ocf-tester; pcs: the documented
  # resource line, run offline on a CIB file; iproute2/util-linux/nftables: the lab's
  # namespaces, bridge and partitions; nginx-light: the web server the probes watch;
  # prometheus: promtool; systemd: systemd-analyze for the unit; systemd-container (nspawn)
  # and debootstrap: the systemd tier boots the unit under a real systemd; strace: holds a
  # daemon's role-file write for the crash-consistency test. Never with recommends:
  # systemd-container's (libnss-mymachines) would edit /etc/nsswitch.conf.
  apt-get install -y -q --no-install-recommends \
    python3 python3-venv python3-dev gcc git ca-certificates \
    pacemaker corosync pacemaker-cli-utils pcs resource-agents libxml2-utils \
    iproute2 util-linux mount procps nftables nginx-light prometheus systemd \
    systemd-container debootstrap strace >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
pip_log=$(mktemp)
if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]'; } >"$pip_log" 2>&1; then
  cat "$pip_log" >&2; rm -f "$pip_log"; echo "setup: pip install failed" >&2; exit 1
fi
rm -f "$pip_log"
echo "setup: ok ($(.venv/bin/python --version), venv .venv)"
