//! Fused CPU kernels for training, each a candle custom op with its own backward pass.
//!
//! Built from candle's elementwise ops, one phi block is ~60 graph nodes, each allocating a full-size temporary in
//! the forward pass and a few more in the backward pass; on a CPU those passes over memory cost as much as the
//! matmuls. Here each piece is one pass, the backward passes compute only what training needs (the base weights
//! are frozen: no gradients for them, nor for inputs that carry none), and the matmuls call `gemm` directly so a
//! bias or a LoRA product is accumulated into the output instead of added in a separate pass.
//!
//! Every op computes what the graph version in `model.rs` computes, which still runs on other devices; a test there
//! holds the two forward passes to each other, values and gradients.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// A row-major f32 matrix, or the transpose of one, for [`gemm`].
#[derive(Debug, Clone, Copy)]
struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<MatRef<'a>> {
        if data.len() != rows * cols {
            bail!("a {rows}x{cols} matrix needs {} values, not {}", rows * cols, data.len());
        }
        Ok(MatRef { data, rows, cols, row_stride: cols, col_stride: 1 })
    }

    fn t(self) -> MatRef<'a> {
        MatRef { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// `dst = scale · a · b`, or `dst += scale · a · b` when `accumulate`, for a row-major `dst` `[a.rows, b.cols]`,
/// on candle's CPU threads.
fn gemm(dst: &mut [f32], a: MatRef<'_>, b: MatRef<'_>, scale: f32, accumulate: bool) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || dst.len() != m * n {
        bail!("gemm: {m}x{k} times {}x{n} into {} values", b.rows, dst.len());
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: `MatRef::new` checked that each operand's slice holds exactly its rows × cols values and `t` only
    // swaps dimensions with their strides, so every element gemm reads is inside `a.data` / `b.data`; `dst` holds
    // m × n values written with row stride n. The slices do not overlap (one is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// The f32 elements of a contiguous CPU tensor's storage.
fn contiguous_f32<'s>(storage: &'s CpuStorage, layout: &Layout) -> Result<&'s [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("expected a contiguous tensor") };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// The same for a tensor's storage as `Tensor::storage_and_layout` returns it.
fn cpu_f32<'s>(storage: &'s Storage, layout: &Layout) -> Result<&'s [f32]> {
    let Storage::Cpu(cpu) = storage else { bail!("expected a tensor on the CPU") };
    contiguous_f32(cpu, layout)
}

/// Runs `f(first_row_index, rows)` over `out`'s rows of `width` values (the last one may be shorter), split across
/// rayon's threads — the pool the matmuls run on, so the two never compete for cores.
fn parallel_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if width == 0 || out.is_empty() {
        return;
    }
    let rows = out.len().div_ceil(width);
    let threads = candle_core::utils::get_num_threads().max(1);
    // Below ~32k values a thread costs more than it saves.
    let rows_per_chunk = rows.div_ceil(threads).max((1 << 15) / width).max(1);
    if rows_per_chunk >= rows {
        f(0, out);
        return;
    }
    out.par_chunks_mut(rows_per_chunk * width).enumerate().for_each(|(chunk_index, chunk)| {
        f(chunk_index * rows_per_chunk, chunk);
    });
}

/// `f(out[i], a[i], b[i])` for every i, split over candle's CPU threads.
fn parallel_zip(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(&mut f32, f32, f32) + Sync + Send) {
    const BLOCK: usize = 4096;
    parallel_rows(out, BLOCK, |first_block, values| {
        let start = first_block * BLOCK;
        for ((o, &x), &y) in values.iter_mut().zip(&a[start..]).zip(&b[start..]) {
            f(o, x, y);
        }
    });
}

/// `Some(tensor)` from `values` when `arg` needs a gradient, so candle stores none for constants.
fn gradient_for(arg: &Tensor, values: impl FnOnce() -> Result<Vec<f32>>) -> Result<Option<Tensor>> {
    if !arg.track_op() {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(values()?, arg.shape(), arg.device())?))
}

