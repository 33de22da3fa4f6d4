#!/bin/sh
# ds-eval end to end on a tiny model trained for a few steps: task and text summaries, samples, refusals.
set -eu
BIN=${DS_BIN:?}/ds-eval
. "$(dirname "$0")/scratch.inc"
# The value of a top-level number in a one-line JSON object.
field() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p" "$2"; }

${DS_BIN}/ds-pretrain "$T/run" --model-config tiny --steps 20 --batch 4 --seq-len 64 --threads 1 2>"$T/train.log" ||
  fail "training failed: $(cat "$T/train.log")"

# Tasks: the summary's keys and ranges, one sample record per completion, the table on stderr.
$BIN --model "$T/run" --tasks builtin:arith:test --limit 4 -k 2 --max-new-tokens 24 --threads 1 \
  --samples "$T/samples.jsonl" >"$T/sum.json" 2>"$T/table" || fail "ds-eval tasks: $(cat "$T/table")"
for key in model tasks n k pass@1 pass@k cons@k format mean_tokens; do
  grep -q "\"$key\":" "$T/sum.json" || fail "summary lacks $key: $(cat "$T/sum.json")"
done
[ "$(field n "$T/sum.json")" = 4 ] && [ "$(field k "$T/sum.json")" = 2 ] || fail "n, k: $(cat "$T/sum.json")"
awk -v p1="$(field pass@1 "$T/sum.json")" -v pk="$(field pass@k "$T/sum.json")" \
  -v c="$(field cons@k "$T/sum.json")" -v f="$(field format "$T/sum.json")" -v m="$(field mean_tokens "$T/sum.json")" \
  'BEGIN { exit !(0 <= p1 && p1 <= pk && pk <= 1 && 0 <= c && c <= 1 && 0 <= f && f <= 1 && 0 < m && m <= 24) }' ||
  fail "summary values: $(cat "$T/sum.json")"
[ "$(wc -l <"$T/samples.jsonl")" -eq 8 ] || fail "samples: $(wc -l <"$T/samples.jsonl") lines, not 8"
for key in id prompt completion answer reward correct tokens; do
  [ "$(grep -c "\"$key\":" "$T/samples.jsonl")" -eq 8 ] || fail "a sample lacks $key"
done
grep -q "pass@2" "$T/table" || fail "no table on stderr"

# The same seed gives the same samples, whatever the batch size.
$BIN --model "$T/run" --tasks builtin:arith:test --limit 4 -k 2 --max-new-tokens 24 --threads 1 --batch 3 \
  --samples "$T/samples3.jsonl" >/dev/null 2>&1
cmp -s "$T/samples.jsonl" "$T/samples3.jsonl" || fail "samples depend on --batch"

# Greedy on a JSONL task file from stdin.
echo '{"id": "x", "question": "What is 2 + 3?", "answer": 5}' |
  $BIN --model "$T/run" --tasks - --greedy --max-new-tokens 8 --threads 1 >"$T/greedy.json" 2>/dev/null ||
  fail "greedy from stdin"
[ "$(field k "$T/greedy.json")" = 1 ] || fail "greedy k: $(cat "$T/greedy.json")"

# Text: perplexity of a text file and of a token shard.
printf 'User: What is 47 + 38? Assistant: <think> 7+8=15, write 5 carry 1. 4+3+1=8. </think> <answer> 85 </answer>\n' \
  >"$T/text.txt"
$BIN --model "$T/run" --text "$T/text.txt" --seq-len 32 --threads 1 >"$T/ppl.json" 2>/dev/null || fail "ds-eval text"
for key in tokens nll ppl bits_per_byte; do grep -q "\"$key\":" "$T/ppl.json" || fail "text summary lacks $key"; done
awk -v p="$(field ppl "$T/ppl.json")" -v b="$(field bits_per_byte "$T/ppl.json")" 'BEGIN { exit !(p > 1 && b > 0) }' ||
  fail "text values: $(cat "$T/ppl.json")"
