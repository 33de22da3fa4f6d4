#!/bin/sh
# Sizes read from files that no machine can hold (a model config, a model directory's config.json, a zstd bomb of a
# token shard) are refused before anything is allocated: exit 1, one line naming the file and what is wrong, nothing
# on stdout.
set -eu
. "$(dirname "$0")/scratch.inc"

# refused WHAT NEEDLE COMMAND...: COMMAND exits 1 with one line on stderr holding NEEDLE and nothing on stdout.
refused() {
  what=$1 needle=$2
  shift 2
  set +e
  "$@" >"$T/out" 2>"$T/err"
  rc=$?
  set -e
  [ $rc -eq 1 ] || fail "$what: exit $rc, not 1: $(cat "$T/err")"
  [ "$(wc -l <"$T/err")" -eq 1 ] || fail "$what: not one line: $(cat "$T/err")"
  grep -qF -- "$needle" "$T/err" || fail "$what: $(cat "$T/err")"
  [ ! -s "$T/out" ] || fail "$what: wrote to stdout: $(head -c 200 "$T/out")"
}
# limited KIB COMMAND...: COMMAND with its address space limited to KIB KiB (ulimit -v). One OpenMP thread, as
# OpenBLAS reserves buffers for each thread when it loads and retries forever when the limit refuses them.
limited() {
  kib=$1
  shift
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 sh -c "ulimit -v $kib && exec \"\$@\"" sh "$@"
}
# with_config KEY VALUE FILE: the tiny model's config.json with KEY set to VALUE, written to FILE.
with_config() { sed "s/\"$1\": [-0-9]*/\"$1\": $2/" "$T/model/config.json" >"$3"; }

${DS_BIN}/ds-pretrain "$T/run" --model-config tiny --steps 1 --batch 2 --seq-len 16 --threads 1 2>"$T/train.log" ||
  fail "training failed: $(cat "$T/train.log")"
cp -RL "$T/run/latest" "$T/model"
printf 'User: What is 2 + 3? Assistant: 5\n' >"$T/text.txt"

# ds-pretrain --model-config: each key checked, and the model's memory (16 bytes a parameter to train) against what
# the machine can hold, here at most 8 GiB of address space so that no machine takes these.
for case in "vocab_size 1000000000000 vocab_size 1000000000000 exceeds the limit" \
  "max_position_embeddings 4000000000000 max_position_embeddings 4000000000000 exceeds the limit" \
  "n_routed_experts -4 n_routed_experts must be >= 0, got -4" \
  "num_hidden_layers 100000000 the model (" \
  "q_lora_rank 1000000000000 the model (" \
  "num_nextn_predict_layers 1000000 the model (" \
  "n_routed_experts 100000000 the model ("; do
  set -- $case
  key=$1 value=$2
  shift 2
  with_config "$key" "$value" "$T/$key.json"
  refused "ds-pretrain $key $value" "$T/$key.json: $*" \
    limited 8388608 "${DS_BIN}/ds-pretrain" "$T/r-$key-$value" --model-config "$T/$key.json" --steps 1 --threads 1
  [ "$1" != the ] || grep -q "at 16 B, RoPE tables for 256 positions) needs .* GiB of memory, more than the .* available$" \
    "$T/err" || fail "ds-pretrain $key $value: $(cat "$T/err")"
done

# ds-eval on a model directory whose context no RoPE table could cover, or more than this machine can hold.
with_config max_position_embeddings 4000000000000 "$T/model/config.json.new"
mv "$T/model/config.json.new" "$T/model/config.json"
refused "ds-eval context 4e12" "$T/model/config.json: max_position_embeddings 4000000000000 exceeds the limit" \
  "${DS_BIN}/ds-eval" --model "$T/model" --text "$T/text.txt" --threads 1
with_config max_position_embeddings 2000000000 "$T/model/config.json.new"
mv "$T/model/config.json.new" "$T/model/config.json"
refused "ds-eval context 2e9" "$T/model/config.json: the model (" \
  limited 4194304 "${DS_BIN}/ds-eval" --model "$T/model" --text "$T/text.txt" --threads 1

# A zstd bomb: one frame of 64 MiB of zeros 256 times, 16 GiB of ids from half a MiB, refused under a 2 GiB address
# space (of which the libraries take up to 1 GiB) after at most 1 GiB.
head -c 67108864 /dev/zero | zstd -q -1 -c >"$T/frame.zst"
i=0
while [ $i -lt 256 ]; do
  cat "$T/frame.zst"
  i=$((i + 1))
done >"$T/bomb.tok.zst"
[ "$(wc -c <"$T/bomb.tok.zst")" -lt 1048576 ] || fail "the bomb is $(wc -c <"$T/bomb.tok.zst") bytes"
refused "ds-eval zstd bomb" "$T/bomb.tok.zst: holding the shard needs" \
  limited 2097152 "${DS_BIN}/ds-eval" --model "$T/run" --text "$T/bomb.tok.zst" --threads 1
refused "ds-pretrain zstd bomb" "$T/bomb.tok.zst: holding the shard needs" \
  limited 2097152 "${DS_BIN}/ds-pretrain" "$T/r-bomb" --model-config tiny \
  --data "$T/bomb.tok.zst" --steps 1 --threads 1