/// A frozen linear layer `y = x·Wᵀ + b` for `x` `[m, in]`, with an optional LoRA update
/// `scaling · (x·Aᵀ)·Bᵀ` (A `[r, in]`, B `[out, r]`) — PEFT's order of operations.
pub(crate) struct Linear {
    /// `[out, in]`, contiguous.
    pub(crate) w: Tensor,
    /// `[out]`.
    pub(crate) b: Tensor,
    pub(crate) scaling: f32,
}

impl Linear {
    /// `x·Wᵀ + b` into a new `[m, out]` buffer.
    fn base_forward(&self, x: &[f32], m: usize, k: usize) -> Result<Vec<f32>> {
        let (w_storage, w_layout) = self.w.storage_and_layout();
        let (b_storage, b_layout) = self.b.storage_and_layout();
        affine(x, cpu_f32(&w_storage, w_layout)?, cpu_f32(&b_storage, b_layout)?, m, k)
    }

    /// `g·W` (`[m, in]`) plus, for LoRA, `gxa·A`.
    fn input_gradient(&self, g: &[f32], m: usize, lora: Option<(&[f32], &[f32], usize)>) -> Result<Vec<f32>> {
        let (w_storage, w_layout) = self.w.storage_and_layout();
        let w = cpu_f32(&w_storage, w_layout)?;
        let (n, k) = self.w.dims2()?;
        let mut gx = affine_input_gradient(g, w, m, n, k)?;
        if let Some((gxa, a, r)) = lora {
            gemm(&mut gx, MatRef::new(gxa, m, r)?, MatRef::new(a, r, k)?, 1.0, true)?;
        }
        Ok(gx)
    }
}

/// `x·Wᵀ + b` into a new `[m, out]` buffer, for `x` `[m, k]`, `W` `[out, k]`, `b` `[out]`.
fn affine(x: &[f32], w: &[f32], bias: &[f32], m: usize, k: usize) -> Result<Vec<f32>> {
    let n = bias.len();
    let mut y = Vec::with_capacity(m * n);
    for _ in 0..m {
        y.extend_from_slice(bias);
    }
    gemm(&mut y, MatRef::new(x, m, k)?, MatRef::new(w, n, k)?.t(), 1.0, true)?;
    Ok(y)
}

/// `∂/∂x = g·W` (`[m, k]`) of `y = x·Wᵀ + b`, for `g` `[m, n]`.
fn affine_input_gradient(g: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>> {
    let mut gx = vec![0f32; m * k];
    gemm(&mut gx, MatRef::new(g, m, n)?, MatRef::new(w, n, k)?, 1.0, false)?;
    Ok(gx)
}

/// `∂/∂W = gᵀ·x` (`[n, k]`) of `y = x·Wᵀ + b`, for `g` `[m, n]` and `x` `[m, k]`.
fn affine_weight_gradient(g: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>> {
    let mut gw = vec![0f32; n * k];
    gemm(&mut gw, MatRef::new(g, m, n)?.t(), MatRef::new(x, m, k)?, 1.0, false)?;
    Ok(gw)
}

/// The sum of the rows of `g` (`[m, n]` → `[n]`): the gradient of a bias added to every row.
fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let mut sums = vec![0f32; n];
    if n > 0 {
        for row in g.chunks_exact(n) {
            sums.iter_mut().zip(row).for_each(|(s, &x)| *s += x);
        }
    }
    sums
}

/// Without LoRA: `x` → `x·Wᵀ + b`; the backward pass gives `x` its gradient only.
impl CustomOp1 for Linear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        let y = self.base_forward(contiguous_f32(storage, layout)?, m, k)?;
        let n = self.b.elem_count();
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        let (g_storage, g_layout) = g.storage_and_layout();
        let g = cpu_f32(&g_storage, g_layout)?;
        gradient_for(arg, || self.input_gradient(g, arg.dim(0)?, None))
    }
}

