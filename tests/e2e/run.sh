#!/bin/sh
# A run directory's life: a resume takes the run's own options (the README's cron line works for a run made with
# any options) and refuses one given again with another value; one process at a time per run; a run refused at its
# start leaves no directory behind; a damaged trainer_state.json is refused naming what is wrong.
set -eu
BIN=${DS_BIN:?}/ds-pretrain
. "$(dirname "$0")/scratch.inc"
CREATE="--model-config tiny --batch 2 --seq-len 32 --lr 1e-2 --warmup 2 --schedule wsd --seed 7 --grad-accum 2"

# Split at step 2 and resumed with no options, a run ends bit for bit where the uninterrupted one does.
$BIN "$T/full" $CREATE --threads 1 --steps 4 2>/dev/null || fail "full run"
$BIN "$T/split" $CREATE --threads 1 --steps 2 2>/dev/null || fail "first half"
(cd / && $BIN --resume "$T/split" --threads 1 --steps 4 2>"$T/err") || fail "resume with no options: $(cat "$T/err")"
cmp "$T/full/latest/model.safetensors" "$T/split/latest/model.safetensors" || fail "resumed weights differ"
cmp "$T/full/latest/optimizer.safetensors" "$T/split/latest/optimizer.safetensors" || fail "resumed optimizer differs"
# Given again, the same value is accepted; another is a usage error naming the option.
$BIN --resume "$T/split" --seed 7 --lr 0.01 --steps 5 --log-every 3 --keep 1 2>"$T/err" || fail "same values: $(cat "$T/err")"
for change in "--seed 8" "--batch 4" "--lr 2e-2" "--schedule cosine" "--fp8" "--data builtin:arith --seq-len 16"; do
  set +e
  $BIN --resume "$T/split" $change --steps 6 2>"$T/err"; rc=$?
  set -e
  [ $rc -eq 2 ] || fail "resume with $change: exit $rc"
  [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q "the run was created with" "$T/err" || fail "$change: $(cat "$T/err")"
done
grep -q '"step": 5' "$T/split/latest/trainer_state.json" || fail "a refused resume trained"

# One process per run: a second one exits 1 naming the first's pid, and the run is intact afterwards.
$BIN --resume "$T/split" --threads 1 --steps 100000 --log-every 1000 2>/dev/null &
pid=$!
for _ in $(seq 50); do [ -s "$T/split/.lock" ] && grep -q "^$pid$" "$T/split/.lock" && break; sleep 0.1; done
set +e
$BIN --resume "$T/split" --steps 100000 2>"$T/err"; rc=$?
set -e
kill -TERM $pid
wait $pid || fail "the first process failed after SIGTERM"
[ $rc -eq 1 ] || fail "second process: exit $rc"
grep -q "in use by process $pid" "$T/err" || fail "lock message: $(cat "$T/err")"
[ "$(grep -c . "$T/err")" -eq 1 ] || fail "lock message is not one line: $(cat "$T/err")"
steps=$(grep -o '"step":[0-9]*' "$T/split/metrics.jsonl" | sort | uniq -d)
[ -z "$steps" ] || fail "steps logged twice: $steps"
# Killed with SIGKILL, a holder's lock goes with it.
$BIN --resume "$T/split" --threads 1 --steps 100000 --log-every 1000 2>/dev/null &
pid=$!
sleep 0.5
kill -KILL $pid
wait $pid 2>/dev/null || true
$BIN --resume "$T/split" --threads 1 --steps 1 2>"$T/err" || fail "after a killed holder: $(cat "$T/err")"

# A new run whose inputs are refused leaves nothing behind.
printf '{"architectures": ["DeepseekV3ForCausalLM"], "vocab_size": -5}' >"$T/bad.json"
for bad in "--model-config $T/bad.json" "--data $T/missing.tok" "--seq-len 100000"; do
  set +e
  $BIN "$T/new/run" --model-config tiny $bad --steps 1 2>"$T/err"; rc=$?
  set -e
  [ $rc -ne 0 ] || fail "$bad: exit 0"
  [ ! -e "$T/new" ] || fail "$bad left $(find "$T/new")"
done

# trainer_state.json is checked strictly: a negative step is refused naming the file and the key.
cp -r "$T/full" "$T/damaged"
sed -i 's/"step": 4/"step": -100/' "$T/damaged/latest/trainer_state.json"
set +e
$BIN --resume "$T/damaged" --steps 8 2>"$T/err"; rc=$?
set -e
[ $rc -eq 1 ] || fail "negative step: exit $rc"
grep -q 'trainer_state.json: "step" must be a non-negative integer, not -100' "$T/err" || fail "$(cat "$T/err")"
echo ok
