#!/bin/sh
# Crash safety: a training job killed with SIGKILL at arbitrary moments (mid-step, mid-checkpoint) always leaves
# `latest` pointing at a complete checkpoint that resumes; a full disk is a clear error that keeps the last checkpoint.
set -eu
BIN=${DS_BIN:?}/ds-pretrain
. "$(dirname "$0")/scratch.inc"
COMMON="--model-config tiny --batch 2 --seq-len 32 --threads 1 --log-every 1000"

$BIN "$T/run" $COMMON --steps 1 2>/dev/null
for delay in 0.3 0.45 0.6 0.75 0.9 1.05; do
  $BIN --resume "$T/run" $COMMON --steps 100000 --save-every 1 --keep 2 2>/dev/null &
  pid=$!
  sleep $delay
  kill -9 $pid
  wait $pid 2>/dev/null || true
  target=$(readlink "$T/run/latest") || fail "latest is gone after kill at ${delay}s"
  for f in config.json model.safetensors optimizer.safetensors trainer_state.json tokenizer.json; do
    [ -s "$T/run/$target/$f" ] || fail "latest ($target) lacks $f after kill at ${delay}s"
  done
done
step=$(sed -n 's/.*"step": \([0-9]*\).*/\1/p' "$T/run/latest/trainer_state.json")
$BIN --resume "$T/run" $COMMON --steps $((step + 1)) 2>"$T/err" || fail "resume after kills: $(cat "$T/err")"
[ -z "$(ls -A "$T/run/checkpoints" | grep '^\.tmp')" ] || fail "temporary checkpoint directories left behind"

# A file-size limit (the shape of a full disk) fails the save with a clear message; the last checkpoint stays and the
# unfinished one is removed.
before=$(readlink "$T/run/latest")
set +e
(ulimit -f 64; $BIN --resume "$T/run" $COMMON --steps $((step + 3)) 2>"$T/err")
rc=$?
set -e
[ $rc -eq 1 ] || fail "disk full: exit $rc"
grep -q "File too large\|No space" "$T/err" || fail "disk full message: $(cat "$T/err")"
[ "$(readlink "$T/run/latest")" = "$before" ] || fail "latest moved after a failed save"
[ -z "$(ls -A "$T/run/checkpoints" | grep '^\.tmp')" ] || fail "the failed save left $(ls -A "$T/run/checkpoints")"
$BIN --resume "$T/run" $COMMON --steps $((step + 2)) 2>/dev/null || fail "resume after the failed save"

# A read-only run directory is refused before any training.
mkdir "$T/ro" && chmod 555 "$T/ro"
if [ "$(id -u)" -ne 0 ]; then
  set +e
  $BIN "$T/ro/run" $COMMON --steps 1 2>"$T/err"; rc=$?
  set -e
  [ $rc -eq 1 ] || fail "read-only directory: exit $rc"
fi
echo ok