/// With LoRA: `(x, A, B)` → `x·Wᵀ + b + scaling·(x·Aᵀ)·Bᵀ`; gradients for `x`, `A` and `B`.
impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        a_storage: &CpuStorage,
        a_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = x_layout.shape().dims2()?;
        let (r, _) = a_layout.shape().dims2()?;
        let (n, _) = b_layout.shape().dims2()?;
        let x = contiguous_f32(x_storage, x_layout)?;
        let mut y = self.base_forward(x, m, k)?;
        let a = MatRef::new(contiguous_f32(a_storage, a_layout)?, r, k)?;
        let b = MatRef::new(contiguous_f32(b_storage, b_layout)?, n, r)?;
        let mut xa = vec![0f32; m * r];
        gemm(&mut xa, MatRef::new(x, m, k)?, a.t(), 1.0, false)?;
        gemm(&mut y, MatRef::new(&xa, m, r)?, b.t(), self.scaling, true)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let (g_storage, g_layout) = g.storage_and_layout();
        let g = cpu_f32(&g_storage, g_layout)?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let x_values = cpu_f32(&x_storage, x_layout)?;
        let (a_storage, a_layout) = a.storage_and_layout();
        let a_values = cpu_f32(&a_storage, a_layout)?;
        let (b_storage, b_layout) = b.storage_and_layout();
        let b_values = cpu_f32(&b_storage, b_layout)?;
        let ((m, k), (r, _), (n, _)) = (x.dims2()?, a.dims2()?, b.dims2()?);
        let (x_mat, a_mat, b_mat, g_mat) = (
            MatRef::new(x_values, m, k)?,
            MatRef::new(a_values, r, k)?,
            MatRef::new(b_values, n, r)?,
            MatRef::new(g, m, n)?,
        );
        // ∂/∂(x·Aᵀ) = scaling · g·B.
        let mut gxa = vec![0f32; m * r];
        gemm(&mut gxa, g_mat, b_mat, self.scaling, false)?;
        let grad_b = gradient_for(b, || {
            let mut xa = vec![0f32; m * r];
            gemm(&mut xa, x_mat, a_mat.t(), 1.0, false)?;
            let mut gb = vec![0f32; n * r];
            gemm(&mut gb, g_mat.t(), MatRef::new(&xa, m, r)?, self.scaling, false)?;
            Ok(gb)
        })?;
        let grad_a = gradient_for(a, || {
            let mut ga = vec![0f32; r * k];
            gemm(&mut ga, MatRef::new(&gxa, m, r)?.t(), x_mat, 1.0, false)?;
            Ok(ga)
        })?;
        let grad_x = gradient_for(x, || self.input_gradient(g, m, Some((&gxa, a_values, r))))?;
        Ok((grad_x, grad_a, grad_b))
    }
}

/// A trained linear layer (full training): `(x, W, b)` → `x·Wᵀ + b`, with gradients for all three. The LoRA path
/// keeps [`Linear`], whose backward pass computes no weight gradients.
pub(crate) struct TrainedLinear;

impl CustomOp3 for TrainedLinear {
    fn name(&self) -> &'static str {
        "trained-linear"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = x_layout.shape().dims2()?;
        let (n, w_cols) = w_layout.shape().dims2()?;
        let bias = contiguous_f32(b_storage, b_layout)?;
        if w_cols != k || bias.len() != n {
            bail!("linear: input width {k}, weight {n}x{w_cols}, bias {}", bias.len());
        }
        let y = affine(contiguous_f32(x_storage, x_layout)?, contiguous_f32(w_storage, w_layout)?, bias, m, k)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let (g_storage, g_layout) = g.storage_and_layout();
        let g = cpu_f32(&g_storage, g_layout)?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let x_values = cpu_f32(&x_storage, x_layout)?;
        let (w_storage, w_layout) = w.storage_and_layout();
        let w_values = cpu_f32(&w_storage, w_layout)?;
        let ((m, k), (n, _)) = (x.dims2()?, w.dims2()?);
        let grad_x = gradient_for(x, || affine_input_gradient(g, w_values, m, n, k))?;
        let grad_w = gradient_for(w, || affine_weight_gradient(g, x_values, m, n, k))?;
        let grad_b = gradient_for(b, || Ok(column_sums(g, n)))?;
        Ok((grad_x, grad_w, grad_b))
    }
}

/// torch's LayerNorm over the last dimension (biased variance) with a frozen weight and bias; the backward pass
/// recomputes the row statistics rather than keeping them.
pub(crate) struct LayerNorm {
    pub(crate) w: Tensor,
    pub(crate) b: Tensor,
    pub(crate) eps: f32,
}