printf '\000\000\000\000\012\000\000\000\024\000\000\000\001\000\000\000' >"$T/t.tok"
$BIN --model "$T/run" --text "$T/t.tok" --threads 1 >"$T/tok.json" 2>/dev/null || fail "ds-eval shard"
[ "$(field tokens "$T/tok.json")" = 3 ] || fail "shard tokens: $(cat "$T/tok.json")"

# Refusals: one line naming the problem, exit 1; usage errors exit 2.
set +e
printf '{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2", "foo": 3}\n' >"$T/bad.jsonl"
$BIN --model "$T/run" --tasks "$T/bad.jsonl" 2>"$T/err"; [ $? -eq 1 ] && grep -q "bad.jsonl:2: unknown field 'foo'" "$T/err" ||
  fail "unknown field: $(cat "$T/err")"
printf '{"prompt": "a", "answer": "1"}\n\n{"prompt": "b",\n' >"$T/broken.jsonl"
$BIN --model "$T/run" --tasks "$T/broken.jsonl" 2>"$T/err"; [ $? -eq 1 ] && grep -q "broken.jsonl:3: invalid JSON" "$T/err" ||
  fail "malformed line: $(cat "$T/err")"
printf '{"prompt": "%0300d", "answer": "1"}\n' 0 >"$T/long.jsonl"
$BIN --model "$T/run" --tasks "$T/long.jsonl" 2>"$T/err"; [ $? -eq 1 ] && grep -q "context of 256" "$T/err" ||
  fail "long prompt: $(cat "$T/err")"
mkdir "$T/notok" && cp "$T/run/latest/config.json" "$T/run/latest/model.safetensors" "$T/notok/"
$BIN --model "$T/notok" 2>"$T/err"; [ $? -eq 1 ] && grep -q "no tokenizer.json" "$T/err" || fail "no tokenizer"
[ "$(wc -l <"$T/err")" -eq 1 ] || fail "error is not one line: $(cat "$T/err")"
$BIN --model "$T/run" --greedy -k 4 2>/dev/null; [ $? -eq 2 ] || fail "--greedy -k 4 is a usage error"
$BIN --model "$T/run" --tasks builtin:arith --text "$T/text.txt" 2>/dev/null; [ $? -eq 2 ] || fail "--tasks with --text"
$BIN --model "$T/run" --template nosuch 2>/dev/null; [ $? -eq 2 ] || fail "unknown template"
$BIN 2>/dev/null; [ $? -eq 2 ] || fail "missing --model"
set -e
for bad in "--temperature -1" "--temperature nan" "--top-p 2" "--top-k -3" "--repetition-penalty 0" "--min-p 1.5" \
  "-k 0" "--max-new-tokens 0" "--seed -1"; do
  refused 2 "${bad% *}: ${bad#* } is not" $BIN --model "$T/run" $bad
done
# Messages stay on one line whatever bytes they quote.
refused 1 'nowhere\x0Ahere\xFF: not a model' $BIN --model "$T/nowhere$(printf '\nhere\377')"
# Files that are mapped or sized must be regular: a FIFO is refused at once, not waited on.
for f in model.safetensors config.json tokenizer.json; do
  mkdir "$T/fifo-$f" && cp "$T/run/latest/"* "$T/fifo-$f/" && rm "$T/fifo-$f/$f" && mkfifo "$T/fifo-$f/$f"
  refused 1 "$f: not a regular file" timeout 60 $BIN --model "$T/fifo-$f"
done
# --samples into a FIFO: written into, not replaced.
mkfifo "$T/samples.fifo"
cat "$T/samples.fifo" >"$T/from_fifo" &
reader=$!
$BIN --model "$T/run" --limit 2 -k 1 --max-new-tokens 4 --threads 1 --samples "$T/samples.fifo" >/dev/null 2>&1 ||
  fail "--samples into a FIFO"
[ -p "$T/samples.fifo" ] || { kill $reader; fail "--samples replaced the FIFO"; }
wait $reader
[ "$(wc -l <"$T/from_fifo")" -eq 2 ] || fail "samples through the FIFO: $(cat "$T/from_fifo")"
$BIN --help | grep -q -- "--samples" || fail "--help"
$BIN --version | grep -q "ds-eval" || fail "--version"
echo ok
