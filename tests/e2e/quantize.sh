#!/bin/sh
# ds-quantize end to end on the tiny model: FP8 layout and config, listing, round trip, shards, refusals.
set -eu
BIN=${DS_BIN:?}
Q=$BIN/ds-quantize
. "$(dirname "$0")/scratch.inc"

$BIN/ds-pretrain "$T/run" --model-config tiny --steps 3 --batch 2 --seq-len 16 --threads 1 2>/dev/null ||
  fail "ds-pretrain"

# A run directory quantizes (its latest checkpoint) to FP8 with quantization_config and the tokenizer copied.
$Q "$T/run" -o "$T/fp8" --threads 2 >"$T/report" 2>"$T/err" || fail "quantize: $(cat "$T/err")"
grep -q '"quant_method": "fp8"' "$T/fp8/config.json" || fail "no quantization_config"
grep -q '"weight_block_size"' "$T/fp8/config.json" || fail "no weight_block_size"
for f in tokenizer.json tokenizer_config.json generation_config.json model.safetensors; do
  [ -s "$T/fp8/$f" ] || fail "fp8 model lacks $f"
done
grep -q '^total' "$T/report" || fail "no total in the report"
grep -q 'rel rms err' "$T/report" || fail "no error column in the report"

# --list: F8_E4M3 weights with weight_scale_inv [ceil(out/128), ceil(in/128)]; high-precision tensors stay F32.
$Q --list "$T/fp8" >"$T/list"
grep -Eq '^model\.layers\.0\.self_attn\.kv_a_proj_with_mqa\.weight +F8_E4M3 +\[20, 32\] +640$' "$T/list" ||
  fail "kv_a_proj not F8_E4M3: $(grep kv_a_proj "$T/list")"
grep -Eq '^model\.layers\.0\.self_attn\.kv_a_proj_with_mqa\.weight_scale_inv +F32 +\[1, 1\] +4$' "$T/list" ||
  fail "no kv_a_proj scale"
grep -Eq '^model\.embed_tokens\.weight +F32 ' "$T/list" || fail "embeddings were quantized"
grep -Eq '^model\.layers\.1\.mlp\.gate\.weight +F32 ' "$T/list" || fail "the router was quantized"
grep -Eq '^lm_head\.weight +F32 ' "$T/list" || fail "lm_head was quantized"
$Q --list --json "$T/fp8" | grep -q '"dtype":"F8_E4M3"' || fail "--list --json"

# The FP8 report: quantization error of a few percent; back to F32 is exact and drops quantization_config.
$Q "$T/fp8" -o "$T/f32" --to f32 --json >"$T/back.json" 2>/dev/null || fail "dequantize"
grep -q '"total":{[^}]*"rel_rms_error":0\.0' "$T/back.json" || fail "dequantization not exact: $(cat "$T/back.json")"
! grep -q quantization_config "$T/f32/config.json" || fail "quantization_config kept in f32"
$Q --list "$T/f32" | grep -q F8_E4M3 && fail "f32 model holds F8_E4M3"
$Q "$T/run" -o "$T/fp8b" --json 2>/dev/null | grep -Eq '"total":\{[^}]*"rel_rms_error":0\.0[1-4]' ||
  fail "fp8 quantization error not between 1% and 5%"

