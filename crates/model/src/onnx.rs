//! A small ONNX graph writer on top of `tract_onnx::pb` (the ONNX protobuf types) and prost:
//! enough operators to express the students retort trains and serves (embedding lookups,
//! dense layers, activations, broadcasting), written as opset 17 / IR 8 with a symbolic batch.

use tract_onnx::pb::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto, type_proto,
};

use super::manifest::DType;

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(usize),
    Symbol(String),
}

impl Dim {
    pub fn symbol(name: &str) -> Dim {
        Dim::Symbol(name.to_string())
    }
}

/// Builds a graph node by node. Values are named by the builder; methods return the name of
/// the value they produce, so layers read as function calls.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    next_id: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder { graph: GraphProto { name: name.to_string(), ..Default::default() }, next_id: 0 }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next_id += 1;
        format!("{hint}_{}", self.next_id)
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dtype: DType, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, dtype, dims));
        name.to_string()
    }

    /// Declares `value` as a graph output under `name` (through an Identity node, so any value
    /// can be exposed under a stable name).
    pub fn output(&mut self, value: &str, name: &str, dims: &[Dim]) {
        self.graph.node.push(NodeProto {
            op_type: "Identity".into(),
            name: format!("output_{name}"),
            input: vec![value.to_string()],
            output: vec![name.to_string()],
            ..Default::default()
        });
        self.graph.output.push(value_info(name, DType::F32, dims));
    }

    /// `value` under the name `name` too (an Identity node, which engines fold away), so that a
    /// manifest can point at an inner tensor.
    pub fn name(&mut self, value: &str, name: &str) -> String {
        self.graph.node.push(NodeProto {
            op_type: "Identity".into(),
            name: format!("name_{name}"),
            input: vec![value.to_string()],
            output: vec![name.to_string()],
            ..Default::default()
        });
        name.to_string()
    }

    /// A float constant, `dims` row-major.
    pub fn constant_f32(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        assert_eq!(
            dims.iter().product::<usize>(),
            data.len(),
            "constant {hint}: shape and data disagree. This is a bug."
        );
        let name = self.fresh(hint);
        self.graph.initializer.push(TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// An int64 constant, `dims` row-major.
    pub fn constant_i64(&mut self, hint: &str, dims: &[usize], data: &[i64]) -> String {
        assert_eq!(
            dims.iter().product::<usize>(),
            data.len(),
            "constant {hint}: shape and data disagree. This is a bug."
        );
        let name = self.fresh(hint);
        self.graph.initializer.push(TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int64 as i32,
            raw_data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// Adds a node with one output and returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        let output = self.fresh(&op.to_ascii_lowercase());
        self.graph.node.push(NodeProto {
            op_type: op.to_string(),
            name: format!("{output}_node"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            attribute: attributes,
            ..Default::default()
        });
        output
    }

    /// `data[indices]` along `axis`: an embedding lookup when `data` is a table.
    pub fn gather(&mut self, data: &str, indices: &str, axis: i64) -> String {
        self.node("Gather", &[data, indices], vec![attr_int("axis", axis)])
    }

    /// `x · Wᵀ + b` with `W` stored `[out, in]`, as a PyTorch `Linear` keeps it.
    pub fn linear(&mut self, x: &str, weight: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> String {
        let w = self.constant_f32("weight", &[outputs, inputs], weight);
        let b = self.constant_f32("bias", &[outputs], bias);
        self.node("Gemm", &[x, &w, &b], vec![attr_int("transB", 1)])
    }

    /// `x · Wᵀ` with `W` stored `[out, in]` and no bias.
    pub fn matmul_t(&mut self, x: &str, weight: &[f32], inputs: usize, outputs: usize) -> String {
        let w = self.constant_f32("weight", &[inputs, outputs], &transposed(weight, outputs, inputs));
        self.node("MatMul", &[x, &w], vec![])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], vec![])
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    pub fn sigmoid(&mut self, x: &str) -> String {
        self.node("Sigmoid", &[x], vec![])
    }

    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.node("Concat", xs, vec![attr_int("axis", axis)])
    }

    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.constant_i64("shape", &[shape.len()], shape);
        self.node("Reshape", &[x, &s], vec![])
    }

    /// Broadcasts `x` to the shape held by the int64 value `shape`.
    pub fn expand(&mut self, x: &str, shape: &str) -> String {
        self.node("Expand", &[x, shape], vec![])
    }

    pub fn shape(&mut self, x: &str) -> String {
        self.node("Shape", &[x], vec![])
    }

    pub fn finish(self, producer: &str) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: producer.to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

/// The `cols × rows` transpose of a row-major `rows × cols` matrix.
pub(crate) fn transposed(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    t
}

pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

pub(crate) fn value_info(name: &str, dtype: DType, dims: &[Dim]) -> ValueInfoProto {
    let elem_type = match dtype {
        DType::I64 => DataType::Int64,
        DType::F32 => DataType::Float,
    } as i32;
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Symbol(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The protobuf bytes of a model, as `model.onnx` holds them.
pub fn to_bytes(model: &pb::ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}
