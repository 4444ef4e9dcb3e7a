#!/usr/bin/env bash
# Quick start on Debian / Raspberry Pi OS: a local broker, the main code, the daemon.
#
#   bash examples/quickstart.sh
#
# 1. installs mosquitto and its clients from Debian's packages when missing, and starts a
#    broker on localhost:1883 when none answers there;
# 2. builds keypad-bridge;
# 3. when the store in ./data has no master yet, asks for the main code (the master, "Alice");
# 4. runs the daemon in the foreground with config.example.yaml (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
config=config.example.yaml

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "quickstart: '$*' needs root: run this script as root, or install sudo" >&2
    exit 1
  fi
}

if ! command -v mosquitto_sub >/dev/null 2>&1 || ! { [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1; }; then
  echo "== installing mosquitto and mosquitto-clients (Debian packages)"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto mosquitto-clients
fi

# mosquitto_sub -W 1 exits 27 when it connected and simply timed out: a broker is there.
broker_status() {
  local rc=0
  timeout 3 mosquitto_sub -h localhost -p 1883 -t 'quickstart/probe' -W 1 >/dev/null 2>&1 || rc=$?
  echo "$rc"
}
rc=$(broker_status)
started_broker=""
if [ "$rc" != 27 ] && [ "$rc" != 0 ] && [ "$rc" != 5 ]; then
  echo "== starting a local broker on localhost:1883"
  if command -v systemctl >/dev/null 2>&1 && as_root systemctl start mosquitto 2>/dev/null; then
    started_broker="sudo systemctl stop mosquitto"
  else
    # No systemd (a container): run Debian's mosquitto in the background, localhost only.
    mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    "$mosquitto_bin" -d -p 1883
    started_broker="kill \$(pidof mosquitto)"
  fi
  for _ in $(seq 1 50); do
    rc=$(broker_status)
    if [ "$rc" = 27 ] || [ "$rc" = 0 ] || [ "$rc" = 5 ]; then break; fi
    sleep 0.1
  done
fi
case "$rc" in
  0|27) ;;
  5) echo "quickstart: the broker on localhost:1883 wants a login: set mqtt.username and" \
          "mqtt.password_file in $config" >&2; exit 1 ;;
  *) echo "quickstart: no MQTT broker answers on localhost:1883 (mosquitto_sub exit $rc)" >&2; exit 1 ;;
esac

echo "== building keypad-bridge"
cargo build --release
bin="${CARGO_TARGET_DIR:-target}/release/keypad-bridge"

# The roster is read whole into a variable, not piped into grep: the question must not depend
# on when a pipe closes. No store yet is the one failure that means "create the master".
errors=$(mktemp)
if roster=$("$bin" --config "$config" users 2>"$errors"); then
  rm -f "$errors"
else
  problem=$(cat "$errors"); rm -f "$errors"
  case "$problem" in
    *"there is no store"*) roster="" ;;
    *) echo "quickstart: $problem" >&2; exit 1 ;;
  esac
fi
if [[ "$roster" != *" master "* ]]; then
  echo "== creating the main code for Alice (4 to 6 digits; typed twice, not shown)"
  # On a terminal, init checks the code's format before asking for it a second time, and
  # asks again after a typo (three tries).
  "$bin" --config "$config" init --name Alice
fi

if [ -n "$started_broker" ]; then
  echo "== the broker started here keeps running after Ctrl-C; to stop it: $started_broker"
fi
echo "== running the daemon (Ctrl-C to stop); in another terminal try (-T leaves out the"
echo "   admin commands, which carry codes):"
echo "   mosquitto_sub -v -t 'keypad-bridge/#' -T 'keypad-bridge/config/set'"
echo "   mosquitto_pub -t keypad-front/code -m '{\"code\": \"<your code>\", \"action\": \"arm_away\"}'"
exec "$bin" --config "$config" run
