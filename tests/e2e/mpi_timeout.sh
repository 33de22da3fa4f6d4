#!/bin/sh
# A rank that stops answering (SIGSTOP) makes the other fail within --comm-timeout with a clear error instead of
# hanging; a killed rank (SIGKILL) ends the whole job with a non-zero status.
set -u
. "$(dirname "$0")/mpi.inc"
BIN=$DS_BIN/ds-pretrain
trap 'kill -KILL $(cat "$T"/pid.* 2>/dev/null) 2>/dev/null; rm -rf "$T"' EXIT

# Starts a long 2-rank run in the background (each rank writes its pid) and waits for its first logged step.
start_run() {
  rm -f "$T"/pid.*
  $MPIRUN -np 2 sh -c 'echo $$ >"$0/pid.$OMPI_COMM_WORLD_RANK"; exec "$@"' "$T" "$BIN" "$T/$1" --model-config tiny \
    --batch 2 --seq-len 16 --steps 100000 --threads 1 --log-every 1 --comm-timeout 3 2>"$T/$1.log" &
  JOB=$!
  for _ in $(seq 600); do
    grep -q '^step' "$T/$1.log" 2>/dev/null && [ -s "$T/pid.1" ] && return
    sleep 0.1
  done
  fail "$1: training did not start: $(cat "$T/$1.log")"
}
# Waits for the job to end (at most 60 s) and sets RC and SECONDS_TAKEN.
finish_run() {
  begin=$(date +%s)
  for _ in $(seq 600); do
    kill -0 "$JOB" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$JOB" 2>/dev/null && fail "$1: the job still runs 60 s after the rank stopped: $(cat "$T/$1.log")"
  wait "$JOB"
  RC=$?
  SECONDS_TAKEN=$(($(date +%s) - begin))
}

start_run stopped
kill -STOP "$(cat "$T/pid.1")"
finish_run stopped
[ "$RC" -ne 0 ] || fail "stopped rank: the job exited 0"
grep -q "timed out after 3 s on rank 0 of 2: a peer rank died or stopped responding" "$T/stopped.log" ||
  fail "stopped rank: no timeout message: $(cat "$T/stopped.log")"
[ "$SECONDS_TAKEN" -le 30 ] || fail "stopped rank: took $SECONDS_TAKEN s"

start_run killed
kill -KILL "$(cat "$T/pid.1")"
finish_run killed
[ "$RC" -ne 0 ] || fail "killed rank: the job exited 0"
[ "$SECONDS_TAKEN" -le 30 ] || fail "killed rank: took $SECONDS_TAKEN s"
exit 0
