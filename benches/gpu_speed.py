"""GPU speed of gemscope against PyTorch eager on the same GPU, on a 2B-shaped synthetic
checkpoint (run by benches/gpu-check.sh; prints Markdown rows). Three measurements, each a ratio
from one run:

1. `features --layer 20`, one 64-token prompt, warm: gemscope's wall time (process start to exit)
   against transformers + a forward hook + the torch JumpReLU encode (model already loaded, so the
   peer is favoured).
2. a 1,000-prompt corpus (32-128 tokens) at layer 20: prompts/s of `features --prompts-file`
   against transformers in batches of 16 with an attention mask, cut after layer 20.
3. greedy generation, 64 new tokens: tokens/s of `generate` against transformers' `generate`.

    python benches/gpu_speed.py --gemscope /tmp/gemscope-gpu --out DIR [--dtype bf16]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_python import make_checkpoint, make_sae  # noqa: E402

WORDS = ("the bridge river town sea wind cable tower fog city hill boat water light "
         "engineer spring forest road north west coast summer morning letter book").split()


def corpus(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(24, 100)))) for _ in range(n)]


def run(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gemscope", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/gemscope-gpu-bench")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--prompts", type=int, default=1000)
    args = ap.parse_args()
    work = Path(args.work)
    model_dir, sae = work / "2b", work / "sae16k.npz"
    t0 = time.perf_counter()
    make_checkpoint(model_dir, "2b")
    make_sae(sae, 2304)
    print(f"- synthetic checkpoint ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    tdtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    layer = 20
    base = [args.gemscope, "features", "--device", "cuda", "--dtype", args.dtype,
            "--model", str(model_dir), "--sae", str(sae), "--layer", str(layer), "--json", "--quiet"]

    print("| measurement | gemscope | PyTorch | gemscope speed-up |\n|---|---|---|---|")

    # --- 1. one prompt ---------------------------------------------------------------------
    prompt = corpus(1, seed=7)[0]
    run(base + [prompt])  # warm the page cache
    g_one, _ = run(base + [prompt])

    from transformers import AutoModelForCausalLM
    from tokenizers import Tokenizer
    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=tdtype,
                                                 attn_implementation="eager").cuda().eval()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    params = np.load(sae)
    w_enc = torch.from_numpy(params["W_enc"]).cuda()
    b_enc = torch.from_numpy(params["b_enc"]).cuda()
    thr = torch.from_numpy(params["threshold"]).cuda()

    def encode(x):
        pre = x.float() @ w_enc + b_enc
        return (pre > thr) * torch.relu(pre)

    layers = model.model.layers
    captured = {}
    handle = layers[layer].register_forward_hook(
        lambda m, i, o: captured.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    # Cut after layer 20, as TransformerLens' stop_at_layer: later layers do nothing.
    model.model.layers = layers[: layer + 1]

    def peer(batch_ids, mask):
        model.model(input_ids=batch_ids, attention_mask=mask)
        return encode(captured["x"])

    ids = torch.tensor([tok.encode(prompt).ids], device="cuda")
    peer(ids, torch.ones_like(ids)); torch.cuda.synchronize()
    t = time.perf_counter(); peer(ids, torch.ones_like(ids)); torch.cuda.synchronize()
    p_one = time.perf_counter() - t
    print(f"| one prompt, layer 20 ({ids.shape[1]} tokens) | gemscope {g_one:.3f} s (whole process) "
          f"| PyTorch {p_one:.3f} s (forward + encode only, model resident) | {p_one / g_one:.2f}x |")

    # --- 2. corpus -------------------------------------------------------------------------
    texts = corpus(args.prompts, seed=1)
    prompts_file = work / "corpus.txt"
    prompts_file.write_text("\n".join(texts) + "\n")
    g_corpus, _ = run(base + ["--prompts-file", str(prompts_file), "--top-k", "5"])
    encoded = [tok.encode(t).ids for t in texts]
    torch.cuda.synchronize(); t = time.perf_counter()
    for b in range(0, len(encoded), 16):
        chunk = encoded[b:b + 16]
        width = max(map(len, chunk))
        batch = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(batch)
        for r, row in enumerate(chunk):
            batch[r, :len(row)] = torch.tensor(row); mask[r, :len(row)] = 1
        f = peer(batch.cuda(), mask.cuda())
        torch.topk(f, 5, dim=-1)
    torch.cuda.synchronize(); p_corpus = time.perf_counter() - t
    n = len(texts)
    print(f"| {n} prompts, layer 20 | gemscope {n / g_corpus:.1f} prompts/s (whole process) "
          f"| PyTorch {n / p_corpus:.1f} prompts/s (batches of 16, masked, loop only) "
          f"| {p_corpus / g_corpus:.2f}x |")

    # --- 3. generation ---------------------------------------------------------------------
    handle.remove()
    model.model.layers = layers
    _, out = run([args.gemscope, "generate", "--device", "cuda", "--dtype", args.dtype, "--model",
                  str(model_dir), "--max-new-tokens", "64", "--json", "--quiet", prompt])
    g_tps = json.loads(out)["tokens_per_second"]
    ids = torch.tensor([tok.encode(prompt).ids], device="cuda")
    model.generate(ids, max_new_tokens=8, do_sample=False)
    torch.cuda.synchronize(); t = time.perf_counter()
    gen = model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
    torch.cuda.synchronize()
    p_tps = (gen.shape[1] - ids.shape[1]) / (time.perf_counter() - t)
    print(f"| greedy generation, 64 tokens | gemscope {g_tps:.1f} tokens/s | "
          f"transformers {p_tps:.1f} tokens/s | {g_tps / p_tps:.2f}x |")


if __name__ == "__main__":
    main()
