//! The student in candle: the same two-tower network the ONNX writer exports
//! ([`retort_model::two_tower`]), with its parameters as trainable variables. Initialised from
//! [`TwoTower::random_weights`], so a seed fixes the starting point exactly (a control and a
//! distilled student can start from the same weights), and read back into
//! [`TwoTowerWeights`] for export.

use std::cell::Cell;
use std::ops::Range;

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::train::dropout::Dropout;
use crate::train::linear::linear;
use retort_model::encode::{Encoded, InputLayout, TensorData};
use retort_model::manifest::{FeatureKind, Side};
use retort_model::two_tower::{
    CONTEXT_DENSE, CONTEXT_IDS, Dense, ITEM_DENSE, ITEM_IDS, TwoTower, TwoTowerWeights,
};

/// A dense layer's variables: `W` `[out, in]` and `b` `[out]` (no bias for the item half of the
/// joining layer).
struct Layer {
    w: Var,
    b: Option<Var>,
}

impl Layer {
    fn new(d: &Dense, bias: bool, device: &Device) -> Result<Layer> {
        Ok(Layer {
            w: Var::from_vec(d.weight.clone(), (d.outputs, d.inputs), device)?,
            b: if bias { Some(Var::from_vec(d.bias.clone(), d.outputs, device)?) } else { None },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, self.w.as_tensor(), self.b.as_ref().map(Var::as_tensor), false)
    }

    /// `relu(forward(x))`, fused.
    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, self.w.as_tensor(), self.b.as_ref().map(Var::as_tensor), true)
    }

    fn dense(&self) -> Result<Dense> {
        let (outputs, inputs) = self.w.as_tensor().dims2()?;
        Ok(Dense {
            inputs,
            outputs,
            weight: self.w.as_tensor().flatten_all()?.to_vec1()?,
            bias: match &self.b {
                Some(b) => b.as_tensor().to_vec1()?,
                None => vec![0.0; outputs],
            },
        })
    }

    fn vars(&self) -> impl Iterator<Item = &Var> {
        std::iter::once(&self.w).chain(&self.b)
    }
}

/// One minibatch as tensors: per-row context (training data has one context per row).
pub struct Batch {
    pub rows: usize,
    context_ids: Option<Tensor>,
    context_dense: Option<Tensor>,
    item_ids: Option<Tensor>,
    item_dense: Option<Tensor>,
    /// A training batch's distinct table rows per side, ascending; its ids then index these
    /// rather than the table.
    context_rows: Option<Vec<u32>>,
    item_rows: Option<Vec<u32>>,
}

/// The rows of a table that a training batch read, as a variable of their own (`[rows, width]`)
/// whose gradient is the table's gradient at those rows.
pub struct TableRows {
    /// The table's place in [`Student::vars`].
    pub param: usize,
    pub rows: Vec<u32>,
    pub values: Var,
}

/// A table is stepped by rows (lazily) when it holds more than this many rows per id a batch
/// reads from it; below, densely.
pub const LAZY_TABLE_RATIO: usize = 16;

/// The table's place in [`Student::vars`], per side.
const CONTEXT_TABLE: usize = 0;
const ITEM_TABLE: usize = 1;

pub struct Student {
    pub arch: TwoTower,
    device: Device,
    context_embeddings: Var,
    item_embeddings: Var,
    context_layers: Vec<Layer>,
    item_layers: Vec<Layer>,
    join_context: Layer,
    join_item: Layer,
    interaction: Vec<Layer>,
    /// MMoE: per expert its layers, per task tower its gate (empty for a shared bottom).
    experts: Vec<Vec<Layer>>,
    gates: Vec<Layer>,
    task_towers: Vec<Vec<Layer>>,
    heads: Vec<Layer>,
    /// Per side: each id column's row offset in the stacked table.
    context_offsets: Vec<u32>,
    item_offsets: Vec<u32>,
}

fn offsets(arch: &TwoTower, side: Side) -> Vec<u32> {
    let mut acc = 0u32;
    arch.features
        .iter()
        .filter(|f| f.side == side)
        .filter_map(|f| match f.kind {
            FeatureKind::Categorical { buckets, .. } => {
                let o = acc;
                acc += buckets as u32;
                Some(o)
            }
            _ => None,
        })
        .collect()
}

