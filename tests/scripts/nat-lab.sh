#!/bin/bash
# Two homes behind two Linux NAT routers and a public segment, built from network
# namespaces, veth pairs, a bridge and nftables (after ../shared/recipes/nat-lab.sh).
# Nothing is connected to the host's uplink: every address below exists only inside the
# namespaces this script creates.
#
#   [h1 192.168.1.10] --lan-- [r1 NAT (+ miniupnpd)] --wan 11.0.0.11 --+
#                                                                    [inet br0 11.0.0.1]
#   [h2 192.168.2.10] --lan-- [r2 NAT]               --wan 11.0.0.12 --+
#
# 11.0.0.0/24 stands in for the internet because miniupnpd and UPnP clients refuse a
# private WAN address; it never leaves these namespaces.
#
# usage: nat-lab.sh up R1MODE R2MODE [upnp|upnp1|upnp6|natpmp|none] [v6] | upnp-start [upnp|upnp1|upnp6|natpmp] [HTTP_PORT] |
#        upnp-stop | h1-readdress IP | add-h3 | down
#   MODE: moderate = Linux masquerade (endpoint-independent mapping, port-dependent filtering)
#         strict   = masquerade random (endpoint-dependent mapping: a new port per destination)
#   upnp: run a real miniupnpd (nftables backend, secure mode) on r1, speaking IGDv2;
#   upnp1: the same, forced to describe itself as IGDv1 (WANIPConnection:1)
#   natpmp: the same miniupnpd with UPnP off and NAT-PMP on (a router that speaks NAT-PMP only;
#     the UPnP modes have NAT-PMP off, so each case tests one protocol: with both on, a node
#     that hears the PCP ANNOUNCE miniupnpd sends as it starts may ask before its SSDP answers,
#     and map over NAT-PMP instead, which is fine but makes the UPnP cases a coin toss)
#   upnp6: IGDv2 that maps no IPv4 port (its permission rules deny all, as a router behind
#     carrier-grade NAT or DS-Lite has nothing to map) but opens IPv6 pinholes
#   upnp-start: start that miniupnpd later, on a lab that is up without one (or restart it
#     after upnp-stop, with an empty lease table, maybe on another HTTP port like a router
#     that rebooted)
#   upnp-stop: stop it (SIGTERM, as a router shutting down)
#   h1-readdress IP: home 1's host moves from 192.168.1.10 to IP (same /24)
# Namespace names get the prefix $NATLAB_PREFIX (default "kl-") so the lab never touches
# namespaces it did not make; files go to $NATLAB_DIR (default /tmp/kith-natlab).
set -euo pipefail
P=${NATLAB_PREFIX:-kl-}
LAB=${NATLAB_DIR:-/tmp/kith-natlab}
# The namespaces `up` makes; `add-h3` adds one more, and `down` removes them all.
NS_UP="${P}inet ${P}r1 ${P}r2 ${P}h1 ${P}h2"
NS="$NS_UP ${P}h3"

down() {
  for n in $NS; do ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  for n in $NS; do ip netns del "$n" 2>/dev/null || true; done
  rm -f "$LAB/upnp.leases" "$LAB/miniupnpd.uuid"
}

router() { # router NAME MODE
  local r=$1 mode=$2 flag=""
  [ "$mode" = strict ] && flag=" random"
  # The layout miniupnpd's nftables backend expects (chains miniupnpd, prerouting_miniupnpd,
  # postrouting_miniupnpd in table inet filter); harmless where no miniupnpd runs.
  ip netns exec "$r" nft -f - <<NFT
table inet filter {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
    jump miniupnpd
  }
  chain miniupnpd { }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
    meta nfproto ipv4 oifname "wan" masquerade$flag
  }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
table inet wanfw {
  chain input { type filter hook input priority 0; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" ct state new drop
  }
}
NFT
}

