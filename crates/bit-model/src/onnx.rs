//! ONNX export: BiT's graph as an ONNX model (opset [`ONNX_OPSET`]) that onnxruntime, tract,
//! OpenVINO or TensorRT run without this crate.
//!
//! - Weight standardization is folded: each convolution's kernel is written standardized
//!   (`(w - mean) / sqrt(var + eps)`, as the model computes it), as a plain `Conv`.
//! - GroupNorm is the decomposition PyTorch exports and every runtime runs:
//!   `Reshape [N, 32, -1]` -> `InstanceNormalization` (unit scale, zero bias) -> `Reshape` back
//!   -> `Mul` gamma -> `Add` beta, then `Relu`.
//! - The stem is the reference's: `Conv` 7x7/2 -> zero `Pad` of 1 -> `MaxPool` 3x3/2 without
//!   padding (the zeros take part in the max, as in BiT).
//! - The head: GroupNorm + ReLU -> `GlobalAveragePool` -> `Flatten` -> `Gemm`.
//! - Input `images`: `[batch, 3, resolution, resolution]` float32, NCHW, RGB scaled to
//!   `[-1, 1]` (`x / 127.5 - 1`), `batch` dynamic; output `logits`: `[batch, classes]`.
//! - The class names, the resolution and the normalization are in the model's
//!   `metadata_props` (`bit.classes`, `bit.resolution`, `bit.normalization`).
//!
//! The schema is ONNX's own `onnx.proto3` (the messages used here, their field numbers as
//! published), encoded with prost.

use std::path::Path;

use prost::Message;

use crate::backend::host_values;
use crate::bottleneck::PreActBottleneck;
use crate::error::{Error, Result};
use crate::group_norm::GroupNormRelu;
use crate::native::{CLASSES_METADATA_KEY, RESOLUTION_METADATA_KEY};
use crate::resnet::ResNetV2;
use crate::std_conv::StdConv2d;

/// The ONNX operator set the export targets (onnxruntime 1.12+, tract, OpenVINO 2022+).
pub const ONNX_OPSET: i64 = 17;

/// The ONNX IR version of opset 17.
const IR_VERSION: i64 = 8;

impl ResNetV2 {
    /// Writes the network as an ONNX model for `resolution` px inputs (see the
    /// [module docs](self) for the graph), with `class_names` in its metadata. The file is
    /// written atomically.
    ///
    /// ```
    /// use bit_model::ResNetV2Config;
    /// use burn::tensor::Device;
    ///
    /// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&Device::flex());
    /// let path = std::env::temp_dir().join("bit_model_doc.onnx");
    /// model.save_onnx(&path, 64, Some(&["a".into(), "b".into(), "c".into()]))?;
    /// assert!(std::fs::metadata(&path)?.len() > 4 * 8_000_000);
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_onnx(
        &self,
        path: impl AsRef<Path>,
        resolution: usize,
        class_names: Option<&[String]>,
    ) -> Result<()> {
        let path = path.as_ref();
        let config = self.config();
        if class_names.is_some_and(|n| n.len() != config.head_size) {
            return Err(Error::InvalidConfig(format!(
                "{} class names for a {}-way head",
                class_names.map_or(0, <[String]>::len),
                config.head_size
            )));
        }
        let mut graph = Graph::default();
        let images = "images".to_string();
        let mut x = graph.stem(&self.root.conv, &images);
        for block in &self.body {
            for unit in &block.units {
                x = graph.unit(unit, &x);
            }
        }
        let features = graph.group_norm_relu(&self.head.gn, &x);
        let pooled = graph.node("GlobalAveragePool", &[&features], vec![]);
        let flat = graph.node("Flatten", &[&pooled], vec![int("axis", 1)]);
        let [in_features, classes] = self.head.fc.weight.dims();
        let weight = graph.constant(
            "head.weight",
            &[in_features, classes],
            host_values(self.head.fc.weight.val()),
        );
        let bias = graph.constant("head.bias", &[classes], self.head.bias_values());
        graph.nodes.push(NodeProto {
            input: vec![flat, weight, bias],
            output: vec!["logits".into()],
            name: "head".into(),
            op_type: "Gemm".into(),
            ..Default::default()
        });

        let side = resolution as i64;
        let input = value_info(
            "images",
            &[
                Dim::Param("batch"),
                Dim::Value(config.in_channels as i64),
                Dim::Value(side),
                Dim::Value(side),
            ],
        );
        let output = value_info("logits", &[Dim::Param("batch"), Dim::Value(classes as i64)]);
        let mut metadata = vec![
            entry(RESOLUTION_METADATA_KEY, resolution.to_string()),
            entry(
                crate::checkpoint::NORMALIZATION_METADATA_KEY,
                r#"{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}"#.into(),
            ),
            entry(crate::native::CONFIG_METADATA_KEY, config.to_string()),
        ];
        if let Some(names) = class_names {
            let json = serde_json::to_string(names).expect("strings serialise");
            metadata.push(entry(CLASSES_METADATA_KEY, json));
        }
        let model = ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: ONNX_OPSET,
            }],
            producer_name: "big-transfer-rs".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: "BiT ResNetV2: NCHW RGB input scaled to [-1, 1] (x / 127.5 - 1)".into(),
            graph: Some(GraphProto {
                node: graph.nodes,
                name: "bit_resnetv2".into(),
                initializer: graph.initializers,
                input: vec![input],
                output: vec![output],
            }),
            metadata_props: metadata,
        };
        let bytes = model.encode_to_vec();
        bit_hub::write_atomically(path, |file| std::io::Write::write_all(file, &bytes)).map_err(
            |e| Error::Save {
                path: path.to_path_buf(),
                source: e.into(),
            },
        )
    }
}

