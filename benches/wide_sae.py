"""Checks that a 1M-wide Gemma Scope SAE (a 19 GB params.npz for Gemma 2 2B) works with
`gemscope features --encode-only` on a 24 GiB machine, and reports time and peak RSS.

    /work/venv-fixtures/bin/python benches/wide_sae.py [--work /tmp/gemscope-wide] [--clean]

Writes a 2-layer checkpoint of Gemma 2 2B width and a random 1,048,576-feature JumpReLU SAE in
np.savez's format (stored members, streamed to disk so generating it needs little memory), then
runs gemscope with and without --encode-only under GNU time. Needs ~20 GB of disk.
"""

import argparse
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
D_IN, D_SAE, VOCAB, FFN = 2304, 1 << 20, 8192, 9216


def npy_header(shape):
    """A version 1.0 .npy header for a C-ordered little-endian float32 array."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * (pad % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


def write_member(zf, name, shape, std, rng):
    """Streams a random float32 array into the archive, 64 MB at a time."""
    block = (rng.standard_normal(1 << 24, dtype=np.float32) * np.float32(std)).tobytes()
    total = int(np.prod(shape)) * 4
    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
        out.write(npy_header(shape))
        written = 0
        while written < total:
            chunk = block[: min(len(block), total - written)]
            out.write(chunk)
            written += len(chunk)


def make_sae(path):
    if path.exists():
        return
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        write_member(zf, "W_enc", (D_IN, D_SAE), D_IN ** -0.5, rng)
        write_member(zf, "W_dec", (D_SAE, D_IN), 0.01, rng)
        for name, n, value in (("b_enc", D_SAE, 0.0), ("b_dec", D_IN, 0.0), ("threshold", D_SAE, 0.8)):
            with zf.open(f"{name}.npy", "w") as out:
                out.write(npy_header((n,)) + np.full(n, value, np.float32).tobytes())


def make_model(out):
    if (out / "model.safetensors").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(architectures=["Gemma2ForCausalLM"], model_type="gemma2", vocab_size=VOCAB, hidden_size=D_IN,
               intermediate_size=FFN, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
               head_dim=256, query_pre_attn_scalar=256, rms_norm_eps=1e-6, rope_theta=10000.0,
               attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096,
               hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, bos_token_id=2,
               torch_dtype="float32")
    (out / "config.json").write_text(json.dumps(cfg))
    shutil.copy(REPO / "tests/fixtures/tiny/tokenizer.json", out / "tokenizer.json")
    rng = np.random.default_rng(1)
    r = lambda *shape: rng.standard_normal(shape, dtype=np.float32) * np.float32(shape[-1] ** -0.5)
    tensors = {"model.embed_tokens.weight": r(VOCAB, D_IN), "model.norm.weight": np.zeros(D_IN, np.float32)}
    for i in range(2):
        p = f"model.layers.{i}"
        tensors.update({f"{p}.self_attn.q_proj.weight": r(2048, D_IN), f"{p}.self_attn.k_proj.weight": r(1024, D_IN),
                        f"{p}.self_attn.v_proj.weight": r(1024, D_IN), f"{p}.self_attn.o_proj.weight": r(D_IN, 2048),
                        f"{p}.mlp.gate_proj.weight": r(FFN, D_IN), f"{p}.mlp.up_proj.weight": r(FFN, D_IN),
                        f"{p}.mlp.down_proj.weight": r(D_IN, FFN)})
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            tensors[f"{p}.{norm}.weight"] = np.zeros(D_IN, np.float32)
    save_file(tensors, str(out / "model.safetensors"))


def run(args):
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *args], capture_output=True, text=True)
    wall, rss = proc.stderr.strip().splitlines()[-1].split()
    message = "\n".join(proc.stderr.strip().splitlines()[:-1])
    return proc.returncode, float(wall), int(rss) / (1 << 20), message, proc.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/gemscope-wide")
    ap.add_argument("--clean", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, sae = work / "model", work / "params.npz"
    make_model(model)
    make_sae(sae)
    print(f"SAE file: {sae.stat().st_size / (1 << 30):.1f} GiB", file=sys.stderr)
    gemscope = str(REPO / "target/release/gemscope")
    base = [gemscope, "features", "--model", str(model), "--sae", str(sae), "--layer", "1", "--device", "cpu",
            "--json", "The Golden Gate Bridge is a suspension bridge."]
    code, wall, rss, msg, out = run(base + ["--encode-only"])
    l0 = json.loads(out)["prompts"][0]["mean_l0"] if code == 0 else None
    print(f"| --encode-only | exit {code} | {wall:.1f} s | {rss:.2f} GiB | mean L0 {l0} |")
    code, wall, rss, msg, _ = run(base)
    print(f"| with decoder | exit {code} | {wall:.1f} s | {rss:.2f} GiB | {msg} |")
    if args.clean:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
