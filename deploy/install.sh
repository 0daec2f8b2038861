#!/usr/bin/env bash
# Installs a relay or signaling on one VPS (Debian 12 or Ubuntu 22.04+, systemd), or into a
# directory (--root) to look at first. Run it again to upgrade: it changes only what differs.
#
#   deploy/install.sh relay --dist DIR --region eu-central --public-ip 203.0.113.10 \
#       --signaling-url https://signaling.example.com --cluster-token-file token.txt
#   deploy/install.sh signaling --dist DIR --region eu-central:50.11:8.68 \
#       --region us-east:39.04:-77.49 --region ap-southeast:1.29:103.85
#
# --dist DIR holds the build's binaries and its SHA256SUMS (scripts/dist.sh makes both); every
# binary is checked against SHA256SUMS before anything is written, and a mismatch installs
# nothing. What it writes (under --root, default /):
#   /usr/local/bin/{relay|signaling}, /usr/local/bin/relayctl      the checked binaries
#   /etc/relay/relay.toml, /etc/signaling/signaling.toml           only when missing: yours after
#   (the same with .dist)                                          what the options give (to diff)
#   /etc/relay/secrets.env, /etc/signaling/secrets.env             tokens and keys (mode 600)
#   /etc/systemd/system/{relay|signaling}.service                  the hardened units of deploy/
#   /etc/systemd/system/signaling-backup.{service,timer}           signaling's daily backup
#   /etc/relay/link/ (--link-dir: from relayctl ca issue)          the relay's link certificate
#   /etc/systemd/system/relay.service.d/50-link-key.conf           its key, via systemd credentials
#   /etc/relay/tls/ (--tls-cert/--tls-key: e.g. certbot's files)   TURN/TLS and the SFU's HTTPS,
#   /etc/systemd/system/relay.service.d/50-tls.conf                the key readable by the relay
#   /etc/letsencrypt/renewal-hooks/deploy/50-relay.sh              (group relay-tls); certbot's
#                                                                  renewals copied there
#   /etc/sysctl.d/60-relay.conf                                    socket buffers, port ranges
#   /etc/nftables.d/{relay|signaling}.nft                          the ports the config uses
#   /etc/systemd/journald.conf.d/60-remote-play.conf               log retention
# On a live system (--root / with systemd running) it then applies them: sysctl, nftables,
# journald, daemon-reload, enable and start; a changed binary, unit or secret restarts the
# service. The relay restarts gracefully: SIGTERM drains it (signaling places new sessions
# elsewhere) and it exits when its last session ends, then systemd starts the new binary
# (`systemctl restart --no-block`: the script does not wait hours for that).
#
# The last line says how many files changed: 0 on a second run with the same inputs.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    echo "options: --root DIR --dist DIR --firewall nft|none --ssh-port N --no-start" >&2
    echo "  relay: --region ID --public-ip IP [--relay-id ID] [--public-host NAME] --signaling-url URL" >&2
    echo "         [--cluster-token-file F] [--listen-port 3478] [--min-port 49152 --max-port 65535]" >&2
    echo "         [--sfu-port 8443] [--link-dir DIR] [--link-port 4433] [--link-peer IP]..." >&2
    echo "         [--admin-listen ADDR]" >&2
    echo "         [--monitor-from CIDR] [--tls-cert F --tls-key F [--tls-port 443]] [--allow-peer CIDR]..." >&2
    echo "  signaling: --region ID:LAT:LON... [--listen ADDR] [--database-url-file F]" >&2
    exit 2
}
die() { echo "install.sh: $*" >&2; exit 1; }

