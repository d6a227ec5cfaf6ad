#!/usr/bin/env bash
# Install the Debian packages the test suite needs (authoritative DNS server, DNS
# clients, load generator, firewall tools, a local container registry, ...).
#
# Idempotent: when every needed command and package is already present it does
# nothing. Otherwise it runs `apt-get update` once and installs the whole list.
#
# Package post-install scripts would start the knot and docker-registry system
# daemons (knot on port 53, the registry on port 5000), which would take ports the
# tests use. While installing, a policy-rc.d that denies every service start is put
# in place (invoke-rc.d and deb-systemd-invoke both honour it), and afterwards both
# services are stopped and disabled in case anything started them anyway.
set -euo pipefail

PACKAGES=(
  knot knot-dnsutils bind9-dnsutils dnsperf iptables nftables ipset
  docker-registry skopeo iproute2 curl openssl conntrack util-linux procps mount
)
# command -> the package that provides it
COMMANDS=(
  knotd:knot kdig:knot-dnsutils knotc:knot dig:bind9-dnsutils dnsperf:dnsperf
  iptables:iptables nft:nftables ipset:ipset docker-registry:docker-registry
  skopeo:skopeo ip:iproute2 curl:curl openssl:openssl conntrack:conntrack
  unshare:util-linux pgrep:procps ps:procps mount:mount getent:libc-bin
)
SERVICES=(knot docker-registry)

log() { printf 'install-deps: %s\n' "$*" >&2; }

have_cmd() {
  # sbin directories are not on a normal user's PATH; look there too.
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

pkg_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

missing=()
for entry in "${COMMANDS[@]}"; do
  cmd=${entry%%:*}
  have_cmd "$cmd" || missing+=("command $cmd (${entry#*:})")
done
for pkg in "${PACKAGES[@]}"; do
  pkg_installed "$pkg" || missing+=("package $pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  log "all test dependencies are present"
  exit 0
fi

log "missing: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  log "must run as root to install packages (apt-get)"
  exit 1
fi

# Deny service starts during the installation, unless the machine already has a
# policy (Debian container images ship one that does the same).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# temporary, from dnsbridge scripts/install-deps.sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  created_policy=1
fi
cleanup() {
  if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -o Acquire::Retries=3
apt-get install -y --no-install-recommends -o Acquire::Retries=3 "${PACKAGES[@]}"

# Make sure no system daemon from these packages runs now or at the next boot.
pid1=$(cat /proc/1/comm 2>/dev/null || true)
for svc in "${SERVICES[@]}"; do
  if [ "$pid1" = systemd ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
  else
    if [ -x "/etc/init.d/$svc" ]; then
      "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
    update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done
# Belt and braces: the packaged daemons run as their own users; if one still runs
# (started by the package despite the policy), stop it by its process id.
for user_daemon in knot:knotd docker-registry:docker-registry; do
  user=${user_daemon%%:*}
  daemon=${user_daemon#*:}
  for pid in $(pgrep -u "$user" -x "$daemon" 2>/dev/null || true); do
    log "stopping system $daemon (pid $pid) started by the package"
    kill "$pid" 2>/dev/null || true
  done
done

still=()
for entry in "${COMMANDS[@]}"; do
  cmd=${entry%%:*}
  have_cmd "$cmd" || still+=("$cmd")
done
if [ ${#still[@]} -ne 0 ]; then
  log "still missing after install: ${still[*]}"
  exit 1
fi
log "installed: ${PACKAGES[*]}"
