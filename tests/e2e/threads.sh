#!/bin/sh
# The default thread count follows the machine's load: beside as many busy processes as cores, a tool takes one
# thread; --threads still decides when given.
set -eu
BIN=${DS_BIN:?}/ds-pretrain
. "$(dirname "$0")/scratch.inc"
cores=$(nproc)
pids=""
trap 'kill $pids 2>/dev/null; rm -rf "$T"' EXIT
for _ in $(seq "$cores"); do
  sh -c 'while :; do :; done' &
  pids="$pids $!"
done
sleep 0.2
$BIN "$T/busy" --model-config tiny --steps 1 --batch 2 --seq-len 16 2>/dev/null || fail "run beside busy processes"
grep -q '"threads": 1,' "$T/busy/latest/trainer_state.json" || fail "$(grep threads "$T/busy/latest/trainer_state.json")"
$BIN "$T/given" --model-config tiny --steps 1 --batch 2 --seq-len 16 --threads 2 2>/dev/null || fail "--threads 2"
grep -q '"threads": 2,' "$T/given/latest/trainer_state.json" || fail "--threads 2 not taken"
echo ok