role=${1:-}
[[ $role == relay || $role == signaling ]] || usage
shift
root=/ dist="" firewall=nft ssh_port=22 start=yes
region="" regions=() public_ip="" relay_id="" public_host="" signaling_url="" token_file=""
listen_port=3478 min_port=49152 max_port=65535 sfu_port=8443 link_port=4433 link_peers=()
admin_listen=127.0.0.1:9090 monitor_from="" tls_cert="" tls_key="" tls_port=443 allow_peers=()
listen=127.0.0.1:8080 database_url_file="" link_dir=""
while (($#)); do
    opt=$1
    [[ $# -ge 2 || $opt == --no-start || $opt == -h || $opt == --help ]] || die "$opt needs a value"
    case $opt in
    --root) root=$2 ;;
    --dist) dist=$2 ;;
    --firewall) firewall=$2 ;;
    --ssh-port) ssh_port=$2 ;;
    --no-start) start=no; shift; continue ;;
    --region) region=$2; regions+=("$2") ;;
    --public-ip) public_ip=$2 ;;
    --relay-id) relay_id=$2 ;;
    --public-host) public_host=$2 ;;
    --signaling-url) signaling_url=$2 ;;
    --cluster-token-file) token_file=$2 ;;
    --listen-port) listen_port=$2 ;;
    --min-port) min_port=$2 ;;
    --max-port) max_port=$2 ;;
    --sfu-port) sfu_port=$2 ;;
    --link-port) link_port=$2 ;;
    --link-peer) link_peers+=("$2") ;;
    --link-dir) link_dir=$2 ;;
    --admin-listen) admin_listen=$2 ;;
    --monitor-from) monitor_from=$2 ;;
    --tls-cert) tls_cert=$2 ;;
    --tls-key) tls_key=$2 ;;
    --tls-port) tls_port=$2 ;;
    --allow-peer) allow_peers+=("$2") ;;
    --listen) listen=$2 ;;
    --database-url-file) database_url_file=$2 ;;
    -h | --help) usage ;;
    *) die "unknown option $opt (--help lists them)" ;;
    esac
    shift 2
done

here=$(cd "$(dirname "$0")" && pwd)
root=${root%/}
[[ -n $dist ]] || die "--dist: the directory with the build's binaries and SHA256SUMS is required"
[[ -f $dist/SHA256SUMS ]] || die "--dist: $dist/SHA256SUMS is missing (scripts/dist.sh writes it)"
[[ $firewall == nft || $firewall == none ]] || die "--firewall: nft or none, not $firewall"
port_ok() {
    if ! [[ $2 =~ ^[0-9]+$ ]] || (($2 < 1 || $2 > 65535)); then die "$1: a port (1-65535), not '$2'"; fi
}
port_ok --ssh-port "$ssh_port"

# The binaries, checked against SHA256SUMS before anything is written.
binaries=("$role" relayctl)
for bin in "${binaries[@]}"; do
    [[ -f $dist/$bin ]] || die "--dist: $dist/$bin is missing"
    want=$(awk -v f="$bin" '$2 == f || $2 == "*" f { print $1 }' "$dist/SHA256SUMS")
    [[ -n $want ]] || die "$bin is not listed in $dist/SHA256SUMS: not installing anything"
    have=$(sha256sum "$dist/$bin" | cut -d' ' -f1)
    [[ $have == "$want" ]] || die "$dist/$bin: SHA-256 $have does not match SHA256SUMS ($want): not installing anything"
done

