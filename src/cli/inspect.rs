//! `quant inspect M.onnx`: every tensor of a model with its kind, role, type, shape and encoding
//! rule, as an aligned table (or `--json`) on stdout. It must not decide anything itself: kinds,
//! roles and rules all come from [`crate::graph`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

use crate::graph::{Dim, EncodingRule, Graph, ParameterSource, Role, Tensor, TensorKind};

/// Arguments of `quant inspect`.
#[derive(Args, Debug)]
#[command(
    about = "List every tensor of an ONNX model: kind, role, type, shape and whether it gets an encoding",
    long_about = "List every tensor of an ONNX model (graph inputs, initializers, Constant outputs, \
                  node outputs) with its kind (activation or parameter), role (weight, bias, ...), \
                  element type, declared shape and encoding rule: `own` (encoded from its own \
                  range), `shares X` (a data-movement output taking input X's encoding) or `none` \
                  with the reason. See the book's tensor-rules page."
)]
pub struct InspectArgs {
    /// The ONNX model to inspect.
    #[arg(value_name = "MODEL")]
    model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `quant inspect`.
pub fn run(args: InspectArgs) -> ExitCode {
    let graph = match Graph::read(&args.model) {
        Ok(graph) => graph,
        Err(err) => {
            // Every error names the model path; a missing file and a file that is not a model
            // are both data errors (bad arguments already failed in clap with EXIT_USAGE).
            eprintln!("error: {err}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    if args.json {
        let document = json!({
            "model": args.model.display().to_string(),
            "opset": graph.opset(),
            "counts": graph.counts(),
            "tensors": graph.tensors().iter().map(tensor_json).collect::<Vec<_>>(),
        });
        match serde_json::to_string_pretty(&document) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("error: cannot write JSON: {err}");
                return ExitCode::from(super::EXIT_FAILURE);
            }
        }
    } else {
        print!("{}", table(&graph));
    }
    ExitCode::SUCCESS
}

fn kind_text(tensor: &Tensor) -> &'static str {
    match tensor.kind {
        TensorKind::Activation => "activation",
        TensorKind::Parameter(_) => "parameter",
    }
}

fn role_text(tensor: &Tensor) -> String {
    let role = match (tensor.role, &tensor.producer) {
        (Role::NodeOutput, Some(producer)) => format!("{} output", producer.op_type),
        (role, _) => role.to_string(),
    };
    if tensor.is_graph_output {
        format!("{role}, graph output")
    } else {
        role
    }
}

fn shape_text(shape: &Option<Vec<Dim>>) -> String {
    match shape {
        None => "?".into(),
        Some(dims) => format!(
            "[{}]",
            dims.iter()
                .map(Dim::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn rule_text(tensor: &Tensor) -> String {
    match (&tensor.rule, &tensor.producer) {
        (EncodingRule::SharesInput(input), Some(producer)) => {
            format!("shares {input} ({} moves data)", producer.op_type)
        }
        (rule, _) => rule.to_string(),
    }
}

/// The aligned table and a summary line.
fn table(graph: &Graph) -> String {
    let header = ["TENSOR", "KIND", "ROLE", "DTYPE", "SHAPE", "ENCODING"].map(String::from);
    let rows: Vec<[String; 6]> = std::iter::once(header)
        .chain(graph.tensors().iter().map(|t| {
            [
                t.name.to_string(),
                kind_text(t).into(),
                role_text(t),
                t.dtype.map_or("?".into(), |d| d.to_string()),
                shape_text(&t.shape),
                rule_text(t),
            ]
        }))
        .collect();
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let c = graph.counts();
    out.push_str(&format!(
        "\n{} float activations, {} float parameters, {} other tensors; \
         {} own encodings, {} shared, {} float tensors left unquantized\n",
        c.float_activations,
        c.float_parameters,
        c.non_float,
        c.own_encodings,
        c.shared_encodings,
        c.not_quantized
    ));
    out
}

fn tensor_json(tensor: &Tensor) -> Value {
    let source = match tensor.kind {
        TensorKind::Activation => Value::Null,
        TensorKind::Parameter(ParameterSource::Initializer) => "initializer".into(),
        TensorKind::Parameter(ParameterSource::ConstantNode) => "constant_node".into(),
    };
    let role = match tensor.role {
        Role::GraphInput => "graph_input",
        Role::NodeOutput => "node_output",
        Role::Weight { .. } => "weight",
        Role::Bias => "bias",
        Role::BatchNormScale => "batchnorm_scale",
        Role::BatchNormBias => "batchnorm_bias",
        Role::BatchNormMean => "batchnorm_mean",
        Role::BatchNormVariance => "batchnorm_variance",
        Role::ShapeOperand => "shape_operand",
        Role::Operand => "operand",
        Role::Unused => "unused",
    };
    let channel_axis = match tensor.role {
        Role::Weight {
            output_channel_axis,
        } => json!(output_channel_axis),
        _ => Value::Null,
    };
    let shape = tensor.shape.as_ref().map(|dims| {
        dims.iter()
            .map(|d| match d {
                Dim::Fixed(n) => json!(n),
                Dim::Symbolic(name) => json!(name),
                Dim::Unknown => Value::Null,
            })
            .collect::<Vec<_>>()
    });
    let encoding = match &tensor.rule {
        EncodingRule::Own => json!({ "rule": "own" }),
        EncodingRule::SharesInput(input) => json!({ "rule": "shares_input", "input": input }),
        EncodingRule::NotFloat => json!({ "rule": "not_float" }),
        EncodingRule::NotQuantized(reason) => {
            json!({ "rule": "not_quantized", "reason": reason })
        }
    };
    json!({
        "name": tensor.name,
        "kind": kind_text(tensor),
        "source": source,
        "role": role,
        "output_channel_axis": channel_axis,
        "dtype": tensor.dtype.map(|d| d.to_string()),
        "shape": shape,
        "producer": tensor.producer.as_ref().map(|p| json!({
            "op_type": p.op_type, "node": p.node_name, "output_index": p.output_index,
        })),
        "consumers": tensor.consumers.iter().map(|u| json!({
            "op_type": u.op_type, "node": u.node_name, "input_index": u.input_index,
        })).collect::<Vec<_>>(),
        "graph_output": tensor.is_graph_output,
        "encoding": encoding,
    })
}
