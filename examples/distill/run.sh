#!/bin/sh
# R1's distillation finding in miniature: a dense student with a quarter of the teacher's activated parameters,
# trained on the GRPO teacher's verified samples, against the same student trained with GRPO from its own base for
# the same CPU time.
#
#   examples/r1-zero/run.sh && examples/distill/run.sh     # everything lands in runs/distill
#
# Environment: DS_BIN (build directory, default build), DS_RUN (default runs/distill), DS_TEACHER (default
# runs/r1-zero/grpo, the r1-zero example's result), DS_THREADS (default 1), DS_STUDENT_STEPS (the student base's
# pretraining steps, default 2000), DS_PROMPTS (training prompts the teacher samples 4 completions of, default 2300),
# DS_EPOCHS (default 3), DS_EVAL_LIMIT (evaluate only the first N tasks).
set -eu
cd "$(dirname "$0")/../.."
BIN=${DS_BIN:-build}
RUN=${DS_RUN:-runs/distill}
TEACHER=${DS_TEACHER:-runs/r1-zero/grpo}
THREADS=${DS_THREADS:-1}
STUDENT_STEPS=${DS_STUDENT_STEPS:-2000}
PROMPTS=${DS_PROMPTS:-2300}
EPOCHS=${DS_EPOCHS:-3}
[ -e "$TEACHER/latest" ] || { echo "no teacher in $TEACHER: run examples/r1-zero/run.sh first" >&2; exit 1; }
mkdir -p "$RUN"
# CPU seconds (user + system) of the children this shell has waited for: cpu_mark records them (in this shell: in
# a $(...) subshell `times` would count the subshell's children only), cpu_read prints the record.
cpu_mark() { times >"$RUN/.times"; }
cpu_read() {
  awk 'NR == 2 { split($1, u, "m"); split($2, s, "m"); printf "%d\n", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' \
    "$RUN/.times"
}

# 1. The student's base: `demo-dense` (356K parameters, a quarter of demo's 1.46M activated) pretrained on
# builtin:arith for as many steps as the teacher's base.
if [ -e "$RUN/base/latest" ]; then
  "$BIN/ds-pretrain" --resume "$RUN/base" --steps "$STUDENT_STEPS" --threads "$THREADS" --log-every 100
else
  "$BIN/ds-pretrain" "$RUN/base" --model-config demo-dense --steps "$STUDENT_STEPS" --threads "$THREADS" \
    --log-every 100
fi

# 2. Distillation: the teacher samples 4 completions of each of DS_PROMPTS training prompts, the verifiers keep the
# correct ones, and the student is fine-tuned on them for DS_EPOCHS epochs. Its CPU time is the budget of step 3.
if [ ! -e "$RUN/distill/latest" ]; then
  cpu_mark
  before=$(cpu_read)
  "$BIN/ds-distill" "$RUN/distill" --teacher "$TEACHER" --prompts builtin:arith:train --limit "$PROMPTS" -k 4 \
    --max-new-tokens 96 --template plain --student "$RUN/base" --epochs "$EPOCHS" --batch 8 --seq-len 256 \
    --lr 1e-3 --log-every 10 --threads "$THREADS" --emit "$RUN/accepted.jsonl" 2>"$RUN/distill.log"
  cpu_mark
  echo $(($(cpu_read) - before)) >"$RUN/distill.cpu_s"
fi

# 3. RL only: GRPO on the student's base with the teacher's GRPO settings, stopped by SIGTERM (it finishes its step
# and saves) once it has used as much CPU time as the distillation did.
if [ ! -e "$RUN/grpo/latest" ]; then
  budget=$(cat "$RUN/distill.cpu_s")
  cpu_mark
  before=$(cpu_read)
  "$BIN/ds-grpo" "$RUN/grpo" --model "$RUN/base" --template plain --lr 5e-5 --max-new-tokens 96 --steps 100000 \
    --save-every 50 --keep 2 --threads "$THREADS" 2>"$RUN/grpo.log" &
  pid=$!
  tck=$(getconf CLK_TCK)
  while kill -0 $pid 2>/dev/null; do
    used=$(awk -v t="$tck" '{ printf "%d\n", ($14 + $15) / t }' /proc/$pid/stat 2>/dev/null || echo 0)
    if [ "$used" -ge "$budget" ]; then kill -TERM $pid; break; fi
    sleep 1
  done
  wait $pid
  cpu_mark
  echo $(($(cpu_read) - before)) >"$RUN/grpo.cpu_s"
fi

# 4. Held-out pass@1 as the R1 paper reports it (k = 8 samples at temperature 0.6) for the four models.
EVAL="--tasks builtin:arith:test -k 8 --temperature 0.6 --max-new-tokens 128 --template plain --threads $THREADS"
[ -z "${DS_EVAL_LIMIT:-}" ] || EVAL="$EVAL --limit $DS_EVAL_LIMIT"
for m in teacher base distill grpo; do
  dir="$RUN/$m"
  [ $m = teacher ] && dir=$TEACHER
  [ -s "$RUN/$m.json" ] || "$BIN/ds-eval" --model "$dir" $EVAL >"$RUN/$m.json"
done
field() { sed -n "s/.*\"$1\":\([0-9.e-]*\).*/\1/p" "$2"; }
printf '| model | pass@1 | pass@8 | cons@8 | format |\n|---|---|---|---|---|\n'
for m in teacher base distill grpo; do
  printf '| %s | %s | %s | %s | %s |\n' "$m" "$(field pass@1 "$RUN/$m.json")" "$(field pass@k "$RUN/$m.json")" \
    "$(field cons@k "$RUN/$m.json")" "$(field format "$RUN/$m.json")"
done
echo "CPU seconds: distillation $(cat "$RUN/distill.cpu_s") (sampling included), GRPO $(cat "$RUN/grpo.cpu_s")" >&2
