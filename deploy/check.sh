#!/usr/bin/env bash
# Checks the deployment files and the scripts with the tools that read them: Prometheus's
# configuration and alert rules (promtool check), the rules' unit tests (promtool test rules:
# every alert fires when it should and stays quiet when it should not), the Alertmanager
# configuration and its routes (amtool), every YAML file (yamllint, .yamllint), every shell
# script (shellcheck), every systemd unit (systemd-analyze verify), the Caddyfile (caddy
# validate, and its formatting), the Kubernetes manifests (kubernetes-validate, offline, strict)
# and the compose file (check-jsonschema against the Compose specification's schema).
# scripts/test.sh runs it; so can an operator who edits these files.
#
#   deploy/check.sh            needs promtool (Debian: prometheus), amtool
#                              (prometheus-alertmanager), yamllint, shellcheck, systemd-analyze,
#                              caddy; from PyPI kubernetes-validate, check-jsonschema
set -euo pipefail
cd "$(dirname "$0")/.."

promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/relay-rules.yml deploy/prometheus/signaling-rules.yml
promtool test rules deploy/prometheus/rules-test.yml
amtool check-config deploy/alertmanager/alertmanager.yml

# Every alert has a firing case and a quiet one in the unit tests.
alerts=$(sed -n 's/^ *- alert: *\([A-Za-z]*\) *$/\1/p' deploy/prometheus/relay-rules.yml deploy/prometheus/signaling-rules.yml)
[[ -n "$alerts" ]] || { echo "error: no alert found in the rule files" >&2; exit 1; }
for alert in $alerts; do
    cases=$(grep -c "alertname: $alert\$" deploy/prometheus/rules-test.yml || true)
    if ((cases < 2)); then
        echo "error: alert $alert has $cases unit test cases in rules-test.yml (a firing and a quiet one wanted)" >&2
        exit 1
    fi
done
echo "every alert ($(wc -w <<<"$alerts")) has unit tests"

# Pages reach the halls' Telegram chat and the webhook; the rest the webhook only.
routes() { amtool config routes test --config.file=deploy/alertmanager/alertmanager.yml "$@" 2>/dev/null; }
[[ "$(routes severity=page alertname=MachineVideoStopped machine=cab-1)" == "halls,webhook" ]] \
    || { echo "error: a page does not reach both the halls' chat and the webhook" >&2; exit 1; }
[[ "$(routes severity=warn alertname=RelayLinkRefused)" == "webhook" ]] \
    || { echo "error: a warning does not go to the webhook alone" >&2; exit 1; }
echo "alert routes: pages to halls and webhook, warnings to webhook"

# The TLS proxy in front of signaling: Caddy parses it, and it is as `caddy fmt` writes it.
caddy validate --config deploy/Caddyfile --adapter caddyfile 2>/dev/null | grep -qx "Valid configuration" \
    || { caddy validate --config deploy/Caddyfile --adapter caddyfile; exit 1; }
caddy fmt deploy/Caddyfile | diff -u deploy/Caddyfile - \
    || { echo "error: deploy/Caddyfile is not formatted as caddy fmt would" >&2; exit 1; }
echo "caddy validate: deploy/Caddyfile"

# Kubernetes manifests against the API schemas (no cluster needed), unknown fields refused.
mapfile -t manifests < <(git ls-files 'deploy/k8s/*.yaml')
((${#manifests[@]})) || { echo "error: no Kubernetes manifest found" >&2; exit 1; }
kubernetes-validate --strict --quiet -k 1.30.0 "${manifests[@]}"
echo "kubernetes-validate: ${#manifests[@]} manifests"
check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml

mapfile -t yaml < <(git ls-files '*.yml' '*.yaml' .yamllint)
((${#yaml[@]})) || { echo "error: no YAML file found" >&2; exit 1; }
yamllint -s "${yaml[@]}"
echo "yamllint: ${#yaml[@]} files"

mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
((${#scripts[@]})) || { echo "error: no shell script found" >&2; exit 1; }
shellcheck "${scripts[@]}"
echo "shellcheck: ${#scripts[@]} scripts"

# systemd-analyze verify wants each unit's programs to exist: our binaries' install paths
# (/usr/local/bin) are pointed at stand-ins for the check. It only warns about unknown keys and
# the like, so any word from it is a failure.
mapfile -t units < <(git ls-files '*.service' '*.timer')
((${#units[@]})) || { echo "error: no systemd unit found" >&2; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for bin in relay signaling; do
    printf '#!/bin/sh\n' >"$scratch/$bin"
    chmod +x "$scratch/$bin"
done
# All in one directory first: a timer's service is found beside it.
for unit in "${units[@]}"; do
    sed "s|/usr/local/bin/|$scratch/|g" "$unit" >"$scratch/$(basename "$unit")"
done
for unit in "${units[@]}"; do
    said=$(systemd-analyze verify "$scratch/$(basename "$unit")" 2>&1) \
        || { echo "error: $unit: $said" >&2; exit 1; }
    [[ -z "$said" ]] || { echo "error: $unit: $said" >&2; exit 1; }
done
echo "systemd-analyze verify: ${#units[@]} units"
