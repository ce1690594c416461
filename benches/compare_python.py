"""Compares `gemscope features` with the Gemma Scope tutorial's Python path on the same synthetic,
Gemma-2-shaped checkpoint (random weights, hub layout: sharded f32 safetensors + index), the same
random 16k-wide JumpReLU SAE and the same prompts: wall time and peak RSS, cold and warm page cache.

    /work/venv-fixtures/bin/python benches/compare_python.py --shape 2b --layers 20,5
    /work/venv-fixtures/bin/python benches/compare_python.py --shape 9b --layers 20 --no-python

Needs: a release build (`cargo build --release`), the fixtures' Python environment
(tests/fixtures/requirements.txt), GNU time at /usr/bin/time, and root for the cold runs
(`echo 3 > /proc/sys/vm/drop_caches`; without it only warm runs are made). Disk: 10.4 GB for
the 2B shape, 37 GB for the 9B shape, under --work (deleted with --clean).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
SHAPES = {
    # Gemma 2 2B and 9B as published (config.json on the hub), vocabulary included.
    "2b": dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
               num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256),
    "9b": dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
               num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256),
}
VOCAB = 256000
SHARD_BYTES = 4 << 30
PROMPTS = [
    "The Golden Gate Bridge is a suspension bridge spanning the Golden Gate strait.",
    "In 1905 Einstein published four papers that changed physics.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Rivers run from the hills to the sea, and along the way they feed forests and towns.",
]


def config_json(shape):
    cfg = dict(architectures=["Gemma2ForCausalLM"], model_type="gemma2", vocab_size=VOCAB,
               rms_norm_eps=1e-6, rope_theta=10000.0, attn_logit_softcapping=50.0,
               final_logit_softcapping=30.0, sliding_window=4096, hidden_act="gelu_pytorch_tanh",
               hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, bos_token_id=2,
               eos_token_id=1, pad_token_id=0, torch_dtype="float32", attention_bias=False,
               tie_word_embeddings=True, cache_implementation="hybrid")
    cfg.update(SHAPES[shape])
    return cfg


def tensor_specs(cfg):
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    yield "model.embed_tokens.weight", (VOCAB, h), 0.02
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        yield f"{p}.self_attn.q_proj.weight", (q, h), h ** -0.5
        yield f"{p}.self_attn.k_proj.weight", (kv, h), h ** -0.5
        yield f"{p}.self_attn.v_proj.weight", (kv, h), h ** -0.5
        yield f"{p}.self_attn.o_proj.weight", (h, q), q ** -0.5
        yield f"{p}.mlp.gate_proj.weight", (f, h), h ** -0.5
        yield f"{p}.mlp.up_proj.weight", (f, h), h ** -0.5
        yield f"{p}.mlp.down_proj.weight", (h, f), f ** -0.5
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            yield f"{p}.{norm}.weight", (h,), 0.1
    yield "model.norm.weight", (h,), 0.1


def random(rng, shape, std):
    # A random block tiled over large tensors: values only need to be finite and varied, and
    # this keeps generating 37 GB quick.
    n = int(np.prod(shape))
    block = rng.standard_normal(min(n, 1 << 24), dtype=np.float32) * np.float32(std)
    return np.resize(block, n).reshape(shape)


def make_checkpoint(out, shape):
    """Writes config.json, tokenizer.json and ~4 GB f32 shards with model.safetensors.index.json."""
    if (out / "model.safetensors.index.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_json(shape)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(REPO / "tests/fixtures/tiny/tokenizer.json", out / "tokenizer.json")
    rng = np.random.default_rng(0)
    shards, current, size = [], {}, 0
    for name, dims, std in tensor_specs(cfg):
        nbytes = 4 * int(np.prod(dims))
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = dims, std
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        arrays = {name: random(rng, dims, std) for name, (dims, std) in shard.items()}
        save_file(arrays, str(out / fname), metadata={"format": "pt"})
        total += sum(a.nbytes for a in arrays.values())
        weight_map.update({name: fname for name in arrays})
        del arrays
        print(f"  wrote {fname}", file=sys.stderr)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def make_sae(path, d_in, d_sae=16384, seed=1):
    if path.exists():
        return
    rng = np.random.default_rng(seed)
    w_enc = rng.standard_normal((d_in, d_sae), dtype=np.float32) * np.float32(d_in ** -0.5)
    np.savez(path, W_enc=w_enc, W_dec=np.ascontiguousarray(w_enc.T) * np.float32(0.1),
             b_enc=np.zeros(d_sae, np.float32), b_dec=np.zeros(d_in, np.float32),
             threshold=np.full(d_sae, 0.5, np.float32))


def drop_caches():
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(cmd, cold, stdout_path):
    """Runs cmd under GNU time; returns (wall seconds, peak RSS in GiB)."""
    if cold and not drop_caches():
        return None
    with open(stdout_path, "w") as out:
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], stdout=out, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stderr}")
    wall, rss_kb = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss_kb) / (1 << 20)


def agreement(python_json, gemscope_json):
    """Fraction of tokens whose top-5 feature ids agree exactly."""
    py = json.load(open(python_json))
    gs = json.load(open(gemscope_json))["prompts"]
    same = total = 0
    for p_tokens, g_prompt in zip(py, gs):
        for p_top, g_tok in zip(p_tokens, g_prompt["tokens"][1:]):
            total += 1
            same += p_top == [f["feature"] for f in g_tok["top_features"]]
    return same / max(total, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, default="2b")
    ap.add_argument("--layers", default="20,5")
    ap.add_argument("--work", default="/tmp/gemscope-bench")
    ap.add_argument("--gemscope", default=str(REPO / "target/release/gemscope"))
    ap.add_argument("--no-python", action="store_true", help="only gemscope (the Python path may not fit)")
    ap.add_argument("--clean", action="store_true", help="delete the checkpoint afterwards")
    args = ap.parse_args()

    work = Path(args.work)
    model = work / f"gemma-2-{args.shape}-synthetic"
    print(f"writing the synthetic {args.shape} checkpoint to {model}", file=sys.stderr)
    started = time.time()
    make_checkpoint(model, args.shape)
    print(f"  ({time.time() - started:.0f} s)", file=sys.stderr)
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    d_in = SHAPES[args.shape]["hidden_size"]

    rows = []
    for layer in [int(x) for x in args.layers.split(",")]:
        sae = work / f"sae-{args.shape}-L{layer}.npz"
        make_sae(sae, d_in, seed=layer)
        gs_cmd = [args.gemscope, "features", "--model", str(model), "--sae", str(sae), "--layer", str(layer),
                  "--device", "cpu", "--prompts-file", str(prompts), "--json"]
        py_cmd = [sys.executable, str(REPO / "benches/python_reference.py"), str(model), str(sae), str(layer),
                  str(prompts)]
        for cache in ("cold", "warm"):
            cold = cache == "cold"
            if not cold:  # warm the page cache with one untimed run of each
                measure(gs_cmd, False, os.devnull)
            gs = measure(gs_cmd, cold, work / "gemscope.json")
            py = None
            if not args.no_python:
                if not cold:
                    measure(py_cmd, False, os.devnull)
                py = measure(py_cmd, cold, work / "python.json")
            if gs is None:
                print(f"layer {layer} {cache}: skipped (cannot drop the page cache)", file=sys.stderr)
                continue
            agree = agreement(work / "python.json", work / "gemscope.json") if py else None
            rows.append((layer, cache, py, gs, agree))
            print(f"layer {layer} {cache}: python {py} gemscope {gs} top-5 agreement {agree}", file=sys.stderr)

    print(f"\n{args.shape}-shaped checkpoint ({SHAPES[args.shape]['num_hidden_layers']} layers x {d_in}, "
          f"f32, vocab {VOCAB}), {len(prompts.read_text().splitlines())} prompts, 16k SAE; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print("| layer | page cache | Python time | Python peak RSS | gemscope time | gemscope peak RSS | speed-up | memory ratio | top-5 ids agree |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer, cache, py, gs, agree in rows:
        if py:
            print(f"| {layer} | {cache} | {py[0]:.1f} s | {py[1]:.2f} GiB | {gs[0]:.1f} s | {gs[1]:.2f} GiB | "
                  f"{py[0] / gs[0]:.1f}x | {gs[1] / py[1]:.2f} | {agree:.0%} |")
        else:
            print(f"| {layer} | {cache} | - | - | {gs[0]:.1f} s | {gs[1]:.2f} GiB | - | - | - |")
    if args.clean:
        shutil.rmtree(model)


if __name__ == "__main__":
    main()