up() {
  local m1=$1 m2=$2 upnp=${3:-} v6=${4:-}
  mkdir -p "$LAB"
  for n in $NS_UP; do ip netns add "$n"; ip -n "$n" link set lo up; done
  ip -n "${P}inet" link add br0 type bridge
  ip -n "${P}inet" link set br0 up
  ip -n "${P}inet" addr add 11.0.0.1/24 dev br0
  local i=0
  for r in r1 r2; do
    i=$((i+1))
    local rn="${P}$r" hn="${P}h$i"
    ip link add wan netns "$rn" type veth peer name "p-$r" netns "${P}inet"
    ip -n "${P}inet" link set "p-$r" master br0 up
    ip -n "$rn" addr add "11.0.0.1$i/24" dev wan
    ip -n "$rn" link set wan up
    ip link add lan netns "$rn" type veth peer name eth0 netns "$hn"
    ip -n "$rn" addr add "192.168.$i.1/24" dev lan
    ip -n "$rn" link set lan up
    ip -n "$hn" addr add "192.168.$i.10/24" dev eth0
    ip -n "$hn" link set eth0 up
    ip -n "$hn" route add default via "192.168.$i.1"
    ip netns exec "$rn" sysctl -qw net.ipv4.ip_forward=1
  done
  [ "$v6" = v6 ] && ipv6
  router "${P}r1" "$m1"
  router "${P}r2" "$m2"
  case "$upnp" in
    upnp | upnp1 | upnp6 | natpmp) start_upnp "$upnp" ;;
  esac
}

# Global IPv6 as homes get it: no NAT, each home a /64 routed to its router, whose stateful
# firewall (the forward chain above, for both families) lets replies and nothing new in.
# 2a0f::/64 is the public segment (the relay at 2a0f::1, router i's WAN at 2a0f::1i), home i
# is 2a0f:i::/64 (router 2a0f:i::1, host 2a0f:i::10). Not a documentation prefix: software
# may treat those as not global.
ipv6() {
  ip -n "${P}inet" addr add 2a0f::1/64 dev br0 nodad
  ip netns exec "${P}inet" sysctl -qw net.ipv6.conf.all.forwarding=1
  for i in 1 2; do
    local rn="${P}r$i" hn="${P}h$i"
    ip netns exec "$rn" sysctl -qw net.ipv6.conf.all.forwarding=1
    ip -n "$rn" addr add "2a0f::1$i/64" dev wan nodad
    ip -n "$rn" addr add "2a0f:$i::1/64" dev lan nodad
    ip -n "$rn" -6 route add default via 2a0f::1
    ip -n "$hn" addr add "2a0f:$i::10/64" dev eth0 nodad
    ip -n "$hn" -6 route add default via "2a0f:$i::1"
    ip -n "${P}inet" -6 route add "2a0f:$i::/64" via "2a0f::1$i"
  done
}

# Starts miniupnpd on r1 (upnp: IGDv2, upnp1: IGDv1, upnp6: IGDv2 with IPv6 pinholes only,
# natpmp: NAT-PMP only; HTTP on port $2, default 5000) with an empty lease file and waits until
# its HTTP port answers (its NAT-PMP socket is open, for natpmp).
start_upnp() {
  local port="${2:-5000}"
  # A router keeps its device uuid across restarts (its boot id changes).
  [ -s "$LAB/miniupnpd.uuid" ] || cat /proc/sys/kernel/random/uuid > "$LAB/miniupnpd.uuid"
  cat > "$LAB/miniupnpd.conf" <<CONF
ext_ifname=wan
listening_ip=lan
http_port=$port
enable_natpmp=$([ "$1" = natpmp ] && echo yes || echo no)
enable_upnp=$([ "$1" = natpmp ] && echo no || echo yes)
secure_mode=yes
system_uptime=yes
uuid=$(cat "$LAB/miniupnpd.uuid")
lease_file=$LAB/upnp.leases
force_igd_desc_v1=$([ "$1" = upnp1 ] && echo yes || echo no)
$([ "$1" = upnp6 ] || echo "allow 1024-65535 192.168.1.0/24 1024-65535")
deny 0-65535 0.0.0.0/0 0-65535
CONF
  : > "$LAB/upnp.leases"
  ip netns exec "${P}r1" miniupnpd -d -f "$LAB/miniupnpd.conf" -P "$LAB/miniupnpd.pid" \
    > "$LAB/miniupnpd.log" 2>&1 &
  for _ in $(seq 50); do
    if [ "$1" = natpmp ]; then
      # No HTTP server without UPnP: wait for the NAT-PMP socket.
      ip netns exec "${P}r1" ss -Huln 'sport = :5351' | grep -q 192.168.1.1 && return 0
    else
      ip netns exec "${P}r1" bash -c "exec 3<>/dev/tcp/192.168.1.1/$port" 2>/dev/null && return 0
    fi
    sleep 0.1
  done
  echo "miniupnpd did not answer on 192.168.1.1 ($1)" >&2
  return 1
}

