#!/bin/sh
# Numerical faults: an absurd learning rate (1e30) makes every step after the first non-finite. A resumed run keeps
# its recorded options, so the runs below get it by a record edited in their checkpoint. By default the run
# stops with a clear error and keeps its last checkpoint; with --on-bad-steps reload it goes back to that checkpoint
# (or to its start) at a lower learning rate, which is kept in the checkpoint and in the metrics, and recovers; too
# many reloads stop it. ds-pretrain, ds-grpo and ds-distill alike.
set -eu
BIN=${DS_BIN:?}
. "$(dirname "$0")/scratch.inc"
# The value of a top-level number in a one-line JSON record (the last such line of a file).
field() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p" "$2" | tail -n 1; }
# Makes run $1's latest checkpoint record --lr 1e30, as if it had been created with it.
absurd_lr() { sed -i 's/"lr": 0.01\(0*\)*,/"lr": 1e+30,/' "$1/latest/trainer_state.json"; }
COMMON="--model-config tiny --batch 2 --seq-len 32 --threads 1 --log-every 1 --schedule constant"
RELOAD="--on-bad-steps reload --bad-lr-factor 1e-32 --max-bad-steps 2"

$BIN/ds-pretrain "$T/run" $COMMON --lr 1e-2 --steps 3 2>/dev/null

# Stop (the default): exit 1 naming the problem; latest stays at the good checkpoint.
set +e
cp -r "$T/run" "$T/re"
absurd_lr "$T/run"
$BIN/ds-pretrain --resume "$T/run" --steps 10 --max-bad-steps 2 2>"$T/err"; rc=$?
set -e
[ $rc -eq 1 ] || fail "stop: exit $rc: $(cat "$T/err")"
tail -n 1 "$T/err" | grep -q "^ds-pretrain: 3 consecutive steps had a non-finite loss or gradient; stopping" ||
  fail "stop message: $(cat "$T/err")"
[ "$(readlink "$T/run/latest")" = checkpoints/step-00000003 ] || fail "latest moved: $(readlink "$T/run/latest")"

# Reload: step 4 at lr 1e30 wrecks the weights, steps 5-7 are bad, the run goes back to step 3 at lr 1e-2 and ends.
absurd_lr "$T/re"
$BIN/ds-pretrain --resume "$T/re" --steps 10 $RELOAD 2>"$T/err" || fail "reload: $(cat "$T/err")"
grep -q "3 steps in a row had a non-finite loss or gradient: back to .*step-00000003 (step 3) with the learning rate scaled by 1e-32 (reload 1 of at most 3)" \
  "$T/err" || fail "reload message: $(cat "$T/err")"
M="$T/re/metrics.jsonl"
[ "$(field step "$M")" = 10 ] && [ "$(field reloads "$M")" = 1 ] || fail "last record: $(tail -n 1 "$M")"
awk -v lr="$(field lr "$M")" -v loss="$(field loss "$M")" 'BEGIN { exit !(lr > 0.99e-2 && lr < 1.01e-2 && loss > 0 && loss < 20) }' ||
  fail "after the reload: $(tail -n 1 "$M")"
grep -q '"lr_scale": 1e-32' "$T/re/latest/trainer_state.json" && grep -q '"reloads": 1' "$T/re/latest/trainer_state.json" ||
  fail "trainer state: $(cat "$T/re/latest/trainer_state.json")"
# A resume keeps the lowered learning rate.
$BIN/ds-pretrain --resume "$T/re" --steps 12 $RELOAD 2>"$T/err" || fail "resume: $(cat "$T/err")"
awk -v lr="$(field lr "$M")" 'BEGIN { exit !(lr < 1.01e-2) }' || fail "resume lost the lr scale: $(tail -n 1 "$M")"

# With no checkpoint yet, the run goes back to its start.
$BIN/ds-pretrain "$T/new" $COMMON --lr 1e30 --steps 6 $RELOAD 2>"$T/err" || fail "reload to start: $(cat "$T/err")"
grep -q "back to the start of the run (step 0)" "$T/err" || fail "reload to start message: $(cat "$T/err")"
[ "$(field reloads "$T/new/metrics.jsonl")" = 1 ] || fail "reload to start: $(tail -n 1 "$T/new/metrics.jsonl")"

# Too many reloads: a factor that keeps the lr absurd fails after --max-reloads.
set +e
$BIN/ds-pretrain "$T/many" $COMMON --lr 1e30 --steps 20 --on-bad-steps reload --bad-lr-factor 0.5 --max-reloads 2 \
  --max-bad-steps 1 2>"$T/err"; rc=$?
set -e
[ $rc -eq 1 ] && tail -n 1 "$T/err" | grep -q "non-finite loss or gradient after 2 reloads (learning rate scaled by 0.25); stopping" ||
  fail "reload limit: exit $rc: $(cat "$T/err")"
set +e
$BIN/ds-pretrain "$T/usage" $COMMON --steps 1 --on-bad-steps retry 2>/dev/null; rc=$?
set -e
[ $rc -eq 2 ] || fail "--on-bad-steps retry: exit $rc"

# ds-grpo: the same on a base trained above.
cat >"$T/digits.sh" <<'EOS'
while read -r line; do
  c=${line#*\"completion\":\"}
  printf '%s' "${c%%\",\"id\":*}" | tr -cd 0-9 | wc -c
done
EOS
GRPO="$BIN/ds-grpo --model $T/run --template plain --max-new-tokens 8 --threads 1 --group-size 4 --prompts-per-step 2"
$GRPO "$T/g" --reward-cmd "sh $T/digits.sh" --lr 1e-2 --steps 2 2>/dev/null
absurd_lr "$T/g"
$BIN/ds-grpo --resume "$T/g" --threads 1 --steps 8 $RELOAD 2>"$T/err" || fail "grpo reload: $(cat "$T/err")"
grep -q "back to .*step-00000002 (step 2) with the learning rate scaled by 1e-32" "$T/err" ||
  fail "grpo reload message: $(cat "$T/err")"
[ "$(field step "$T/g/metrics.jsonl")" = 8 ] && [ "$(field reloads "$T/g/metrics.jsonl")" = 1 ] ||
  fail "grpo last record: $(tail -n 1 "$T/g/metrics.jsonl")"
grep -q '"lr_scale": 1e-32' "$T/g/latest/trainer_state.json" || fail "grpo trainer state"

# ds-distill: the same.
for i in 1 2 3 4 5 6 7 8; do printf '{"prompt": "Say %d.", "completion": " %d"}\n' $i $i; done >"$T/sft.jsonl"
$BIN/ds-distill "$T/d" --data "$T/sft.jsonl" --student-config tiny-dense --template plain --batch 2 --seq-len 32 \
  --threads 1 --schedule constant --lr 1e-2 --steps 2 --val-fraction 0 2>/dev/null || fail "distill"
absurd_lr "$T/d"
$BIN/ds-distill --resume "$T/d" --threads 1 --steps 8 --log-every 1 $RELOAD 2>"$T/err" || fail "distill reload: $(cat "$T/err")"
grep -q "back to .*step-00000002 (step 2) with the learning rate scaled by 1e-32" "$T/err" ||
  fail "distill reload message: $(cat "$T/err")"
[ "$(field step "$T/d/metrics.jsonl")" = 8 ] && [ "$(field reloads "$T/d/metrics.jsonl")" = 1 ] ||
  fail "distill last record: $(tail -n 1 "$T/d/metrics.jsonl")"
grep -q '"lr_scale": 1e-32' "$T/d/latest/trainer_state.json" || fail "distill trainer state"
echo ok
