//! The student in candle: the same two-tower network the ONNX writer exports
//! ([`retort_model::two_tower`]), with its parameters as trainable variables. Initialised from
//! [`TwoTower::random_weights`], so a seed fixes the starting point exactly (a control and a
//! distilled student can start from the same weights), and read back into
//! [`TwoTowerWeights`] for export.

use candle_core::{DType, Device, Result, Tensor, Var};

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
        let y = x.matmul(&self.w.as_tensor().t()?)?;
        match &self.b {
            Some(b) => y.broadcast_add(b.as_tensor()),
            None => Ok(y),
        }
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
}

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

    /// Every trainable variable.
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
        let find = |name: &str| layout.iter().position(|l| l.name == name);
        let ids = |name: &str, offsets: &[u32]| -> Result<Option<Tensor>> {
            let Some(ix) = find(name) else { return Ok(None) };
            let t = &encoded.tensors[ix];
            let TensorData::I64(d) = &t.data else { unreachable!("id inputs are int64. This is a bug.") };
            let w = t.shape[1];
            let mut out = Vec::with_capacity(rows.len() * w);
            for &r in rows {
                for (k, off) in offsets.iter().enumerate() {
                    out.push(d[r * w + k] as u32 + off);
                }
            }
            Tensor::from_vec(out, rows.len() * w, &self.device).map(Some)
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
        Ok(Batch {
            rows: rows.len(),
            context_ids: ids(CONTEXT_IDS, &self.context_offsets)?,
            context_dense: dense(CONTEXT_DENSE)?,
            item_ids: ids(ITEM_IDS, &self.item_offsets)?,
            item_dense: dense(ITEM_DENSE)?,
        })
    }

    fn tower(
        &self,
        ids: Option<&Tensor>,
        dense: Option<&Tensor>,
        table: &Var,
        layers: &[Layer],
        rows: usize,
    ) -> Result<Tensor> {
        let mut parts = Vec::new();
        if let Some(ids) = ids {
            let looked_up = table.as_tensor().index_select(ids, 0)?;
            parts.push(looked_up.reshape((rows, ()))?);
        }
        if let Some(d) = dense {
            parts.push(d.clone());
        }
        let mut x = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 1)? };
        for layer in layers {
            x = layer.forward(&x)?.relu()?;
        }
        Ok(x)
    }

    /// Logits (binary heads) or values (regression heads), `[rows, heads]`.
    pub fn forward(&self, b: &Batch) -> Result<Tensor> {
        let c = self.tower(
            b.context_ids.as_ref(),
            b.context_dense.as_ref(),
            &self.context_embeddings,
            &self.context_layers,
            b.rows,
        )?;
        let i = self.tower(
            b.item_ids.as_ref(),
            b.item_dense.as_ref(),
            &self.item_embeddings,
            &self.item_layers,
            b.rows,
        )?;
        let joined = (self.join_context.forward(&c)? + self.join_item.forward(&i)?)?.relu()?;
        let mlp = |x: &Tensor, layers: &[Layer]| -> Result<Tensor> {
            let mut x = x.clone();
            for layer in layers {
                x = layer.forward(&x)?.relu()?;
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
                    x = layer.forward(&x)?.relu()?;
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