# FP8 and BF16 models load wherever a model does; the score on text stays within 1% of f32.
if [ -x "$BIN/ds-eval" ]; then
  printf 'What is 12 + 30? <think> 2+0=2. 1+3=4. </think> <answer> 42 </answer>\n' >"$T/text"
  for m in run fp8 f32; do
    $BIN/ds-eval --model "$T/$m" --text "$T/text" --threads 1 2>"$T/ppl.$m" |
      sed -n 's/.*"nll":\([0-9.e+-]*\).*/\1/p' >"$T/nll.$m" || fail "ds-eval on $m"
  done
  awk -v a="$(cat "$T/nll.run")" -v b="$(cat "$T/nll.fp8")" \
    'BEGIN { d = (a - b) / a; if (d < 0) d = -d; if (!(a > 0 && d < 0.01)) { print a, b; exit 1 } }' ||
    fail "fp8 nll differs from f32 by 1% or more"
  # Text is scored FP8 in memory too, as its dequantized copy ($T/f32) scores it up to float rounding.
  grep -q 'weights.*(FP8 in memory)' "$T/ppl.fp8" || fail "fp8 not resident scoring text: $(cat "$T/ppl.fp8")"
  ! grep -q 'FP8' "$T/ppl.f32" || fail "f32 model reported as FP8"
  awk -v a="$(cat "$T/nll.f32")" -v b="$(cat "$T/nll.fp8")" \
    'BEGIN { d = (a - b) / a; if (d < 0) d = -d; if (!(a > 0 && d <= 1e-5)) { print a, b; exit 1 } }' ||
    fail "fp8 nll differs from its f32 copy's by more than 1e-5"

  # Generation keeps FP8 weights FP8 in memory and answers greedily exactly as the dequantized copy ($T/f32) does.
  for m in fp8 f32; do
    $BIN/ds-eval --model "$T/$m" --greedy --limit 4 --max-new-tokens 24 --samples "$T/samples.$m" --threads 1 \
      >/dev/null 2>"$T/eval.$m" || fail "ds-eval tasks on $m: $(cat "$T/eval.$m")"
  done
  grep -q 'weights.*(FP8 in memory)' "$T/eval.fp8" || fail "fp8 not resident: $(cat "$T/eval.fp8")"
  ! grep -q 'FP8' "$T/eval.f32" || fail "f32 model reported as FP8"
  [ "$(wc -l <"$T/samples.fp8")" -eq 4 ] || fail "not 4 samples"
  cmp -s "$T/samples.fp8" "$T/samples.f32" || fail "fp8 greedy answers differ from the dequantized model's"

  # Against the model it was quantized from: at least 14 of 16 greedy completions stay the same.
  for m in run fp8; do
    $BIN/ds-eval --model "$T/$m" --greedy --limit 16 --max-new-tokens 24 --samples "$T/held.$m" --threads 1 \
      >/dev/null 2>&1 || fail "ds-eval held-out on $m"
  done
  same=$(paste -d '\n' "$T/held.run" "$T/held.fp8" | sed 's/.*"completion":\("[^"]*"\).*/\1/' | paste - - |
    awk -F '\t' '$1 == $2' | wc -l)
  [ "$same" -ge 14 ] || fail "only $same of 16 greedy completions survive FP8 quantization"
fi
if [ -x "$BIN/ds-chat" ]; then
  for m in fp8 f32; do
    printf 'What is 2 + 3?\n' | $BIN/ds-chat --model "$T/$m" --temperature 0 --max-new-tokens 24 --threads 1 \
      >"$T/chat.$m" 2>"$T/err" || fail "ds-chat on $m: $(cat "$T/err")"
  done
  [ -s "$T/chat.fp8" ] && cmp -s "$T/chat.fp8" "$T/chat.f32" || fail "fp8 chat reply differs from the dequantized one"
fi

# A tiny shard size gives shards and an index, and the result still lists and converts.
$Q "$T/run" -o "$T/sharded" --to bf16 --max-shard-size 20KB >/dev/null 2>&1 || fail "sharded"
[ -s "$T/sharded/model.safetensors.index.json" ] || fail "no index"
n=$(ls "$T/sharded" | grep -c '^model-0')
[ "$n" -gt 2 ] && [ -s "$T/sharded/model-00001-of-$(printf %05d "$n").safetensors" ] || fail "shard names"
$Q --list "$T/sharded" | grep -q 'BF16' || fail "sharded list"

# Refusals: exit 1 and a message for runtime problems, nothing written; exit 2 for usage errors.
set +e
$Q "$T/fp8" -o "$T/fp8" 2>"$T/err"; [ $? -eq 1 ] && grep -q "would overwrite the input" "$T/err" || fail "same path"
$Q "$T/run" -o "$T/run/q" 2>"$T/err"; [ $? -eq 1 ] && grep -q "would overwrite the input" "$T/err" || fail "inside"
[ ! -e "$T/run/q" ] || fail "refusal wrote output"
$Q "$T/run" -o "$T/fp8" 2>"$T/err"; [ $? -eq 1 ] && grep -q "already exists" "$T/err" || fail "existing output"
$Q "$T/none" -o "$T/x" 2>"$T/err"; [ $? -eq 1 ] && grep -q "none" "$T/err" || fail "missing model"
$Q "$T/run" -o "$T/x" --to fp16 2>"$T/err"; [ $? -eq 2 ] && grep -q "fp16" "$T/err" || fail "bad --to"
$Q "$T/run" -o "$T/x" --max-shard-size lots 2>/dev/null; [ $? -eq 2 ] || fail "bad --max-shard-size"
$Q "$T/run" 2>/dev/null; [ $? -eq 2 ] || fail "missing -o"
$Q 2>/dev/null; [ $? -eq 2 ] || fail "missing model"
refused 2 "--keep: regex \"([\" does not compile" $Q "$T/run" -o "$T/x" --keep '(['
[ ! -e "$T/x" ] || fail "a refused run left output"
ls -a "$T" | grep -q '\.tmp-' && fail "staging directory left behind"
set -e
$Q --help | grep -q -- "--max-shard-size" || fail "--help"
$Q --version | grep -q "ds-quantize" || fail "--version"
echo ok
