"""The strong PyTorch peer of gemscope's corpus commands, timed by benches/compare_corpus.py.

transformers f32 (eager attention: Gemma 2's soft-capping needs it), loading only blocks 0..=L
(`num_hidden_layers=L+1`, TransformerLens' `stop_at_layer` done at load time, so it neither reads
nor runs the later blocks or the LM head), prompts sorted by length and run in batches of 16 with
an attention mask (right padding), the residual captured by a hook on block L, and the JumpReLU
encode in torch on the real (non-pad, non-BOS) tokens, top-5 feature ids per token.

    python benches/python_corpus_peer.py MODEL_DIR PARAMS_NPZ LAYER PROMPTS_FILE [--batch 16] > top5.json

stdout: per prompt (in file order), each non-BOS token's top-5 feature ids. stderr: one JSON line
with the load and compute seconds.
"""

import argparse
import json
import sys
import time

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("sae")
    ap.add_argument("layer", type=int)
    ap.add_argument("prompts")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    started = time.perf_counter()
    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32, attn_implementation="eager",
                                                 num_hidden_layers=args.layer + 1)
    model.eval()
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    params = np.load(args.sae)
    w_enc, b_enc, threshold = (torch.from_numpy(params[k]) for k in ("W_enc", "b_enc", "threshold"))
    loaded = time.perf_counter()

    captured = {}

    def hook(module, inputs, output):
        captured["res"] = output[0] if isinstance(output, tuple) else output

    model.model.layers[args.layer].register_forward_hook(hook)
    prompts = [line.rstrip("\n") for line in open(args.prompts, encoding="utf-8") if line.strip()]
    encoded = [tokenizer.encode(p).ids for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results = [None] * len(encoded)
    tokens = 0
    for start in range(0, len(order), args.batch):
        batch = order[start:start + args.batch]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, :len(encoded[i])] = 1
        model.model(input_ids=ids, attention_mask=mask, use_cache=False)
        res = captured["res"]
        for row, i in enumerate(batch):
            n = len(encoded[i])
            tokens += n
            x = res[row, 1:n].float()
            pre = x @ w_enc + b_enc
            acts = (pre > threshold) * torch.nn.functional.relu(pre)
            values, idx = torch.topk(acts, 5, dim=-1)
            results[i] = [[int(f) for f, v in zip(fi, vi) if v > 0] for fi, vi in zip(idx.tolist(), values.tolist())]
    done = time.perf_counter()
    json.dump(results, sys.stdout)
    print(json.dumps({"load_s": loaded - started, "compute_s": done - loaded, "tokens": tokens}), file=sys.stderr)


if __name__ == "__main__":
    main()
