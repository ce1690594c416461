"""Generation speed (issue 14, target 6): `gemscope generate` and `gemscope steer` against
transformers' `generate` (greedy, KV cache, f32, eager attention) on the 2B-shaped synthetic
checkpoint of benches/compare_python.py, the same prompt, in one run.

    cargo build --release
    /work/venv-fixtures/bin/python benches/compare_generate.py --new-tokens 32

Both keep the whole model resident. Reported: the load (gemscope: the process's wall time less
prefill and decode; transformers: `from_pretrained`, which maps the file and reads pages as they
are first used), the prompt's forward pass (prefill) and decode tokens/s after it. gemscope's figures are its own JSON fields (`prefill_seconds`,
`tokens_per_second`); transformers' are from timing `generate` with 1 and with N new tokens in one
process after a warm-up call: decode tokens/s = (N - 1) / (t_N - t_1), prefill = t_1. The
generated ids are compared.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_python import REPO, make_checkpoint, make_sae  # noqa: E402

PROMPT = "The Golden Gate Bridge is a suspension bridge spanning the Golden Gate strait."


def log(message):
    print(message, file=sys.stderr, flush=True)


def transformers_generate(model_dir, new_tokens):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    load = time.perf_counter() - started
    ids = torch.tensor([Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(PROMPT).ids])

    def run(n):
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)
        return time.perf_counter() - t, out[0, ids.shape[1]:].tolist()

    run(2)  # warm-up
    t1, _ = run(1)
    tn, generated = run(new_tokens)
    return dict(load_s=load, prefill_s=t1, tokens_per_s=(new_tokens - 1) / (tn - t1), ids=generated,
                prompt_tokens=ids.shape[1])


def gemscope_json(cmd):
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gemscope failed:\n{proc.stderr}")
    return time.perf_counter() - started, json.loads(proc.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--work", default="/tmp/gemscope-bench")
    ap.add_argument("--gemscope", default=str(REPO / "target/release/gemscope"))
    args = ap.parse_args()
    work = Path(args.work)
    model = work / "gemma-2-2b-synthetic"
    make_checkpoint(model, "2b")
    d_in = json.loads((model / "config.json").read_text())["hidden_size"]
    sae = work / "sae-2b-L20.npz"
    make_sae(sae, d_in, seed=20)

    n = str(args.new_tokens)
    gen_wall, gen = gemscope_json([args.gemscope, "generate", "--model", str(model), "--device", "cpu", "--json",
                                   "--max-new-tokens", n, PROMPT])
    gen = gen.get("continuation", gen)
    log(f"gemscope generate: {gen_wall:.1f} s, prefill {gen['prefill_seconds']:.2f} s, "
        f"{gen['tokens_per_second']:.2f} tokens/s")
    steer_wall, steer = gemscope_json([args.gemscope, "steer", "--model", str(model), "--sae", str(sae), "--layer", "20",
                                       "--feature", "7", "--strength", "20", "--device", "cpu", "--json",
                                       "--no-labels", "--max-new-tokens", n, PROMPT])
    steered = steer["steered"]
    log(f"gemscope steer: {steer_wall:.1f} s, steered prefill {steered['prefill_seconds']:.2f} s, "
        f"{steered['tokens_per_second']:.2f} tokens/s")
    hf = transformers_generate(model, args.new_tokens)
    log(f"transformers: load {hf['load_s']:.1f} s, prefill {hf['prefill_s']:.2f} s, {hf['tokens_per_s']:.2f} tokens/s")

    same = gen["generated_ids"] == hf["ids"]
    print(f"\n2B-shaped checkpoint (whole model resident, f32), prompt of {hf['prompt_tokens']} tokens with BOS, "
          f"{args.new_tokens} new greedy tokens\n")
    gen_load = gen_wall - gen["prefill_seconds"] - gen["decode_seconds"]
    print("| run | load (start-up included) | prefill | decode tokens/s | ratio to transformers |")
    print("|---|---|---|---|---|")
    print(f"| transformers `generate` (KV cache) | {hf['load_s']:.1f} s | {hf['prefill_s']:.2f} s | "
          f"{hf['tokens_per_s']:.2f} | 1.00x |")
    print(f"| `gemscope generate` | {gen_load:.1f} s | {gen['prefill_seconds']:.2f} s | "
          f"{gen['tokens_per_second']:.2f} | **{gen['tokens_per_second'] / hf['tokens_per_s']:.2f}x** |")
    print(f"| `gemscope steer` (steered run, SAE hook at layer 20) | - | {steered['prefill_seconds']:.2f} s | "
          f"{steered['tokens_per_second']:.2f} | **{steered['tokens_per_second'] / hf['tokens_per_s']:.2f}x** |")
    print(f"\nGreedy ids identical to transformers': {same}")


if __name__ == "__main__":
    main()
