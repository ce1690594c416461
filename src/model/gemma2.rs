//! The Gemma 2 forward pass (transformers' `modeling_gemma2.py` is the reference), with a hook at every site.
//!
//! Tensor names follow the checkpoint (`model.layers.{i}.self_attn.q_proj.weight`, ...) through
//! `vb.pp(...)`. Only the blocks a job needs are read: [`Parts`] says how many, and whether they
//! stay in memory or are streamed from the mapped file one at a time.

use super::config::{Activation, AttentionKind, Config};
use super::differentiable;
use super::hook::{Hook, HookPoint, Site};
use super::in_place::MappedProduct;
use super::weights::{MappedMatrix, MappedWeights, MissingRange, SharedWeights};
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Which parts of the checkpoint a job uses: blocks `0..blocks`, the final norm with the tied LM
/// head when logits are needed, and whether blocks stay in memory between passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub blocks: usize,
    pub head: bool,
    /// Keep every block's weights in memory (for many passes: generation, evaluation). When
    /// false, a block is built from the mapped file when it runs and dropped after, so memory
    /// holds one block at a time whatever the depth.
    pub resident: bool,
}

impl Parts {
    /// Blocks 0..=layer and nothing after, streamed: enough to read any site of `layer` once.
    pub fn through_layer(layer: usize) -> Self {
        Self {
            blocks: layer + 1,
            head: false,
            resident: false,
        }
    }

    /// The whole model, to the soft-capped logits, resident.
    pub fn full(cfg: &Config) -> Self {
        Self {
            blocks: cfg.num_hidden_layers,
            head: true,
            resident: true,
        }
    }
}

/// Gemma's RMSNorm: computed in f32 and scaled by `(1 + weight)`, then cast back to the input dtype.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `1 + weight`, kept in f32 whatever the model dtype, as transformers computes it.
    scale: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints_dtype(size, "weight", Default::default(), DType::F32)?;
        Ok(Self {
            scale: (weight + 1.0)?,
            eps: eps as f32,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let xs = xs.to_dtype(DType::F32)?;
        candle_nn::ops::rms_norm(&xs, &self.scale, self.eps)?.to_dtype(dtype)
    }
}

impl RmsNorm {
    /// The same norm from plain ops, so that gradients flow through it (see [`differentiable`]).
    pub fn forward_differentiable(&self, xs: &Tensor) -> Result<Tensor> {
        differentiable::rms_norm(xs, &self.scale, self.eps as f64)
    }

    /// The kernel, or the plain-op version when `ctx` asks for gradients.
    fn forward_in(&self, xs: &Tensor, ctx: &SequenceContext) -> Result<Tensor> {
        if ctx.gradients {
            self.forward_differentiable(xs)
        } else {
            self.forward(xs)
        }
    }
}

/// Rotary position embedding tables (`cos`, `sin`: `[seq, head_dim / 2]`) for positions
/// `offset..offset + seq_len`, computed in f32 as transformers does, then cast to the model dtype.
fn rotary_tables(
    cfg: &Config,
    offset: usize,
    seq_len: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let dim = cfg.head_dim;
    let base = cfg.rope_theta as f32;
    let inv_freq: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
        .collect();
    let mut freqs = Vec::with_capacity(seq_len * dim / 2);
    for pos in offset..offset + seq_len {
        freqs.extend(inv_freq.iter().map(|f| pos as f32 * f));
    }
    let freqs = Tensor::from_vec(freqs, (seq_len, dim / 2), device)?;
    Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
}

