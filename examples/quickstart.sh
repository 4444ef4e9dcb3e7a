#!/usr/bin/env bash
# Quick start on Debian / Raspberry Pi OS: a local broker, the main code, the daemon.
#
#   bash examples/quickstart.sh
#
# 1. installs mosquitto and its clients from Debian's packages when missing, and starts a
#    broker on localhost:1883 when none answers there;
# 2. builds keypad-bridge;
# 3. when ./data has no store yet, asks for the main code (the master, "Alice");
# 4. runs the daemon in the foreground with config.example.yaml (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
config=config.example.yaml

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! { [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1; }; then
  echo "== installing mosquitto and mosquitto-clients (Debian packages)"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y mosquitto mosquitto-clients
fi
broker_up() { timeout 2 mosquitto_sub -h localhost -p 1883 -t 'quickstart/probe' -W 1 >/dev/null 2>&1 || [ $? -eq 27 ]; }
if ! broker_up; then
  echo "== starting a local broker on localhost:1883"
  if command -v systemctl >/dev/null 2>&1 && $sudo systemctl start mosquitto 2>/dev/null; then
    :
  else
    # No systemd (a container): run Debian's mosquitto in the background, localhost only.
    /usr/sbin/mosquitto -d -p 1883
  fi
  for _ in $(seq 1 50); do broker_up && break; sleep 0.1; done
fi

echo "== building keypad-bridge"
cargo build --release
bin=./target/release/keypad-bridge

if ! $bin --config "$config" users >/dev/null 2>&1; then
  echo "== creating the main code for Alice (4 to 6 digits; typed twice, not shown)"
  $bin --config "$config" init --name Alice
fi

echo "== running the daemon (Ctrl-C to stop); in another terminal try:"
echo "   mosquitto_sub -v -t 'keypad-bridge/#'"
echo "   mosquitto_pub -t keypad-front/code -m '{\"code\": \"<your code>\", \"action\": \"arm_away\"}'"
exec $bin --config "$config" run
