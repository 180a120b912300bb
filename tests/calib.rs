//! Input lists and sample files: parsing, loading, and the text of every diagnostic.

mod common;

use std::path::Path;

use quant::calib::{CalibError, InputList, InputSpec, NonFinite};

const DATA: &str = "tests/data/calib";

fn spec(name: &str, shape: &[usize]) -> InputSpec {
    InputSpec {
        name: name.to_string(),
        shape: shape.to_vec(),
    }
}

fn one_input() -> Vec<InputSpec> {
    vec![spec("x", &[1, 2, 2])]
}

fn two_inputs() -> Vec<InputSpec> {
    vec![spec("x", &[1, 2, 2]), spec("y", &[1, 4])]
}

/// A list as if written at `tests/data/calib/list.txt`.
#[allow(clippy::result_large_err)] // the library's own error type, returned as is
fn parse(text: &str) -> Result<InputList, CalibError> {
    InputList::parse(&Path::new(DATA).join("list.txt"), text)
}

fn render(err: &CalibError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, err)
        .unwrap();
    out
}

/// The rendered diagnostic of loading every sample of `text` after the checks pass or fail.
fn load_error(text: &str, specs: &[InputSpec]) -> String {
    let list = match parse(text) {
        Ok(list) => list,
        Err(e) => return render(&e),
    };
    let check = list.check(specs).err().map(|e| render(&e));
    let load = (0..list.samples.len())
        .find_map(|i| list.load_sample(i, specs).err())
        .map(|e| render(&e));
    // the cheap check and the full load must agree on the first problem
    assert_eq!(check, load, "check() and load_sample() disagree");
    load.expect("expected an error")
}

