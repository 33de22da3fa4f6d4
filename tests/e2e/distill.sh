#!/bin/sh
# ds-distill end to end on tiny models: SFT learns a fixed reply, metrics and validation loss are written, resume is
# bit-exact with a teacher's logits in the loss, --fp8 trains otherwise, an FP8 teacher stays FP8 in memory and
# distills as its f32 copy does, the teacher's verified samples become the data (and --emit writes them), ds-eval
# samples filtered by jq train through a pipe, and a teacher with another tokenizer is refused.
set -eu
BIN=${DS_BIN:?}
. "$(dirname "$0")/scratch.inc"

# Records with one fixed reply, and tasks asking for it (and one whose answer the reply never gives).
i=0
while [ $i -lt 24 ]; do
  printf '{"prompt": "Say seven, %d.", "completion": " <think> seven </think> <answer> 7 </answer>"}\n' $i
  i=$((i + 1))
done >"$T/sft.jsonl"
{ for i in 1 2 3; do printf '{"id": "s%d", "prompt": "Say seven, %d.", "answer": "7"}\n' $i $i; done
  printf '{"id": "eight", "prompt": "Say seven, 4.", "answer": "8"}\n'; } >"$T/tasks.jsonl"
COMMON="--template plain --batch 4 --seq-len 96 --threads 1"

# SFT of the tiny MoE model on the records: it becomes the teacher. The loss falls; metrics and validation loss.
$BIN/ds-distill "$T/teacher" --data "$T/sft.jsonl" --student-config tiny $COMMON --steps 150 --lr 1e-2 \
  --val-fraction 0.25 --eval-every 50 --log-every 10 2>"$T/log" || fail "SFT: $(cat "$T/log")"
grep -q "18 training and 6 validation examples" "$T/log" || fail "split: $(cat "$T/log")"
[ "$(grep -c '"val_loss":' "$T/teacher/metrics.jsonl")" -eq 3 ] || fail "validation at steps 50, 100, 150"
for key in loss ce_loss lr grad_norm tokens_per_s tokens epoch; do
  grep -q "\"$key\":" "$T/teacher/metrics.jsonl" || fail "metrics lack $key"
done
awk -F'"loss":' '{ split($2, v, ","); l[NR] = v[1] }
  END { if (!(l[NR] < l[1] / 4)) { print "loss " l[1] " -> " l[NR]; exit 1 } }' "$T/teacher/metrics.jsonl" ||
  fail "SFT loss did not fall"
for f in config.json model.safetensors tokenizer.json optimizer.safetensors trainer_state.json; do
  [ -s "$T/teacher/latest/$f" ] || fail "checkpoint lacks $f"
done

# Bit-exact resume of a dense student distilled from the MoE teacher's logits (JSD on the top 8, with SFT loss).
KD="--data $T/sft.jsonl --teacher $T/teacher --student-config tiny-dense $COMMON --alpha 0.5 --divergence jsd"
KD="$KD --kd-top-k 8 --kd-temperature 2 --steps 6 --lr 1e-2"
$BIN/ds-distill "$T/full" $KD 2>/dev/null || fail "KD run"
$BIN/ds-distill "$T/split" $KD --stop-after 3 2>/dev/null
[ -d "$T/split/checkpoints/step-00000003" ] || fail "--stop-after did not save step 3"
$BIN/ds-distill --resume "$T/split" $KD 2>/dev/null || fail "resume"
cmp "$T/full/latest/model.safetensors" "$T/split/latest/model.safetensors" || fail "resumed weights differ"
cmp "$T/full/latest/optimizer.safetensors" "$T/split/latest/optimizer.safetensors" || fail "resumed optimizer differs"
grep -q '"kd_loss":' "$T/full/metrics.jsonl" || fail "no kd_loss metric"
set +e
$BIN/ds-distill --resume "$T/split" $KD --seed 9 2>"$T/err"; rc=$?
set -e
[ $rc -eq 2 ] || fail "resume with another seed: exit $rc"
grep -q "^ds-distill: --seed 9: the run was created with --seed 1234" "$T/err" || fail "seed change: $(cat "$T/err")"

# --fp8: the student's GEMMs and the teacher's forward through e4m3 tiles. The loss is finite at every step and
# falls, but not as the f32 run's does; a resume keeps the setting.
$BIN/ds-distill "$T/fp8" $KD --fp8 --log-every 1 2>/dev/null || fail "--fp8 run"
last_f32=$(tail -1 "$T/full/metrics.jsonl" | sed 's/.*"loss":\([^,}]*\).*/\1/')
awk -F'"loss":' -v f32="$last_f32" '{ split($2, v, ","); l[NR] = v[1]; if (v[1] !~ /^[0-9]/) bad = 1 }
  END { if (bad || NR != 6 || !(l[NR] < l[1]) || l[NR] == f32) bad = 1; print "fp8 " l[1] " -> " l[NR] ", f32 " f32
        exit bad }' "$T/fp8/metrics.jsonl" || fail "--fp8 loss"
cmp -s "$T/full/latest/model.safetensors" "$T/fp8/latest/model.safetensors" && fail "--fp8 changed nothing"
$BIN/ds-distill --resume "$T/fp8" --steps 7 2>"$T/err" || fail "resume of an --fp8 run: $(cat "$T/err")"
grep -q '"fp8": true' "$T/fp8/latest/trainer_state.json" || fail "the resumed run left --fp8"