impl Student {
    /// A student with seeded initial weights (the same as [`TwoTower::random_weights`]).
    pub fn new(arch: &TwoTower, seed: u64, device: &Device) -> Result<Student> {
        Student::from_weights(arch, &arch.random_weights(seed), device)
    }

    pub fn from_weights(arch: &TwoTower, w: &TwoTowerWeights, device: &Device) -> Result<Student> {
        let e = arch.embedding_dim;
        let layers =
            |ds: &[Dense]| ds.iter().map(|d| Layer::new(d, true, device)).collect::<Result<Vec<_>>>();
        Ok(Student {
            context_embeddings: Var::from_vec(
                w.context_embeddings.clone(),
                (w.context_embeddings.len() / e, e),
                device,
            )?,
            item_embeddings: Var::from_vec(
                w.item_embeddings.clone(),
                (w.item_embeddings.len() / e, e),
                device,
            )?,
            context_layers: layers(&w.context_layers)?,
            item_layers: layers(&w.item_layers)?,
            join_context: Layer::new(&w.join_context, true, device)?,
            join_item: Layer::new(&w.join_item, false, device)?,
            interaction: layers(&w.interaction_layers)?,
            experts: w.experts.iter().map(|e| layers(e)).collect::<Result<_>>()?,
            gates: layers(&w.gates)?,
            task_towers: w.task_towers.iter().map(|t| layers(t)).collect::<Result<_>>()?,
            heads: layers(&w.heads)?,
            context_offsets: offsets(arch, Side::Context),
            item_offsets: offsets(arch, Side::Item),
            arch: arch.clone(),
            device: device.clone(),
        })
    }

    /// Every trainable variable, the context and item embedding tables first.
    pub fn vars(&self) -> Vec<Var> {
        let mut vars = vec![self.context_embeddings.clone(), self.item_embeddings.clone()];
        for layer in self
            .context_layers
            .iter()
            .chain(&self.item_layers)
            .chain([&self.join_context, &self.join_item])
            .chain(&self.interaction)
            .chain(self.experts.iter().flatten())
            .chain(&self.gates)
            .chain(self.task_towers.iter().flatten())
            .chain(&self.heads)
        {
            vars.extend(layer.vars().cloned());
        }
        vars
    }

    /// The current weights, for export.
    pub fn weights(&self) -> Result<TwoTowerWeights> {
        let dense = |ls: &[Layer]| ls.iter().map(Layer::dense).collect::<Result<Vec<_>>>();
        Ok(TwoTowerWeights {
            context_embeddings: self.context_embeddings.as_tensor().flatten_all()?.to_vec1()?,
            item_embeddings: self.item_embeddings.as_tensor().flatten_all()?.to_vec1()?,
            context_layers: dense(&self.context_layers)?,
            item_layers: dense(&self.item_layers)?,
            join_context: self.join_context.dense()?,
            join_item: self.join_item.dense()?,
            interaction_layers: dense(&self.interaction)?,
            experts: self.experts.iter().map(|e| dense(e)).collect::<Result<_>>()?,
            gates: dense(&self.gates)?,
            task_towers: self.task_towers.iter().map(|t| dense(t)).collect::<Result<_>>()?,
            heads: dense(&self.heads)?,
        })
    }

    /// Overwrites every parameter with `w` (of this architecture), e.g. to restore the best
    /// epoch after early stopping.
    pub fn set_weights(&self, w: &TwoTowerWeights) -> Result<()> {
        let source = Student::from_weights(&self.arch, w, &self.device)?;
        for (var, value) in self.vars().iter().zip(source.vars()) {
            var.set(value.as_tensor())?;
        }
        Ok(())
    }

    /// Rows `rows` of encoded inputs (one context per row) as a batch on this device.
    pub fn batch(&self, layout: &[InputLayout], encoded: &Encoded, rows: &[usize]) -> Result<Batch> {
        self.make_batch(layout, encoded, rows, false)
    }

    /// [`Student::batch`] for a training step: on a table large against the batch (see
    /// [`LAZY_TABLE_RATIO`]) its ids index the distinct rows it reads, so that
    /// [`Student::forward_training`] reads and differentiates only those.
    pub fn training_batch(&self, layout: &[InputLayout], encoded: &Encoded, rows: &[usize]) -> Result<Batch> {
        self.make_batch(layout, encoded, rows, true)
    }