/// Mean and `1/sqrt(var + eps)` of a row.
fn row_statistics(row: &[f32], eps: f32) -> (f32, f32) {
    let width = row.len() as f32;
    let mean = row.iter().sum::<f32>() / width;
    let var = row.iter().map(|&x| (x - mean) * (x - mean)).sum::<f32>() / width;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `(x − mean)·rstd·w + b` per row of `x`.
fn layer_norm_forward(x: &[f32], w: &[f32], bias: &[f32], eps: f32) -> Result<Vec<f32>> {
    let width = w.len();
    if width == 0 || x.len() % width != 0 || bias.len() != width {
        bail!("layer norm: {} values, weight {width}, bias {}", x.len(), bias.len());
    }
    let mut y = vec![0f32; x.len()];
    parallel_rows(&mut y, width, |first_row, out| {
        for (out_row, x_row) in out.chunks_mut(width).zip(x[first_row * width..].chunks(width)) {
            let (mean, rstd) = row_statistics(x_row, eps);
            for (((o, &x), &w), &b) in out_row.iter_mut().zip(x_row).zip(w).zip(bias) {
                *o = (x - mean) * rstd * w + b;
            }
        }
    });
    Ok(y)
}

/// `∂/∂x` of the LayerNorm of `x` with weight `w`, for the output gradient `g`.
fn layer_norm_input_gradient(x: &[f32], g: &[f32], w: &[f32], eps: f32) -> Result<Vec<f32>> {
    let width = w.len();
    if g.len() != x.len() || width == 0 {
        bail!("layer norm backward: {} gradients for {} values", g.len(), x.len());
    }
    let mut gx = vec![0f32; x.len()];
    parallel_rows(&mut gx, width, |first_row, out| {
        let start = first_row * width;
        let rows = out.chunks_mut(width).zip(x[start..].chunks(width)).zip(g[start..].chunks(width));
        for ((out_row, x_row), g_row) in rows {
            let (mean, rstd) = row_statistics(x_row, eps);
            // With x̂ = (x − mean)·rstd and ĝ = g·w: ∂/∂x = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ·x̂)).
            let (mut sum_g, mut sum_gx) = (0f32, 0f32);
            for ((&x, &g), &w) in x_row.iter().zip(g_row).zip(w) {
                sum_g += g * w;
                sum_gx += g * w * (x - mean) * rstd;
            }
            let (mean_g, mean_gx) = (sum_g / width as f32, sum_gx / width as f32);
            for (((o, &x), &g), &w) in out_row.iter_mut().zip(x_row).zip(g_row).zip(w) {
                *o = rstd * (g * w - mean_g - (x - mean) * rstd * mean_gx);
            }
        }
    });
    Ok(gx)
}

/// `∂/∂w = Σ_rows g·x̂` of the LayerNorm of `x` (its `∂/∂b` is [`column_sums`] of `g`).
fn layer_norm_weight_gradient(x: &[f32], g: &[f32], width: usize, eps: f32) -> Vec<f32> {
    let mut gw = vec![0f32; width];
    for (x_row, g_row) in x.chunks_exact(width).zip(g.chunks_exact(width)) {
        let (mean, rstd) = row_statistics(x_row, eps);
        for ((o, &x), &g) in gw.iter_mut().zip(x_row).zip(g_row) {
            *o += g * (x - mean) * rstd;
        }
    }
    gw
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let (w_storage, w_layout) = self.w.storage_and_layout();
        let (b_storage, b_layout) = self.b.storage_and_layout();
        let y = layer_norm_forward(x, cpu_f32(&w_storage, w_layout)?, cpu_f32(&b_storage, b_layout)?, self.eps)?;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        gradient_for(arg, || {
            let g = grad_res.contiguous()?;
            let (g_storage, g_layout) = g.storage_and_layout();
            let (x_storage, x_layout) = arg.storage_and_layout();
            let (w_storage, w_layout) = self.w.storage_and_layout();
            layer_norm_input_gradient(
                cpu_f32(&x_storage, x_layout)?,
                cpu_f32(&g_storage, g_layout)?,
                cpu_f32(&w_storage, w_layout)?,
                self.eps,
            )
        })
    }
}

