#!/usr/bin/env bash
# The README's deployment steps ("Deployment: three regions on three VPSes"), read from the
# README and run as an operator would, on three fresh Debian 12 "VPSes": booted containers
# (systemd-nspawn on a debootstrap root, a tmpfs overlay each) with their own addresses on a
# bridge that stands for the internet, then checked as the network's users see it: signaling
# lists three relays serving, each linked to the other two; Prometheus (step 10) scrapes them
# all with the alert rules loaded; a player (another namespace, with relayctl and coturn's TURN
# client) gets each region's ICE configuration from signaling over TLS, checks each relay's
# certificate (TURN/TLS, the SFU's HTTPS) against its name, and relays packets through that
# relay over UDP and TURN/TLS, firewalls on.
#
# What a lab cannot have, and stands in for it (every other command runs as the README has it):
#   - public addresses: 203.0.113.10, 198.51.100.20, 192.0.2.30 become 10.99.0.10, .20, .30;
#     DNS is /etc/hosts on each VPS (signal.example.com, turn-{fra,ash,sin}-1.example.com);
#   - Let's Encrypt: Debian's pebble (an ACME server for tests) at 10.99.0.2; Caddy and certbot
#     are pointed at it, and its root is added to each VPS's CA store (as Let's Encrypt's is);
#   - step 1: a `ci` profile build (the release build with LTO takes 13 minutes), same dist.sh;
#   - step 3: scp copies into the container (scp is a shell function here);
#   - steps 7 and 10: certbot gets --agree-tos -m (it asks at a terminal); the monitoring files
#     are edited as step 10 says (the relays' addresses, signaling's);
#   - the player's TURN peer is on a private address, as everything here: step 8 adds
#     --allow-peer for it (relays refuse private peers by default).
# The relay in Frankfurt runs the README's command; the others the same with their region,
# address, name and id, and without --tls-port (as step 8 says).
#
#   scripts/trial.sh          needs root, systemd-nspawn, the Debian mirror; ~4 minutes
#   scripts/trial.sh --keep   leaves the VPSes running, also after a failure (--down removes them)
set -euo pipefail
# "&" in a ${var/pattern/replacement} is the replacement's "&&", not the match.
shopt -u patsub_replacement 2>/dev/null || true
cd "$(dirname "$0")/.."
repo=$(pwd)
work=/var/tmp/remote-play-trial
base=/var/lib/machines/remote-play-trial-base
net=10.99.0
hosts=(fra ash sin)
declare -A ip=([fra]=$net.10 [ash]=$net.20 [sin]=$net.30)
acme=https://$net.2:14000/dir
keep=no

say() { printf '\n== %s\n' "$*"; }
die() { echo "trial: $*" >&2; exit 1; }

