#!/usr/bin/env bash
# A copy of the executor network in network namespaces, to try dnsbridge by hand
# and to run the end-to-end tests (tests/firewall_lab.rs).
#
#   scripts/lab.sh up        build it (idempotent: an existing lab is rebuilt)
#   scripts/lab.sh down      take it away (only the namespaces and processes it made)
#   scripts/lab.sh status    what is there
#   scripts/lab.sh exec ROLE CMD...   run CMD in host|vm|reg|dns|other
#                            (in vm, /etc/resolv.conf points at the proxy, 10.61.0.1)
#   scripts/lab.sh zone-set IP [TTL]  change the registry's address in the upstream zone
#
# Everything lives in namespaces named $LAB_PREFIX-* (default "dnsb"); nothing is
# added to the machine's own namespace, and every address exists only inside them:
#
#   PREFIX-vm     10.61.0.2/16, the microVM; gateway and resolver 10.61.0.1
#   PREFIX-host   the executor VM: bridge ignite0 10.61.0.1/16, bridge lan0 10.200.0.1/24,
#                 forwarding, the executor's and CNI's iptables rules, masquerade;
#                 dnsbridge serve (DNSBRIDGE_BIN) or a stand-in DNS on 10.61.0.1:53
#   PREFIX-reg    10.200.0.10 and 10.200.0.11: the private registry (docker-registry,
#                 HTTPS with a lab CA, certificate for registry.corp.example)
#   PREFIX-dns    10.200.0.53: the upstream resolver (knot), zone example.net with
#                 registry-lb.example.net -> 10.200.0.10 (TTL $LAB_TTL)
#   PREFIX-other  10.200.0.20: another private host serving HTTPS, which must stay closed
#
# Environment: LAB_PREFIX (dnsb), LAB_DIR (/tmp/$LAB_PREFIX-lab), LAB_TTL (5),
# LAB_BLOB_KB (512: size of the test blob pushed to lab/blob), DNSBRIDGE_BIN (a
# dnsbridge binary whose `serve` takes --egress-set: started in the host namespace),
# DNSBRIDGE_SERVE_ARGS (more flags for `serve`, split on spaces, e.g. the grace period).
set -euo pipefail

P=${LAB_PREFIX:-dnsb}
DIR=${LAB_DIR:-/tmp/$P-lab}
TTL=${LAB_TTL:-5}
BLOB_KB=${LAB_BLOB_KB:-512}

NS_HOST=$P-host
NS_VM=$P-vm
NS_REG=$P-reg
NS_DNS=$P-dns
NS_OTHER=$P-other
ALL_NS=("$NS_VM" "$NS_REG" "$NS_DNS" "$NS_OTHER" "$NS_HOST")

VM_CIDR=10.61.0.0/16
BRIDGE_IP=10.61.0.1
VM_IP=10.61.0.2
LAN_GW=10.200.0.1
REG_IP=10.200.0.10
REG_IP2=10.200.0.11
OTHER_IP=10.200.0.20
DNS_IP=10.200.0.53
PRIVATE_NAME=registry.corp.example
PUBLIC_NAME=registry-lb.example.net
OTHER_NAME=other.corp.example
SET=dnsbridge-registry

log() { printf 'lab: %s\n' "$*" >&2; }
die() { printf 'lab: error: %s\n' "$*" >&2; exit 1; }