/// A trained LayerNorm (full training): `(x, w, b)` → the LayerNorm of `x`, with gradients for all three.
pub(crate) struct TrainedLayerNorm {
    pub(crate) eps: f32,
}

impl CustomOp3 for TrainedLayerNorm {
    fn name(&self) -> &'static str {
        "trained-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = layer_norm_forward(
            contiguous_f32(x_storage, x_layout)?,
            contiguous_f32(w_storage, w_layout)?,
            contiguous_f32(b_storage, b_layout)?,
            self.eps,
        )?;
        Ok((CpuStorage::F32(y), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let (g_storage, g_layout) = g.storage_and_layout();
        let g = cpu_f32(&g_storage, g_layout)?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let x_values = cpu_f32(&x_storage, x_layout)?;
        let (w_storage, w_layout) = w.storage_and_layout();
        let w_values = cpu_f32(&w_storage, w_layout)?;
        let width = w_values.len();
        let grad_x = gradient_for(x, || layer_norm_input_gradient(x_values, g, w_values, self.eps))?;
        let grad_w = gradient_for(w, || Ok(layer_norm_weight_gradient(x_values, g, width, self.eps)))?;
        let grad_b = gradient_for(b, || Ok(column_sums(g, width)))?;
        Ok((grad_x, grad_w, grad_b))
    }
}

/// `[batch·seq, heads·head_dim]` (a linear layer's output) → `[batch, heads, seq, head_dim]`, with the rotary
/// embedding applied to the first `cos`-width channels of each head (NeoX `rotate_half` pairing, as transformers'
/// phi). With no rotary channels it is the head split alone (values).
pub(crate) struct SplitHeadsRope {
    pub(crate) batch: usize,
    pub(crate) heads: usize,
    /// `[seq, rope_dims]`, the half repeated (transformers' tables).
    pub(crate) cos: std::sync::Arc<[f32]>,
    pub(crate) sin: std::sync::Arc<[f32]>,
    pub(crate) rope_dims: usize,
}

impl SplitHeadsRope {
    /// Moves every head row between the two layouts; `rotate(t, src, dst)` writes one head's `head_dim` values.
    fn permute(
        &self,
        input: &[f32],
        seq: usize,
        head_dim: usize,
        to_heads: bool,
        rotate: impl Fn(usize, &[f32], &mut [f32]) + Sync,
    ) -> Vec<f32> {
        let heads = self.heads;
        let mut out = vec![0f32; input.len()];
        // Each output row is one (batch, head, t) or one (batch, t) depending on the direction.
        if to_heads {
            parallel_rows(&mut out, seq * head_dim, |first, block| {
                for (i, dst) in block.chunks_mut(seq * head_dim).enumerate() {
                    let (bi, hi) = ((first + i) / heads, (first + i) % heads);
                    for (t, dst) in dst.chunks_mut(head_dim).enumerate() {
                        let src = &input[((bi * seq + t) * heads + hi) * head_dim..][..head_dim];
                        rotate(t, src, dst);
                    }
                }
            });
        } else {
            parallel_rows(&mut out, heads * head_dim, |first, block| {
                for (i, dst) in block.chunks_mut(heads * head_dim).enumerate() {
                    let (bi, t) = ((first + i) / seq, (first + i) % seq);
                    for (hi, dst) in dst.chunks_mut(head_dim).enumerate() {
                        let src = &input[((bi * heads + hi) * seq + t) * head_dim..][..head_dim];
                        rotate(t, src, dst);
                    }
                }
            });
        }
        out
    }

    fn dims(&self, len: usize, width: usize) -> Result<(usize, usize)> {
        let (batch, heads, dims) = (self.batch, self.heads, self.rope_dims);
        if batch == 0 || heads == 0 || width % heads != 0 || len % (batch * width.max(1)) != 0 {
            bail!("split heads: {len} values of width {width} into {batch} sequences of {heads} heads");
        }
        let (seq, head_dim) = (len / (batch * width), width / heads);
        if dims > head_dim || dims % 2 != 0 || self.cos.len() < seq * dims || self.sin.len() < seq * dims {
            bail!("split heads: {dims} rotary channels for heads of {head_dim} over {seq} positions");
        }
        Ok((seq, head_dim))
    }
}

