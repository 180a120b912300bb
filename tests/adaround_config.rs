//! The AdaRound YAML config: what it accepts, and a diagnostic pointing at the line for
//! everything it does not.

mod common;

use std::path::Path;

use common::info;
use quant::adaround::{ConfigError, parse_config};
use quant::encoding::Bitwidth;
use quant::graph::Graph;
use quant::onnx::{GraphContents, NodeContents, OnnxModel};
use quant::quantizer::CalibrationMethod;

fn render(err: &ConfigError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, err)
        .unwrap();
    out
}

fn error(text: &str) -> String {
    match parse_config("adaround.yaml", text) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(e) => render(&e),
    }
}

#[test]
fn every_supported_key_is_read() {
    let text = "\
num_batches: 16
num_iterations: 1000
seed: 7
optional_adaround_args:
  default_param_bw: 4
  param_bw_override_list: [[conv1.weight, 8]]
  ignore_quant_ops_list: [conv2]
  default_quant_scheme: tf_enhanced
";
    let (config, _) = parse_config("adaround.yaml", text).unwrap();
    assert_eq!(config.num_batches, Some(16));
    assert_eq!(config.num_iterations, 1000);
    assert_eq!(config.seed, 7);
    assert_eq!(config.default_param_bw, Some(Bitwidth::new(4).unwrap()));
    assert_eq!(
        config.param_bw_override_list,
        vec![("conv1.weight".to_string(), Bitwidth::new(8).unwrap())]
    );
    assert_eq!(config.ignore_quant_ops_list, vec!["conv2".to_string()]);
    assert_eq!(config.default_quant_scheme, Some(CalibrationMethod::Sqnr));
}

#[test]
fn defaults_are_aimets() {
    let (config, _) = parse_config("adaround.yaml", "").unwrap();
    assert_eq!(config.num_iterations, 10_000);
    assert_eq!(config.num_batches, None);
    let params = config.hyperparameters();
    assert_eq!(params.reg_param, 0.01);
    assert_eq!(params.beta_range, (20.0, 2.0));
    assert_eq!(params.warm_start, 0.2);
    assert_eq!(params.learning_rate, 1e-3);
}

#[test]
fn unknown_key_gets_a_suggestion() {
    insta::assert_snapshot!(error("num_batches: 4\nnum_iteration: 100\n"));
}

#[test]
fn python_callback_keys_are_replaced_by_the_input_list() {
    insta::assert_snapshot!(error(
        "num_batches: 4\ndataloader_callback: my_module.load\n"
    ));
}

#[test]
fn bitwidth_3_is_refused() {
    insta::assert_snapshot!(error("optional_adaround_args:\n  default_param_bw: 3\n"));
}

#[test]
fn a_layer_the_model_lacks_is_named_at_its_line() {
    let text =
        "optional_adaround_args:\n  ignore_quant_ops_list:\n    - conv1\n    - no_such_layer\n";
    let (_, names) = parse_config("adaround.yaml", text).unwrap();
    let contents = GraphContents {
        ir_version: Some(8),
        opset: Some(13),
        inputs: vec![info("x", Some(&[1, 2]))],
        outputs: vec![info("conv1", Some(&[1, 2]))],
        value_info: Vec::new(),
        initializers: Vec::new(),
        nodes: vec![NodeContents {
            name: "relu".into(),
            op_type: "Relu".into(),
            domain: String::new(),
            inputs: vec!["x".into()],
            outputs: vec!["conv1".into()],
            attributes: Vec::new(),
        }],
    };
    let model = OnnxModel::from_contents(&contents, Path::new("tiny.onnx"));
    let graph = Graph::from_model(&model).unwrap();
    let err = names.check(&graph).unwrap_err();
    insta::assert_snapshot!(render(&err));
}
