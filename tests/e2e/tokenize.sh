#!/bin/sh
# ds-tokenize end to end: train, encode to zstd shards, decode back to the input, count, and refuse bad input.
set -eu
BIN=${DS_BIN:?}/ds-tokenize
CORPUS=${DS_FIXTURES:?}/tokenizer/corpus.txt
. "$(dirname "$0")/scratch.inc"

# Train: tokenizer.json and tokenizer_config.json, the same bytes from the same input at any thread count.
$BIN train "$CORPUS" --vocab-size 600 -o "$T/tok" --threads 2 2>"$T/log" || fail "train: $(cat "$T/log")"
[ -s "$T/tok/tokenizer.json" ] && [ -s "$T/tok/tokenizer_config.json" ] || fail "train wrote no tokenizer"
grep -q "600 tokens (337 merges)" "$T/log" || fail "train summary: $(cat "$T/log")"
$BIN train --lines --vocab-size 600 -o "$T/tok1" --threads 1 <"$CORPUS" 2>/dev/null
$BIN train --lines --vocab-size 600 -o "$T/tok2" --threads 2 <"$CORPUS" 2>/dev/null
cmp "$T/tok1/tokenizer.json" "$T/tok2/tokenizer.json" || fail "training depends on the thread count"

# Encode the whole file as one document to zstd, decode: the input comes back byte for byte.
$BIN encode --tokenizer "$T/tok" "$CORPUS" -o "$T/c.tok.zst" --threads 2 2>/dev/null
[ "$(head -c 4 "$T/c.tok.zst" | od -An -tx1 | tr -d ' ')" = "28b52ffd" ] || fail "not a zstd shard"
$BIN decode --tokenizer "$T/tok" "$T/c.tok.zst" -o "$T/c.txt"
cmp "$CORPUS" "$T/c.txt" || fail "decode(encode(corpus)) differs"

# Lines as documents, through pipes, raw: BOS line EOS each; decode --lines restores the (non-empty) lines.
grep -v '^$' "$CORPUS" >"$T/lines.txt"
$BIN encode --tokenizer "$T/tok/tokenizer.json" --lines --zstd 0 <"$T/lines.txt" 2>/dev/null >"$T/l.tok"
$BIN decode --tokenizer "$T/tok" --lines <"$T/l.tok" | cmp - "$T/lines.txt" || fail "line round trip"
first=$(od -An -tu4 -N4 "$T/l.tok" | tr -d ' ')
[ "$first" = 0 ] || fail "shard does not start with BOS: $first"

# JSONL: the field's text is the document.
printf '{"text": "héllo wörld 123"}\n{"id": 2, "text": "<think>x</think>"}\n' >"$T/d.jsonl"
$BIN encode --tokenizer "$T/tok" --field text "$T/d.jsonl" -o "$T/j.tok" 2>/dev/null
printf '{"text":"héllo wörld 123"}\n{"text":"<think>x</think>"}\n' >"$T/d.expected"
$BIN decode --tokenizer "$T/tok" --jsonl "$T/j.tok" | cmp - "$T/d.expected" || fail "JSONL round trip"

# ds-pretrain trains on the shards; the preset's vocabulary grows to the tokenizer's and the model carries it.
PRETRAIN=${DS_BIN}/ds-pretrain
$PRETRAIN "$T/run" --model-config tiny --tokenizer "$T/tok" --data "$T/c.tok.zst" "$T/l.tok" --steps 3 --batch 2 \
  --seq-len 32 --threads 1 2>"$T/log" || fail "pretrain on shards: $(cat "$T/log")"
cmp "$T/tok/tokenizer.json" "$T/run/latest/tokenizer.json" || fail "the model does not carry its tokenizer"
grep -q '"vocab_size": 640' "$T/run/latest/config.json" || fail "vocab not grown to the tokenizer's"
# A resumed run keeps its tokenizer: given again it must be the same one.
$PRETRAIN --resume "$T/run" --tokenizer "$T/tok" --steps 4 2>"$T/err" || fail "--tokenizer again on resume: $(cat "$T/err")"
cp -r "$T/tok" "$T/tok2"
refused 2 "the run was created with --tokenizer" $PRETRAIN --resume "$T/run" --tokenizer "$T/tok2" --steps 5
set +e
$PRETRAIN "$T/run2" --model-config tiny --data "$T/c.tok.zst" --steps 1 2>"$T/err"; [ $? -eq 1 ] &&
  grep -q "c.tok.zst" "$T/err" || fail "shards past the byte-level vocabulary: $(cat "$T/err")"
set -e