#[test]
fn loads_raw_and_npy_alike() {
    let list = parse("a.raw\na.npy\na_nobatch.npy\n").unwrap();
    list.check(&one_input()).unwrap();
    let samples: Vec<_> = (0..3)
        .map(|i| list.load_sample(i, &one_input()).unwrap())
        .collect();
    let expected = ndarray::arr3(&[[[0.5f32, -1.0], [2.0, 3.25]]]).into_dyn();
    for s in &samples {
        assert_eq!(s.tensors, std::slice::from_ref(&expected));
        assert!(s.non_finite_total().is_clean());
    }
    assert_eq!(
        samples.iter().map(|s| s.line).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // the digest is over file bytes: raw and npy differ, the two npy files differ by header
    assert_ne!(samples[0].digest, samples[1].digest);
    assert_ne!(samples[1].digest, samples[2].digest);
    let again = list.load_sample(0, &one_input()).unwrap();
    assert_eq!(again.digest, samples[0].digest);
}

#[test]
fn multi_input_lines_bind_by_name_in_model_order() {
    std::fs::metadata(Path::new(DATA).join("b.raw")).unwrap();
    // y first on the line: the tensors still come in model-input order (x, y)
    let list = parse("#conv1\n%probs logits\ny:=b.raw x:=a.raw\n\n").unwrap();
    assert_eq!(list.outputs.layers, ["conv1"]);
    assert_eq!(list.outputs.tensors, ["probs", "logits"]);
    let s = list.load_sample(0, &two_inputs()).unwrap();
    assert_eq!(s.line, 3);
    assert_eq!(s.tensors[0].shape(), [1, 2, 2]);
    assert_eq!(s.tensors[1].as_slice().unwrap(), [1.0, 2.0, 3.0, 4.0]);
    // digest: same files in the same input order whatever their order on the line
    let swapped = parse("x:=a.raw y:=b.raw")
        .unwrap()
        .load_sample(0, &two_inputs())
        .unwrap();
    assert_eq!(s.digest, swapped.digest);
    let different = parse("x:=a.raw y:=a.raw")
        .unwrap()
        .load_sample(0, &two_inputs());
    assert_ne!(different.unwrap().digest, s.digest);
}

#[test]
fn counts_nan_and_inf_per_sample() {
    let list = parse("a.raw\nnonfinite.raw\n").unwrap();
    assert!(
        list.load_sample(0, &one_input())
            .unwrap()
            .non_finite_total()
            .is_clean()
    );
    let s = list.load_sample(1, &one_input()).unwrap();
    assert_eq!(s.non_finite, [NonFinite { nan: 1, inf: 2 }]);
    // kept as read: the model sees what the file holds
    let v = s.tensors[0].as_slice().unwrap();
    assert!(v[0].is_nan() && v[1] == f32::INFINITY && v[2] == f32::NEG_INFINITY && v[3] == 1.0);
}

#[test]
fn absolute_paths_are_taken_as_is() {
    let abs = std::fs::canonicalize(Path::new(DATA).join("a.raw")).unwrap();
    let list = InputList::parse(
        Path::new("/nonexistent/list.txt"),
        &abs.display().to_string(),
    )
    .unwrap();
    assert_eq!(list.samples[0].files[0].path, abs);
    list.load_sample(0, &one_input()).unwrap();
}

#[test]
fn reads_the_list_file() {
    let dir = tempfile::tempdir().unwrap();
    let list_path = dir.path().join("input_list.txt");
    std::fs::write(&list_path, "s.raw\n").unwrap();
    std::fs::write(dir.path().join("s.raw"), [0u8; 16]).unwrap();
    let list = InputList::read(&list_path).unwrap();
    assert_eq!(list.samples[0].files[0].path, dir.path().join("s.raw"));
    assert_eq!(
        list.load_sample(0, &one_input()).unwrap().tensors[0].sum(),
        0.0
    );
    let missing = InputList::read(&dir.path().join("nope.txt")).unwrap_err();
    assert!(
        matches!(missing, CalibError::ReadList { .. }),
        "{missing:?}"
    );
}

#[test]
fn diagnostic_empty_list() {
    insta::assert_snapshot!(load_error("\n   \n", &one_input()));
}

#[test]
fn diagnostic_only_output_lines() {
    insta::assert_snapshot!(load_error("#conv1\n%probs\n", &one_input()));
}

#[test]
fn diagnostic_missing_file() {
    insta::assert_snapshot!(load_error("a.raw\nmissing.raw\n", &one_input()));
}

#[test]
fn diagnostic_wrong_size() {
    insta::assert_snapshot!(load_error("a.raw\n\nshort.raw\n", &one_input()));
}

#[test]
fn diagnostic_npy_wrong_shape() {
    // a 4x1 .npy against a 1x2x2 input: same element count but a different shape
    insta::assert_snapshot!(load_error("y:=b.raw x:=wrong_shape.npy", &two_inputs()));
    // against a 1x4 input the same file is fine: only size-1 dims may differ
    let list = parse("x:=a.raw y:=wrong_shape.npy").unwrap();
    assert_eq!(
        list.load_sample(0, &two_inputs()).unwrap().tensors[1].shape(),
        [1, 4]
    );
}

#[test]
fn diagnostic_unknown_input() {
    insta::assert_snapshot!(load_error("x:=a.raw  z:=b.raw\n", &two_inputs()));
}

#[test]
fn diagnostic_missing_input() {
    insta::assert_snapshot!(load_error("x:=a.raw y:=b.raw\nx:=a.raw\n", &two_inputs()));
}

#[test]
fn diagnostic_single_input_line_for_multi_input_model() {
    insta::assert_snapshot!(load_error("a.raw\n", &two_inputs()));
}

#[test]
fn diagnostic_npy_float64() {
    insta::assert_snapshot!(load_error("f64.npy", &one_input()));
}

#[test]
fn diagnostic_npy_fortran_order() {
    insta::assert_snapshot!(load_error("fortran.npy", &one_input()));
}

#[test]
fn diagnostic_mixed_named_and_bare() {
    insta::assert_snapshot!(load_error("x:=a.raw b.raw", &two_inputs()));
}

#[test]
fn diagnostic_several_bare_paths() {
    insta::assert_snapshot!(load_error("a.raw b.raw", &one_input()));
}

#[test]
fn diagnostic_duplicate_input() {
    insta::assert_snapshot!(load_error("x:=a.raw x:=b.raw", &two_inputs()));
}

#[test]
fn diagnostic_output_line_after_samples() {
    insta::assert_snapshot!(load_error("a.raw\n%probs\n", &one_input()));
}

#[test]
fn cls_npy_samples_equal_the_raw_ones() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let specs = [spec("x", &[1, 3, 48, 192])];
    let raw = InputList::read(&fixtures.join("cls/calib/input_list.txt")).unwrap();
    let npy = InputList::read(&fixtures.join("cls/calib_npy/input_list.txt")).unwrap();
    assert_eq!(raw.samples.len(), 32);
    assert_eq!(npy.samples.len(), 4);
    raw.check(&specs).unwrap();
    npy.check(&specs).unwrap();
    for i in 0..4 {
        let a = raw.load_sample(i, &specs).unwrap();
        let b = npy.load_sample(i, &specs).unwrap();
        assert_eq!(a.tensors, b.tensors, "sample {i}");
        assert!(a.non_finite_total().is_clean());
    }
}

#[test]
fn tiny_multi_input_list_loads() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let specs = [
        spec("input_a", &[1, 3, 8, 8]),
        spec("input_b", &[1, 4, 8, 8]),
    ];
    let list = InputList::read(&fixtures.join("reference/tiny/calib/input_list.txt")).unwrap();
    list.check(&specs).unwrap();
    assert_eq!(list.samples.len(), 4);
    let s = list.load_sample(3, &specs).unwrap();
    assert_eq!(s.tensors[1].shape(), [1, 4, 8, 8]);
    // wrong order of specs is fine (binding is by name), a missing input is not
    assert!(list.load_sample(0, &specs[..1]).is_err());
}