# Stops r1's miniupnpd the way a router shutting down does (SIGTERM: it says goodbye and
# removes its rules) and waits until it is gone.
stop_upnp() {
  local pid
  pid=$(cat "$LAB/miniupnpd.pid" 2>/dev/null) || { echo "no miniupnpd running" >&2; return 1; }
  kill "$pid"
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "miniupnpd ($pid) did not stop" >&2
  return 1
}

# A second host in home 1 (h3, 192.168.1.30, and 2a0f:1::30 on a lab with IPv6): router 1's
# LAN side becomes a bridge ("lan", so its rules and miniupnpd's still match) holding h1's
# link and h3's.
add_h3() {
  local r="${P}r1"
  ip netns add "${P}h3"
  ip -n "${P}h3" link set lo up
  local addrs
  addrs=$(ip -n "$r" -o addr show dev lan | awk '$3 == "inet" || ($3 == "inet6" && $4 !~ /^fe80/) {print $4}')
  ip -n "$r" link set lan down
  ip -n "$r" link set lan name lan-h1
  ip -n "$r" link add lan type bridge
  ip -n "$r" link set lan-h1 master lan
  # (Taking the link down dropped its IPv6 addresses already.)
  ip -n "$r" addr flush dev lan-h1
  for a in $addrs; do
    case "$a" in
      *:*) ip -n "$r" addr add "$a" dev lan nodad ;;
      *) ip -n "$r" addr add "$a" dev lan ;;
    esac
  done
  ip -n "$r" link set lan-h1 up
  ip -n "$r" link set lan up
  # A home router switches its LAN ports without its firewall; with br_netfilter loaded on
  # the host, bridged packets would go through r1's forward chain (policy drop).
  ip netns exec "$r" sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
    net.bridge.bridge-nf-call-ip6tables=0 2>/dev/null || true
  ip link add lan-h3 netns "$r" type veth peer name eth0 netns "${P}h3"
  ip -n "$r" link set lan-h3 master lan
  ip -n "$r" link set lan-h3 up
  ip -n "${P}h3" addr add 192.168.1.30/24 dev eth0
  ip -n "${P}h3" link set eth0 up
  ip -n "${P}h3" route add default via 192.168.1.1
  if ip -n "$r" -6 addr show dev lan | grep -q 2a0f:1::1; then
    ip -n "${P}h3" addr add 2a0f:1::30/64 dev eth0 nodad
    ip -n "${P}h3" -6 route add default via 2a0f:1::1
  fi
}

# Home 1's host gets another address (what a new DHCP lease or another network does): the
# old one goes, the new one and the default route come.
readdress_h1() {
  ip -n "${P}h1" addr del 192.168.1.10/24 dev eth0
  ip -n "${P}h1" addr add "$1/24" dev eth0
  ip -n "${P}h1" route replace default via 192.168.1.1
}

case "${1:-}" in
  up) down; up "${2:-moderate}" "${3:-moderate}" "${4:-}" "${5:-}" ;;
  down) down ;;
  upnp-start) start_upnp "${2:-upnp}" "${3:-5000}" ;;
  upnp-stop) stop_upnp ;;
  h1-readdress) readdress_h1 "$2" ;;
  add-h3) add_h3 ;;
  *) echo "usage: $0 up R1MODE R2MODE [upnp|upnp1|upnp6|natpmp] | upnp-start [upnp|upnp1|upnp6|natpmp] [HTTP_PORT] | upnp-stop | h1-readdress IP | add-h3 | down  (up ... v6: global IPv6 behind stateful firewalls too)"; exit 2 ;;
esac