impl CustomOp1 for SplitHeadsRope {
    fn name(&self) -> &'static str {
        "split-heads-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let (_, width) = layout.shape().dims2()?;
        let (seq, head_dim) = self.dims(x.len(), width)?;
        let (dims, half) = (self.rope_dims, self.rope_dims / 2);
        let out = self.permute(x, seq, head_dim, true, |t, src, dst| {
            let (cos, sin) = (&self.cos[t * dims..][..dims], &self.sin[t * dims..][..dims]);
            for c in 0..half {
                let (x1, x2) = (src[c], src[c + half]);
                dst[c] = x1 * cos[c] - x2 * sin[c];
                dst[c + half] = x2 * cos[c + half] + x1 * sin[c + half];
            }
            dst[dims..].copy_from_slice(&src[dims..]);
        });
        Ok((CpuStorage::F32(out), Shape::from((self.batch, self.heads, seq, head_dim))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        gradient_for(arg, || {
            let g = grad_res.contiguous()?;
            let (g_storage, g_layout) = g.storage_and_layout();
            let g = cpu_f32(&g_storage, g_layout)?;
            let (_, width) = arg.dims2()?;
            let (seq, head_dim) = self.dims(g.len(), width)?;
            let (dims, half) = (self.rope_dims, self.rope_dims / 2);
            // The transpose of the rotation: rotation by the opposite angle.
            Ok(self.permute(g, seq, head_dim, false, |t, src, dst| {
                let (cos, sin) = (&self.cos[t * dims..][..dims], &self.sin[t * dims..][..dims]);
                for c in 0..half {
                    let (g1, g2) = (src[c], src[c + half]);
                    dst[c] = g1 * cos[c] + g2 * sin[c + half];
                    dst[c + half] = g2 * cos[c + half] - g1 * sin[c];
                }
                dst[dims..].copy_from_slice(&src[dims..]);
            }))
        })
    }
}

/// Causal softmax of attention scores `[.., seq, seq]` times `scale`: row `i` attends to columns `0..=i`, the
/// rest get probability 0 (what transformers' additive mask of the most negative float gives).
pub(crate) struct CausalSoftmax {
    pub(crate) scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(storage, layout)?;
        let seq = layout.shape().dims().last().copied().unwrap_or(0);
        let mut probs = vec![0f32; scores.len()];
        parallel_rows(&mut probs, seq, |first_row, rows| {
            for (i, row) in rows.chunks_mut(seq).enumerate() {
                let row_index = first_row + i;
                let visible = row_index % seq + 1;
                let row = &mut row[..visible];
                row.iter_mut().zip(&scores[row_index * seq..]).for_each(|(p, &s)| *p = s * self.scale);
                let inverse = (1.0 / exp_shifted_sum(row, max_of(row))) as f32;
                row.iter_mut().for_each(|p| *p *= inverse);
            }
        });
        Ok((CpuStorage::F32(probs), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        gradient_for(arg, || {
            let g = grad_res.contiguous()?;
            let (g_storage, g_layout) = g.storage_and_layout();
            let g = cpu_f32(&g_storage, g_layout)?;
            let (p_storage, p_layout) = res.storage_and_layout();
            let p = cpu_f32(&p_storage, p_layout)?;
            let seq = arg.dims().last().copied().unwrap_or(0);
            let mut gs = vec![0f32; p.len()];
            // ∂/∂s = scale · p ⊙ (g − Σ g⊙p); masked columns have p = 0 and stay 0.
            parallel_rows(&mut gs, seq, |first_row, rows| {
                for (i, row) in rows.chunks_mut(seq).enumerate() {
                    let start = (first_row + i) * seq;
                    let visible = (first_row + i) % seq + 1;
                    let (p_row, g_row) = (&p[start..start + visible], &g[start..start + visible]);
                    let dot = dot(p_row, g_row);
                    for ((o, &p), &g) in row.iter_mut().zip(p_row).zip(g_row) {
                        *o = self.scale * p * (g - dot);
                    }
                }
            });
            Ok(gs)
        })
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_COEFFICIENT: f32 = 0.044_715;

/// `tanh` through one [`exp`]: libm's `tanhf` is several times slower, and the result differs by a few ulps.
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

/// `e^x` for f32 (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6 polynomial for `e^r`, `2^n` from the exponent
/// bits), within 2 ulp of libm's `expf`. Unlike libm's it has no branches or calls, so loops over it vectorize.
/// Inputs are clamped to [-87.3, 88]: below, the result is 1.2e-38 instead of a denormal or 0, which no sum of
/// probabilities here can tell apart.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // n is in [-126, 127], so n + 127 is a normal exponent.
    e_r * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The largest value of a slice, in 16 independent lanes so the loop vectorizes.
fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// Replaces each value `x` by `e^(x − shift)` and returns their sum, in f64 (a vocabulary's worth of
/// probabilities loses nothing) and in 8 lanes so the loop vectorizes.
fn exp_shifted_sum(values: &mut [f32], shift: f32) -> f64 {
    // Two passes: with the widening sum in the same loop, the exponentials do not vectorize as well.
    values.iter_mut().for_each(|x| *x = exp(*x - shift));
    let mut lanes = [0f64; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(x);
        }
    }
    lanes.iter().sum::<f64>() + chunks.remainder().iter().map(|&x| f64::from(x)).sum::<f64>()
}

/// `Σ a[i]·b[i]` in 16 lanes, so the loop vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (mut a_chunks, mut b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `gelu_new` (the tanh approximation); its backward pass is one pass over the input.
pub(crate) struct GeluNew;

impl CustomOp1 for GeluNew {
    fn name(&self) -> &'static str {
        "gelu-new"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let mut y = vec![0f32; x.len()];
        parallel_zip(&mut y, x, x, |y, x, _| {
            *y = 0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + GELU_COEFFICIENT * x * x * x)));
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluNewGrad)?))
    }
}