down() {
    local h pid
    # The container's init first: killing systemd-nspawn alone leaves it running, with its
    # services and its tmpfs.
    for h in "${hosts[@]}"; do
        for pid in $(pgrep -f "systemd-nspawn.*--machine=rp-$h " || true); do
            # shellcheck disable=SC2046 # one PID per word
            kill -9 $(cat /proc/"$pid"/task/*/children 2>/dev/null) "$pid" 2>/dev/null || true
        done
    done
    pkill -f "pebble -config $work" 2>/dev/null || true
    pkill -f "turnutils_peer -L $net.3" 2>/dev/null || true
    sleep 1
    for ns in fra ash sin acme player; do
        ip netns del "rp-$ns" 2>/dev/null || true
        ip link del "rp-v-$ns" 2>/dev/null || true
    done
    rm -rf /etc/netns/rp-acme /etc/netns/rp-player
    ip link del rp-br 2>/dev/null || true
    nft delete table ip remote_play_trial 2>/dev/null || true
}

case ${1:-} in
--keep) keep=yes ;;
--down) down; exit 0 ;;
"") ;;
*) die "usage: scripts/trial.sh [--keep | --down]" ;;
esac
((EUID == 0)) || die "needs root (network namespaces, containers)"
# Without --keep nothing stays, whatever happens.
[[ $keep == yes ]] || trap down EXIT

say "tools"
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v pebble >/dev/null || need+=(pebble)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v nft >/dev/null || need+=(nftables)
command -v turnutils_uclient >/dev/null || need+=(coturn)
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The README's code block, step by step: step[N] holds step N's commands, one per line.
declare -A step
n=""
while IFS= read -r line; do
    if [[ $line =~ ^#\ ([0-9]+)\. ]]; then
        n=${BASH_REMATCH[1]}
    elif [[ -n $n && -n $line && $line != \#* ]]; then
        step[$n]+="$line"$'\n'
    fi
done < <(awk '/^## Deployment: three regions/ {d=1} d && /^```sh/ {c=1; next} c && /^```/ {exit} c' README.md)
for i in 1 2 3 4 5 6 7 8 9 10; do [[ -n ${step[$i]:-} ]] || die "README: step $i not found"; done
# Step 7's two commands: certbot listening itself (Virginia, Singapore), from Caddy's webroot
# (Frankfurt).
mapfile -t step7 <<<"${step[7]%$'\n'}"
((${#step7[@]} == 2)) || die "README: step 7 should have two commands"

# The lab's addresses for the README's.
lab() {
    sed -e "s/203\.0\.113\.10/$net.10/g" -e "s/198\.51\.100\.20/$net.20/g" -e "s/192\.0\.2\.30/$net.30/g"
}

down
rm -rf "$work"
mkdir -p "$work/ops"

say "the internet: a bridge, NAT to the mirror, ACME at $net.2"
ip link add rp-br type bridge
ip addr add "$net.1/24" dev rp-br
ip link set rp-br up
for ns in fra ash sin acme player; do
    case $ns in acme) a=$net.2 ;; player) a=$net.3 ;; *) a=${ip[$ns]} ;; esac
    ip netns add "rp-$ns"
    ip link add "rp-v-$ns" type veth peer name eth0 netns "rp-$ns"
    ip link set "rp-v-$ns" master rp-br up
    ip -n "rp-$ns" link set lo up
    ip -n "rp-$ns" addr add "$a/24" dev eth0
    ip -n "rp-$ns" link set eth0 up
    ip -n "rp-$ns" route add default via "$net.1"
done
sysctl -qw net.ipv4.ip_forward=1
# Each booted systemd takes inotify instances (the default 128 ran out with a few VPSes).
(($(sysctl -n fs.inotify.max_user_instances) >= 1024)) || sysctl -qw fs.inotify.max_user_instances=1024
uplink=$(ip route show default | awk '{print $5; exit}')
nft -f - <<EOF
table ip remote_play_trial {
    chain post { type nat hook postrouting priority srcnat; ip saddr $net.0/24 oifname "$uplink" masquerade; }
}
EOF
cat >"$work/hosts" <<EOF
$net.10 signal.example.com turn-fra-1.example.com
$net.20 turn-ash-1.example.com
$net.30 turn-sin-1.example.com
EOF
# ip netns exec puts /etc/netns/NAME/hosts over /etc/hosts.
for ns in acme player; do
    mkdir -p "/etc/netns/rp-$ns"
    { echo "127.0.0.1 localhost"; cat "$work/hosts"; } >"/etc/netns/rp-$ns/hosts"
done
(
    cd "$work"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout api-ca.key \
        -out api-ca.pem -days 2 -subj /CN=trial-acme-api 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout api.key -out api.csr \
        -subj /CN=acme 2>/dev/null
    openssl x509 -req -in api.csr -CA api-ca.pem -CAkey api-ca.key -CAcreateserial -out api.pem \
        -days 2 -extfile <(echo "subjectAltName=IP:$net.2") 2>/dev/null
    cat >pebble.json <<EOF
{"pebble": {"listenAddress": "$net.2:14000", "managementListenAddress": "$net.2:15000",
 "certificate": "$work/api.pem", "privateKey": "$work/api.key", "httpPort": 80, "tlsPort": 443,
 "ocspResponderURL": "", "externalAccountBindingRequired": false}}
EOF
)
PEBBLE_VA_NOSLEEP=1 ip netns exec rp-acme pebble -config "$work/pebble.json" >"$work/pebble.log" 2>&1 &
for _ in $(seq 50); do
    curl -sf --cacert "$work/api-ca.pem" "https://$net.2:15000/roots/0" >"$work/acme-root.pem" && break
    sleep 0.2
done
grep -q "BEGIN CERTIFICATE" "$work/acme-root.pem" || die "pebble did not start: $(cat "$work/pebble.log")"

say "a fresh Debian 12 (debootstrap, once: $base)"
if [[ ! -x $base/usr/bin/systemctl ]]; then
    rm -rf "$base.new"
    debootstrap --include=ca-certificates,curl,dbus,systemd-resolved bookworm "$base.new" \
        http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 || die "debootstrap: see $work/debootstrap.log"
    rm -f "$base.new/etc/hostname"
    : >"$base.new/etc/machine-id"
    mkdir -p "$base.new/etc/systemd/resolved.conf.d"
    mv "$base.new" "$base"
fi
upstream=$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf)
printf '[Resolve]\nDNS=%s\n' "$upstream" >"$base/etc/systemd/resolved.conf.d/upstream.conf"

# on HOST SCRIPT: runs a shell script as root on that VPS, in /root.
on() {
    local leader
    leader=$(cat "$work/$1.leader")
    nsenter --target "$leader" --mount --uts --ipc --pid --net -- /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        /bin/bash -c "set -eo pipefail; cd /root; $2"
}

say "three VPSes: ${hosts[*]}"
# One at a time (booted together, a container's first units sometimes failed with 219/CGROUP).
for h in "${hosts[@]}"; do
    systemd-nspawn --directory="$base" --volatile=overlay --register=no --keep-unit --boot \
        --machine="rp-$h" --hostname="$h" --network-namespace-path="/run/netns/rp-$h" \
        --capability=CAP_NET_ADMIN -- systemd.firstboot=off >"$work/$h.console" 2>&1 &
    disown
    leader=""
    for _ in $(seq 100); do
        pid=$(pgrep -f "systemd-nspawn.*--machine=rp-$h " || true)
        leader=$(cat /proc/"$pid"/task/*/children 2>/dev/null | awk '{print $1}') || true
        # (nspawn's first child is a helper that execs nothing: wait for the container's init.)
        [[ -n $leader && $(cat /proc/"$leader"/comm 2>/dev/null) == systemd ]] && break
        leader=""
        sleep 0.2
    done
    [[ -n $leader ]] || die "$h did not boot: $(tail -5 "$work/$h.console")"
    echo "$leader" >"$work/$h.leader"
    state=""
    for _ in $(seq 100); do
        state=$(on "$h" "systemctl is-system-running" 2>/dev/null) || true
        [[ $state == running || $state == degraded ]] && break
        sleep 0.3
    done
    [[ $state == running ]] || die "$h is $state: $(on "$h" 'systemctl --failed --no-legend' || true)"
done
for h in "${hosts[@]}"; do
    on "$h" "cat >>/etc/hosts" <"$work/hosts"
    on "$h" "cat >/usr/local/share/ca-certificates/acme-root.crt && update-ca-certificates >/dev/null" <"$work/acme-root.pem"
    on "$h" "cat >/usr/local/share/acme-api-ca.pem" <"$work/api-ca.pem"
    echo "$h: $(on "$h" 'hostname; ip -br -4 addr show eth0' | tr '\n' ' ')"
done

say "1. the build (ci profile) and dist/"
cargo build --profile ci -q --workspace --bins
scripts/dist.sh --from target/ci --out "$work/ops/dist"
cp -r deploy "$work/ops/"

say "2. the cluster CA and link certificates"
(cd "$work/ops" && eval "${step[2]//target\/release\//$repo/target/ci/}")

say "3. copy to each VPS"
# scp -r FILES... root@ADDRESS: into that VPS's /root.
scp() {
    local dest=${*: -1} files=("${@:2:$#-2}") h
    for h in "${hosts[@]}"; do
        if [[ $dest == "root@${ip[$h]}:" ]]; then
            tar -cf - "${files[@]}" | on "$h" "tar -xf -"
            echo "  $h: ${files[*]}"
            return
        fi
    done
    die "scp to $dest: no such VPS"
}
(cd "$work/ops" && eval "$(lab <<<"${step[3]}")")

say "4. Frankfurt: signaling"
on fra "${step[4]}"

say "5. Frankfurt: Caddy in front of signaling (ACME from the lab's CA)"
# Caddy's global options get the lab's ACME server, before the reload.
on fra "cat >/root/caddy-acme.sh" <<EOF
sed -i 's|^\temail .*|&\n\tacme_ca $acme\n\tacme_ca_root /usr/local/share/acme-api-ca.pem|' /etc/caddy/Caddyfile
EOF
cmd5=${step[5]/ && systemctl reload caddy/ && sh /root/caddy-acme.sh && systemctl reload caddy}
[[ $cmd5 != "${step[5]}" ]] || die "README step 5 changed: update trial.sh"
on fra "export DEBIAN_FRONTEND=noninteractive; ${cmd5/apt-get install -y caddy/apt-get install -y -qq caddy >/dev/null}"
for _ in $(seq 60); do
    on fra "curl -sf https://signal.example.com/healthz" >/dev/null 2>&1 && break
    sleep 0.5
done
on fra "curl -sS https://signal.example.com/healthz && echo"

say "6. Frankfurt: the cluster token"
on fra "${step[6]}"
token=$(on fra "cat /root/token")
for h in ash sin; do on "$h" "cat >/root/token" <<<"$token"; done

say "7. certificates for the relays (certbot)"
certbot_args="--server $acme --agree-tos -m ops@example.com -n"
get_cert() { # HOST COMMAND
    on "$1" "export DEBIAN_FRONTEND=noninteractive REQUESTS_CA_BUNDLE=/usr/local/share/acme-api-ca.pem; $(sed \
        -e 's/apt-get install -y certbot/apt-get install -y -qq certbot >\/dev\/null/' \
        -e "s|certbot certonly|certbot certonly $certbot_args|" <<<"$2") 2>&1 | grep -E 'Success|rror'"
}
get_cert fra "${step7[1]}"
get_cert ash "${step7[0]}"
get_cert sin "${step7[0]//turn-ash-1/turn-sin-1}"

say "8. the relays"
# Frankfurt's command, made another region's as the README says.
relay_cmd() { # RELAY-ID NAME (turn-NAME.example.com) REGION ADDRESS OTHER-ADDRESS OTHER-ADDRESS
    local c=${step[8]}
    c=${c//eu-central/$3}
    c=${c//turn-fra-1/turn-$2}
    c=${c//eu-fra-1/$1}
    c=${c/--public-ip 203.0.113.10/--public-ip $4}
    c=${c/--link-peer 198.51.100.20 --link-peer 192.0.2.30/--link-peer $5 --link-peer $6}
    c=${c/ --tls-port 5349/}
    lab <<<"${c%$'\n'}"
}
[[ ${step[8]} == *"--link-peer 198.51.100.20 --link-peer 192.0.2.30"* && ${step[8]} == *" --tls-port 5349"* ]] ||
    die "README step 8 changed: update trial.sh"
peer="--allow-peer $net.3/32"
on fra "$(lab <<<"${step[8]%$'\n'}") $peer | tail -3"
on ash "$(relay_cmd us-ash-1 ash-1 us-east 198.51.100.20 203.0.113.10 192.0.2.30) $peer | tail -3"
on sin "$(relay_cmd ap-sin-1 sin-1 ap-southeast 192.0.2.30 203.0.113.10 198.51.100.20) $peer | tail -3"

say "9. the network as signaling sees it"
want_links=6
for _ in $(seq 60); do
    out=$(on fra "${step[9]}" 2>&1) || true
    serving=$(grep -cE '^[a-z]+-[a-z]+-1 .* serving +serving ' <<<"$out" || true)
    up=$(grep -cE ' up +[0-9.]+ ms ' <<<"$out" || true)
    ((serving == 3 && up == want_links)) && break
    sleep 1
done
echo "$out"
((serving == 3)) || die "step 9: $serving relays serving, not 3"
((up == want_links)) || die "step 9: $up links up, not $want_links"

say "10. Frankfurt: Prometheus and Alertmanager"
# The edits step 10 asks for: the relays' addresses and signaling's.
on fra "cat >/root/prometheus-targets.sh" <<EOF
sed -i -e 's/10.0.1.10:9090/$net.10:9090/' -e 's/10.0.2.10:9090/$net.20:9090/' \
    -e 's/10.0.3.10:9090/$net.30:9090/' -e 's/10.0.1.20:8080/127.0.0.1:8080/' /etc/prometheus/prometheus.yml
EOF
cmd10=${step[10]/ && systemctl restart / && sh /root/prometheus-targets.sh && systemctl restart }
[[ $cmd10 != "${step[10]}" ]] || die "README step 10 changed: update trial.sh"
on fra "export DEBIAN_FRONTEND=noninteractive; { ${cmd10%$'\n'}; } >/dev/null"
for _ in $(seq 90); do
    targets=$(on fra "curl -sf 'http://127.0.0.1:9095/api/v1/targets?state=active'" 2>/dev/null) || true
    up=$(grep -o '"health":"up"' <<<"$targets" | wc -l) || true
    ((up == 4)) && break
    sleep 1
done
grep -o '"scrapeUrl":"[^"]*","globalUrl":"[^"]*","lastError":"[^"]*"[^}]*"health":"[a-z]*"' <<<"$targets" |
    sed 's/"globalUrl":"[^"]*",//; s/"lastScrape[^,]*,//g' || true
((up == 4)) || die "step 10: $up of 4 targets up"
rules=$(on fra "curl -sf http://127.0.0.1:9095/api/v1/rules" | grep -o '"type":"alerting"' | wc -l) || true
((rules >= 10)) || die "step 10: $rules alert rules loaded"
on fra "curl -sf http://127.0.0.1:9093/-/ready >/dev/null" || die "step 10: Alertmanager is not ready"
echo "Prometheus: 4 of 4 targets up, $rules alert rules; Alertmanager ready"

say "a player: each region's ICE configuration from signaling, TURN through that relay"
key=$(on fra "sed -n 's/^SIGNALING_JWT_KEY=//p' /etc/signaling/secrets.env")
player_token=$("$repo/target/ci/relayctl" token mint --sub player-1 --role player --key "$key")
ip netns exec rp-player turnutils_peer -L "$net.3" -p 3480 >"$work/peer.log" 2>&1 &
player() { ip netns exec rp-player env RELAYCTL_URL=https://signal.example.com RELAYCTL_TOKEN="$player_token" \
    SSL_CERT_FILE="$work/acme-root.pem" "$@"; }
for region in eu-central:fra us-east:ash ap-southeast:sin; do
    r=${region%:*} h=${region#*:}
    probes=()
    for other in eu-central us-east ap-southeast; do
        if [[ $other == "$r" ]]; then probes+=(--probe "$other=5"); else probes+=(--probe "$other=200"); fi
    done
    config=$(player "$repo/target/ci/relayctl" ice-config "${probes[@]}" --json)
    read -r user pass urls < <(python3 -c 'import json,sys
s = json.load(sys.stdin)["iceServers"][0]
print(s["username"], s["credential"], " ".join(s["urls"]))' <<<"$config")
    echo "$r: $urls"
    [[ $urls == *"turn:turn-$h-1.example.com:3478"* ]] || die "$r: the ICE configuration names another relay"
    tls_port=443
    [[ $h == fra ]] && tls_port=5349
    [[ $urls == *"turns:turn-$h-1.example.com:$tls_port"* ]] || die "$r: no turns: URL on $tls_port"
    # The relay's TURN/TLS and its SFU's HTTPS show certbot's certificate for the relay's name.
    for port in "$tls_port" 8443; do
        verify=$(ip netns exec rp-player openssl s_client -connect "${ip[$h]}:$port" -servername "turn-$h-1.example.com" \
            -verify_hostname "turn-$h-1.example.com" -CAfile "$work/acme-root.pem" -verify_return_error </dev/null 2>&1) ||
            die "$r: TLS on $port: $verify"
        grep -q "Verify return code: 0 (ok)" <<<"$verify" || die "$r: TLS on $port: $verify"
    done
    echo "  TLS on $tls_port and 8443: certificate for turn-$h-1.example.com verified"
    for mode in udp tls; do
        extra=()
        [[ $mode == tls ]] && extra=(-t -S -p "$tls_port")
        # (-s: Send indications; uclient's channel numbers go past 0x4FFF, which the relay
        # refuses by default as RFC 8656 says: configs/relay.toml rfc5766_channel_numbers.)
        out=$(ip netns exec rp-player turnutils_uclient -s -u "$user" -w "$pass" -e "$net.3" -n 20 -m 2 -l 120 \
            "${extra[@]}" "${ip[$h]}" 2>&1) || die "$r over $mode: $out"
        lost=$(sed -n 's/.*Total lost packets \([0-9]*\).*/\1/p' <<<"$out")
        sent=$(sed -n 's/.*start_mclient: tot_send_msgs=\([0-9]*\), tot_recv_msgs=.*/\1/p' <<<"$out")
        received=$(sed -n 's/.*start_mclient: tot_send_msgs=[0-9]*, tot_recv_msgs=\([0-9]*\).*/\1/p' <<<"$out")
        echo "  TURN over $mode via turn-$h-1: ${sent:-?} sent, ${received:-?} back, ${lost:-?} lost"
        [[ -n $sent && $sent -gt 0 && $received == "$sent" && $lost == 0 ]] || die "$r over $mode: $out"
    done
done

say "the README's deployment works: three regions, linked, monitored, serving a player"
if [[ $keep == yes ]]; then
    echo "left running: nsenter --target \$(cat $work/fra.leader) --all bash; scripts/trial.sh --down"
fi
