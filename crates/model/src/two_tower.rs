//! The student architecture retort exports: a context tower run once per request, an item tower
//! run per candidate, an interaction MLP and one output layer per head.
//!
//! The interaction part is either a shared bottom (one MLP every task tower reads) or a
//! multi-gate mixture of experts (MMoE: several expert MLPs, and per task tower a softmax gate
//! over them that picks its own mixture), so tasks that pull in different directions need not
//! share one representation.
//!
//! Context-once: the first interaction layer acting on `[context, item]` is split into its
//! context half and its item half, `W·[c; i] + b = (W_c·c + b) + W_i·i`. The context half is
//! computed on the single context row and added to every candidate row by ONNX broadcasting, so
//! no part of the network that depends only on the context runs more than once per request.

use super::encode::{Encoded, InputLayout, TensorData};
use super::manifest::{DType, Feature, FeatureKind, HeadKind, Side};
use super::onnx::{Dim, GraphBuilder};
use crate::rng::SplitMix64;
use crate::vocabulary::Vocab;

/// Graph input names: one int64 input of ids and one float input per side.
pub const CONTEXT_IDS: &str = "context_ids";
pub const CONTEXT_DENSE: &str = "context_dense";
pub const ITEM_IDS: &str = "item_ids";
pub const ITEM_DENSE: &str = "item_dense";
/// The item tower's output as the export names it (the manifest's `item_tower.output`).
pub const ITEM_VECTOR: &str = "item_vector";

/// Layer sizes and heads. Feature specs come from the manifest; their `input` must be the
/// input name above for their side and kind (see [`TwoTower::input_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TwoTower {
    pub features: Vec<Feature>,
    /// Width of every embedding table row.
    pub embedding_dim: usize,
    pub context_hidden: Vec<usize>,
    pub item_hidden: Vec<usize>,
    /// At least one layer: the first joins the towers.
    pub interaction_hidden: Vec<usize>,
    /// Experts of a multi-gate mixture of experts, each an MLP of `interaction_hidden[1..]`
    /// over the joining layer; 0 for a shared bottom (one MLP).
    pub experts: usize,
    /// Layers of each task tower, between the shared interaction MLP and a task's heads (empty:
    /// heads read the shared layers directly).
    pub task_hidden: Vec<usize>,
    pub heads: Vec<HeadSpec>,
    /// Binary heads output logits (the manifest then says `transform = "sigmoid"`) rather than
    /// probabilities. Teachers do: their labels are logits, kept exact.
    pub logit_outputs: bool,
}

/// The layer sizes of a [`TwoTower`], and the defaults every student starts from: written once,
/// here, and read by the shipped model, a dataset spec's architecture and `retort train`'s
/// `[model]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Layers {
    pub embedding_dim: usize,
    pub context_hidden: Vec<usize>,
    pub item_hidden: Vec<usize>,
    pub interaction_hidden: Vec<usize>,
    pub experts: usize,
    pub task_hidden: Vec<usize>,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            embedding_dim: 16,
            context_hidden: vec![64, 32],
            item_hidden: vec![64, 32],
            interaction_hidden: vec![64, 32],
            experts: 0,
            task_hidden: Vec::new(),
        }
    }
}

impl TwoTower {
    /// An architecture over `features` with `heads`, sized by `layers`.
    pub fn new(
        features: Vec<Feature>,
        layers: Layers,
        heads: Vec<HeadSpec>,
        logit_outputs: bool,
    ) -> TwoTower {
        let Layers { embedding_dim, context_hidden, item_hidden, interaction_hidden, experts, task_hidden } =
            layers;
        TwoTower {
            features,
            embedding_dim,
            context_hidden,
            item_hidden,
            interaction_hidden,
            experts,
            task_hidden,
            heads,
            logit_outputs,
        }
    }
}

/// An output head: one logit (or value) computed from its task tower. Several heads may share a
/// tower: an auxiliary distillation head sits on the tower of the task it helps, and is not
/// serving, so the export leaves it out.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadSpec {
    pub name: String,
    pub kind: HeadKind,
    /// Index of its task tower.
    pub tower: usize,
    pub serving: bool,
}

impl HeadSpec {
    /// A serving head on tower `tower`.
    pub fn serving(name: &str, kind: HeadKind, tower: usize) -> HeadSpec {
        HeadSpec { name: name.to_string(), kind, tower, serving: true }
    }
}

