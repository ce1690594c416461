"""Cost of `gemscope attribute` against `gemscope features` on the same prompt: wall time and peak
RSS of both on the synthetic Gemma-2-shaped checkpoint of `compare_python.py` (written there if
missing), one 64-token prompt (BOS included), a 16k-wide SAE, warm page cache.

    /work/venv-fixtures/bin/python benches/compare_attribution.py --shape 2b --layer 20

`features` runs blocks 0..=L; `attribute` runs them too, then blocks L+1.. and the LM head with
the autograd graph kept, and the backward pass; `--ablate K` adds K reruns of blocks L+1.. .
Needs GNU time at /usr/bin/time and a build of gemscope (`--gemscope`, default the release one).
"""

import argparse
import os
import platform
import sys
from pathlib import Path

from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_python import REPO, SHAPES, make_checkpoint, make_sae, measure  # noqa: E402

TEXT = (
    "The Golden Gate Bridge is a suspension bridge spanning the Golden Gate strait, the one-mile-wide "
    "strait connecting San Francisco Bay and the Pacific Ocean. It was opened in 1937 and is painted a "
    "bright orange so that ships can see it in the fog."
)


def prompt_of(tokens: int, tokenizer: Path) -> str:
    """The longest prefix of TEXT, cut at a character, that tokenizes to `tokens` ids with BOS."""
    tok = Tokenizer.from_file(str(tokenizer))
    for end in range(len(TEXT), 0, -1):
        if len(tok.encode(TEXT[:end]).ids) == tokens:
            return TEXT[:end]
    raise SystemExit(f"no prefix of the text has {tokens} tokens")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=SHAPES, default="2b")
    ap.add_argument("--layer", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ablate", type=int, default=5)
    ap.add_argument("--work", default="/tmp/gemscope-bench")
    ap.add_argument("--gemscope", default=str(REPO / "target/release/gemscope"))
    args = ap.parse_args()

    work = Path(args.work)
    model = work / f"gemma-2-{args.shape}-synthetic"
    make_checkpoint(model, args.shape)
    sae = work / f"sae-{args.shape}-L{args.layer}.npz"
    make_sae(sae, SHAPES[args.shape]["hidden_size"], seed=args.layer)
    prompt = prompt_of(args.tokens, model / "tokenizer.json")

    common = ["--model", str(model), "--sae", str(sae), "--layer", str(args.layer), "--device", "cpu", "--json"]
    runs = {
        "features": [args.gemscope, "features", *common, prompt],
        "attribute": [args.gemscope, "attribute", *common, prompt],
        f"attribute --ablate {args.ablate}": [args.gemscope, "attribute", *common, "--ablate", str(args.ablate), prompt],
    }
    results = {}
    for name, cmd in runs.items():
        measure(cmd, False, os.devnull)  # warm the page cache
        results[name] = measure(cmd, False, os.devnull)
        print(f"{name}: {results[name]}", file=sys.stderr)

    base_time, base_rss = results["features"]
    print(f"\n{args.shape}-shaped checkpoint, layer {args.layer}, one {args.tokens}-token prompt, 16k SAE, warm; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("| command | time | peak RSS | time / features | RSS / features |")
    print("|---|---|---|---|---|")
    for name, (wall, rss) in results.items():
        print(f"| `{name}` | {wall:.1f} s | {rss:.2f} GiB | {wall / base_time:.2f} | {rss / base_rss:.2f} |")


if __name__ == "__main__":
    main()
