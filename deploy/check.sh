#!/usr/bin/env bash
# Checks the deployment files with the tools that read them: Prometheus's configuration and
# alert rules (promtool check), the rules' unit tests (promtool test rules: every alert fires
# when it should and stays quiet when it should not), the Alertmanager configuration and its
# routes (amtool). scripts/test.sh runs it; so can an operator who edits these files.
#
#   deploy/check.sh            needs promtool (Debian: prometheus) and amtool
#                              (Debian: prometheus-alertmanager)
set -euo pipefail
cd "$(dirname "$0")"

promtool check config prometheus/prometheus.yml
promtool check rules prometheus/relay-rules.yml prometheus/signaling-rules.yml
promtool test rules prometheus/rules-test.yml
amtool check-config alertmanager/alertmanager.yml

# Every alert has a firing case and a quiet one in the unit tests.
alerts=$(sed -n 's/^ *- alert: *\([A-Za-z]*\) *$/\1/p' prometheus/relay-rules.yml prometheus/signaling-rules.yml)
[[ -n "$alerts" ]] || { echo "error: no alert found in the rule files" >&2; exit 1; }
for alert in $alerts; do
    cases=$(grep -c "alertname: $alert\$" prometheus/rules-test.yml || true)
    if ((cases < 2)); then
        echo "error: alert $alert has $cases unit test cases in rules-test.yml (a firing and a quiet one wanted)" >&2
        exit 1
    fi
done
echo "every alert ($(wc -w <<<"$alerts")) has unit tests"

# Pages reach the halls' Telegram chat and the webhook; the rest the webhook only.
routes() { amtool config routes test --config.file=alertmanager/alertmanager.yml "$@" 2>/dev/null; }
[[ "$(routes severity=page alertname=MachineVideoStopped machine=cab-1)" == "halls,webhook" ]] \
    || { echo "error: a page does not reach both the halls' chat and the webhook" >&2; exit 1; }
[[ "$(routes severity=warn alertname=RelayLinkRefused)" == "webhook" ]] \
    || { echo "error: a warning does not go to the webhook alone" >&2; exit 1; }
echo "alert routes: pages to halls and webhook, warnings to webhook"
