//! Cutting an ONNX graph in two at the tensor the manifest names as the item tower's output:
//! the item tower (item inputs → that tensor) and the ranker (the graph with that tensor as an
//! input instead of a value it computes). Graph-level, so it works on any exporter's graph, not
//! only retort's.

use std::collections::{BTreeSet, HashMap};

use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, attribute_proto::AttributeType};

use crate::manifest::DType;
use crate::onnx::{Dim, value_info};

/// The two graphs, and the graph inputs each reads.
#[derive(Debug, Clone)]
pub struct Split {
    pub tower: ModelProto,
    pub tower_inputs: Vec<String>,
    pub ranker: ModelProto,
    /// The ranker's inputs other than the cut tensor.
    pub ranker_inputs: Vec<String>,
}

/// What one side of the cut keeps of the graph.
struct Kept {
    /// Node indices, in the graph's (topological) order.
    nodes: BTreeSet<usize>,
    initializers: BTreeSet<String>,
    inputs: BTreeSet<String>,
    /// Whether the walk reached the stop tensor.
    reached_stop: bool,
}

/// Splits `model` at tensor `cut`, `[batch, width]` floats. Refuses a graph whose nodes hold
/// subgraphs (their outer references are not followed), a `cut` no node computes, and a cut
/// the outputs do not depend on.
pub fn split(model: &ModelProto, cut: &str, width: usize) -> Result<Split, String> {
    let graph = model.graph.as_ref().ok_or("the ONNX file holds no graph")?;
    if let Some(node) = graph
        .node
        .iter()
        .find(|n| n.attribute.iter().any(|a| a.r#type == AttributeType::Graph as i32 || a.g.is_some()))
    {
        return Err(format!(
            "node `{}` ({}) holds a subgraph, which the item-tower split does not follow",
            node.name, node.op_type
        ));
    }
    let producers: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    if !producers.contains_key(cut) {
        let near: Vec<&str> = graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
        return Err(format!(
            "item_tower.output `{cut}` is no tensor the graph computes ({} tensors, e.g. {})",
            near.len(),
            near.iter().rev().take(4).copied().collect::<Vec<_>>().join(", ")
        ));
    }
    let tower = walk(graph, &producers, &[cut], None);
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let ranker = walk(graph, &producers, &outputs, Some(cut));
    if !ranker.reached_stop {
        return Err(format!("no graph output depends on item_tower.output `{cut}`"));
    }
    let dims = [Dim::symbol("batch"), Dim::Fixed(width)];
    let tower_model = rebuild(model, graph, &tower, |g| {
        g.output = vec![value_info(cut, DType::F32, &dims)];
    });
    let ranker_model = rebuild(model, graph, &ranker, |g| {
        g.input.push(value_info(cut, DType::F32, &dims));
        g.output = graph.output.clone();
    });
    Ok(Split {
        tower: tower_model,
        tower_inputs: tower.inputs.into_iter().collect(),
        ranker: ranker_model,
        ranker_inputs: ranker.inputs.into_iter().collect(),
    })
}

/// Everything `targets` depend on, walking back from them and not past `stop`.
fn walk(graph: &GraphProto, producers: &HashMap<&str, usize>, targets: &[&str], stop: Option<&str>) -> Kept {
    let initializers: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: BTreeSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let mut kept = Kept {
        nodes: BTreeSet::new(),
        initializers: BTreeSet::new(),
        inputs: BTreeSet::new(),
        reached_stop: false,
    };
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = targets.to_vec();
    while let Some(tensor) = todo.pop() {
        // An empty name is an optional input left out.
        if tensor.is_empty() || !seen.insert(tensor) {
            continue;
        }
        if Some(tensor) == stop {
            kept.reached_stop = true;
        } else if initializers.contains(tensor) {
            kept.initializers.insert(tensor.to_string());
        } else if let Some(&node) = producers.get(tensor) {
            kept.nodes.insert(node);
            todo.extend(graph.node[node].input.iter().map(String::as_str));
        } else if inputs.contains(tensor) {
            kept.inputs.insert(tensor.to_string());
        }
    }
    kept
}

/// A copy of `model` keeping only what `kept` holds, then `finish` sets its inputs and outputs.
fn rebuild(
    model: &ModelProto,
    graph: &GraphProto,
    kept: &Kept,
    finish: impl FnOnce(&mut GraphProto),
) -> ModelProto {
    let node: Vec<NodeProto> = kept.nodes.iter().map(|&i| graph.node[i].clone()).collect();
    let produced: BTreeSet<&str> = node.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
    let value_info =
        graph.value_info.iter().filter(|v| produced.contains(v.name.as_str())).cloned().collect();
    let mut g = GraphProto {
        name: graph.name.clone(),
        node,
        initializer: graph
            .initializer
            .iter()
            .filter(|t| kept.initializers.contains(&t.name))
            .cloned()
            .collect(),
        input: graph.input.iter().filter(|i| kept.inputs.contains(&i.name)).cloned().collect(),
        value_info,
        ..Default::default()
    };
    finish(&mut g);
    // Everything but the graph (opsets, producer, metadata, local functions) as it was.
    ModelProto { graph: Some(g), ..model.clone() }
}
