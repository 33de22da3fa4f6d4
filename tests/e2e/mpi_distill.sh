#!/bin/sh
# ds-distill under mpirun -np 2: SFT and logit distillation follow one process on the same global batch, though the
# ranks' rows hold different numbers of completion tokens (weights within 1e-4, losses within 1e-5 relative: ranks
# sum in another order; measured 6e-7 and 1e-9); the ranks' shares of the teacher's samples are one process's
# samples; stdin reaches every rank; a run resumes on another number of ranks; a batch that does not split is
# refused.
set -eu
. "$(dirname "$0")/mpi.inc"
BIN=$DS_BIN/ds-distill

# Records of 13 lengths, so packed rows differ in their completion tokens; tasks whose answer the records teach.
i=0
while [ $i -lt 40 ]; do
  printf '{"prompt": "Add %d and %d.", "completion": " <think> %d plus %d is %d%s </think> <answer> %d </answer>"}\n' \
    $i $((i * 7)) $i $((i * 7)) $((i * 8)) "$(printf '%*s' $((i % 13)) '' | tr ' ' '.')" $((i * 8))
  i=$((i + 1))
done >"$T/sft.jsonl"
i=0
while [ $i -lt 24 ]; do
  printf '{"prompt": "Say seven, %d.", "completion": " <think> seven </think> <answer> 7 </answer>"}\n' $i
  i=$((i + 1))
done >"$T/seven.jsonl"
{ for i in 1 2 3 4 5; do printf '{"id": "s%d", "prompt": "Say seven, %d.", "answer": "7"}\n' $i $i; done; } \
  >"$T/tasks.jsonl"
COMMON="--template plain --seq-len 96 --threads 1 --lr 1e-2 --log-every 1"
# The teacher: the tiny MoE model fine-tuned (one process) to answer "7".
$BIN "$T/teacher" --data "$T/seven.jsonl" --student-config tiny --template plain --batch 4 --seq-len 96 --threads 1 \
  --steps 150 --lr 1e-2 2>"$T/log" || fail "teacher: $(cat "$T/log")"

# The weights of two runs' latest checkpoints (F32 safetensors with the same header) agree within 1e-4; prints the
# largest absolute difference.
same_weights() {
  h=$(od -A n -t u8 -N 8 "$1/latest/model.safetensors" | tr -d ' ')
  cmp -s -n $((8 + h)) "$1/latest/model.safetensors" "$2/latest/model.safetensors" || fail "$3: other tensors"
  for f in "$1" "$2"; do
    od -A n -t f4 -v -j $((8 + h)) "$f/latest/model.safetensors" | tr -s ' ' '\n' | sed '/^$/d' >"$f.w"
  done
  paste "$1.w" "$2.w" | awk -v what="$3" '{ d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d; n++ }
    END { printf "%s: max weight difference %.3g over %d weights\n", what, m, n; exit !(n > 0 && m < 1e-4) }' ||
    fail "$3: weights differ"
}
field() { sed -n "s/.*\"$1\":\([-0-9.e]*\).*/\1/p" "$2"; }
same_losses() {
  for key in loss ce_loss $4; do
    field $key "$1/metrics.jsonl" >"$T/l1"
    field $key "$2/metrics.jsonl" >"$T/l2"
    paste "$T/l1" "$T/l2" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) bad = 1; n++ }
      END { exit bad || n == 0 }' || fail "$3: $key differs from one process: $(paste "$T/l1" "$T/l2")"
  done
}

# SFT: 1 process and 2 ranks on the same global batch of 4 rows.
SFT="--student-config tiny-dense $COMMON --batch 4 --steps 6 --val-fraction 0.1 --eval-every 3"
$BIN "$T/sft1" --data "$T/sft.jsonl" $SFT 2>"$T/sft1.log" || fail "SFT, 1 process: $(cat "$T/sft1.log")"
$MPIRUN -np 2 "$BIN" "$T/sft2" --data "$T/sft.jsonl" $SFT 2>"$T/sft2.log" || fail "SFT, 2 ranks: $(cat "$T/sft2.log")"
grep -q "data parallel over 2 ranks (mpi), 2 rows each" "$T/sft2.log" || fail "no data-parallel line"
[ "$(grep -c '^step ' "$T/sft2.log")" = 6 ] || fail "expected one log line per step from rank 0 only"
[ "$(wc -l <"$T/sft2/metrics.jsonl")" = 6 ] || fail "rank 0 alone writes metrics"
grep -q '"comm_share"' "$T/sft2/metrics.jsonl" || fail "no comm_share in metrics"
[ "$(ls "$T/sft2/checkpoints")" = step-00000006 ] || fail "expected exactly one checkpoint"
same_losses "$T/sft1" "$T/sft2" "SFT" val_loss
same_weights "$T/sft1" "$T/sft2" "SFT, 2 ranks"