# An FP8 teacher (ds-quantize) stays FP8 in memory; its KD losses are those of its f32 copy, and not those of the
# teacher it was quantized from.
$BIN/ds-quantize "$T/teacher" -o "$T/teacher8" >/dev/null 2>&1 || fail "ds-quantize"
$BIN/ds-quantize "$T/teacher8" -o "$T/teacher8f32" --to f32 >/dev/null 2>&1 || fail "ds-quantize --to f32"
KD8="--data $T/sft.jsonl --student-config tiny-dense $COMMON --alpha 0.5 --divergence jsd --kd-top-k 8"
KD8="$KD8 --kd-temperature 2 --steps 3 --lr 1e-2 --log-every 1"
for m in teacher teacher8 teacher8f32; do
  $BIN/ds-distill "$T/kd-$m" --teacher "$T/$m" $KD8 2>"$T/log.$m" || fail "KD from $m: $(cat "$T/log.$m")"
done
grep -q "teacher .*teacher8: FP8 in memory" "$T/log.teacher8" || fail "FP8 teacher: $(cat "$T/log.teacher8")"
grep -q "FP8" "$T/log.teacher8f32" && fail "f32 teacher reported as FP8: $(cat "$T/log.teacher8f32")"
kd() { sed "s/.*\"kd_loss\":\([^,}]*\).*/\1/" "$T/kd-$1/metrics.jsonl" | tr '\n' ' '; }
awk -v f32="$(kd teacher)" -v fp8="$(kd teacher8)" -v copy="$(kd teacher8f32)" 'BEGIN {
  n = split(fp8, a, " "); split(copy, b, " "); split(f32, c, " ")
  for (i = 1; i <= n; i++) { d = (a[i] - b[i]) / b[i]; if (d < 0) d = -d; if (!(d <= 1e-5)) bad = 1 }
  d = (a[1] - c[1]) / c[1]; if (d < 0) d = -d
  if (n != 3 || bad || !(d > 1e-4)) { print "kd_loss: fp8 " fp8 "| f32 copy " copy "| unquantized " f32; exit 1 } }' ||
  fail "KD from an FP8 teacher"

# Rejection sampling: the teacher's correct samples are kept (none of task "eight"), emitted and trained on.
$BIN/ds-distill "$T/samp" --teacher "$T/teacher" --prompts "$T/tasks.jsonl" -k 3 --max-new-tokens 48 \
  --emit "$T/emit.jsonl" --student-config tiny-dense $COMMON --steps 2 --val-fraction 0 2>"$T/log" ||
  fail "sampling: $(cat "$T/log")"
n=$(wc -l <"$T/emit.jsonl")
[ "$n" -gt 0 ] && [ "$n" -le 9 ] || fail "accepted $n of 9 correct-able samples: $(cat "$T/log")"
grep -q '"id":"eight"' "$T/emit.jsonl" && fail "a wrong answer was accepted"
grep -q "<answer> 7 </answer>" "$T/emit.jsonl" || fail "emitted: $(cat "$T/emit.jsonl")"
cmp "$T/emit.jsonl" "$T/samp/samples.jsonl" || fail "the run keeps other samples than it emits"
grep -q "accepted $n of 12 samples" "$T/log" || fail "summary: $(cat "$T/log")"

# ds-eval samples, filtered with jq (the README's one-liner), through a pipe.
$BIN/ds-eval --model "$T/teacher" --tasks "$T/tasks.jsonl" -k 2 --template plain --max-new-tokens 48 \
  --samples "$T/eval.jsonl" --threads 1 >/dev/null 2>&1
jq -c 'select(.correct) | {prompt, completion}' "$T/eval.jsonl" |
  $BIN/ds-distill "$T/jq" --data - --student-config tiny-dense $COMMON --steps 2 --val-fraction 0 2>/dev/null ||
  fail "training from a pipe"

# Refusals: a teacher with another tokenizer; bad records; usage errors.
$BIN/ds-tokenize train "${DS_FIXTURES:?}/tokenizer/corpus.txt" --vocab-size 300 -o "$T/tok" 2>/dev/null
set +e
$BIN/ds-distill "$T/b" --data "$T/sft.jsonl" --teacher "$T/teacher" --tokenizer "$T/tok" $COMMON 2>"$T/err"
[ $? -eq 1 ] && grep -q "have different tokenizers" "$T/err" || fail "tokenizer mismatch: $(cat "$T/err")"
printf '{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n' >"$T/bad.jsonl"
$BIN/ds-distill "$T/b" --data "$T/bad.jsonl" $COMMON 2>"$T/err"
[ $? -eq 1 ] && grep -q "bad.jsonl:2: a record needs both" "$T/err" || fail "bad record: $(cat "$T/err")"
$BIN/ds-distill "$T/b" $COMMON 2>/dev/null; [ $? -eq 2 ] || fail "no data is a usage error"
$BIN/ds-distill "$T/b" --data "$T/sft.jsonl" --alpha 0.5 2>/dev/null; [ $? -eq 2 ] || fail "--alpha without teacher"
refused 2 "--alpha: 2 is not in [0, 1]" $BIN/ds-distill "$T/b" --data "$T/sft.jsonl" --alpha 2
refused 2 "--divergence: unknown divergence 'kl'" $BIN/ds-distill "$T/b" --data "$T/sft.jsonl" --divergence kl
refused 2 "--val-fraction: 1 is not in [0, 1)" $BIN/ds-distill "$T/b" --data "$T/sft.jsonl" --val-fraction 1
refused 2 "--steps: -1 is not an integer >= 0" $BIN/ds-distill "$T/b" --data "$T/sft.jsonl" --steps -1
$BIN/ds-distill "$T/teacher" --data "$T/sft.jsonl" $COMMON 2>"$T/err"
[ $? -eq 1 ] && grep -q "already holds a run" "$T/err" || fail "overwrite"
[ ! -e "$T/b/latest" ] || fail "a refused start left a checkpoint"
set -e
$BIN/ds-distill --help | grep -q -- "--teacher" || fail "--help"
$BIN/ds-distill --version | grep -q "^ds-distill " || fail "--version"
echo ok
