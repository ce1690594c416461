"""Throughput and peak memory of `gemscope top-examples` over a synthetic corpus, per batch size.

    /work/venv-fixtures/bin/python benches/top_examples.py --shape tiny
    /work/venv-fixtures/bin/python benches/top_examples.py --shape 2b --layer 20 --docs 64

`tiny` runs the committed fixture model (tests/fixtures/tiny, layer 1) with a random 16k-wide
SAE (thresholds calibrated so features fire on ~1% of tokens, as Gemma Scope's); `2b` writes (once, under --work, 10.4 GB) the synthetic Gemma-2-2B-shaped checkpoint of
benches/compare_python.py and a random 16k-wide SAE for it. Documents are 5 lines of the fixture
corpus drawn at random (seeded) and joined, so each fills the 128 tokens of --max-tokens.
Tokens/s counts every token run (BOS included) over the wall time of the whole process, loading
included; peak RSS comes from GNU time. Needs a release build (`cargo build --release`).
"""

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benches"))
import numpy as np  # noqa: E402
from compare_python import SHAPES, make_checkpoint  # noqa: E402

DENSITY = 0.01  # about Gemma Scope's: an L0 of ~160 out of 16k features


def make_corpus(path: Path, docs: int, seed: int = 0) -> None:
    lines = [l for l in (REPO / "tests/fixtures/corpus.txt").read_text().splitlines() if l.strip()]
    rng = random.Random(seed)
    path.write_text("".join(" ".join(rng.choice(lines) for _ in range(5)) + "\n" for _ in range(docs)))


def make_sparse_sae(path: Path, gemscope: str, model: Path, layer: int, corpus: Path, d_in: int,
                    d_sae: int = 16384, seed: int = 1) -> None:
    """A random 16k-wide JumpReLU SAE whose thresholds are each feature's (1 - DENSITY) quantile
    of its pre-activations on the first documents of the corpus (`gemscope activations`), so
    features fire about as sparsely as Gemma Scope's."""
    if path.exists():
        return
    rng = np.random.default_rng(seed)
    w_enc = rng.standard_normal((d_in, d_sae), dtype=np.float32) * np.float32(d_in ** -0.5)
    rows = []
    for i, doc in enumerate(corpus.read_text().splitlines()[:8]):
        npy = path.with_suffix(f".x{i}.npy")
        subprocess.run([gemscope, "activations", "--model", str(model), "--layer", str(layer), "--out", str(npy),
                        "--device", "cpu", doc], check=True)  # fmt: skip
        rows.append(np.load(npy)[1:])
        npy.unlink()
    pre = np.concatenate(rows) @ w_enc
    threshold = np.quantile(pre, 1 - DENSITY, axis=0).astype(np.float32)
    np.savez(path, W_enc=w_enc, W_dec=np.ascontiguousarray(w_enc.T) * np.float32(0.1),
             b_enc=np.zeros(d_sae, np.float32), b_dec=np.zeros(d_in, np.float32), threshold=threshold)


def run(cmd: list[str]) -> tuple[float, float]:
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gemscope failed:\n{proc.stderr}")
    wall, rss_kb = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss_kb) / (1 << 20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=["tiny", *SHAPES], default="tiny")
    ap.add_argument("--layer", type=int, default=None, help="default: 1 for tiny, 20 otherwise")
    ap.add_argument("--docs", type=int, default=2048)
    ap.add_argument("--batch-sizes", default="1,4,8,16,32")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--work", default="/tmp/gemscope-bench")
    ap.add_argument("--gemscope", default=str(REPO / "target/release/gemscope"))
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.shape == "tiny":
        model, d_in, layer = REPO / "tests/fixtures/tiny", 64, args.layer if args.layer is not None else 1
    else:
        model, d_in = work / args.shape, SHAPES[args.shape]["hidden_size"]
        layer = args.layer if args.layer is not None else 20
        make_checkpoint(model, args.shape)
    corpus = work / f"corpus_{args.docs}.txt"
    make_corpus(corpus, args.docs)
    sae = work / f"sae_{args.shape}_L{layer}_16k.npz"
    make_sparse_sae(sae, args.gemscope, model, layer, corpus, d_in)

    print(f"{args.shape}, layer {layer}, 16k SAE (density ~{DENSITY}), {args.docs} documents of 128 tokens, "
          f"--top {args.top}")
    print("| batch size | wall | tokens/s | peak RSS | mean density |")
    print("|---|---|---|---|---|")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        out = work / f"store_{args.shape}_{batch}.jsonl"
        cmd = [args.gemscope, "top-examples", "--model", str(model), "--sae", str(sae), "--layer", str(layer),
               "--corpus", str(corpus), "--top", str(args.top), "--batch-size", str(batch), "--out", str(out),
               "--checkpoint-every", "0", "--device", "cpu"]  # fmt: skip
        wall, rss = run(cmd)
        header = json.loads(out.open().readline())
        tokens = header["tokens"] + header["documents"]
        lines = [json.loads(l) for l in out.open()][1:]
        density = sum(f["density"] for f in lines) / len(lines)
        print(f"| {batch} | {wall:.1f} s | {tokens / wall:,.0f} | {rss:.2f} GiB | {density:.4f} |", flush=True)


if __name__ == "__main__":
    main()