# Records through a pipe: only rank 0 has stdin.
$MPIRUN -np 2 "$BIN" "$T/pipe" $SFT --data - <"$T/sft.jsonl" 2>"$T/pipe.log" || fail "stdin: $(cat "$T/pipe.log")"
same_weights "$T/sft1" "$T/pipe" "SFT from stdin, 2 ranks"

# Logit distillation from the MoE teacher (JSD on its top 8, with the SFT loss), each rank's teacher on its rows.
KD="--data $T/sft.jsonl --teacher $T/teacher --student-config tiny-dense $COMMON --batch 4 --alpha 0.5"
KD="$KD --divergence jsd"
KD="$KD --kd-top-k 8 --kd-temperature 2 --steps 6"
$BIN "$T/kd1" $KD 2>"$T/kd1.log" || fail "KD, 1 process: $(cat "$T/kd1.log")"
$MPIRUN -np 2 "$BIN" "$T/kd2" $KD 2>"$T/kd2.log" || fail "KD, 2 ranks: $(cat "$T/kd2.log")"
same_losses "$T/kd1" "$T/kd2" "KD" kd_loss
same_weights "$T/kd1" "$T/kd2" "KD, 2 ranks"

# Resume on another number of ranks: 2 ranks to step 3, then 1 process to 6; and 1 process to 3, then 2 ranks.
$MPIRUN -np 2 "$BIN" "$T/r21" $KD --stop-after 3 2>/dev/null || fail "2 ranks to step 3"
$BIN --resume "$T/r21" $KD 2>"$T/r21.log" || fail "resume on 1: $(cat "$T/r21.log")"
grep -q "resumed .* at step 3 of 6" "$T/r21.log" || fail "no resume line: $(cat "$T/r21.log")"
same_weights "$T/kd1" "$T/r21" "KD, 2 ranks resumed on 1"
$BIN "$T/r12" $KD --stop-after 3 2>/dev/null || fail "1 process to step 3"
$MPIRUN -np 2 "$BIN" --resume "$T/r12" $KD 2>/dev/null || fail "resume on 2"
same_weights "$T/kd1" "$T/r12" "KD, 1 process resumed on 2 ranks"

# Rejection sampling split over the ranks: the same accepted samples as one process, in the same order.
S="--teacher $T/teacher --prompts $T/tasks.jsonl -k 3 --max-new-tokens 48 --student-config tiny-dense $COMMON"
S="$S --batch 4 --steps 2 --val-fraction 0"
$BIN "$T/s1" $S 2>"$T/s1.log" || fail "sampling, 1 process: $(cat "$T/s1.log")"
$MPIRUN -np 2 "$BIN" "$T/s2" $S --emit "$T/s2.jsonl" 2>"$T/s2.log" || fail "sampling, 2 ranks: $(cat "$T/s2.log")"
[ -s "$T/s1/samples.jsonl" ] || fail "the teacher had no sample accepted: $(cat "$T/s1.log")"
cmp "$T/s1/samples.jsonl" "$T/s2/samples.jsonl" || fail "2 ranks accepted other samples than 1 process"
cmp "$T/s2/samples.jsonl" "$T/s2.jsonl" || fail "--emit on 2 ranks"
grep -q "accepted $(wc -l <"$T/s1/samples.jsonl") of 15 samples" "$T/s2.log" || fail "summary: $(cat "$T/s2.log")"

# A global batch that does not split over the ranks is a clear error.
if $MPIRUN -np 2 "$BIN" "$T/bad" --data "$T/sft.jsonl" $COMMON --batch 3 2>"$T/bad.log"; then
  fail "--batch 3 on 2 ranks ran"
fi
grep -q "multiple of the 2 ranks" "$T/bad.log" || fail "unclear batch error: $(cat "$T/bad.log")"
echo ok
