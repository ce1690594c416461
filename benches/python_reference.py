"""The Gemma Scope tutorial's path, timed by benches/compare_python.py: transformers f32, a full
forward pass with a forward hook on model.model.layers[L], and the JumpReLU encode in torch.

    python benches/python_reference.py MODEL_DIR PARAMS_NPZ LAYER PROMPTS_FILE > features.json

Prints, per prompt, each non-BOS token's top-5 feature ids (for the agreement check).
"""

import json
import sys

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


class JumpReLUSAE(torch.nn.Module):
    """As in the Gemma Scope tutorial notebook."""

    def __init__(self, params):
        super().__init__()
        self.W_enc = torch.nn.Parameter(params["W_enc"])
        self.b_enc = torch.nn.Parameter(params["b_enc"])
        self.threshold = torch.nn.Parameter(params["threshold"])

    def encode(self, x):
        pre = x @ self.W_enc + self.b_enc
        return (pre > self.threshold) * torch.nn.functional.relu(pre)


def main():
    model_dir, sae_path, layer, prompts_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    params = np.load(sae_path)
    sae = JumpReLUSAE({k: torch.from_numpy(params[k]) for k in ("W_enc", "b_enc", "threshold")})

    captured = {}

    def hook(module, inputs, output):
        captured["res"] = output[0] if isinstance(output, tuple) else output

    model.model.layers[layer].register_forward_hook(hook)
    results = []
    for line in open(prompts_file, encoding="utf-8"):
        if not line.strip():
            continue
        ids = torch.tensor([tokenizer.encode(line.rstrip("\n")).ids])
        model(ids)
        acts = sae.encode(captured["res"][0].float())
        top = []
        for row in acts[1:]:
            values, idx = torch.sort(row, descending=True, stable=True)
            top.append([int(i) for i, v in zip(idx[:5], values[:5]) if v > 0])
        results.append(top)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
