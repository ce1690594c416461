"""Corpus throughput (issue 14, target 2): gemscope's corpus commands against a strong PyTorch peer
(benches/python_corpus_peer.py: transformers f32, only blocks 0..=L loaded, length-sorted batches
of 16 with an attention mask, torch JumpReLU encode) on the 2B-shaped synthetic checkpoint of
benches/compare_python.py, the same prompts and the same random 16k SAE, in one run.

    cargo build --release
    /work/venv-fixtures/bin/python benches/compare_corpus.py --layers 5,20 --prompts 64

Prompts: --prompts texts of 32 to 128 tokens (uniform, seeded), words drawn from the fixture corpus.
Every timing is the whole process (start-up and loading included), with the page cache warm (the
checkpoint is read once before the first run); tokens/s counts every token run, BOS included.
`--top-examples` also times `gemscope top-examples` over the same texts. Prints a Markdown table.
"""

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_python import REPO, agreement, make_checkpoint, make_sae  # noqa: E402


def log(message):
    print(message, file=sys.stderr, flush=True)


def make_prompts(path, model_dir, count, seed=0):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    words = (REPO / "tests/fixtures/corpus.txt").read_text().split()
    rng = random.Random(seed)
    lines, total = [], 0
    for _ in range(count):
        target = rng.randint(32, 128)
        text = []
        while len(tok.encode(" ".join(text)).ids) < target:
            text.append(rng.choice(words))
        while len(tok.encode(" ".join(text)).ids) > target:
            text.pop()
        lines.append(" ".join(text))
        total += len(tok.encode(lines[-1]).ids)
    path.write_text("\n".join(lines) + "\n")
    return total


def warm(model_dir):
    for shard in sorted(model_dir.glob("*.safetensors")):
        with open(shard, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def timed(cmd, stdout_path):
    """(wall seconds, peak RSS GiB, stderr) of cmd under GNU time."""
    with open(stdout_path, "w") as out:
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], stdout=out, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stderr}")
    lines = proc.stderr.strip().splitlines()
    wall, rss = lines[-1].split()
    return float(wall), int(rss) / (1 << 20), "\n".join(lines[:-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="5,20")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--work", default="/tmp/gemscope-bench")
    ap.add_argument("--gemscope", default=str(REPO / "target/release/gemscope"))
    ap.add_argument("--top-examples", action="store_true", help="also time gemscope top-examples")
    args = ap.parse_args()

    work = Path(args.work)
    model = work / "gemma-2-2b-synthetic"
    make_checkpoint(model, "2b")
    d_in = json.loads((model / "config.json").read_text())["hidden_size"]
    prompts = work / f"corpus-{args.prompts}.txt"
    tokens = make_prompts(prompts, model, args.prompts)  # the tokenizer adds BOS
    log(f"{args.prompts} prompts, {tokens} tokens with BOS")
    warm(model)

    rows = []
    for layer in [int(x) for x in args.layers.split(",")]:
        sae = work / f"sae-2b-L{layer}.npz"
        make_sae(sae, d_in, seed=layer)
        peer = timed([sys.executable, str(REPO / "benches/python_corpus_peer.py"), str(model), str(sae), str(layer),
                      str(prompts)], work / "peer.json")
        split = json.loads(peer[2].strip().splitlines()[-1])
        log(f"layer {layer} peer: {peer[0]:.1f} s ({split})")
        gs = timed([args.gemscope, "features", "--model", str(model), "--sae", str(sae), "--layer", str(layer),
                    "--device", "cpu", "--prompts-file", str(prompts), "--json", "--verbose", "--no-labels"],
                   work / "gemscope.json")
        phases = [l for l in gs[2].splitlines() if "timings:" in l]
        log(f"layer {layer} gemscope features: {gs[0]:.1f} s; {phases}")
        agree = agreement(work / "peer.json", work / "gemscope.json")
        rows.append((layer, "features --prompts-file", peer, split, gs, phases, agree))
        if args.top_examples:
            te = timed([args.gemscope, "top-examples", "--model", str(model), "--sae", str(sae), "--layer", str(layer),
                        "--device", "cpu", "--corpus", str(prompts), "--out", str(work / f"store-L{layer}"),
                        "--checkpoint-every", "0", "--verbose"], "/dev/null")
            phases = [l for l in te[2].splitlines() if "timings:" in l]
            log(f"layer {layer} gemscope top-examples: {te[0]:.1f} s; {phases}")
            rows.append((layer, "top-examples", peer, split, te, phases, None))

    print(f"\n2B-shaped checkpoint, {args.prompts} prompts of 32-128 tokens ({tokens} tokens with BOS), 16k SAE, "
          "page cache warm, whole-process wall time\n")
    print("| layer | gemscope command | peer wall (load + compute) | peer tokens/s | gemscope wall | gemscope tokens/s "
          "| ratio | gemscope peak RSS / peer | top-5 ids agree |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer, what, peer, split, gs, phases, agree in rows:
        agree_text = f"{agree:.1%}" if agree is not None else "-"
        print(f"| {layer} | `{what}` | {peer[0]:.1f} s ({split['load_s']:.1f} + {split['compute_s']:.1f}) | "
              f"{tokens / peer[0]:.0f} | {gs[0]:.1f} s | {tokens / gs[0]:.0f} | **{peer[0] / gs[0]:.2f}x** | "
              f"{gs[1]:.2f} / {peer[1]:.2f} GiB | {agree_text} |")
    print()
    for layer, what, *_rest in rows:
        phases = _rest[3]
        print(f"- layer {layer}, `{what}`: {phases[-1].split('timings:', 1)[1].strip() if phases else ''}")


if __name__ == "__main__":
    main()