ns_exists() { [ -e "/run/netns/$1" ]; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

need_root() {
	[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces and iptables)"
	ip netns list >/dev/null 2>&1 || die "'ip netns' does not work here"
}

# Installs what is missing: apt-get update once, then one install.
ensure_packages() {
	local missing=() pair cmd pkg
	for pair in ip:iproute2 iptables:iptables ipset:ipset conntrack:conntrack curl:curl \
		openssl:openssl knotd:knot knotc:knot kdig:knot-dnsutils docker-registry:docker-registry; do
		cmd=${pair%%:*}
		pkg=${pair#*:}
		if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
			[[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
		fi
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
	fi
}

# Waits until "$@" succeeds, for at most $2 seconds.
wait_for() {
	local what=$1 limit=$2
	shift 2
	local deadline=$((SECONDS + limit))
	while [ "$SECONDS" -lt "$deadline" ]; do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	die "$what did not come up within ${limit}s (see $DIR/*.log)"
}

# Starts "$@" in namespace $2 in the background, pid in $DIR/$1.pid.
start_daemon() {
	local name=$1 ns=$2
	shift 2
	ip netns exec "$ns" "$@" >"$DIR/$name.log" 2>&1 </dev/null &
	echo $! >"$DIR/$name.pid"
}

# Ends a process only if it still runs inside one of our namespaces.
stop_pid() {
	local pid=$1 i
	[ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
	local where
	where=$(ip netns identify "$pid" 2>/dev/null || true)
	case " ${ALL_NS[*]} " in
	*" $where "*) ;;
	*) return 0 ;;
	esac
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 30; i++)); do
		[ -d "/proc/$pid" ] || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

show_logs() {
	local f
	for f in "$DIR"/*.log; do
		[ -s "$f" ] || continue
		printf '=== %s\n' "$f" >&2
		tail -n 20 "$f" >&2
	done
}

cmd_down() {
	need_root
	local f ns pid
	if [ -d "$DIR" ]; then
		for f in "$DIR"/*.pid; do
			[ -e "$f" ] || continue
			stop_pid "$(cat "$f")"
			rm -f "$f"
		done
	fi
	# Anything else still running inside our namespaces (a proxy started by hand).
	for ns in "${ALL_NS[@]}"; do
		ns_exists "$ns" || continue
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			stop_pid "$pid"
		done
	done
	for ns in "${ALL_NS[@]}"; do
		if ns_exists "$ns"; then
			ip netns del "$ns" || log "could not delete namespace $ns"
		fi
	done
	if [ -f "$DIR/.dnsbridge-lab" ]; then
		rm -rf "$DIR"
	fi
	log "down"
}

make_certs() {
	local d=$DIR/pki
	mkdir -p "$d"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$d/ca.key" -out "$DIR/ca.pem" -days 30 -subj "/CN=dnsbridge lab CA" 2>/dev/null
	local name
	for name in "$PRIVATE_NAME" "$OTHER_NAME"; do
		openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
			-keyout "$d/$name.key" -out "$d/$name.csr" -subj "/CN=$name" 2>/dev/null
		printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$name" >"$d/$name.ext"
		openssl x509 -req -in "$d/$name.csr" -CA "$DIR/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
			-days 30 -extfile "$d/$name.ext" -out "$d/$name.pem" 2>/dev/null
	done
}

registry_config() {
	local name=$1 data=$2
	cat <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $data
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: ":443"
  secret: dnsbridge-lab
  tls:
    certificate: $DIR/pki/$name.pem
    key: $DIR/pki/$name.key
EOF
}

knot_config() {
	local dir=$1 zone=$2
	shift 2
	local listen="" a
	for a in "$@"; do listen="$listen, $a@53"; done
	cat <<EOF
server:
    rundir: "$dir"
    listen: [ ${listen#, } ]
database:
    storage: "$dir"
control:
    listen: "$dir/knot.sock"
log:
  - target: stderr
    any: info
template:
  - id: default
    storage: "$dir"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: $zone
EOF
}

upstream_zone() {
	local ip=$1 ttl=$2 serial=$3
	cat <<EOF
\$ORIGIN example.net.
\$TTL 300
@           SOA ns hostmaster $serial 60 60 3600 5
@           NS  ns
ns          A   $DNS_IP
registry-lb $ttl A $ip
other       300 A $OTHER_IP
EOF
}

standin_zone() {
	cat <<EOF
\$ORIGIN corp.example.
\$TTL 300
@        SOA ns hostmaster 1 60 60 3600 5
@        NS  ns
ns       A   $BRIDGE_IP
registry $TTL A $REG_IP
EOF
}

# The executor's rules, in the order DESIGN.md lists them, then what CNI's
# firewall and bridge plugins add when the first microVM starts.
host_firewall() {
	local ipt=(ip netns exec "$NS_HOST" iptables -w)
	"${ipt[@]}" -N CNI-ADMIN
	"${ipt[@]}" -A CNI-ADMIN -p udp --dport 53 -j ACCEPT
	"${ipt[@]}" -A INPUT -d "$VM_CIDR" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
	"${ipt[@]}" -A INPUT -s "$VM_CIDR" -j DROP
	"${ipt[@]}" -A CNI-ADMIN -s "$BRIDGE_IP/32" -d "$VM_CIDR" -j ACCEPT
	"${ipt[@]}" -A CNI-ADMIN -d "$VM_CIDR" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
	"${ipt[@]}" -A CNI-ADMIN -s "$VM_CIDR" -d "$VM_CIDR" -j DROP
	"${ipt[@]}" -A CNI-ADMIN -s "$VM_CIDR" -d 10.0.0.0/8 -p tcp -j DROP
	"${ipt[@]}" -A CNI-ADMIN -s "$VM_CIDR" -d 192.168.0.0/16 -p tcp -j DROP
	"${ipt[@]}" -A CNI-ADMIN -s "$VM_CIDR" -d 172.16.0.0/12 -p tcp -j DROP
	"${ipt[@]}" -A CNI-ADMIN -s "$VM_CIDR" -d 169.254.0.0/16 -j DROP
	# CNI firewall plugin: its chains (tolerating CNI-ADMIN), the jumps, the
	# per-VM accepts.
	"${ipt[@]}" -N CNI-FORWARD
	"${ipt[@]}" -I FORWARD 1 -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
	"${ipt[@]}" -I CNI-FORWARD 1 -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN
	"${ipt[@]}" -A CNI-FORWARD -d "$VM_IP/32" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
	"${ipt[@]}" -A CNI-FORWARD -s "$VM_IP/32" -j ACCEPT
	# CNI bridge plugin, ipMasq: the microVMs leave the host under its address.
	"${ipt[@]}" -t nat -A POSTROUTING -s "$VM_CIDR" ! -d "$VM_CIDR" -j MASQUERADE
}

# A veth from the host namespace's bridge $1 into namespace $2 (as eth0).
plug() {
	local bridge=$1 ns=$2 hostif=$3
	ip -n "$NS_HOST" link add "$hostif" type veth peer name eth0 netns "$ns"
	ip -n "$NS_HOST" link set "$hostif" master "$bridge" up
	ip -n "$ns" link set eth0 up
}

dnsbridge_supports_serve() {
	[ -n "${DNSBRIDGE_BIN:-}" ] && [ -x "$DNSBRIDGE_BIN" ] &&
		"$DNSBRIDGE_BIN" serve --help 2>/dev/null | grep -q -- '--egress-set'
}

push_blob() {
	local blob=$DIR/blob.bin digest loc
	head -c "$((BLOB_KB * 1024))" /dev/urandom >"$blob"
	digest=sha256:$(sha256sum "$blob" | cut -d' ' -f1)
	local curl=(ip netns exec "$NS_HOST" curl -sS --fail --max-time 10 --cacert "$DIR/ca.pem"
		--resolve "$PRIVATE_NAME:443:$REG_IP")
	loc=$("${curl[@]}" -X POST -o /dev/null -w '%header{location}' "https://$PRIVATE_NAME/v2/lab/blob/blobs/uploads/" 2>/dev/null ||
		"${curl[@]}" -X POST -D - -o /dev/null "https://$PRIVATE_NAME/v2/lab/blob/blobs/uploads/" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
	[ -n "$loc" ] || die "registry gave no upload location"
	case $loc in /*) loc=https://$PRIVATE_NAME$loc ;; esac
	case $loc in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
	"${curl[@]}" -X PUT -o /dev/null -H 'Content-Type: application/octet-stream' --data-binary "@$blob" "$loc"
	echo "$digest" >"$DIR/blob.digest"
}

cmd_up() {
	need_root
	ensure_packages
	local ns
	for ns in "${ALL_NS[@]}"; do
		if ns_exists "$ns"; then
			log "an earlier lab is there: taking it down first"
			cmd_down
			break
		fi
	done
	mkdir -p "$DIR"
	touch "$DIR/.dnsbridge-lab"
	# Whatever fails from here on (set -e, die), take everything down again.
	UP_DONE=
	trap 'if [ -z "$UP_DONE" ]; then log "up failed; cleaning up"; show_logs; cmd_down; fi' EXIT

	for ns in "${ALL_NS[@]}"; do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
	done

	# The executor VM: the microVM bridge and the private network behind it.
	ip -n "$NS_HOST" link add ignite0 type bridge
	ip -n "$NS_HOST" addr add "$BRIDGE_IP/16" dev ignite0
	ip -n "$NS_HOST" link set ignite0 up
	ip -n "$NS_HOST" link add lan0 type bridge
	ip -n "$NS_HOST" addr add "$LAN_GW/24" dev lan0
	ip -n "$NS_HOST" link set lan0 up
	ip netns exec "$NS_HOST" sysctl -qw net.ipv4.ip_forward=1

	plug ignite0 "$NS_VM" veth-vm0
	ip -n "$NS_VM" addr add "$VM_IP/16" dev eth0
	ip -n "$NS_VM" route add default via "$BRIDGE_IP"

	plug lan0 "$NS_REG" veth-reg
	ip -n "$NS_REG" addr add "$REG_IP/24" dev eth0
	ip -n "$NS_REG" addr add "$REG_IP2/24" dev eth0
	ip -n "$NS_REG" route add default via "$LAN_GW"

	plug lan0 "$NS_DNS" veth-dns
	ip -n "$NS_DNS" addr add "$DNS_IP/24" dev eth0
	ip -n "$NS_DNS" route add default via "$LAN_GW"

	plug lan0 "$NS_OTHER" veth-other
	ip -n "$NS_OTHER" addr add "$OTHER_IP/24" dev eth0
	ip -n "$NS_OTHER" route add default via "$LAN_GW"

	host_firewall

	make_certs
	mkdir -p "$DIR/reg-data" "$DIR/other-data"
	registry_config "$PRIVATE_NAME" "$DIR/reg-data" >"$DIR/registry.yml"
	registry_config "$OTHER_NAME" "$DIR/other-data" >"$DIR/other.yml"
	start_daemon registry "$NS_REG" docker-registry serve "$DIR/registry.yml"
	start_daemon other "$NS_OTHER" docker-registry serve "$DIR/other.yml"

	mkdir -p "$DIR/knot-dns"
	knot_config "$DIR/knot-dns" example.net "$DNS_IP" >"$DIR/knot-dns.conf"
	echo 1 >"$DIR/zone.serial"
	upstream_zone "$REG_IP" "$TTL" 1 >"$DIR/knot-dns/example.net.zone"
	start_daemon knot-dns "$NS_DNS" knotd -c "$DIR/knot-dns.conf"

	printf 'nameserver %s\noptions timeout:1 attempts:2\n' "$BRIDGE_IP" >"$DIR/vm-resolv.conf"
	cat >"$DIR/dnsbridge.yaml" <<EOF
spec:
  infrastructure:
    executorPrivateDNS:
      proxyTag: 202311201628
      routes:
        - source: $PRIVATE_NAME
          destination: $PUBLIC_NAME
EOF
	if dnsbridge_supports_serve; then
		local extra=()
		# shellcheck disable=SC2206 # split on purpose
		[ -z "${DNSBRIDGE_SERVE_ARGS:-}" ] || extra=(${DNSBRIDGE_SERVE_ARGS})
		start_daemon proxy "$NS_HOST" "$DNSBRIDGE_BIN" serve --listen "$BRIDGE_IP:53" --listen 127.0.0.1:53 \
			--upstream "$DNS_IP" --allow "$VM_CIDR" --config "$DIR/dnsbridge.yaml" --egress-set "$SET" ${extra[@]+"${extra[@]}"}
		echo proxy >"$DIR/dns-kind"
	else
		mkdir -p "$DIR/knot-standin"
		knot_config "$DIR/knot-standin" corp.example "$BRIDGE_IP" 127.0.0.1 >"$DIR/knot-standin.conf"
		standin_zone >"$DIR/knot-standin/corp.example.zone"
		start_daemon knot-standin "$NS_HOST" knotd -c "$DIR/knot-standin.conf"
		echo standin >"$DIR/dns-kind"
	fi

	wait_for "the upstream DNS" 10 in_ns "$NS_HOST" kdig +time=1 +retry=0 @"$DNS_IP" "$PUBLIC_NAME" A
	wait_for "the DNS on the host" 10 in_ns "$NS_HOST" kdig +time=1 +retry=0 @127.0.0.1 "$PRIVATE_NAME" A
	wait_for "the registry" 15 in_ns "$NS_HOST" curl -sS --fail --max-time 2 --cacert "$DIR/ca.pem" \
		--resolve "$PRIVATE_NAME:443:$REG_IP" "https://$PRIVATE_NAME/v2/"
	wait_for "the other host" 15 in_ns "$NS_HOST" curl -sS --fail --max-time 2 --cacert "$DIR/ca.pem" \
		--resolve "$OTHER_NAME:443:$OTHER_IP" "https://$OTHER_NAME/v2/"
	push_blob
	UP_DONE=1

	log "up: $(cat "$DIR/dns-kind") DNS on $BRIDGE_IP:53; CA $DIR/ca.pem; blob lab/blob@$(cat "$DIR/blob.digest")"
	if [ "$(cat "$DIR/dns-kind")" = standin ]; then
		log "no DNSBRIDGE_BIN with 'serve --egress-set': a stand-in (knot) answers $PRIVATE_NAME -> $REG_IP"
	fi
}

cmd_status() {
	local ns up=0 f
	for ns in "${ALL_NS[@]}"; do
		if ns_exists "$ns"; then
			echo "namespace $ns: present"
			up=$((up + 1))
		else
			echo "namespace $ns: absent"
		fi
	done
	if [ -d "$DIR" ]; then
		for f in "$DIR"/*.pid; do
			[ -e "$f" ] || continue
			local pid
			pid=$(cat "$f")
			if [ -d "/proc/$pid" ]; then
				echo "process $(basename "$f" .pid): running (pid $pid)"
			else
				echo "process $(basename "$f" .pid): not running"
			fi
		done
		[ -f "$DIR/dns-kind" ] && echo "DNS on $BRIDGE_IP:53: $(cat "$DIR/dns-kind")"
	fi
	if ns_exists "$NS_HOST"; then
		echo "--- iptables in $NS_HOST"
		in_ns "$NS_HOST" iptables -w -S
		echo "--- ipsets in $NS_HOST"
		in_ns "$NS_HOST" ipset list -t 2>/dev/null | grep -E '^(Name|Header|Number of entries):' || true
	fi
	[ "$up" -eq "${#ALL_NS[@]}" ]
}

cmd_exec() {
	[ $# -ge 2 ] || die "usage: lab.sh exec host|vm|reg|dns|other CMD..."
	local role=$1
	shift
	case $role in
	host) in_ns "$NS_HOST" "$@" ;;
	reg) in_ns "$NS_REG" "$@" ;;
	dns) in_ns "$NS_DNS" "$@" ;;
	other) in_ns "$NS_OTHER" "$@" ;;
	vm)
		# The microVM's resolver is the proxy: bind the lab's resolv.conf over
		# /etc/resolv.conf in a private mount namespace of this command only.
		[ -f "$DIR/vm-resolv.conf" ] || die "the lab is not up"
		ip netns exec "$NS_VM" unshare -m sh -c \
			'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$DIR/vm-resolv.conf" "$@"
		;;
	*) die "unknown role $role (host|vm|reg|dns|other)" ;;
	esac
}

cmd_zone_set() {
	[ $# -ge 1 ] || die "usage: lab.sh zone-set IP [TTL]"
	local ip=$1 ttl=${2:-$TTL} serial
	[ -f "$DIR/zone.serial" ] || die "the lab is not up"
	serial=$(($(cat "$DIR/zone.serial") + 1))
	echo "$serial" >"$DIR/zone.serial"
	upstream_zone "$ip" "$ttl" "$serial" >"$DIR/knot-dns/example.net.zone"
	in_ns "$NS_DNS" knotc -c "$DIR/knot-dns.conf" zone-reload example.net >/dev/null
	local i
	for ((i = 0; i < 50; i++)); do
		if in_ns "$NS_HOST" kdig +short +time=1 +retry=0 @"$DNS_IP" "$PUBLIC_NAME" A 2>/dev/null | grep -qx "$ip"; then
			log "$PUBLIC_NAME -> $ip (TTL $ttl, serial $serial)"
			return 0
		fi
		sleep 0.1
	done
	die "knot did not pick up the new zone"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
exec)
	shift
	cmd_exec "$@"
	;;
zone-set)
	shift
	cmd_zone_set "$@"
	;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