/// An additive causal mask in f32, `[b, 1, seq, seq]`: 0 where query `i` of sequence `b` may
/// attend to key `j`, -inf elsewhere. A sliding-window layer also hides keys `window` or more
/// positions back, and keys at or past a sequence's length (right padding) are hidden from its
/// real tokens.
fn causal_mask(
    seq_len: usize,
    lengths: &[usize],
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let mut mask = Vec::with_capacity(lengths.len() * seq_len * seq_len);
    for &len in lengths {
        for i in 0..seq_len {
            mask.extend((0..seq_len).map(|j| {
                let visible = if i < len {
                    j <= i && window.is_none_or(|w| i - j < w)
                } else {
                    // A padding query sees only itself: a row with every key masked would
                    // softmax to NaN, and 0 * NaN in `probs @ V` would reach the real rows.
                    j == i
                };
                if visible {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
    }
    Tensor::from_vec(mask, (lengths.len(), 1, seq_len, seq_len), device)
}

/// The additive mask `[1, 1, new_len, offset + new_len]` for `new_len` queries at positions
/// `offset..` over every key so far (the cached ones first): query at position `p` sees keys
/// `p - window + 1..=p` on a sliding layer, `0..=p` on a global one.
fn cached_mask(
    offset: usize,
    new_len: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let total = offset + new_len;
    let mut mask = Vec::with_capacity(new_len * total);
    for p in offset..total {
        mask.extend((0..total).map(|j| {
            if j <= p && window.is_none_or(|w| p - j < w) {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        }));
    }
    Tensor::from_vec(mask, (1, 1, new_len, total), device)
}

/// The real (non-padding) rows of a right-padded batch flattened to `[b * t, ..]`: linear layers
/// run on these rows only, so padding costs no matmul work; attention alone needs the padded
/// `[b, t]` layout.
#[derive(Debug, Clone)]
pub struct Packing {
    /// Indices of the real rows in the flattened batch, ascending.
    rows: Tensor,
    /// `b * t`.
    padded_rows: usize,
}

impl Packing {
    /// Padding takes at least this share of a batch before packing pays for its gather and scatter.
    const MIN_PADDING: f64 = 0.1;

    fn new(lengths: &[usize], device: &Device) -> Result<Option<Self>> {
        let t = lengths.iter().copied().max().unwrap_or(0);
        let padded_rows = lengths.len() * t;
        let real: usize = lengths.iter().sum();
        if padded_rows == 0
            || (padded_rows - real) as f64 / (padded_rows as f64) < Self::MIN_PADDING
        {
            return Ok(None);
        }
        let rows: Vec<u32> = lengths
            .iter()
            .enumerate()
            .flat_map(|(b, &n)| (0..n).map(move |i| (b * t + i) as u32))
            .collect();
        Ok(Some(Self {
            rows: Tensor::from_vec(rows, real, device)?,
            padded_rows,
        }))
    }

    /// `[b, t, d]` -> the real rows `[n, d]`.
    fn gather(&self, xs: &Tensor) -> Result<Tensor> {
        let d = xs.dim(D::Minus1)?;
        xs.reshape((self.padded_rows, d))?
            .index_select(&self.rows, 0)
    }

    /// The real rows `[n, d]` -> `[b, t, d]`, zeros at padding positions (no real query reads them).
    fn scatter(&self, packed: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let d = packed.dim(D::Minus1)?;
        let zeros = Tensor::zeros((self.padded_rows, d), packed.dtype(), packed.device())?;
        zeros.index_add(&self.rows, packed, 0)?.reshape((b, t, d))
    }
}

/// Runs a row-wise module (a linear layer, the MLP) over `xs` `[b, t, d]`: on the real rows only
/// when `packing` says the batch is padded enough.
fn rowwise(
    xs: &Tensor,
    packing: Option<&Packing>,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match packing {
        None => f(xs),
        Some(p) => {
            let (b, t, _) = xs.dims3()?;
            p.scatter(&f(&p.gather(xs)?)?, b, t)
        }
    }
}

/// What every block needs to know about the sequences: rotary tables, both attention masks, and
/// which rows of a padded batch are real.
#[derive(Debug, Clone)]
pub struct SequenceContext {
    cos: Tensor,
    sin: Tensor,
    global_mask: Tensor,
    sliding_mask: Tensor,
    packing: Option<Packing>,
    /// Compute with plain ops that candle can differentiate instead of the fused kernels, which
    /// have no backward (attribution's pass through the later blocks).
    gradients: bool,
}

impl SequenceContext {
    /// One unpadded sequence of `seq_len` tokens.
    pub fn new(cfg: &Config, seq_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        Self::padded(cfg, &[seq_len], dtype, device)
    }

    /// A batch of sequences right-padded to the longest: sequence `b` has `lengths[b]` real
    /// tokens, and no query attends to a padding key. Real positions compute exactly what they
    /// would unpadded.
    pub fn padded(cfg: &Config, lengths: &[usize], dtype: DType, device: &Device) -> Result<Self> {
        let seq_len = lengths.iter().copied().max().unwrap_or(0);
        let (cos, sin) = rotary_tables(cfg, 0, seq_len, dtype, device)?;
        Ok(Self {
            cos,
            sin,
            global_mask: causal_mask(seq_len, lengths, None, device)?,
            sliding_mask: causal_mask(seq_len, lengths, Some(cfg.sliding_window), device)?,
            packing: Packing::new(lengths, device)?,
            gradients: false,
        })
    }

    /// One sequence continued with a [`KvCache`]: `new_len` tokens at positions
    /// `offset..offset + new_len`, attending to the `offset` cached keys and to each other.
    pub fn cached(
        cfg: &Config,
        offset: usize,
        new_len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (cos, sin) = rotary_tables(cfg, offset, new_len, dtype, device)?;
        Ok(Self {
            cos,
            sin,
            global_mask: cached_mask(offset, new_len, None, device)?,
            sliding_mask: cached_mask(offset, new_len, Some(cfg.sliding_window), device)?,
            packing: None,
            gradients: false,
        })
    }

    /// The same context for a pass that candle's autograd can differentiate: the blocks use
    /// plain ops in place of the fused RMSNorm, rotary, softmax and GELU kernels.
    pub fn with_gradients(mut self) -> Self {
        self.gradients = true;
        // Packing's gather and scatter are not worth differentiating: gradients run unpacked.
        self.packing = None;
        self
    }

    fn mask(&self, kind: AttentionKind) -> &Tensor {
        match kind {
            AttentionKind::Sliding => &self.sliding_mask,
            AttentionKind::Global => &self.global_mask,
        }
    }
}

/// A linear layer (`y = x W^T + b`, weight `[out, in]` as the checkpoint stores it) that folds all
/// leading dimensions into one matmul. candle_nn's `Linear` runs a `[batch, seq, in]` input as one
/// small matmul per batch row, re-reading the weight each time: a third of the speed for a
/// batch of prompts.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    /// Read into a tensor of the compute dtype on the compute device.
    Loaded(Tensor),
    /// An f32 weight of an f32 model on the CPU, read in place from the mapped file.
    Mapped(Arc<MappedMatrix>),
}

impl Linear {
    /// Reads the layer at `vb`'s prefix; with `mapped`, an f32 weight for an f32 CPU model stays in
    /// the mapped file instead of being copied.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
        mapped: Option<&Arc<MappedWeights>>,
    ) -> Result<Self> {
        let in_place = match mapped {
            Some(weights) if vb.dtype() == DType::F32 && vb.device().is_cpu() => {
                weights.matrix(&format!("{}.weight", vb.prefix()), out_dim, in_dim)?
            }
            _ => None,
        };
        let weight = match in_place {
            Some(matrix) => LinearWeight::Mapped(Arc::new(matrix)),
            None => LinearWeight::Loaded(vb.get((out_dim, in_dim), "weight")?),
        };
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// The weight when it was loaded into a tensor (not read in place).
    fn loaded_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            LinearWeight::Loaded(weight) => Some(weight),
            LinearWeight::Mapped(_) => None,
        }
    }

    /// Whether the weight is read in place from the mapped file (see [`MappedProduct`]).
    pub fn reads_in_place(&self) -> bool {
        matches!(self.weight, LinearWeight::Mapped(_))
    }

    fn out_dim(&self) -> Result<usize> {
        match &self.weight {
            LinearWeight::Loaded(weight) => weight.dim(0),
            LinearWeight::Mapped(matrix) => Ok(matrix.rows()),
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let in_dim = *dims
            .last()
            .expect("a linear layer needs at least one dimension");
        let rows = xs.elem_count() / in_dim;
        let xs = xs.reshape((rows, in_dim))?;
        let ys = match &self.weight {
            LinearWeight::Loaded(weight) => xs.matmul(&weight.t()?)?,
            LinearWeight::Mapped(matrix) => MappedProduct::linear(&xs, matrix)?,
        };
        let ys = match &self.bias {
            Some(bias) => ys.broadcast_add(bias)?,
            None => ys,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("checked above") = self.out_dim()?;
        ys.reshape(out_dims)
    }
}

/// Every layer's keys (rotated) and values so far, `[b, kv_heads, t, head_dim]` each, so that a
/// new token runs through the blocks alone instead of with the whole sequence again. Sliding
/// layers keep every key too; their mask hides the old ones.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Tokens cached so far: the position the next token takes.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(Option::as_ref)
            .map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn softcap(xs: &Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(cap) => (xs / cap)?.tanh()? * cap,
        None => Ok(xs.clone()),
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    /// `query_pre_attn_scalar^-0.5`, which is not `head_dim^-0.5` for every Gemma 2 (27B).
    scale: f64,
    softcap: Option<f64>,
    kind: AttentionKind,
}

impl Attention {
    pub fn new(
        cfg: &Config,
        kind: AttentionKind,
        vb: VarBuilder,
        mapped: Option<&Arc<MappedWeights>>,
    ) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: Linear::new(h, heads * hd, bias, vb.pp("q_proj"), mapped)?,
            k_proj: Linear::new(h, kv_heads * hd, bias, vb.pp("k_proj"), mapped)?,
            v_proj: Linear::new(h, kv_heads * hd, bias, vb.pp("v_proj"), mapped)?,
            o_proj: Linear::new(heads * hd, h, bias, vb.pp("o_proj"), mapped)?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hd,
            scale: cfg.query_pre_attn_scalar.powf(-0.5),
            softcap: cfg.attn_logit_softcapping,
            kind,
        })
    }

    /// `[b, t, heads * head_dim]` -> `[b, heads, t, head_dim]`
    fn split_heads(&self, xs: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        xs.reshape((b, t, heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Grouped-query attention: each KV head serves `heads / kv_heads` query heads.
    fn repeat_kv(&self, xs: Tensor) -> Result<Tensor> {
        let n_rep = self.num_heads / self.num_kv_heads;
        if n_rep == 1 {
            return Ok(xs);
        }
        let (b, kv, t, d) = xs.dims4()?;
        xs.unsqueeze(2)?
            .expand((b, kv, n_rep, t, d))?
            .reshape((b, kv * n_rep, t, d))
    }

    /// With `cache`, the new keys and values are appended to the layer's cached ones and the
    /// queries attend over all of them (the context's mask must cover them).
    pub fn forward(
        &self,
        xs: &Tensor,
        ctx: &SequenceContext,
        layer: usize,
        hook: &mut dyn Hook,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let packing = ctx.packing.as_ref();
        let (q, k, v) = match packing {
            None => (
                self.q_proj.forward(xs)?,
                self.k_proj.forward(xs)?,
                self.v_proj.forward(xs)?,
            ),
            Some(p) => {
                let rows = p.gather(xs)?;
                (
                    p.scatter(&self.q_proj.forward(&rows)?, b, t)?,
                    p.scatter(&self.k_proj.forward(&rows)?, b, t)?,
                    p.scatter(&self.v_proj.forward(&rows)?, b, t)?,
                )
            }
        };
        let q = self.split_heads(&q, self.num_heads)?;
        let k = self.split_heads(&k, self.num_kv_heads)?;
        let v = self.split_heads(&v, self.num_kv_heads)?;
        let rope = if ctx.gradients {
            differentiable::rope
        } else {
            candle_nn::rotary_emb::rope
        };
        let q = rope(&q, &ctx.cos, &ctx.sin)?;
        let k = rope(&k, &ctx.cos, &ctx.sin)?;
        let (k, v) = match cache {
            None => (k, v),
            Some(slot) => {
                let (k, v) = match slot.take() {
                    None => (k, v),
                    Some((old_k, old_v)) => {
                        (Tensor::cat(&[old_k, k], 2)?, Tensor::cat(&[old_v, v], 2)?)
                    }
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
        };
        let k = self.repeat_kv(k)?.contiguous()?;
        let v = self.repeat_kv(v)?.contiguous()?;

        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let scores = softcap(&scores, self.softcap)?;
        // The mask goes on after the soft-cap, and softmax runs in f32, as in the reference.
        let probs = if ctx.gradients {
            let scores = scores.to_dtype(differentiable::compute_dtype(scores.dtype()))?;
            let mask = ctx.mask(self.kind).to_dtype(scores.dtype())?;
            differentiable::softmax_last_dim(&scores.broadcast_add(&mask)?)?
        } else {
            let scores = scores
                .to_dtype(DType::F32)?
                .broadcast_add(ctx.mask(self.kind))?;
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let probs = probs.to_dtype(v.dtype())?;
        let heads_out = probs.matmul(&v)?;
        let concat = heads_out
            .transpose(1, 2)?
            .reshape((b, t, self.num_heads * self.head_dim))?;
        let concat = visit(
            hook,
            HookPoint {
                layer,
                site: Site::Att,
            },
            concat,
        )?;
        rowwise(&concat, packing, |rows| self.o_proj.forward(rows))
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    activation: Activation,
}

impl Mlp {
    pub fn new(cfg: &Config, vb: VarBuilder, mapped: Option<&Arc<MappedWeights>>) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::new(h, i, false, vb.pp("gate_proj"), mapped)?,
            up_proj: Linear::new(h, i, false, vb.pp("up_proj"), mapped)?,
            down_proj: Linear::new(i, h, false, vb.pp("down_proj"), mapped)?,
            activation: cfg.hidden_activation,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, false)
    }
}

impl Mlp {
    fn forward_with(&self, xs: &Tensor, gradients: bool) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?;
        let gate = match (self.activation, gradients) {
            (Activation::GeluTanh, false) => gate.gelu()?,
            (Activation::GeluErf, false) => gate.gelu_erf()?,
            (Activation::GeluTanh, true) => differentiable::gelu_tanh(&gate)?,
            (Activation::GeluErf, true) => differentiable::gelu_erf(&gate)?,
        };
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}

#[derive(Debug, Clone)]
pub struct DecoderBlock {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
    layer: usize,
}

impl DecoderBlock {
    /// Reads block `layer` at `vb`; `mapped` as for [`Linear::new`].
    pub fn new(
        cfg: &Config,
        layer: usize,
        vb: VarBuilder,
        mapped: Option<&Arc<MappedWeights>>,
    ) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            self_attn: Attention::new(cfg, cfg.layer_types[layer], vb.pp("self_attn"), mapped)?,
            mlp: Mlp::new(cfg, vb.pp("mlp"), mapped)?,
            input_layernorm: RmsNorm::new(h, eps, vb.pp("input_layernorm"))?,
            post_attention_layernorm: RmsNorm::new(h, eps, vb.pp("post_attention_layernorm"))?,
            pre_feedforward_layernorm: RmsNorm::new(h, eps, vb.pp("pre_feedforward_layernorm"))?,
            post_feedforward_layernorm: RmsNorm::new(h, eps, vb.pp("post_feedforward_layernorm"))?,
            layer,
        })
    }

    /// How many of the block's seven linear layers read their weight in place from the file.
    pub fn linear_layers_in_place(&self) -> usize {
        let a = &self.self_attn;
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &self.mlp.gate_proj,
            &self.mlp.up_proj,
            &self.mlp.down_proj,
        ]
        .iter()
        .filter(|l| l.reads_in_place())
        .count()
    }

    /// `h = x + post_attn_norm(attn(input_norm(x)))`; `out = h + post_ff_norm(mlp(pre_ff_norm(h)))`.
    pub fn forward(
        &self,
        xs: &Tensor,
        ctx: &SequenceContext,
        hook: &mut dyn Hook,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let layer = self.layer;
        let normed = self.input_layernorm.forward_in(xs, ctx)?;
        let attn = self.self_attn.forward(&normed, ctx, layer, hook, cache)?;
        let hidden = (xs + self.post_attention_layernorm.forward_in(&attn, ctx)?)?;
        let mlp = rowwise(
            &self.pre_feedforward_layernorm.forward_in(&hidden, ctx)?,
            ctx.packing.as_ref(),
            |rows| self.mlp.forward_with(rows, ctx.gradients),
        )?;
        let mlp = self.post_feedforward_layernorm.forward_in(&mlp, ctx)?;
        let mlp = visit(
            hook,
            HookPoint {
                layer,
                site: Site::Mlp,
            },
            mlp,
        )?;
        visit(
            hook,
            HookPoint {
                layer,
                site: Site::Res,
            },
            (hidden + mlp)?,
        )
    }
}

/// Lets the hook see an activation and take its replacement, if it returns one.
fn visit(hook: &mut dyn Hook, point: HookPoint, activation: Tensor) -> Result<Tensor> {
    match hook.visit(point, &activation)? {
        Some(replacement) => {
            if replacement.shape() != activation.shape() {
                candle_core::bail!(
                    "hook at layer {} {} returned shape {:?}, expected {:?}",
                    point.layer,
                    point.site,
                    replacement.shape(),
                    activation.shape()
                );
            }
            replacement.to_dtype(activation.dtype())
        }
        None => Ok(activation),
    }
}

/// Gemma 2 with blocks `0..parts.blocks` available, resident or streamed from the mapped weights.
pub struct Gemma2 {
    weights: Arc<MappedWeights>,
    /// Builds blocks on demand; rooted at the checkpoint's `model.` prefix.
    vb: VarBuilder<'static>,
    /// The tied LM head (the embedding matrix), present only when logits were asked for: read
    /// in place on an f32 CPU model, else loaded whole (and then also the embedding table).
    lm_head: Option<Linear>,
    /// Resident blocks (all of them), or none when blocks are streamed.
    blocks: Vec<DecoderBlock>,
    n_blocks: usize,
    /// The final norm; present only when the LM head was asked for.
    norm: Option<RmsNorm>,
    cfg: Config,
    dtype: DType,
    device: Device,
    /// What the reader thread of streamed blocks read from disk so far.
    disk_reads: DiskReads,
}

/// Counters of the reader thread (see [`Gemma2::disk_reads`]).
#[derive(Debug, Default)]
struct DiskReads {
    blocks_ahead: AtomicUsize,
    bytes: AtomicU64,
    nanos: AtomicU64,
}

impl DiskReads {
    fn record(&self, ahead: bool, read: &[MissingRange], took: std::time::Duration) {
        if ahead {
            self.blocks_ahead.fetch_add(1, Relaxed);
        }
        let bytes: usize = read.iter().map(MissingRange::len).sum();
        self.bytes.fetch_add(bytes as u64, Relaxed);
        self.nanos.fetch_add(took.as_nanos() as u64, Relaxed);
    }
}

const EMBED: &str = "model.embed_tokens.weight";

impl Gemma2 {
    /// Prepares `parts` of the checkpoint in `weights`, converting to `dtype` on `device`.
    pub fn new(
        cfg: &Config,
        parts: Parts,
        weights: Arc<MappedWeights>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if parts.blocks > cfg.num_hidden_layers {
            candle_core::bail!(
                "asked for {} blocks of a {}-layer model",
                parts.blocks,
                cfg.num_hidden_layers
            );
        }
        let backend: Box<dyn candle_nn::var_builder::SimpleBackend> =
            Box::new(SharedWeights(weights.clone()));
        let vb = VarBuilder::from_backend(backend, dtype, device.clone()).pp("model");
        // The embedding is the tied LM head's weight: a linear layer like any other (read in
        // place on an f32 CPU model, 2.4 GB for the 2B not copied; else loaded whole). Without
        // the head only its shape is checked here, from the header, and the rows a prompt needs
        // are read when it runs.
        let lm_head = if parts.head {
            Some(Linear::new(
                cfg.hidden_size,
                cfg.vocab_size,
                false,
                vb.pp("embed_tokens"),
                Some(&weights),
            )?)
        } else {
            match weights.shape(EMBED) {
                Some(shape) if shape == [cfg.vocab_size, cfg.hidden_size] => None,
                Some(shape) => candle_core::bail!(
                    "tensor {EMBED} has shape {shape:?}, expected [{}, {}]",
                    cfg.vocab_size,
                    cfg.hidden_size
                ),
                None => candle_core::bail!("tensor {EMBED} is missing from the weights"),
            }
        };
        let mut model = Self {
            weights,
            vb,
            lm_head,
            blocks: Vec::new(),
            n_blocks: parts.blocks,
            norm: None,
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            disk_reads: Default::default(),
        };
        if parts.resident {
            model.blocks = (0..parts.blocks)
                .map(|i| model.build_block(i))
                .collect::<Result<Vec<_>>>()?;
        } else {
            // Fail now, not halfway through a run, if a needed tensor is missing.
            for i in 0..parts.blocks {
                model.check_block_tensors(i)?;
            }
        }
        if parts.head {
            model.norm = Some(RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                model.vb.pp("norm"),
            )?);
        }
        Ok(model)
    }

    /// Block `layer` built from the weights, for a caller that keeps a few blocks for many passes.
    pub fn block(&self, layer: usize) -> Result<DecoderBlock> {
        if layer >= self.n_blocks {
            candle_core::bail!(
                "layer {layer} is not loaded ({} blocks loaded)",
                self.n_blocks
            );
        }
        match self.blocks.get(layer) {
            Some(block) => Ok(block.clone()),
            None => self.build_block(layer),
        }
    }

    /// The final norm: the loaded one, or built from the weights when the head was not loaded.
    pub fn final_norm(&self) -> Result<RmsNorm> {
        match &self.norm {
            Some(norm) => Ok(norm.clone()),
            None => RmsNorm::new(
                self.cfg.hidden_size,
                self.cfg.rms_norm_eps,
                self.vb.pp("norm"),
            ),
        }
    }

    /// Rows `start..start + len` of the embedding matrix (the tied LM head), `[len, hidden]`:
    /// a slice of the loaded matrix, or read from the mapped file, so that a caller can run the
    /// LM head slice by slice without holding the whole matrix.
    pub fn embedding_rows(&self, start: usize, len: usize) -> Result<Tensor> {
        match self.embedding_table() {
            Some(table) => table.narrow(0, start, len),
            None => self
                .weights
                .load_row_range(EMBED, start, len, self.dtype, &self.device),
        }
    }

    fn build_block(&self, layer: usize) -> Result<DecoderBlock> {
        DecoderBlock::new(
            &self.cfg,
            layer,
            self.vb.pp("layers").pp(layer),
            Some(&self.weights),
        )
    }

    fn check_block_tensors(&self, layer: usize) -> Result<()> {
        for (suffix, expected) in block_tensor_shapes(&self.cfg) {
            let name = format!("model.layers.{layer}.{suffix}");
            match self.weights.shape(&name) {
                Some(shape) if shape == expected => {}
                Some(shape) => {
                    candle_core::bail!("tensor {name} has shape {shape:?}, expected {expected:?}")
                }
                None => candle_core::bail!("tensor {name} is missing from the weights"),
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How many streamed blocks were not in the page cache when their turn neared, and were read
    /// from disk by the reader thread while the block before them computed.
    pub fn blocks_read_ahead(&self) -> usize {
        self.disk_reads.blocks_ahead.load(Relaxed)
    }

    /// Bytes of streamed blocks read from disk (not found in the page cache) so far, and the time
    /// the reader spent reading them: beside compute, so a cold run's forward time is this time
    /// when the disk is the limit.
    pub fn disk_reads(&self) -> (u64, std::time::Duration) {
        (
            self.disk_reads.bytes.load(Relaxed),
            std::time::Duration::from_nanos(self.disk_reads.nanos.load(Relaxed)),
        )
    }

    /// The whole embedding matrix when the LM head loaded it; `None` when rows are read from the
    /// file instead.
    fn embedding_table(&self) -> Option<&Tensor> {
        self.lm_head.as_ref().and_then(Linear::loaded_weight)
    }

    /// Whether the tied LM head reads the embedding matrix in place from the file.
    pub fn head_reads_in_place(&self) -> bool {
        self.lm_head.as_ref().is_some_and(Linear::reads_in_place)
    }

    /// Number of available blocks: layers `0..loaded_blocks()` can be run.
    pub fn loaded_blocks(&self) -> usize {
        self.n_blocks
    }

    pub fn context(&self, seq_len: usize) -> Result<SequenceContext> {
        SequenceContext::new(&self.cfg, seq_len, self.dtype, &self.device)
    }

    /// Token embeddings `[b, t, hidden]`, scaled by `sqrt(hidden_size)` rounded to the model dtype.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let rows = match self.embedding_table() {
            Some(table) => table.index_select(&input_ids.flatten_all()?, 0)?,
            None => {
                let ids = input_ids.flatten_all()?.to_vec1::<u32>()?;
                self.weights
                    .load_rows(EMBED, &ids, self.dtype, &self.device)?
            }
        };
        let normalizer = Tensor::new((self.cfg.hidden_size as f64).sqrt(), &self.device)?
            .to_dtype(self.dtype)?;
        rows.reshape((b, t, self.cfg.hidden_size))?
            .broadcast_mul(&normalizer)
    }

    fn check_range(&self, layers: &Range<usize>) -> Result<()> {
        if layers.end > self.n_blocks {
            candle_core::bail!(
                "layer {} is not loaded ({} blocks loaded)",
                layers.end - 1,
                self.n_blocks
            );
        }
        Ok(())
    }

    fn block_tensor_names(&self, layer: usize) -> Vec<String> {
        block_tensor_shapes(&self.cfg)
            .iter()
            .map(|(suffix, _)| format!("model.layers.{layer}.{suffix}"))
            .collect()
    }

    /// Calls `f` with each block of `layers` in order: the resident ones, or, when streamed, each
    /// built from the file and dropped after `f`, so that one block is alive at a time.
    ///
    /// Streamed blocks are paced by a reader thread that walks the blocks ahead of compute (at
    /// most two ahead, so that a model larger than the page cache does not evict what is about
    /// to run), reads from disk whatever pages of each block are not in the page cache
    /// (`mincore`), and hands the block over once it is all in memory: disk reads overlap
    /// compute and the disk never waits for a block boundary. Only missing pages are read, so a
    /// warm block (all cached, or a few pages trimmed since) costs the reader a `mincore` call;
    /// a reader that copied whole cached blocks beside gemm's threads measured slower on two
    /// cores (4.8-5.6 s against 4.1-5.0 s for `features --layer 20` on the 2B shape).
    fn for_each_block(
        &self,
        layers: Range<usize>,
        mut f: impl FnMut(&DecoderBlock) -> Result<()>,
    ) -> Result<()> {
        self.check_range(&layers)?;
        if !self.blocks.is_empty() {
            return layers.into_iter().try_for_each(|l| f(&self.blocks[l]));
        }
        let Range { start, end } = layers;
        let names: Vec<Vec<String>> = (start..end)
            .map(|layer| self.block_tensor_names(layer))
            .collect();
        let (weights, read_ahead) = (&self.weights, &self.disk_reads);
        std::thread::scope(|scope| {
            let (ready, block_ready) = std::sync::mpsc::sync_channel::<usize>(1);
            scope.spawn(move || {
                for (layer, names) in (start..end).zip(&names) {
                    let missing = weights.uncached(names.iter().map(String::as_str));
                    if !missing.is_empty() {
                        let started = std::time::Instant::now();
                        weights.read_into_cache(&missing);
                        read_ahead.record(layer > start, &missing, started.elapsed());
                    }
                    // Compute stopped early (an error): nothing more to read.
                    if ready.send(layer).is_err() {
                        return;
                    }
                }
            });
            for layer in start..end {
                // A reader that died leaves its blocks to be read when built: same numbers.
                let _ = block_ready.recv();
                let block = self.build_block(layer)?;
                f(&block)?;
            }
            Ok(())
        })
    }

    /// Runs blocks `layers` over the residual stream `xs`, letting `hook` see every site.
    pub fn run_blocks(
        &self,
        xs: Tensor,
        layers: Range<usize>,
        ctx: &SequenceContext,
        hook: &mut dyn Hook,
    ) -> Result<Tensor> {
        let mut xs = xs;
        self.for_each_block(layers, |block| {
            xs = block.forward(&xs, ctx, hook, None)?;
            Ok(())
        })?;
        Ok(xs)
    }

    /// Runs blocks `layers` over several batches block-major: each block is built once (read
    /// from the file once, when streamed) and applied to every batch before the next block, so a
    /// corpus too large for one batch still reads each block once. `hooks[i]` sees batch `i`.
    /// Each batch computes exactly what [`Gemma2::run_blocks`] computes for it alone.
    pub fn run_blocks_each<H: Hook>(
        &self,
        batches: Vec<Tensor>,
        ctxs: &[&SequenceContext],
        layers: Range<usize>,
        hooks: &mut [H],
    ) -> Result<Vec<Tensor>> {
        if ctxs.len() != batches.len() || hooks.len() != batches.len() {
            candle_core::bail!("one context and one hook per batch");
        }
        let mut xs = batches;
        self.for_each_block(layers, |block| {
            xs = xs
                .iter()
                .zip(ctxs)
                .zip(hooks.iter_mut())
                .map(|((x, ctx), hook)| block.forward(x, ctx, hook, None))
                .collect::<Result<_>>()?;
            Ok(())
        })?;
        Ok(xs)
    }

    /// Final norm, tied LM head and the `30 * tanh(z / 30)` soft-cap: `[b, t, vocab]`.
    pub fn logits(&self, xs: &Tensor) -> Result<Tensor> {
        let Some(norm) = &self.norm else {
            candle_core::bail!("the LM head was not loaded (load with Parts::full)");
        };
        let xs = norm.forward(xs)?;
        let Some(head) = &self.lm_head else {
            candle_core::bail!("the LM head was not loaded (load with Parts::full)");
        };
        let logits = head.forward(&xs)?;
        softcap(&logits, self.cfg.final_logit_softcapping)
    }

    /// The full forward pass to soft-capped logits `[b, t, vocab]`.
    pub fn forward(&self, input_ids: &Tensor, hook: &mut dyn Hook) -> Result<Tensor> {
        if self.n_blocks != self.cfg.num_hidden_layers {
            candle_core::bail!(
                "the full forward pass needs all {} blocks, {} are loaded",
                self.cfg.num_hidden_layers,
                self.n_blocks
            );
        }
        let ctx = self.context(input_ids.dim(1)?)?;
        let xs = self.run_blocks(self.embed(input_ids)?, 0..self.n_blocks, &ctx, hook)?;
        self.logits(&xs)
    }
}

impl Gemma2 {
    /// A cache sized for this model, empty.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.num_hidden_layers)
    }

    /// The full forward pass over `input_ids` `[1, t]`, the tokens that follow those in `cache`
    /// (positions `cache.len()..`), appending their keys and values to it. Returns the soft-capped
    /// logits of the last token only, `[1, vocab]`: all that generation needs. The hook sees only
    /// the new positions; the cached ones already carry whatever it did to them.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        hook: &mut dyn Hook,
    ) -> Result<Tensor> {
        let n = self.cfg.num_hidden_layers;
        if self.n_blocks != n || self.blocks.len() != n {
            candle_core::bail!("cached generation needs all {n} blocks resident (Parts::full)");
        }
        if cache.layers.len() != n {
            candle_core::bail!("the cache has {} layers, the model {n}", cache.layers.len());
        }
        let (b, t) = input_ids.dims2()?;
        if b != 1 || t == 0 {
            candle_core::bail!("cached generation runs one sequence of at least one token");
        }
        let offset = cache.len();
        let ctx = SequenceContext::cached(&self.cfg, offset, t, self.dtype, &self.device)?;
        let mut xs = self.embed(input_ids)?;
        for (block, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            xs = block.forward(&xs, &ctx, hook, Some(slot))?;
        }
        let last = xs.narrow(1, t - 1, 1)?;
        self.logits(&last)?.squeeze(1)
    }
}

/// The tensors every decoder block reads (after its prefix `model.layers.{i}.`) and their shapes.
fn block_tensor_shapes(cfg: &Config) -> [(&'static str, Vec<usize>); 11] {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    [
        ("self_attn.q_proj.weight", vec![q, h]),
        ("self_attn.k_proj.weight", vec![kv, h]),
        ("self_attn.v_proj.weight", vec![kv, h]),
        ("self_attn.o_proj.weight", vec![h, q]),
        ("mlp.gate_proj.weight", vec![i, h]),
        ("mlp.up_proj.weight", vec![i, h]),
        ("mlp.down_proj.weight", vec![h, i]),
        ("input_layernorm.weight", vec![h]),
        ("post_attention_layernorm.weight", vec![h]),
        ("pre_feedforward_layernorm.weight", vec![h]),
        ("post_feedforward_layernorm.weight", vec![h]),
    ]
}
