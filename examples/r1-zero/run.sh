#!/bin/sh
# R1-Zero in miniature: pretrain the `demo` base on builtin:arith, measure held-out pass@1, improve it with GRPO from
# rule-based rewards alone (no supervised data), and measure again.
#
#   examples/r1-zero/run.sh            # everything lands in runs/r1-zero; run it again to continue
#
# Environment: DS_BIN (build directory, default build), DS_RUN (default runs/r1-zero), DS_THREADS (default 2),
# DS_BASE_STEPS (default 2000), DS_GRPO_MINUTES (GRPO time budget, default 15; a second run continues for as long),
# DS_EVAL_LIMIT (evaluate only the first N tasks).
set -eu
cd "$(dirname "$0")/../.."
BIN=${DS_BIN:-build}
RUN=${DS_RUN:-runs/r1-zero}
THREADS=${DS_THREADS:-2}
BASE_STEPS=${DS_BASE_STEPS:-2000}
GRPO_MINUTES=${DS_GRPO_MINUTES:-15}
mkdir -p "$RUN"

# 1. The base: ds-pretrain's demo model, the same as scripts/demo makes.
if [ -L "$RUN/base/latest" ]; then
  "$BIN/ds-pretrain" --resume "$RUN/base" --steps "$BASE_STEPS" --threads "$THREADS" --log-every 100
else
  "$BIN/ds-pretrain" "$RUN/base" --steps "$BASE_STEPS" --threads "$THREADS" --log-every 100
fi

# 2. Held-out pass@1 as the R1 paper reports it: k = 8 samples at temperature 0.6 on builtin:arith:test.
EVAL="--tasks builtin:arith:test -k 8 --temperature 0.6 --max-new-tokens 128 --template plain --threads $THREADS"
[ -z "${DS_EVAL_LIMIT:-}" ] || EVAL="$EVAL --limit $DS_EVAL_LIMIT"
[ -s "$RUN/before.json" ] || "$BIN/ds-eval" --model "$RUN/base" $EVAL >"$RUN/before.json"

# 3. GRPO on the training split for a time budget: reward = accuracy + 0.5 * format, G = 8 completions of 16 prompts
# per step, DAPO's token-level loss and clip-higher, completions sampled at temperature 0.7: close to the evaluation's
# 0.6, so the updates work on the mistakes that evaluation makes rather than on temperature 1's noise (twice the gain
# in the same time, see README.md). timeout's SIGTERM makes ds-grpo finish its step, save a checkpoint and exit.
GRPO="--template plain --lr 1e-4 --prompts-per-step 16 --loss dapo --epsilon-high 0.28 --max-new-tokens 96"
GRPO="$GRPO --temperature 0.7"
GRPO="$GRPO --steps 100000 --threads $THREADS --save-every 50 --keep 2"
if [ -L "$RUN/grpo/latest" ]; then
  set -- --resume "$RUN/grpo"
else
  set -- "$RUN/grpo" --model "$RUN/base"
fi
status=0
timeout -s TERM $((GRPO_MINUTES * 60)) "$BIN/ds-grpo" "$@" $GRPO --rollouts "$RUN/rollouts.jsonl" || status=$?
[ $status -eq 0 ] || [ $status -eq 124 ] || exit $status

# 4. The same evaluation after.
"$BIN/ds-eval" --model "$RUN/grpo" $EVAL >"$RUN/after.json"
field() { sed -n "s/.*\"$1\":\([0-9.e-]*\).*/\1/p" "$2"; }
printf '| model | pass@1 | pass@8 | cons@8 | format | mean tokens |\n|---|---|---|---|---|---|\n'
for m in before after; do
  printf '| %s | %s | %s | %s | %s | %s |\n' "$m" "$(field pass@1 "$RUN/$m.json")" "$(field pass@k "$RUN/$m.json")" \
    "$(field cons@k "$RUN/$m.json")" "$(field format "$RUN/$m.json")" "$(field mean_tokens "$RUN/$m.json")"
done

# 5. Reward and completion-length curves, when gnuplot is installed.
sed -n 's/.*"completion_len_mean":\([0-9.e-]*\).*"reward_mean":\([0-9.e-]*\).*"step":\([0-9]*\).*/\3 \2 \1/p' \
  "$RUN/grpo/metrics.jsonl" >"$RUN/curves.dat"
if command -v gnuplot >/dev/null; then
  gnuplot <<PLOT
set terminal pngcairo size 900,420
set output "$RUN/curves.png"
set multiplot layout 1,2
set xlabel "step"
set title "reward (accuracy + 0.5 format)"
plot "$RUN/curves.dat" using 1:2 with lines notitle
set title "completion length (tokens)"
plot "$RUN/curves.dat" using 1:3 with lines notitle
unset multiplot
PLOT
  echo "wrote $RUN/curves.png" >&2
else
  echo "gnuplot not found: $RUN/curves.dat holds step, reward, length" >&2
fi