/// The graph under construction: nodes in order, weights as initializers.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Graph {
    /// Adds a node with one output, named after it; returns the output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let name = format!("{}_{}", op.to_ascii_lowercase(), self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.clone()],
            name: name.clone(),
            op_type: op.into(),
            attribute,
        });
        name
    }

    /// A float32 initializer; returns its name.
    fn constant(&mut self, name: &str, dims: &[usize], values: Vec<f32>) -> String {
        let name = format!("{name}_{}", self.initializers.len());
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            name: name.clone(),
        });
        name
    }

    /// An int64 initializer (shapes, pads); returns its name.
    fn constant_i64(&mut self, name: &str, values: &[i64]) -> String {
        let name = format!("{name}_{}", self.initializers.len());
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: INT64,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            name: name.clone(),
        });
        name
    }

    /// A convolution with its kernel standardized (the weight standardization folded in).
    fn conv(&mut self, conv: &StdConv2d, x: &str) -> String {
        let w = conv.standardized_weight();
        let [o, i, kh, kw] = w.dims();
        let kernel = self.constant("conv.weight", &[o, i, kh, kw], host_values(w));
        let [s, p] = [conv.stride[0] as i64, conv.padding[0] as i64];
        self.node(
            "Conv",
            &[x, &kernel],
            vec![
                ints("kernel_shape", &[kh as i64, kw as i64]),
                ints("strides", &[s, s]),
                ints("pads", &[p, p, p, p]),
            ],
        )
    }

    /// BiT's stem: the 7x7/2 convolution, a zero pad of 1 and a 3x3/2 max pool.
    fn stem(&mut self, conv: &StdConv2d, images: &str) -> String {
        let x = self.conv(conv, images);
        let pads = self.constant_i64("stem.pads", &[0, 0, 1, 1, 0, 0, 1, 1]);
        let zero = self.constant("stem.zero", &[], vec![0.0]);
        let padded = self.node("Pad", &[&x, &pads, &zero], vec![string("mode", "constant")]);
        self.node(
            "MaxPool",
            &[&padded],
            vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2])],
        )
    }

    /// GroupNorm + ReLU as `InstanceNormalization` over `[N, groups, -1]`.
    fn group_norm_relu(&mut self, gn: &GroupNormRelu, x: &str) -> String {
        let (c, g) = (gn.channels(), gn.groups);
        let grouped_shape = self.constant_i64("gn.grouped", &[0, g as i64, -1]);
        let grouped = self.node("Reshape", &[x, &grouped_shape], vec![]);
        let ones = self.constant("gn.unit_scale", &[g], vec![1.0; g]);
        let zeros = self.constant("gn.zero_bias", &[g], vec![0.0; g]);
        let normed = self.node(
            "InstanceNormalization",
            &[&grouped, &ones, &zeros],
            vec![float("epsilon", gn.eps as f32)],
        );
        let shape = self.node("Shape", &[x], vec![]);
        let back = self.node("Reshape", &[&normed, &shape], vec![]);
        let gamma = self.constant("gn.gamma", &[c, 1, 1], host_values(gn.gamma.val()));
        let beta = self.constant("gn.beta", &[c, 1, 1], host_values(gn.beta.val()));
        let scaled = self.node("Mul", &[&back, &gamma], vec![]);
        let shifted = self.node("Add", &[&scaled, &beta], vec![]);
        self.node("Relu", &[&shifted], vec![])
    }

    /// A pre-activation bottleneck ([`PreActBottleneck::forward`]).
    fn unit(&mut self, unit: &PreActBottleneck, x: &str) -> String {
        let a = self.group_norm_relu(&unit.gn1, x);
        let shortcut = match &unit.downsample {
            Some(proj) => self.conv(proj, &a),
            None => x.to_string(),
        };
        let h = self.conv(&unit.conv1, &a);
        let h = self.group_norm_relu(&unit.gn2, &h);
        let h = self.conv(&unit.conv2, &h);
        let h = self.group_norm_relu(&unit.gn3, &h);
        let h = self.conv(&unit.conv3, &h);
        self.node("Add", &[&h, &shortcut], vec![])
    }
}

/// `TensorProto.DataType` values.
const FLOAT: i32 = 1;
const INT64: i32 = 7;

