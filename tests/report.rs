//! The eval report on the tiny reference model: the summary text, byte-identical reports for any
//! thread count, and `report.html` loading in headless Chromium with every tensor row and no
//! script error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CHROMIUM: &str = "/usr/bin/chromium";

fn quant(args: &[&str], dir: &Path) -> Output {
    let output = Command::new(common::quant_bin())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "quant {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Quantizes tiny on its calibration set and evaluates it on the same set with `jobs` threads,
/// writing the report into `dir/report-<jobs>`. Returns (summary, report folder).
fn tiny_report(fixtures: &common::Fixtures, dir: &Path, jobs: usize) -> (String, PathBuf) {
    let tiny = fixtures.join("reference/tiny");
    // Copy model and list next to each other so the report names short relative paths.
    std::fs::copy(
        fixtures.join("reference/tiny/tiny.onnx"),
        dir.join("tiny.onnx"),
    )
    .unwrap();
    let list: Vec<String> =
        std::fs::read_to_string(fixtures.join("reference/tiny/calib/input_list.txt"))
            .unwrap()
            .lines()
            .map(|line| {
                line.split(' ')
                    .map(|pair| {
                        let (name, path) = pair.split_once(":=").unwrap();
                        format!("{name}:={}", tiny.join("calib").join(path).display())
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
    std::fs::write(dir.join("list.txt"), list.join("\n") + "\n").unwrap();
    quant(
        &[
            "quantize",
            "--input_network",
            "tiny.onnx",
            "--input_list",
            "list.txt",
            "--output_encodings",
            "tiny.encodings.json",
        ],
        dir,
    );
    let report_dir = format!("report-{jobs}");
    let jobs = jobs.to_string();
    let output = quant(
        &[
            "eval",
            "--input_network",
            "tiny.onnx",
            "--encodings",
            "tiny.encodings.json",
            "--input_list",
            "list.txt",
            "--report_dir",
            &report_dir,
            "-j",
            &jobs,
        ],
        dir,
    );
    (
        String::from_utf8(output.stdout).unwrap(),
        dir.join(report_dir),
    )
}

#[test]
fn tiny_summary_and_reports_are_deterministic() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (summary, one) = tiny_report(&fixtures, tmp.path(), 1);
    let (again, two) = tiny_report(&fixtures, tmp.path(), 2);
    assert_eq!(summary, again);
    for file in ["report.json", "report.html"] {
        assert_eq!(
            std::fs::read(one.join(file)).unwrap(),
            std::fs::read(two.join(file)).unwrap(),
            "{file} differs between 1 and 2 threads"
        );
    }
    insta::assert_snapshot!(summary);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("report.json")).unwrap()).unwrap();
    // tiny: 2 inputs and 8 node outputs, every one encoded by `quant quantize`.
    let tensors = report["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 10);
    for t in tensors {
        let histogram = &t["histogram"];
        let counts: u64 = histogram["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        // Small tensors are binned whole: every value of the 4 samples is counted.
        assert_eq!(counts, t["elements"].as_u64().unwrap(), "{}", t["name"]);
        assert_eq!(histogram["min"], t["observed"]["min"]);
        assert!(t["encoding"]["scale"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn report_html_loads_in_headless_chromium() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    if !Path::new(CHROMIUM).exists() {
        common::skip_or_fail(format_args!(
            "chromium not found at {CHROMIUM} (install it with `apt-get install -y chromium`)"
        ));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = tiny_report(&fixtures, tmp.path(), 1);
    let html = dir.join("report.html");
    let output = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=2000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "chromium failed: {output:?}");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script did not finish"
    );
    assert!(!dom.contains("data-error=\""), "script error in the page");
    assert_eq!(dom.matches("<tr class=\"tensor").count(), 10);
    assert_eq!(dom.matches("<svg").count(), 10);
    // The script sorted the table by SQNR, worst first: its first row is the worst tensor of
    // the summary (add_out).
    let first_row = dom.find("<tr class=\"tensor").unwrap();
    let row_end = first_row + dom[first_row..].find("</tr>").unwrap();
    assert!(
        dom[first_row..row_end].contains("data-name=\"add_out\""),
        "{}",
        &dom[first_row..row_end]
    );
    // Nothing is fetched from outside the file.
    let page = std::fs::read_to_string(&html).unwrap();
    for marker in ["http://", "https://", "src=\"", "href=\""] {
        assert!(!page.contains(marker), "external reference `{marker}`");
    }
}
