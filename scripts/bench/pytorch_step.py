#!/usr/bin/env python3
"""PyTorch baseline for ds-bench's training step (never run by the tests).

Builds transformers' DeepseekV3ForCausalLM in float32 with the `demo` preset of
libcore/src/model/config.cpp (random init), and times one training step
(zero_grad + forward + cross-entropy + backward + AdamW step) on random tokens with
random targets, as ds::bench::train_step does: --warmup untimed steps, then --steps
timed ones, reporting the median.  Prints one JSON line.

MTP is not part of transformers' DeepseekV3 training forward, so the model has no MTP
module ("mtp": false); the aux-loss-free bias update is not done either.

Needs: pip install torch transformers   (CPU wheels are enough)
Run:   python3 scripts/bench/pytorch_step.py --threads 2 --batch 8 --seq 256
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402

DEMO = dict(
    vocab_size=320, hidden_size=192, intermediate_size=512, moe_intermediate_size=128,
    num_hidden_layers=4, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
    q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
    topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
    rope_scaling=None, rope_theta=10000.0, max_position_embeddings=512, tie_word_embeddings=False,
    rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False, attention_dropout=0.0,
    bos_token_id=0, eos_token_id=1, num_nextn_predict_layers=0,
)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--attn", default="sdpa", help="transformers attn_implementation: sdpa or eager")
    ap.add_argument("--experts", default=None,
                    help="transformers experts_implementation (eager, grouped_mm, batched_mm); default: its choice")
    args = ap.parse_args()
    if min(args.threads, args.batch, args.seq, args.steps) <= 0 or args.warmup < 0:
        ap.error("threads, batch, seq and steps must be positive, warmup >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    config = DeepseekV3Config(**DEMO)
    kwargs = dict(attn_implementation=args.attn)
    if args.experts:
        kwargs["experts_implementation"] = args.experts
    model = DeepseekV3ForCausalLM._from_config(config, dtype=torch.float32, **kwargs)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)

    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=g)
    targets = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=g)

    seconds = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs, use_cache=False).logits
        loss = F.cross_entropy(logits.view(-1, config.vocab_size), targets.view(-1))
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            seconds.append(dt)

    step = statistics.median(seconds)
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": args.threads, "batch": args.batch, "seq": args.seq, "steps": args.steps,
        "params": params, "attn": model.config._attn_implementation,
        "experts": model.config._experts_implementation, "mtp": False,
        "loss": round(loss.item(), 4),
        "tokens_per_s": round(args.batch * args.seq / step, 1),
        "step_ms": round(step * 1e3, 2),
        "step_ms_min": round(min(seconds) * 1e3, 2),
    }))


if __name__ == "__main__":
    main()