    fn make_batch(
        &self,
        layout: &[InputLayout],
        encoded: &Encoded,
        rows: &[usize],
        distinct: bool,
    ) -> Result<Batch> {
        let find = |name: &str| layout.iter().position(|l| l.name == name);
        let ids = |name: &str, offsets: &[u32], table: &Var| -> Result<(Option<Tensor>, Option<Vec<u32>>)> {
            let Some(ix) = find(name) else { return Ok((None, None)) };
            let t = &encoded.tensors[ix];
            let TensorData::I64(d) = &t.data else { unreachable!("id inputs are int64. This is a bug.") };
            let w = t.shape[1];
            let mut out = Vec::with_capacity(rows.len() * w);
            for &r in rows {
                for (k, off) in offsets.iter().enumerate() {
                    out.push(d[r * w + k] as u32 + off);
                }
            }
            // Read and stepped by rows only where the table is large against what a batch reads:
            // there a dense step costs far more than the batch's rows. On a small table (a
            // student's) the dense step costs about the same, and stays the exact AdamW that
            // students have been tuned and compared with.
            let lazy = distinct && table.dim(0)? > LAZY_TABLE_RATIO * out.len();
            let distinct_rows = lazy.then(|| {
                let mut table_rows = out.clone();
                table_rows.sort_unstable();
                table_rows.dedup();
                for id in &mut out {
                    *id = table_rows.binary_search(id).expect("every id is among the rows") as u32;
                }
                table_rows
            });
            Ok((Some(Tensor::from_vec(out, rows.len() * w, &self.device)?), distinct_rows))
        };
        let dense = |name: &str| -> Result<Option<Tensor>> {
            let Some(ix) = find(name) else { return Ok(None) };
            let t = &encoded.tensors[ix];
            let TensorData::F32(d) = &t.data else { unreachable!("dense inputs are float. This is a bug.") };
            let w = t.shape[1];
            let mut out = Vec::with_capacity(rows.len() * w);
            for &r in rows {
                out.extend_from_slice(&d[r * w..(r + 1) * w]);
            }
            Tensor::from_vec(out, (rows.len(), w), &self.device).map(Some)
        };
        let (context_ids, context_rows) = ids(CONTEXT_IDS, &self.context_offsets, &self.context_embeddings)?;
        let (item_ids, item_rows) = ids(ITEM_IDS, &self.item_offsets, &self.item_embeddings)?;
        Ok(Batch {
            rows: rows.len(),
            context_ids,
            context_dense: dense(CONTEXT_DENSE)?,
            item_ids,
            item_dense: dense(ITEM_DENSE)?,
            context_rows,
            item_rows,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn tower(
        &self,
        ids: Option<&Tensor>,
        dense: Option<&Tensor>,
        table: &Tensor,
        layers: &[Layer],
        rows: usize,
        drop: &dyn Fn(Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut parts = Vec::new();
        if let Some(ids) = ids {
            let looked_up = table.index_select(ids, 0)?;
            parts.push(looked_up.reshape((rows, ()))?);
        }
        if let Some(d) = dense {
            parts.push(d.clone());
        }
        let mut x = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 1)? };
        for layer in layers {
            x = drop(layer.forward_relu(&x)?)?;
        }
        Ok(x)
    }

    /// Logits (binary heads) or values (regression heads), `[rows, heads]`.
    pub fn forward(&self, b: &Batch) -> Result<Tensor> {
        if b.context_rows.is_some() || b.item_rows.is_some() {
            candle_core::bail!("a training batch's ids index its own rows: run it with forward_training");
        }
        self.forward_with(b, self.context_embeddings.as_tensor(), self.item_embeddings.as_tensor(), None)
    }

    /// Copies of the table rows a [`Student::training_batch`] reads, for
    /// [`Student::forward_training`]: the tables' gradients are then those rows' alone, never a
    /// dense gradient as large as a table.
    pub fn gather(&self, b: &Batch) -> Result<Vec<TableRows>> {
        let gather = |table: &Var, rows: &Option<Vec<u32>>, param: usize| -> Result<Option<TableRows>> {
            let Some(rows) = rows else { return Ok(None) };
            let index = Tensor::from_slice(rows, rows.len(), &self.device)?;
            // Detached: the copy is a leaf, so backpropagation stops at it.
            let values = Var::from_tensor(&table.as_tensor().detach().index_select(&index, 0)?)?;
            Ok(Some(TableRows { param, rows: rows.clone(), values }))
        };
        let context = gather(&self.context_embeddings, &b.context_rows, CONTEXT_TABLE)?;
        let item = gather(&self.item_embeddings, &b.item_rows, ITEM_TABLE)?;
        Ok(context.into_iter().chain(item).collect())
    }

    /// [`Student::forward`] of rows `rows` of a [`Student::training_batch`], reading its tables
    /// through `tables` (from [`Student::gather`]). Parts of one batch run side by side this
    /// way, sharing the copies, so their gradients add up to the whole batch's. `dropout` (of
    /// these rows) applies after every hidden layer.
    pub fn forward_training(
        &self,
        b: &Batch,
        tables: &[TableRows],
        rows: Range<usize>,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        let table = |param: usize, full: &Var| match tables.iter().find(|t| t.param == param) {
            Some(t) => t.values.as_tensor().clone(),
            None => full.as_tensor().clone(),
        };
        let part = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
            let Some(t) = t else { return Ok(None) };
            // Id inputs are flat, `width` ids per row.
            let width = t.dim(0)? / b.rows.max(1);
            Ok(Some(t.narrow(0, rows.start * width, rows.len() * width)?))
        };
        let slice = Batch {
            rows: rows.len(),
            context_ids: part(&b.context_ids)?,
            context_dense: part(&b.context_dense)?,
            item_ids: part(&b.item_ids)?,
            item_dense: part(&b.item_dense)?,
            context_rows: None,
            item_rows: None,
        };
        self.forward_with(
            &slice,
            &table(CONTEXT_TABLE, &self.context_embeddings),
            &table(ITEM_TABLE, &self.item_embeddings),
            dropout,
        )
    }

    fn forward_with(
        &self,
        b: &Batch,
        context_table: &Tensor,
        item_table: &Tensor,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        // Hidden layers numbered in the order they run, each drawing its own masks.
        let layer = Cell::new(0);
        let drop = |x: Tensor| -> Result<Tensor> {
            let Some(d) = dropout else { return Ok(x) };
            layer.set(layer.get() + 1);
            d.apply(&x, layer.get())
        };
        let c = self.tower(
            b.context_ids.as_ref(),
            b.context_dense.as_ref(),
            context_table,
            &self.context_layers,
            b.rows,
            &drop,
        )?;
        let i = self.tower(
            b.item_ids.as_ref(),
            b.item_dense.as_ref(),
            item_table,
            &self.item_layers,
            b.rows,
            &drop,
        )?;
        let joined = drop((self.join_context.forward(&c)? + self.join_item.forward(&i)?)?.relu()?)?;
        let mlp = |x: &Tensor, layers: &[Layer]| -> Result<Tensor> {
            let mut x = x.clone();
            for layer in layers {
                x = drop(layer.forward_relu(&x)?)?;
            }
            Ok(x)
        };
        let shared = mlp(&joined, &self.interaction)?;
        // MMoE: experts stacked `[rows, experts, width]`, each tower mixing them by its gate.
        let experts = if self.experts.is_empty() {
            None
        } else {
            let outs = self.experts.iter().map(|e| mlp(&joined, e)).collect::<Result<Vec<_>>>()?;
            Some(Tensor::stack(&outs, 1)?)
        };
        let towers: Vec<Tensor> = self
            .task_towers
            .iter()
            .enumerate()
            .map(|(t, layers)| {
                let mut x = match &experts {
                    None => shared.clone(),
                    Some(stacked) => {
                        let weights = candle_nn::ops::softmax(&self.gates[t].forward(&joined)?, 1)?;
                        weights.unsqueeze(1)?.matmul(stacked)?.squeeze(1)?
                    }
                };
                for layer in layers {
                    x = drop(layer.forward_relu(&x)?)?;
                }
                Ok(x)
            })
            .collect::<Result<_>>()?;
        let heads: Vec<Tensor> = self
            .heads
            .iter()
            .zip(&self.arch.heads)
            .map(|(l, spec)| l.forward(&towers[spec.tower]))
            .collect::<Result<_>>()?;
        Tensor::cat(&heads, 1)
    }

    pub fn dtype(&self) -> DType {
        DType::F32
    }
}