# Everything is checked before anything is written.
if [[ $role == relay ]]; then
    [[ -n $region ]] || die "--region: the region this relay serves (as signaling names it) is required"
    [[ $region =~ ^[a-z0-9-]{1,64}$ ]] || die "--region: 1-64 of a-z, 0-9 and '-', not '$region'"
    [[ -n $public_ip ]] || die "--public-ip: the address players reach this VPS on is required"
    [[ -n $signaling_url ]] || die "--signaling-url: signaling's URL is required"
    [[ $signaling_url =~ ^https?:// ]] || die "--signaling-url: an http(s) URL, not '$signaling_url'"
    relay_id=${relay_id:-$(hostname | tr '[:upper:]' '[:lower:]')}
    public_host=${public_host:-$public_ip}
    for p in listen-port:$listen_port min-port:$min_port max-port:$max_port sfu-port:$sfu_port link-port:$link_port \
        tls-port:$tls_port; do
        port_ok "--${p%%:*}" "${p#*:}"
    done
    ((min_port < max_port)) || die "--min-port/--max-port: $min_port..$max_port is empty"
    if [[ -n $tls_cert || -n $tls_key ]]; then
        [[ -n $tls_cert && -n $tls_key ]] || die "--tls-cert and --tls-key go together"
        [[ -f $tls_cert ]] || die "--tls-cert: $tls_cert does not exist"
        [[ -f $tls_key ]] || die "--tls-key: $tls_key does not exist"
    fi
    # The kernel's ephemeral ports (outgoing connections) must stay out of the relay port range.
    if ((min_port >= 33768)); then
        ephemeral="32768 $((min_port - 1))"
    elif ((max_port < 32768)); then
        ephemeral=""
    else
        die "--min-port/--max-port: $min_port..$max_port overlaps the kernel's ephemeral ports (32768-60999); take 49152-65535 or a range below 32768"
    fi

    if [[ -n $link_dir ]]; then
        for f in ca.pem "$relay_id.pem" "$relay_id.key"; do
            [[ -f $link_dir/$f ]] || die "--link-dir: $link_dir/$f is missing (relayctl ca issue $relay_id --dir CA_DIR --out $link_dir, and ca.pem beside)"
        done
    fi
    peers_toml=""
    for cidr in "${allow_peers[@]}"; do
        [[ $cidr =~ ^[0-9a-fA-F.:]+(/[0-9]{1,3})?$ ]] || die "--allow-peer: an address or CIDR, not '$cidr'"
        peers_toml+="${peers_toml:+, }\"$cidr\""
    done
    if [[ -n $token_file ]]; then
        [[ -f $token_file ]] || die "--cluster-token-file: $token_file does not exist"
        token=$(tr -d '\r\n' <"$token_file")
        [[ -n $token ]] || die "--cluster-token-file: $token_file is empty"
    elif [[ ! -f $root/etc/relay/secrets.env ]]; then
        die "--cluster-token-file: the cluster token (signaling's auth.cluster_token) is required on the first install"
    fi
else
    ((${#regions[@]})) || die "--region ID:LAT:LON: at least one region is required"
    region_toml=""
    for r in "${regions[@]}"; do
        IFS=: read -r id lat lon <<<"$r"
        [[ $id =~ ^[a-z0-9-]{1,64}$ && $lat =~ ^-?[0-9.]+$ && $lon =~ ^-?[0-9.]+$ ]] ||
            die "--region: ID:LAT:LON (e.g. eu-central:50.11:8.68), not '$r'"
        region_toml+="
[[regions]]
id = \"$id\"
lat = $lat
lon = $lon
"
    done
    if [[ -n $database_url_file ]]; then
        [[ -f $database_url_file ]] || die "--database-url-file: $database_url_file does not exist"
        url=$(tr -d '\r\n' <"$database_url_file")
        [[ $url =~ ^postgres(ql)?:// ]] || die "--database-url-file: a postgres:// URL is expected"
    fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
changed=() unchanged=0

# put SRC PATH MODE: installs SRC at $root/PATH (atomically: a running binary keeps its old file)
# unless the same content and mode are there already.
put() {
    local src=$1 path=$2 mode=$3 dest=$root$2
    if [[ -f $dest ]] && cmp -s "$src" "$dest" && [[ $(stat -c %a "$dest") == "$mode" ]]; then
        unchanged=$((unchanged + 1))
        return
    fi
    mkdir -p "$(dirname "$dest")"
    install -m "$mode" "$src" "$dest.install-new"
    mv -f "$dest.install-new" "$dest"
    changed+=("$path")
    echo "  wrote $path"
}
# text PATH MODE: installs stdin at PATH.
text() {
    local tmp
    tmp=$(mktemp -p "$work")
    cat >"$tmp"
    put "$tmp" "$1" "$2"
}
# once PATH MODE: installs stdin at PATH only if nothing is there (the operator's file after),
# and always at PATH.dist: what these options give. When the options change (PATH.dist with
# them) and PATH stays the operator's, it says so: diff the two and merge.
once() {
    local tmp
    tmp=$(mktemp -p "$work")
    cat >"$tmp"
    if [[ ! -e $root$1 ]]; then
        put "$tmp" "$1" "$2"
        put "$tmp" "$1.dist" "$2"
        return
    fi
    unchanged=$((unchanged + 1))
    put "$tmp" "$1.dist" "$2"
    if cmp -s "$tmp" "$root$1"; then
        echo "  kept $1 (as these options give it)"
    elif was_changed "$1.dist"; then
        echo "  kept $1 (yours), but these options give another: diff $1 $1.dist, and merge"
    else
        echo "  kept $1 (yours: delete it to get a fresh one from $1.dist)"
    fi
}
was_changed() {
    local p
    for p in "${changed[@]}"; do [[ $p == "$1" ]] && return 0; done
    return 1
}

echo "installing $role into ${root:-/}"
for bin in "${binaries[@]}"; do put "$dist/$bin" "/usr/local/bin/$bin" 755; done

# nft_rules ROLE: the start of the role's file of nftables rules. Both roles share one table,
# inet remote_play: its input chain drops everything but replies, loopback, ICMP and ssh, then
# jumps to one chain per role (relay, signaling), so that a VPS with both accepts what either
# needs (two tables each dropping by policy would accept only what both accept). Each file
# rebuilds the input chain and its own chain only: loaded alone, again, or after the other
# role's, in any order, the result is the same. The role's rules follow, then "}" twice.
nft_rules() {
    cat <<EOF
table inet remote_play {
    chain relay {
    }
    chain signaling {
    }
    chain input {
        type filter hook input priority filter; policy drop;
    }
}
flush chain inet remote_play input
flush chain inet remote_play $1
table inet remote_play {
    chain input {
        ct state established,related accept
        ct state invalid drop
        iif "lo" accept
        meta l4proto { icmp, ipv6-icmp } accept
        tcp dport $ssh_port accept comment "ssh"
        jump relay
        jump signaling
    }
    chain $1 {
EOF
}

journald() {
    text /etc/systemd/journald.conf.d/60-remote-play.conf 644 <<'EOF'
# Written by deploy/install.sh. The relay and signaling log one line per event to the journal
# (log.format = "json" for Loki). Keep two weeks within 2 GiB, and let a burst of warnings (an
# attack, a failing region) through instead of rate-limiting it away.
[Journal]
SystemMaxUse=2G
MaxRetentionSec=14day
RateLimitIntervalSec=30s
RateLimitBurst=20000
EOF
}

if [[ $role == relay ]]; then
    tls="" sfu_tls=""
    if [[ -n $tls_cert ]]; then
        tls="[tls]
# TURN over TLS for networks that pass only HTTPS. Copies of --tls-cert/--tls-key (certbot's
# deploy hook copies renewals here); the relay picks new files up within watch_secs without
# dropping a connection.
cert = \"/etc/relay/tls/fullchain.pem\"
key = \"/etc/relay/tls/privkey.pem\"
listen = [\"0.0.0.0:$tls_port\"]
"
        sfu_tls="# HTTPS for WHIP and WHEP (pages served over https may call only https), same certificate.
tls_cert = \"/etc/relay/tls/fullchain.pem\"
tls_key = \"/etc/relay/tls/privkey.pem\"
public_url = \"https://$public_host:$sfu_port\"
"
    fi
    if [[ -n $link_dir ]]; then
        link_toml="[link]
# Links to the other relays (QUIC, mutual TLS with the cluster CA). The key is root's
# (/etc/relay/link/$relay_id.key, mode 600): systemd hands it to the relay as a credential
# (relay.service.d/50-link-key.conf sets RELAY_LINK_KEY).
listen = \"0.0.0.0:$link_port\"
ca = \"/etc/relay/link/ca.pem\"
cert = \"/etc/relay/link/$relay_id.pem\"
"
    else
        link_toml="[link]
# Links to the other relays: run install.sh again with --link-dir (relayctl ca issue $relay_id
# --dir CA_DIR --out DIR, and the CA's ca.pem in DIR) after deleting this file.
"
    fi
    once /etc/relay/relay.toml 644 <<EOF
# Written once by deploy/install.sh ($role, region $region); yours from now on. No secrets here
# (the cluster token is in secrets.env). Every key is documented in configs/relay.toml. Check it with: relay check-config --config /etc/relay/relay.toml
[server]
listen = "0.0.0.0:$listen_port"

[relay]
external_ip = "$public_ip"
min_port = $min_port
max_port = $max_port

[peers]
# Peers the relay may relay to beyond the public internet (it refuses private, loopback and
# link-local addresses unless listed here).
allow = [$peers_toml]

[admin]
# Metrics and health. On a private address when Prometheus scrapes it from elsewhere.
listen = "$admin_listen"

[log]
format = "json"

[shutdown]
# A restart (an upgrade) drains: no new sessions, exit when the last one ends, at the latest after
# four hours (signaling's longest session). relay.service's TimeoutStopSec matches.
grace_secs = 14400

[cluster]
signaling_url = "$signaling_url"
region = "$region"
relay_id = "$relay_id"
public_host = "$public_host"

[sfu]
http_listen = "0.0.0.0:$sfu_port"
$sfu_tls
$link_toml$tls
EOF
    if [[ -n $token_file ]]; then
        text /etc/relay/secrets.env 600 <<EOF
# Written by deploy/install.sh: the cluster token the relay presents to signaling.
RELAY_CLUSTER_TOKEN=$token
EOF
    fi
    put "$here/relay.service" /etc/systemd/system/relay.service 644
    if [[ -n $link_dir ]]; then
        put "$link_dir/ca.pem" /etc/relay/link/ca.pem 644
        put "$link_dir/$relay_id.pem" "/etc/relay/link/$relay_id.pem" 644
        put "$link_dir/$relay_id.key" "/etc/relay/link/$relay_id.key" 600
        text /etc/systemd/system/relay.service.d/50-link-key.conf 644 <<EOF
# Written by deploy/install.sh: the relay's link key, readable by root alone, handed to the
# relay's dynamic user by systemd (a copy in the service's credentials directory, %d).
[Service]
LoadCredential=link-key:/etc/relay/link/$relay_id.key
Environment=RELAY_LINK_KEY=%d/link-key
EOF
    fi
    if [[ -n $tls_cert ]]; then
        put "$tls_cert" /etc/relay/tls/fullchain.pem 644
        put "$tls_key" /etc/relay/tls/privkey.pem 640
        text /etc/systemd/system/relay.service.d/50-tls.conf 644 <<EOF
# Written by deploy/install.sh: the relay's dynamic user is in group relay-tls, which may read
# /etc/relay/tls/privkey.pem (root:relay-tls, 640). Not a credential copy: the relay must see
# renewed files (certbot's deploy hook) without a restart.
[Service]
SupplementaryGroups=relay-tls
EOF
        lineage=$(dirname "$tls_cert")
        if [[ $lineage == /etc/letsencrypt/live/* ]]; then
            text /etc/letsencrypt/renewal-hooks/deploy/50-relay.sh 755 <<EOF
#!/bin/sh
# Written by deploy/install.sh: when certbot renews $lineage, copy the files where the relay reads
# them and have it reload them (no restart, no dropped connection).
set -e
[ "\$RENEWED_LINEAGE" = "$lineage" ] || exit 0
install -m 644 "\$RENEWED_LINEAGE/fullchain.pem" /etc/relay/tls/fullchain.pem.new
install -m 640 -g relay-tls "\$RENEWED_LINEAGE/privkey.pem" /etc/relay/tls/privkey.pem.new
mv -f /etc/relay/tls/privkey.pem.new /etc/relay/tls/privkey.pem
mv -f /etc/relay/tls/fullchain.pem.new /etc/relay/tls/fullchain.pem
# Now rather than at the next watch: a reload keeps every session.
systemctl reload relay 2>/dev/null || true
EOF
        fi
    fi

    sysctls=$work/sysctl.conf
    {
        echo "# Written by deploy/install.sh for the relay."
        echo "# The relay asks for 4 MiB of buffer on its listening socket (server.socket_buffer_bytes)"
        echo "# and 1 MiB on each relay socket; it uses SO_RCVBUFFORCE where it may, else the kernel"
        echo "# caps the request at these. Too small, and a burst (a key frame to many viewers) drops."
        echo "net.core.rmem_max = 8388608"
        echo "net.core.wmem_max = 8388608"
        echo "# Packets queued per CPU before the relay's threads read them: room for bursts."
        echo "net.core.netdev_max_backlog = 16384"
        if [[ -n $ephemeral ]]; then
            echo "# The kernel's ephemeral ports (outgoing connections) below the relay port range"
            echo "# ($min_port-$max_port), so that no outgoing connection holds a port the relay hands out."
            echo "net.ipv4.ip_local_port_range = $ephemeral"
        fi
    } >"$sysctls"
    put "$sysctls" /etc/sysctl.d/60-relay.conf 644

    if [[ $firewall == nft ]]; then
        if [[ -z $link_dir && ! -d $root/etc/relay/link ]]; then
            link_rule=""
        elif ((${#link_peers[@]})); then
            peers=$(IFS=,; echo "${link_peers[*]}")
            link_rule="udp dport $link_port ip saddr { $peers } accept comment \"relay links (QUIC), the other relays only\""
        else
            link_rule="udp dport $link_port accept comment \"relay links (QUIC; mutual TLS; give --link-peer to admit only the relays)\""
        fi
        admin_rule=""
        admin_port=${admin_listen##*:}
        if [[ -n $monitor_from ]]; then
            admin_rule="tcp dport $admin_port ip saddr $monitor_from accept comment \"metrics for Prometheus\""
        fi
        tls_rule=""
        [[ -n $tls_cert ]] && tls_rule="tcp dport $tls_port accept comment \"TURN over TLS\"
        tcp dport 80 accept comment \"certbot's HTTP challenge (renewals)\""
        cat >"$work/relay.nft" <<EOF
# Written by deploy/install.sh: the ports /etc/relay/relay.toml uses, and ssh; everything else
# inbound is dropped (signaling.nft, on a VPS with both, adds its ports to the same table).
# Loaded by /etc/nftables.conf (include "/etc/nftables.d/*.nft").
$(nft_rules relay)
        udp dport $listen_port accept comment "STUN/TURN and the SFU's WebRTC media"
        tcp dport $listen_port accept comment "TURN over TCP"
        $tls_rule
        tcp dport $sfu_port accept comment "the SFU's WHIP and WHEP"
        udp dport $min_port-$max_port accept comment "relay ports (TURN allocations)"
        $link_rule
        $admin_rule
    }
}
EOF
        # Without the optional rules' empty lines.
        sed -i '/^[[:space:]]*$/d' "$work/relay.nft"
        put "$work/relay.nft" /etc/nftables.d/relay.nft 644
    fi
    journald
else
    once /etc/signaling/signaling.toml 644 <<EOF
# Written once by deploy/install.sh; yours from now on. Every key is documented in
# configs/signaling.toml. The JWT key and the cluster token are in secrets.env.
[server]
# Behind the TLS proxy (deploy/Caddyfile) on this host.
listen = "$listen"
trusted_proxies = ["127.0.0.1", "::1"]

[store]
# The embedded SQLite database in /var/lib/signaling (systemd's StateDirectory), unless
# SIGNALING_DATABASE_URL in secrets.env names a PostgreSQL database.
data_dir = "/var/lib/signaling"

[log]
format = "json"
$region_toml
EOF
    # Secrets: made once, kept after (relays and tokens depend on them).
    secrets=$work/secrets.env
    if [[ -f $root/etc/signaling/secrets.env ]]; then
        cp "$root/etc/signaling/secrets.env" "$secrets"
    else
        {
            echo "# Written by deploy/install.sh. SIGNALING_CLUSTER_TOKEN is what every relay presents"
            echo "# (install.sh relay --cluster-token-file); SIGNALING_JWT_KEY signs players' tokens."
            echo "SIGNALING_JWT_KEY=$(head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1)"
            echo "SIGNALING_CLUSTER_TOKEN=$(head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1)"
        } >"$secrets"
    fi
    if [[ -n $database_url_file ]]; then
        grep -v '^SIGNALING_DATABASE_URL=' "$secrets" >"$secrets.new" || true
        echo "SIGNALING_DATABASE_URL=$url" >>"$secrets.new"
        mv "$secrets.new" "$secrets"
    fi
    put "$secrets" /etc/signaling/secrets.env 600
    put "$here/signaling.service" /etc/systemd/system/signaling.service 644
    put "$here/signaling-backup.service" /etc/systemd/system/signaling-backup.service 644
    put "$here/signaling-backup.timer" /etc/systemd/system/signaling-backup.timer 644
    if [[ $firewall == nft ]]; then
        text /etc/nftables.d/signaling.nft 644 <<EOF
# Written by deploy/install.sh: ssh and the TLS proxy in front of signaling (80 for ACME's
# HTTP challenge, 443); signaling itself listens on loopback. Everything else inbound is dropped
# (relay.nft, on a VPS with both, adds its ports to the same table).
$(nft_rules signaling)
        tcp dport { 80, 443 } accept comment "the TLS proxy in front of signaling"
    }
}
EOF
    fi
    journald
fi

# Whether a change needs the service restarted: anything but the firewall, sysctls, journald and
# the .dist configs.
needs_restart() {
    local p
    for p in "${changed[@]}"; do
        [[ $p == /etc/nftables.d/* || $p == /etc/sysctl.d/* || $p == /etc/systemd/journald.conf.d/* || $p == *.dist ]] || return 0
    done
    return 1
}

# Apply on a live system.
if [[ -z $root && $start == yes && -d /run/systemd/system ]]; then
    if was_changed /etc/sysctl.d/60-relay.conf; then
        sysctl -q -p /etc/sysctl.d/60-relay.conf ||
            echo "  warning: the sysctls were not applied (a container?): set them on the host"
    fi
    if [[ $firewall == nft ]] && was_changed "/etc/nftables.d/$role.nft"; then
        grep -q '^include "/etc/nftables.d/\*.nft"' /etc/nftables.conf 2>/dev/null ||
            echo 'include "/etc/nftables.d/*.nft"' >>/etc/nftables.conf
        nft -f "/etc/nftables.d/$role.nft"
        # The table of install.sh's first versions, one per role (dropped what the other accepted).
        if nft list table inet "remote_play_$role" >/dev/null 2>&1; then nft delete table inet "remote_play_$role"; fi
        systemctl enable -q nftables
    fi
    if was_changed /etc/systemd/journald.conf.d/60-remote-play.conf; then systemctl restart systemd-journald; fi
    if [[ -f /etc/relay/tls/privkey.pem ]]; then
        getent group relay-tls >/dev/null || groupadd --system relay-tls
        chgrp relay-tls /etc/relay/tls/privkey.pem
    fi
    systemctl daemon-reload
    systemctl enable -q "$role"
    if [[ $role == signaling ]]; then systemctl enable -q --now signaling-backup.timer; fi
    if ! systemctl is-active -q "$role"; then
        systemctl start "$role"
        echo "  started $role"
    elif needs_restart; then
        # SIGTERM drains: the running sessions go on; the new binary starts when they have ended.
        systemctl restart --no-block "$role"
        echo "  restarting $role: draining (systemctl status $role shows when the new one runs)"
    fi
elif [[ $start == yes ]]; then
    echo "  not applied (--root, or no systemd running): copy the files, or run without --root"
fi
echo "$role: ${#changed[@]} changed, $unchanged unchanged"