/// `grad · gelu_new'(x)` for `(x, grad)`.
struct GeluNewGrad;

impl CustomOp2 for GeluNewGrad {
    fn name(&self) -> &'static str {
        "gelu-new-grad"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout)?;
        let grad = contiguous_f32(grad_storage, grad_layout)?;
        if x.len() != grad.len() {
            bail!("gelu backward: {} inputs, {} gradients", x.len(), grad.len());
        }
        let mut out = vec![0f32; x.len()];
        parallel_zip(&mut out, x, grad, |out, x, g| {
            let t = tanh(SQRT_2_OVER_PI * (x + GELU_COEFFICIENT * x * x * x));
            let inner_derivative = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_COEFFICIENT * x * x);
            *out = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * inner_derivative);
        });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// Per-row cross-entropy of `hidden · Wᵀ + b` against `targets`, for hidden states `[n, in]`; returns `[n]`
/// losses. The `[n, vocab]` logits are made once and turned into `e^(logit − max)` in place, and the backward
/// pass turns those into `∂loss/∂logits = (p − onehot(target)) · grad` (normalizing as it goes) and returns
/// `∂loss/∂hidden = that · W`.
pub(crate) struct LmHeadCrossEntropy {
    pub(crate) head: Linear,
    pub(crate) targets: Vec<u32>,
    /// From the forward pass: each row's exponentials and `1 / Σ` of them.
    pub(crate) softmax: std::sync::Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp1 for LmHeadCrossEntropy {
    fn name(&self) -> &'static str {
        "lm-head-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = layout.shape().dims2()?;
        let vocab = self.head.b.elem_count();
        if self.targets.len() != n || self.targets.iter().any(|&t| t as usize >= vocab) {
            bail!("lm head: {n} rows, {} targets, vocabulary {vocab}", self.targets.len());
        }
        let mut logits = self.head.base_forward(contiguous_f32(storage, layout)?, n, k)?;
        let (mut losses, mut inverse_sums) = (vec![0f32; n], vec![0f32; n]);
        // A row is 50k values: enough work for a task each.
        logits
            .par_chunks_mut(vocab)
            .zip(losses.par_iter_mut().zip(inverse_sums.par_iter_mut()))
            .zip(&self.targets)
            .for_each(|((row, (loss, inverse_sum)), &target)| {
                (*loss, *inverse_sum) = softmax_cross_entropy_row(row, target as usize);
            });
        *self.softmax.lock().unwrap_or_else(|e| e.into_inner()) = Some((logits, inverse_sums));
        Ok((CpuStorage::F32(losses), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let logit_gradients = self.logit_gradients(grad_res)?;
        gradient_for(arg, || self.head.input_gradient(&logit_gradients, self.targets.len(), None))
    }
}

impl LmHeadCrossEntropy {
    /// `∂loss/∂logits` `[n, vocab]`, made in place from the forward pass's exponentials.
    fn logit_gradients(&self, grad_res: &Tensor) -> Result<Vec<f32>> {
        let Some((mut probabilities, inverse_sums)) = self.softmax.lock().unwrap_or_else(|e| e.into_inner()).take()
        else {
            bail!("lm head: backward without a forward pass")
        };
        let grad = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let vocab = self.head.b.elem_count();
        if grad.len() != self.targets.len() {
            bail!("lm head backward: {} gradients for {} rows", grad.len(), self.targets.len());
        }
        probabilities.par_chunks_mut(vocab).zip(grad.par_iter().zip(&inverse_sums)).zip(&self.targets).for_each(
            |((row, (&g, &inverse_sum)), &target)| {
                let scale = g * inverse_sum;
                row.iter_mut().for_each(|e| *e *= scale);
                row[target as usize] -= g;
            },
        );
        Ok(probabilities)
    }
}

/// Full training: `(hidden, W, b)`, where `W` and `b` are the tensors of `head` (passed so the graph reaches them):
/// the same loss, with gradients for the head's weight and bias too.
impl CustomOp3 for LmHeadCrossEntropy {
    fn name(&self) -> &'static str {
        "trained-lm-head-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
        _w_storage: &CpuStorage,
        _w_layout: &Layout,
        _b_storage: &CpuStorage,
        _b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        CustomOp1::cpu_fwd(self, storage, layout)
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let logit_gradients = self.logit_gradients(grad_res)?;
        let ((n, k), vocab) = (hidden.dims2()?, self.head.b.elem_count());
        let grad_w = gradient_for(w, || {
            let (h_storage, h_layout) = hidden.storage_and_layout();
            affine_weight_gradient(&logit_gradients, cpu_f32(&h_storage, h_layout)?, n, vocab, k)
        })?;
        let grad_b = gradient_for(b, || Ok(column_sums(&logit_gradients, vocab)))?;
        let grad_hidden = gradient_for(hidden, || self.head.input_gradient(&logit_gradients, n, None))?;
        Ok((grad_hidden, grad_w, grad_b))
    }
}

/// The cross-entropy of one row of logits for `target`, and `1 / Σ e^(logit − max)`; leaves those exponentials
/// in the row (the backward pass normalizes them).
fn softmax_cross_entropy_row(row: &mut [f32], target: usize) -> (f32, f32) {
    let max = max_of(row);
    let picked = row[target];
    let sum = exp_shifted_sum(row, max);
    (((sum.ln() as f32) + max) - picked, (1.0 / sum) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x), x.exp());
            assert!((ours - libm).abs() <= 2.0 * f32::EPSILON * libm, "exp({x}) = {ours}, libm {libm}");
            x += 0.013;
        }
        assert_eq!(exp(f32::NEG_INFINITY), exp(-87.3));
        assert!(exp(-87.3) < 1.3e-38 && exp(0.0) == 1.0);
    }

    #[test]
    fn lane_reductions_equal_plain_ones() {
        let values: Vec<f32> = (0..1037).map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.3).collect();
        assert_eq!(max_of(&values), values.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)));
        let plain: f64 = values.iter().map(|&x| f64::from((x - 0.5).exp())).sum();
        let mut exps = values.clone();
        assert!((exp_shifted_sum(&mut exps, 0.5) - plain).abs() < 1e-9 * plain);
        assert!(exps.iter().zip(&values).all(|(e, x)| (e - (x - 0.5).exp()).abs() <= 2.0 * f32::EPSILON * e));
        let plain_dot: f32 = values.iter().map(|x| x * x).sum();
        assert!((dot(&values, &values) - plain_dot).abs() < 1e-4 * plain_dot);
        assert_eq!(max_of(&[]), f32::NEG_INFINITY);
    }
}