/// A dense layer, `W` stored `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Dense {
    fn random(rng: &mut SplitMix64, inputs: usize, outputs: usize) -> Dense {
        // Glorot-uniform, the usual initialisation for ReLU MLPs of this size.
        let a = (6.0 / (inputs + outputs) as f64).sqrt();
        Dense {
            inputs,
            outputs,
            weight: (0..inputs * outputs).map(|_| rng.uniform(-a, a) as f32).collect(),
            bias: vec![0.0; outputs],
        }
    }

    /// `x · Wᵀ + b` for `rows` rows of `x`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = Vec::with_capacity(rows * self.outputs);
        for r in 0..rows {
            let xr = &x[r * self.inputs..(r + 1) * self.inputs];
            for o in 0..self.outputs {
                let w = &self.weight[o * self.inputs..(o + 1) * self.inputs];
                y.push(self.bias[o] + w.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        y
    }
}

/// All weights of a [`TwoTower`].
#[derive(Debug, Clone, PartialEq)]
pub struct TwoTowerWeights {
    /// One table per side: the side's categorical features' tables stacked, `[Σ buckets, dim]`.
    pub context_embeddings: Vec<f32>,
    pub item_embeddings: Vec<f32>,
    pub context_layers: Vec<Dense>,
    pub item_layers: Vec<Dense>,
    /// The joining layer's context half (with the bias) and item half (no bias).
    pub join_context: Dense,
    pub join_item: Dense,
    /// The shared bottom's layers after the join (empty with experts).
    pub interaction_layers: Vec<Dense>,
    /// MMoE: per expert, its layers after the join.
    pub experts: Vec<Vec<Dense>>,
    /// MMoE: per task tower, its gate `[experts, join width]` (softmax over experts).
    pub gates: Vec<Dense>,
    /// Per task tower, its layers.
    pub task_towers: Vec<Vec<Dense>>,
    /// One `[1, tower output]` layer per head, in head order.
    pub heads: Vec<Dense>,
}

/// Shape facts of one side, derived from its features.
struct SideShape {
    buckets: Vec<u64>,
    dense_width: usize,
}

impl SideShape {
    fn ids(&self) -> usize {
        self.buckets.len()
    }

    fn table_rows(&self) -> usize {
        self.buckets.iter().sum::<u64>() as usize
    }

    /// Row offset of each feature's table within the stacked table.
    fn offsets(&self) -> Vec<i64> {
        let mut acc = 0i64;
        self.buckets
            .iter()
            .map(|b| {
                let o = acc;
                acc += *b as i64;
                o
            })
            .collect()
    }
}

impl TwoTower {
    /// The graph input a feature of this side and kind must feed.
    pub fn input_for(side: Side, kind: &FeatureKind) -> &'static str {
        match (side, kind.dtype()) {
            (Side::Context, DType::I64) => CONTEXT_IDS,
            (Side::Context, DType::F32) => CONTEXT_DENSE,
            (Side::Item, DType::I64) => ITEM_IDS,
            (Side::Item, DType::F32) => ITEM_DENSE,
        }
    }

    /// Features whose vocabulary is still to be built from training rows: their tables have no
    /// size yet.
    pub fn unbuilt_vocabularies(&self) -> impl Iterator<Item = &str> {
        self.features.iter().filter_map(|f| match &f.kind {
            FeatureKind::Categorical { vocabulary: Some(Vocab::Build(_)), .. } => Some(f.name.as_str()),
            _ => None,
        })
    }

    fn side(&self, side: Side) -> SideShape {
        let mut shape = SideShape { buckets: Vec::new(), dense_width: 0 };
        for f in self.features.iter().filter(|f| f.side == side) {
            match &f.kind {
                FeatureKind::Categorical { buckets, .. } => shape.buckets.push(*buckets),
                kind => shape.dense_width += kind.width(),
            }
        }
        shape
    }

    fn tower_input_width(&self, side: Side) -> usize {
        let s = self.side(side);
        s.ids() * self.embedding_dim + s.dense_width
    }

    fn tower_output_width(&self, side: Side) -> usize {
        let hidden = match side {
            Side::Context => &self.context_hidden,
            Side::Item => &self.item_hidden,
        };
        hidden.last().copied().unwrap_or_else(|| self.tower_input_width(side))
    }

    /// Where the export ends the item tower: after the tower's last layer, or after the item half
    /// of the joining layer, whichever is narrower (what the server keeps per catalog item is
    /// then smallest; at equal width, the join's half is precomputed too).
    pub fn item_tower(&self) -> crate::manifest::ItemTower {
        let width = self.tower_output_width(Side::Item).min(self.interaction_hidden[0]);
        crate::manifest::ItemTower { output: ITEM_VECTOR.to_string(), width }
    }

    fn cut_after_join(&self) -> bool {
        self.interaction_hidden[0] <= self.tower_output_width(Side::Item)
    }

    /// Multiply-adds of the dense layers, for one request of `candidates` candidates with the
    /// context run once (as served) and for one labelled example (context and candidate one
    /// row each, as a teacher labels). Embedding lookups are free; only serving heads count.
    pub fn macs(&self, candidates: usize) -> u64 {
        let stack = |input: usize, widths: &[usize]| -> u64 {
            let mut w = input;
            widths.iter().map(|&o| std::mem::replace(&mut w, o) as u64 * o as u64).sum()
        };
        let context = stack(self.tower_input_width(Side::Context), &self.context_hidden);
        let join = self.interaction_hidden[0] as u64;
        let item = stack(self.tower_input_width(Side::Item), &self.item_hidden)
            + self.tower_output_width(Side::Item) as u64 * join;
        let last = *self.interaction_hidden.last().expect("validated non-empty");
        let interaction = match self.experts {
            0 => stack(self.interaction_hidden[0], &self.interaction_hidden[1..]),
            // Each expert's MLP, then per task tower its gate and its weighted sum.
            n => {
                n as u64 * stack(self.interaction_hidden[0], &self.interaction_hidden[1..])
                    + self.towers() as u64 * n as u64 * (join + last as u64)
            }
        };
        let tower_out = self.task_hidden.last().copied().unwrap_or(last) as u64;
        let serving: Vec<&HeadSpec> = self.heads.iter().filter(|h| h.serving).collect();
        let mut towers: Vec<usize> = serving.iter().map(|h| h.tower).collect();
        towers.sort_unstable();
        towers.dedup();
        let per_candidate = item
            + interaction
            + towers.len() as u64 * stack(last, &self.task_hidden)
            + serving.len() as u64 * tower_out;
        context + self.tower_output_width(Side::Context) as u64 * join + candidates as u64 * per_candidate
    }

    /// Checks the description is buildable, naming what is not.
    pub fn validate(&self) -> Result<(), String> {
        if self.interaction_hidden.is_empty() {
            return Err("interaction_hidden needs at least one layer (it joins the towers)".into());
        }
        if !self.heads.iter().any(|h| h.serving) {
            return Err("a model needs at least one serving head".into());
        }
        if self.experts > 0 && self.interaction_hidden.len() < 2 {
            return Err("experts need interaction_hidden of two layers or more: the first joins the \
                        towers, the rest make each expert"
                .into());
        }
        for t in 0..self.towers() {
            if !self.heads.iter().any(|h| h.tower == t) {
                return Err(format!("task tower {t} has no head"));
            }
        }
        if self.embedding_dim == 0 {
            return Err("embedding_dim must be > 0".into());
        }
        for f in &self.features {
            let expected = Self::input_for(f.side, &f.kind);
            if f.input != expected {
                return Err(format!(
                    "feature `{}` feeds `{}`, but this architecture reads {} {} features from `{expected}`",
                    f.name,
                    f.input,
                    f.side.as_str(),
                    f.kind.name()
                ));
            }
        }
        for side in [Side::Context, Side::Item] {
            if self.tower_input_width(side) == 0 {
                return Err(format!(
                    "the two-tower model needs at least one {0} feature, and the spec (less model.leave_out) has no {0} feature",
                    side.as_str()
                ));
            }
        }
        Ok(())
    }

    /// Seeded random weights: a servable model before any training.
    ///
    /// Each part draws from its own stream (the shared layers from one, each task tower and
    /// each head from one keyed by its index or name), so two architectures that differ only by
    /// an extra head (a control and its distilled twin) start from the same shared weights.
    pub fn random_weights(&self, seed: u64) -> TwoTowerWeights {
        if let Some(f) = self.unbuilt_vocabularies().next() {
            panic!("feature `{f}`: weights are drawn before its vocabulary is built. This is a bug.");
        }
        let mut rng = SplitMix64::new(seed);
        let mut table = |rows: usize| -> Vec<f32> {
            (0..rows * self.embedding_dim).map(|_| rng.uniform(-0.5, 0.5) as f32).collect()
        };
        let context_embeddings = table(self.side(Side::Context).table_rows());
        let item_embeddings = table(self.side(Side::Item).table_rows());
        let stack = |rng: &mut SplitMix64, input: usize, widths: &[usize]| -> Vec<Dense> {
            let mut layers = Vec::new();
            let mut w = input;
            for &out in widths {
                layers.push(Dense::random(rng, w, out));
                w = out;
            }
            layers
        };
        let mut shared = SplitMix64::new(seed ^ 0x5eed);
        let context_layers = stack(&mut shared, self.tower_input_width(Side::Context), &self.context_hidden);
        let item_layers = stack(&mut shared, self.tower_input_width(Side::Item), &self.item_hidden);
        let join_width = self.interaction_hidden[0];
        let mut join = stack(
            &mut shared,
            self.tower_output_width(Side::Context) + self.tower_output_width(Side::Item),
            &[join_width],
        )
        .remove(0);
        let last = *self.interaction_hidden.last().expect("validated non-empty");
        let stream = |tag: u64| SplitMix64::new(seed ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (interaction_layers, experts, gates) = match self.experts {
            0 => (stack(&mut shared, join_width, &self.interaction_hidden[1..]), Vec::new(), Vec::new()),
            n => (
                Vec::new(),
                (0..n)
                    .map(|k| stack(&mut stream(0x6000 + k as u64), join_width, &self.interaction_hidden[1..]))
                    .collect(),
                (0..self.towers())
                    .map(|t| stack(&mut stream(0x6800 + t as u64), join_width, &[n]).remove(0))
                    .collect(),
            ),
        };
        let task_towers: Vec<Vec<Dense>> = (0..self.towers())
            .map(|t| stack(&mut stream(0x7000 + t as u64), last, &self.task_hidden))
            .collect();
        let tower_out = self.task_hidden.last().copied().unwrap_or(last);
        let heads = self
            .heads
            .iter()
            .map(|h| stack(&mut stream(crate::encode::fnv1a64(h.name.as_bytes())), tower_out, &[1]).remove(0))
            .collect();
        let (join_context, join_item) = split_columns(&mut join, self.tower_output_width(Side::Context));
        TwoTowerWeights {
            context_embeddings,
            item_embeddings,
            context_layers,
            item_layers,
            join_context,
            join_item,
            interaction_layers,
            experts,
            gates,
            task_towers,
            heads,
        }
    }

    /// Number of task towers.
    pub fn towers(&self) -> usize {
        self.heads.iter().map(|h| h.tower + 1).max().unwrap_or(0)
    }

    /// Writes the ONNX graph. Outputs: one `[batch, 1]` output per head named after it, a
    /// probability for binary heads and the raw value for regression heads. The item tower's
    /// output is named [`ITEM_VECTOR`] (see [`TwoTower::item_tower`]).
    pub fn to_onnx(&self, w: &TwoTowerWeights, name: &str) -> tract_onnx::pb::ModelProto {
        let mut g = GraphBuilder::new(name);
        // Context inputs get their own batch symbol: one row normally, one per candidate when a
        // caller feeds the context row repeated (both broadcast correctly).
        let context =
            self.tower(&mut g, Side::Context, &w.context_embeddings, &w.context_layers, "context_batch");
        let item = self.tower(&mut g, Side::Item, &w.item_embeddings, &w.item_layers, "batch");
        let joined_context = g.linear(
            &context,
            &w.join_context.weight,
            &w.join_context.bias,
            w.join_context.inputs,
            w.join_context.outputs,
        );
        let join_item = |g: &mut GraphBuilder, x: &str| {
            g.matmul_t(x, &w.join_item.weight, w.join_item.inputs, w.join_item.outputs)
        };
        let joined_item = if self.cut_after_join() {
            let joined = join_item(&mut g, &item);
            g.name(&joined, ITEM_VECTOR)
        } else {
            let item = g.name(&item, ITEM_VECTOR);
            join_item(&mut g, &item)
        };
        let sum = g.add(&joined_context, &joined_item);
        let joined = g.relu(&sum);
        let mlp = |g: &mut GraphBuilder, x: &str, layers: &[Dense]| -> String {
            let mut x = x.to_string();
            for layer in layers {
                let y = g.linear(&x, &layer.weight, &layer.bias, layer.inputs, layer.outputs);
                x = g.relu(&y);
            }
            x
        };
        let shared = (self.experts == 0).then(|| mlp(&mut g, &joined, &w.interaction_layers));
        // MMoE: the experts stacked `[batch, experts, width]`, mixed per tower by its gate.
        let stacked = (self.experts > 0).then(|| {
            let mut outs = Vec::new();
            for layers in &w.experts {
                let e = mlp(&mut g, &joined, layers);
                outs.push(g.reshape(&e, &[0, 1, -1]));
            }
            g.concat(&outs.iter().map(String::as_str).collect::<Vec<_>>(), 1)
        });
        // Only serving heads are exported, and only the towers they read.
        let mut towers: Vec<Option<String>> = vec![None; self.towers()];
        for (head, layer) in self.heads.iter().zip(&w.heads).filter(|(h, _)| h.serving) {
            let x = match &towers[head.tower] {
                Some(x) => x.clone(),
                None => {
                    let mut x = match (&shared, &stacked) {
                        (Some(h), _) => h.clone(),
                        (None, Some(experts)) => {
                            let gate = &w.gates[head.tower];
                            let logits =
                                g.linear(&joined, &gate.weight, &gate.bias, gate.inputs, gate.outputs);
                            let weights =
                                g.node("Softmax", &[&logits], vec![super::onnx::attr_int("axis", 1)]);
                            let weights = g.reshape(&weights, &[0, 1, -1]);
                            let mixed = g.node("MatMul", &[&weights, experts], Vec::new());
                            g.reshape(&mixed, &[0, -1])
                        }
                        (None, None) => unreachable!("a shared bottom or experts. This is a bug."),
                    };
                    for l in &w.task_towers[head.tower] {
                        let y = g.linear(&x, &l.weight, &l.bias, l.inputs, l.outputs);
                        x = g.relu(&y);
                    }
                    towers[head.tower] = Some(x.clone());
                    x
                }
            };
            let mut y = g.linear(&x, &layer.weight, &layer.bias, layer.inputs, layer.outputs);
            if head.kind == HeadKind::Binary && !self.logit_outputs {
                y = g.sigmoid(&y);
            }
            g.output(&y, &head.name, &[Dim::symbol("batch"), Dim::Fixed(1)]);
        }
        g.finish("retort")
    }

    fn tower(
        &self,
        g: &mut GraphBuilder,
        side: Side,
        table: &[f32],
        layers: &[Dense],
        batch: &str,
    ) -> String {
        let shape = self.side(side);
        let (ids_name, dense_name) = match side {
            Side::Context => (CONTEXT_IDS, CONTEXT_DENSE),
            Side::Item => (ITEM_IDS, ITEM_DENSE),
        };
        let mut parts = Vec::new();
        if shape.ids() > 0 {
            let ids = g.input(ids_name, DType::I64, &[Dim::symbol(batch), Dim::Fixed(shape.ids())]);
            // One stacked table per side: shifting each column by its table's offset turns
            // per-feature bucket ids into rows of the stacked table, so one Gather serves all.
            let offsets = g.constant_i64("offsets", &[1, shape.ids()], &shape.offsets());
            let rows = g.add(&ids, &offsets);
            let table = g.constant_f32("embeddings", &[shape.table_rows(), self.embedding_dim], table);
            let looked_up = g.gather(&table, &rows, 0);
            parts.push(g.reshape(&looked_up, &[-1, (shape.ids() * self.embedding_dim) as i64]));
        }
        if shape.dense_width > 0 {
            parts.push(g.input(dense_name, DType::F32, &[Dim::symbol(batch), Dim::Fixed(shape.dense_width)]));
        }
        let mut x = if parts.len() == 1 {
            parts.remove(0)
        } else {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            g.concat(&refs, 1)
        };
        for layer in layers {
            let y = g.linear(&x, &layer.weight, &layer.bias, layer.inputs, layer.outputs);
            x = g.relu(&y);
        }
        x
    }

    /// A plain-Rust forward pass over encoded inputs (one context row): the reference the ONNX
    /// export is checked against. Returns one `Vec` per head, one value per candidate.
    pub fn reference_forward(
        &self,
        w: &TwoTowerWeights,
        layout: &[InputLayout],
        inputs: &Encoded,
    ) -> Vec<Vec<f32>> {
        let rows = inputs.rows;
        let tensor = |ix: usize| &inputs.tensors[ix];
        let find = |name: &str| layout.iter().position(|l| l.name == name);
        let (context_ids, context_dense) = (find(CONTEXT_IDS), find(CONTEXT_DENSE));
        let (item_ids, item_dense) = (find(ITEM_IDS), find(ITEM_DENSE));
        let tower = |side: Side,
                     ids: Option<usize>,
                     dense: Option<usize>,
                     table: &[f32],
                     layers: &[Dense],
                     n: usize| {
            let shape = self.side(side);
            let offsets = shape.offsets();
            let width = self.tower_input_width(side);
            let mut x = vec![0.0f32; n * width];
            for r in 0..n {
                let mut col = 0;
                if let Some(t) = ids {
                    let TensorData::I64(d) = &tensor(t).data else { unreachable!() };
                    for (k, off) in offsets.iter().enumerate() {
                        let row = (d[r * shape.ids() + k] + off) as usize;
                        let e = &table[row * self.embedding_dim..(row + 1) * self.embedding_dim];
                        x[r * width + col..r * width + col + self.embedding_dim].copy_from_slice(e);
                        col += self.embedding_dim;
                    }
                }
                if let Some(t) = dense {
                    let TensorData::F32(d) = &tensor(t).data else { unreachable!() };
                    x[r * width + col..(r + 1) * width]
                        .copy_from_slice(&d[r * shape.dense_width..(r + 1) * shape.dense_width]);
                }
            }
            for layer in layers {
                x = layer.forward(&x, n).into_iter().map(|v| v.max(0.0)).collect();
            }
            x
        };
        let c = tower(Side::Context, context_ids, context_dense, &w.context_embeddings, &w.context_layers, 1);
        let i = tower(Side::Item, item_ids, item_dense, &w.item_embeddings, &w.item_layers, rows);
        let jc = w.join_context.forward(&c, 1);
        let ji = w.join_item.forward(&i, rows);
        let width = w.join_item.outputs;
        let joined: Vec<f32> = (0..rows * width).map(|k| (jc[k % width] + ji[k]).max(0.0)).collect();
        let mlp = |x: &[f32], layers: &[Dense]| {
            let mut x = x.to_vec();
            for layer in layers {
                x = layer.forward(&x, rows).into_iter().map(|v| v.max(0.0)).collect();
            }
            x
        };
        let shared = mlp(&joined, &w.interaction_layers);
        let experts: Vec<Vec<f32>> = w.experts.iter().map(|layers| mlp(&joined, layers)).collect();
        let towers: Vec<Vec<f32>> = w
            .task_towers
            .iter()
            .enumerate()
            .map(|(t, layers)| {
                let mut x = if experts.is_empty() {
                    shared.clone()
                } else {
                    let logits = w.gates[t].forward(&joined, rows);
                    let n = experts.len();
                    let d = experts[0].len() / rows.max(1);
                    let mut mixed = vec![0.0f32; rows * d];
                    for r in 0..rows {
                        let z = &logits[r * n..(r + 1) * n];
                        let top = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let e: Vec<f32> = z.iter().map(|v| (v - top).exp()).collect();
                        let total: f32 = e.iter().sum();
                        for (k, expert) in experts.iter().enumerate() {
                            for j in 0..d {
                                mixed[r * d + j] += e[k] / total * expert[r * d + j];
                            }
                        }
                    }
                    mixed
                };
                for layer in layers {
                    x = layer.forward(&x, rows).into_iter().map(|v| v.max(0.0)).collect();
                }
                x
            })
            .collect();
        self.heads
            .iter()
            .zip(&w.heads)
            .map(|(head, layer)| {
                let y = layer.forward(&towers[head.tower], rows);
                match head.kind {
                    HeadKind::Binary if !self.logit_outputs => {
                        y.into_iter().map(|z| 1.0 / (1.0 + (-z).exp())).collect()
                    }
                    _ => y,
                }
            })
            .collect()
    }
}

/// Splits a layer acting on `[a; b]` into its `a` half (keeping the bias) and `b` half.
fn split_columns(layer: &mut Dense, a_width: usize) -> (Dense, Dense) {
    let b_width = layer.inputs - a_width;
    let mut a =
        Dense { inputs: a_width, outputs: layer.outputs, weight: Vec::new(), bias: layer.bias.clone() };
    let mut b =
        Dense { inputs: b_width, outputs: layer.outputs, weight: Vec::new(), bias: vec![0.0; layer.outputs] };
    for o in 0..layer.outputs {
        let row = &layer.weight[o * layer.inputs..(o + 1) * layer.inputs];
        a.weight.extend_from_slice(&row[..a_width]);
        b.weight.extend_from_slice(&row[a_width..]);
    }
    (a, b)
}
