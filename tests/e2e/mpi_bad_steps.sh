#!/bin/sh
# --on-bad-steps reload under mpirun -np 2: every rank takes the same decision (from the all-reduced loss and norm),
# so the run reloads once, says so once, and then follows the one-process run (losses within 1e-4 relative).
set -eu
. "$(dirname "$0")/mpi.inc"
COMMON="--model-config tiny --batch 4 --seq-len 32 --threads 1 --log-every 1 --schedule constant --comm-timeout 60"
BAD="--on-bad-steps reload --bad-lr-factor 1e-32 --max-bad-steps 2"
# The value of a number in the last record of RUN/metrics.jsonl.
field() { tail -n 1 "$2/metrics.jsonl" | sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p"; }
loss() { field main_loss "$1"; }

# A resumed run keeps its recorded options: the absurd learning rate comes from an edited record.
$DS_BIN/ds-pretrain "$T/one" $COMMON --lr 1e-2 --steps 3 2>/dev/null
sed -i 's/"lr": 0.01,/"lr": 1e+30,/' "$T/one/latest/trainer_state.json"
cp -r "$T/one" "$T/two"
$DS_BIN/ds-pretrain --resume "$T/one" $COMMON $BAD --steps 8 2>"$T/one.log" || fail "1 process: $(cat "$T/one.log")"
$MPIRUN -np 2 "$DS_BIN/ds-pretrain" --resume "$T/two" $COMMON $BAD --steps 8 2>"$T/two.log" ||
  fail "2 ranks: $(cat "$T/two.log")"
[ "$(grep -c "back to .*step-00000003 (step 3)" "$T/two.log")" = 1 ] || fail "2 ranks, reload: $(cat "$T/two.log")"
[ "$(field reloads "$T/two")" = 1 ] && [ "$(field step "$T/two")" = 8 ] || fail "2 ranks: $(tail -n 1 "$T/two/metrics.jsonl")"
awk -v a="$(loss "$T/one")" -v b="$(loss "$T/two")" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d <= 1e-4 * a) }' ||
  fail "after the reload, 2 ranks give loss $(loss "$T/two"), one process $(loss "$T/one")"

# ds-grpo: no checkpoint yet, so the ranks go back to the base together. The reward (digits in the completion)
# differs within groups, so the first update moves the weights.
echo 'while read -r l; do c=${l#*\"completion\":\"}; printf %s "${c%%\",\"id\":*}" | tr -cd 0-9 | wc -c; done' >"$T/digits.sh"
$MPIRUN -np 2 "$DS_BIN/ds-grpo" "$T/g" --model "$T/one" --template plain --max-new-tokens 8 --group-size 4 \
  --prompts-per-step 2 --reward-cmd "sh $T/digits.sh" --threads 1 --steps 4 --max-bad-steps 1 --lr 1e30 --on-bad-steps reload --bad-lr-factor 1e-32 \
  2>"$T/g.log" || fail "ds-grpo, 2 ranks: $(cat "$T/g.log")"
[ "$(grep -c "back to .* (step 0)" "$T/g.log")" = 1 ] || fail "ds-grpo, 2 ranks, reload: $(cat "$T/g.log")"
[ "$(field reloads "$T/g")" = 1 ] && [ "$(field step "$T/g")" = 4 ] ||
  fail "ds-grpo, 2 ranks: $(tail -n 1 "$T/g/metrics.jsonl")"
echo ok