/// `AttributeProto.AttributeType` values.
const ATTR_FLOAT: i32 = 1;
const ATTR_INT: i32 = 2;
const ATTR_STRING: i32 = 3;
const ATTR_INTS: i32 = 7;

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_FLOAT,
        f,
        ..Default::default()
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_INT,
        i,
        ..Default::default()
    }
}

fn ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value,
    }
}

/// A dimension of a graph input or output: fixed, or named (dynamic).
enum Dim {
    Value(i64),
    Param(&'static str),
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Value(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                Dim::Param(p) => tensor_shape_proto::dimension::Value::DimParam(p.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
    }
}

// The messages of ONNX's `onnx.proto3` this export writes, with the schema's field numbers
// (fields it leaves empty are omitted: protobuf readers skip what they do not see).

/// `onnx.ModelProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(string, tag = "6")]
    doc_string: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<StringStringEntryProto>,
}

/// `onnx.OperatorSetIdProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

/// `onnx.StringStringEntryProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// `onnx.GraphProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

/// `onnx.AttributeProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "20")]
    r#type: i32,
    #[prost(float, tag = "2")]
    f: f32,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(bytes = "vec", tag = "4")]
    s: Vec<u8>,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
}

/// `onnx.TensorProto` (data as little-endian `raw_data`).
#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

/// `onnx.ValueInfoProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

/// `onnx.TypeProto` (tensor types only).
#[derive(Clone, PartialEq, prost::Message)]
struct TypeProto {
    #[prost(oneof = "type_proto::Value", tags = "1")]
    value: Option<type_proto::Value>,
}

mod type_proto {
    /// `onnx.TypeProto.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum Value {
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }

    /// `onnx.TypeProto.Tensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Tensor {
        #[prost(int32, tag = "1")]
        pub(super) elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub(super) shape: Option<super::TensorShapeProto>,
    }
}

/// `onnx.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<tensor_shape_proto::Dimension>,
}

mod tensor_shape_proto {
    /// `onnx.TensorShapeProto.Dimension`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Dimension {
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub(super) value: Option<dimension::Value>,
    }

    pub(super) mod dimension {
        /// `dim_value` or `dim_param`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub(in super::super) enum Value {
            #[prost(int64, tag = "1")]
            DimValue(i64),
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resnet::ResNetV2Config;
    use burn::tensor::Device;

    /// The file read back with the same schema messages: the graph's structure, the folded
    /// kernels and the metadata. (Its numerics against onnxruntime: `scripts/onnx_check.py`.)
    #[test]
    fn the_graph_has_bits_structure_folded_kernels_and_metadata() {
        let model = ResNetV2Config::new([2, 1, 1, 1], 1, 4).init(&Device::flex());
        let names: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
        let path = std::env::temp_dir().join(format!("bit_onnx_{}.onnx", std::process::id()));
        model.save_onnx(&path, 64, Some(&names)).unwrap();
        let decoded = ModelProto::decode(&std::fs::read(&path).unwrap()[..]).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(decoded.opset_import[0].version, ONNX_OPSET);
        let graph = decoded.graph.unwrap();
        let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
        // 1 stem conv, 3 per unit (5 units) and 4 projections; a norm per unit's 3 + the head's.
        assert_eq!(count("Conv"), 1 + 3 * 5 + 4);
        assert_eq!(count("InstanceNormalization"), 3 * 5 + 1);
        assert_eq!((count("Pad"), count("MaxPool"), count("Gemm")), (1, 1, 1));
        assert_eq!(graph.node.last().unwrap().output, ["logits"]);
        // The stem kernel is the standardized one, as the model computes with it.
        let first = &graph.node[0];
        let kernel = graph
            .initializer
            .iter()
            .find(|t| t.name == first.input[1])
            .unwrap();
        assert_eq!(kernel.dims, [64, 3, 7, 7]);
        let values: Vec<f32> = kernel
            .raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, host_values(model.root.conv.standardized_weight()));
        // A dynamic batch, the resolution, the class names.
        let input = graph.input[0].r#type.clone().unwrap().value.unwrap();
        let type_proto::Value::TensorType(tensor) = input;
        let dims: Vec<_> = tensor
            .shape
            .unwrap()
            .dim
            .into_iter()
            .map(|d| d.value)
            .collect();
        assert_eq!(
            dims[0],
            Some(tensor_shape_proto::dimension::Value::DimParam(
                "batch".into()
            ))
        );
        assert_eq!(
            dims[3],
            Some(tensor_shape_proto::dimension::Value::DimValue(64))
        );
        let meta = |key: &str| {
            decoded
                .metadata_props
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.clone())
        };
        assert_eq!(meta(RESOLUTION_METADATA_KEY).as_deref(), Some("64"));
        assert_eq!(
            meta(CLASSES_METADATA_KEY).as_deref(),
            Some(r#"["c0","c1","c2","c3"]"#)
        );
    }
}
