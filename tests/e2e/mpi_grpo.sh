#!/bin/sh
# ds-grpo under mpirun -np 2: the prompts of a step are split over the ranks, which sample exactly the completions
# one process samples (same seeds), and the gradient norms follow the 1-process run (within 1e-4 relative: ranks
# sum in another order); a run resumes on another number of ranks.
set -eu
. "$(dirname "$0")/mpi.inc"
"$DS_BIN/ds-pretrain" "$T/base" --model-config tiny --batch 4 --seq-len 64 --steps 30 --threads 1 2>/dev/null
# Reward: the number of digits in a completion, so groups differ and the loss is not zero.
cat >"$T/digits.sh" <<'END'
while read -r line; do
  c=${line#*\"completion\":\"}
  printf '%s' "${c%%\",\"id\":*}" | sed 's/\\u[0-9a-fA-F]\{4\}//g' | tr -cd 0-9 | wc -c
done
END
COMMON="--model $T/base --template plain --max-new-tokens 12 --threads 1 --group-size 4 --prompts-per-step 4"
COMMON="$COMMON --reward-cmd 'sh $T/digits.sh'"
field() { sed "s/.*\"$1\":\([-0-9.e]*\).*/\1/" "$2"; }

eval "$DS_BIN/ds-grpo" "$T/one" $COMMON --steps 3 --rollouts "$T/one.jsonl" 2>"$T/one.log" ||
  fail "1 process: $(cat "$T/one.log")"
eval $MPIRUN -np 2 "$DS_BIN/ds-grpo" "$T/two" $COMMON --steps 3 --rollouts "$T/two.jsonl" 2>"$T/two.log" ||
  fail "2 ranks: $(cat "$T/two.log")"
[ "$(wc -l <"$T/two/metrics.jsonl")" -eq 3 ] || fail "rank 0 alone writes metrics: $(wc -l <"$T/two/metrics.jsonl")"
[ "$(wc -l <"$T/two.jsonl")" -eq 48 ] || fail "rollouts: $(wc -l <"$T/two.jsonl") lines, not 3 steps * 4 * 4"
# The first step samples from the same weights: the same 16 completions, whichever rank sampled them.
grep '"step":1,' "$T/one.jsonl" | sort >"$T/one.1"
grep '"step":1,' "$T/two.jsonl" | sort >"$T/two.1"
[ "$(wc -l <"$T/one.1")" -eq 16 ] || fail "step 1: $(wc -l <"$T/one.1") rollouts"
cmp -s "$T/one.1" "$T/two.1" || fail "2 ranks sampled other completions than 1 process at step 1"
# GRPO's loss is about 0 at every step (advantages sum to 0 in each group); the gradient norm is what to compare.
field grad_norm "$T/one/metrics.jsonl" >"$T/g1"
field grad_norm "$T/two/metrics.jsonl" >"$T/g2"
paste "$T/g1" "$T/g2" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (!($1 > 0) || d > 1e-4 * $1) bad = 1 }
  END { if (bad || NR != 3) exit 1 }' || fail "gradient norms differ: $(paste "$T/g1" "$T/g2")"
[ "$(field reward_mean "$T/one/metrics.jsonl" | head -1)" = "$(field reward_mean "$T/two/metrics.jsonl" | head -1)" ] ||
  fail "step 1 reward_mean differs"

# Resume on another number of ranks.
eval "$DS_BIN/ds-grpo" --resume "$T/two" $COMMON --steps 4 2>"$T/r1.log" || fail "resume on 1: $(cat "$T/r1.log")"
eval $MPIRUN -np 2 "$DS_BIN/ds-grpo" --resume "$T/one" $COMMON --steps 4 2>"$T/r2.log" || fail "resume on 2: $(cat "$T/r2.log")"
[ -d "$T/one/checkpoints/step-00000004" ] && [ -d "$T/two/checkpoints/step-00000004" ] || fail "no step-4 checkpoints"
