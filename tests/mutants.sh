#!/bin/bash
# Mutation check for the parity tests: each line breaks one fact of Gemma 2 or JumpReLU and must
# make `cargo test` fail. Run from the repo root: bash tests/mutants.sh (takes a few minutes).
# Applies one mutation at a time, runs the parity tests, and restores the file with git checkout
# (commit or stash your edits first).
cd "$(git rev-parse --show-toplevel)"
try() {
  local desc="$1" file="$2" from="$3" to="$4"
  python3 - "$file" "$from" "$to" <<'PY'
import sys
p, a, b = sys.argv[1:]
s = open(p).read()
assert a in s, f"pattern not found in {p}: {a}"
open(p, 'w').write(s.replace(a, b, 1))
PY
  if { cargo test -q --test integration -- parity:: eval:: generate:: labels::explain_matches attribution:: cli::many_prompts && cargo test -q --lib -- sae:: in_place::; } >/tmp/mut.log 2>&1; then
    echo "MUTATION SURVIVED: $desc"
    survived=1
  else
    echo "caught: $desc ($(grep -c -- '--- FAILED' /tmp/mut.log) failing tests)"
  fi
  git checkout -q -- "$file"
}
survived=0
try "drop attention softcap" src/model/gemma2.rs "let scores = softcap(&scores, self.softcap)?;" "let scores = scores;"
try "drop final logit softcap" src/model/gemma2.rs "softcap(&logits, self.cfg.final_logit_softcapping)" "Ok(logits)"
try "swap sliding and global layers" src/model/config.rs "if i % 2 == 0 {" "if i % 2 == 1 {"
try "swap sliding/global in layer_types" src/model/config.rs "\"sliding_attention\" => Ok(AttentionKind::Sliding)," "\"sliding_attention\" => Ok(AttentionKind::Global),"
try "norm weight w instead of 1+w" src/model/gemma2.rs "scale: (weight + 1.0)?," "scale: weight,"
try "scale by head_dim^-0.5" src/model/gemma2.rs "scale: cfg.query_pre_attn_scalar.powf(-0.5)," "scale: (cfg.head_dim as f64).powf(-0.5),"
try "no embedding scale" src/model/gemma2.rs ".broadcast_mul(&normalizer)" ".broadcast_mul(&normalizer.ones_like()?)"
try "window off by one" src/model/gemma2.rs "i - j < w" "i - j <= w"
try "gelu erf instead of tanh" src/model/gemma2.rs "(Activation::GeluTanh, false) => gate.gelu()?," "(Activation::GeluTanh, false) => gate.gelu_erf()?,"
try "threshold >= instead of >" src/sae.rs "let gate = pre.broadcast_gt(&self.threshold)?;" "let gate = pre.broadcast_ge(&self.threshold)?;"
try "BOS counted in stats" src/pipeline.rs "for (row, row_hat) in x_rows.iter().zip(&x_hat).skip(1) {" "for (row, row_hat) in x_rows.iter().zip(&x_hat) {"
try "BOS spliced in eval" src/eval.rs "(row % t == 0) as u8" "(row % t == usize::MAX) as u8"
try "KL reversed" src/eval.rs ".map(|(&p, &q)| p.exp() * (p - q))" ".map(|(&p, &q)| q.exp() * (q - p))"
try "clamp ignores the current activation" src/generate.rs "let coef = f.neg()?.broadcast_add(&self.strengths)?;" "let coef = f.zeros_like()?.broadcast_add(&self.strengths)?;"
try "logit effects skip the final norm" src/card.rs ".map(|(&d, &w)| d * (1.0 + w))" ".map(|(&d, &w)| d * w)"
try "logit effects scaled like the input embedding" src/card.rs "let chunk = rows.matmul(&columns)?" "let chunk = (rows * (hidden as f64).sqrt())?.matmul(&columns)?"
try "a feature is its own neighbour" src/card.rs ".filter(|&(i, _)| i != feature)" ".filter(|_| true)"
try "packing gathers the wrong rows" src/model/gemma2.rs ".flat_map(|(b, &n)| (0..n).map(move |i| (b * t + i) as u32))" ".flat_map(|(b, &n)| (0..n).map(move |i| (b * t + i.saturating_sub(1)) as u32))"
try "attribution through the kernel softmax (no gradient)" src/model/gemma2.rs "differentiable::softmax_last_dim(&scores.broadcast_add(&mask)?)?" "candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?"
try "layer-major runs a block once for the first group only" src/model/gemma2.rs ".map(|((x, ctx), hook)| block.forward(x, ctx, hook, None))" ".map(|((x, ctx), hook)| if std::ptr::eq(*ctx, ctxs[0]) { block.forward(x, ctx, hook, None) } else { Ok(x.clone()) })"
try "streamed blocks never read ahead from disk" src/model/gemma2.rs "if !missing.is_empty() {" "if false {"
try "in-place weights: the backward pass multiplies by W^T again" src/model/in_place.rs "transposed: !self.transposed," "transposed: self.transposed,"
try "in-place weights: every thread writes the first columns" src/model/in_place.rs "(self.dst as *mut f32).add(first)," "(self.dst as *mut f32),"
try "sparse decode drops the activation" src/sae.rs "*o += a * d;" "*o += d;"
exit $survived