# Count: the trained tokenizer compresses, the byte-level one gives one token per byte.
$BIN count --tokenizer "$T/tok" --json "$CORPUS" >"$T/count.json"
bytes=$(wc -c <"$CORPUS" | tr -d ' ')
grep -q "\"bytes\":$bytes," "$T/count.json" || fail "count bytes: $(cat "$T/count.json")"
awk -F'"bytes_per_token":' '{ split($2, v, "}"); if (!(v[1] > 2.0 && v[1] < 8.0)) { print "bytes/token " v[1]; exit 1 } }' \
  "$T/count.json" || fail "bytes per token"
printf 'plain text\n' | $BIN count | grep -q "^tokens 11$" || fail "byte-level count"

# Refusals: usage errors exit 2, runtime errors exit 1 with the file named on one line.
set +e
$BIN 2>/dev/null; [ $? -eq 2 ] || fail "no subcommand is a usage error"
$BIN train "$CORPUS" 2>/dev/null; [ $? -eq 2 ] || fail "train without -o is a usage error"
$BIN encode --zstd 99 "$CORPUS" 2>/dev/null; [ $? -eq 2 ] || fail "bad --zstd is a usage error"
$BIN encode --lines --jsonl "$CORPUS" 2>/dev/null; [ $? -eq 2 ] || fail "--lines with --jsonl is a usage error"
$BIN encode "$T/missing.txt" -o "$T/x.tok" 2>"$T/err"; [ $? -eq 1 ] || fail "missing input exit status"
grep -q "missing.txt" "$T/err" && [ "$(wc -l <"$T/err")" -eq 1 ] || fail "missing input message: $(cat "$T/err")"
[ ! -e "$T/x.tok" ] || fail "a failed encode left its output"
$BIN encode --tokenizer "$T/nope" "$CORPUS" 2>"$T/err"; [ $? -eq 1 ] && grep -q "nope" "$T/err" || fail "bad tokenizer"
printf '{"text": 1}\n' >"$T/bad.jsonl"
$BIN encode --jsonl "$T/bad.jsonl" 2>"$T/err" >/dev/null; [ $? -eq 1 ] && grep -q "bad.jsonl: line 1" "$T/err" ||
  fail "bad JSONL: $(cat "$T/err")"
$BIN decode "$T/c.tok.zst" 2>"$T/err" >/dev/null; [ $? -eq 1 ] && grep -q "c.tok.zst" "$T/err" ||
  fail "shard ids past the byte-level vocabulary: $(cat "$T/err")"
refused 2 "--vocab-size: 10 is not an integer >= 263" $BIN train "$CORPUS" -o "$T/small" --vocab-size 10
refused 2 "--threads: -1 is not an integer >= 0" $BIN count --threads -1 "$CORPUS"
refused 2 "--zstd: 23 is not an integer in [0, 22]" $BIN encode --zstd 23 "$CORPUS"
printf '{"text": "\377\376"\n' >"$T/raw.jsonl"
refused 1 "raw.jsonl: line 1" $BIN encode --jsonl "$T/raw.jsonl" -o "$T/raw.tok"
grep -q "$(printf '\377')" "$T/refused.err" && fail "raw bytes echoed: $(cat "$T/refused.err")"
# --config: keys of a subcommand's [section] are checked too.
printf '[encode]\nzstd = 5\n' >"$T/good.toml"
$BIN --config "$T/good.toml" encode "$CORPUS" -o "$T/cfg.tok.zst" 2>/dev/null || fail "[encode] zstd = 5"
printf '[encode]\nzstdd = 5\n' >"$T/typo.toml"
refused 2 "typo.toml:2: no option 'encode.zstdd'" $BIN --config "$T/typo.toml" encode "$CORPUS"
# An output that is not a regular file (here a FIFO) is written into, not replaced.
$BIN encode "$CORPUS" -o "$T/direct.tok" 2>/dev/null
$BIN decode "$T/direct.tok" -o "$T/direct.txt"
mkfifo "$T/fifo"
for cmd in "encode $CORPUS" "decode $T/direct.tok"; do
  cat "$T/fifo" >"$T/from_fifo" &
  reader=$!
  $BIN $cmd -o "$T/fifo" 2>/dev/null || fail "$cmd into a FIFO"
  [ -p "$T/fifo" ] || { kill $reader; fail "$cmd replaced the FIFO"; }
  wait $reader
  expected="$T/direct.tok"
  [ "${cmd%% *}" = decode ] && expected="$T/direct.txt"
  cmp -s "$T/from_fifo" "$expected" || fail "$cmd through a FIFO differs"
done
ls "$T" | grep -q '\.tmp\.' && fail "temporary file left beside the FIFO"
exit 0
