//! `report.html`: one static page, inline CSS, SVG and script, no external resources.
//!
//! Rows are rendered here, not by the script, so the page reads fine with scripts off; the
//! script only sorts and filters, then marks `<body data-ready="1">`; an error anywhere sets
//! `data-error` on `<html>` instead, so a headless browser can tell whether it ran.

use std::fmt::Write as _;

use super::{EncodingReport, Report, TensorReport, db, short};

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232a; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
.meta { color: #5b6672; margin-bottom: 1em; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; margin-bottom: 1.2em; }
.card { border: 1px solid #d4dae0; border-radius: 6px; padding: .6em .9em; min-width: 12em; }
.card b { display: block; font-size: 1.25em; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e6eaee; text-align: left; vertical-align: middle; }
th { background: #f3f5f7; cursor: pointer; position: sticky; top: 0; user-select: none; }
th.sorted::after { content: " \25BE"; }
th.sorted.asc::after { content: " \25B4"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
tr.low td.sqnr { color: #b3261e; font-weight: 600; }
tr.float td { color: #7a848e; }
svg rect.bar { fill: #4f7fb8; }
svg rect.enc { fill: #2e9d5b; fill-opacity: .15; stroke: #2e9d5b; stroke-width: 1; }
svg line.clip { stroke: #b3261e; stroke-width: 1; }
input#filter { margin-bottom: .6em; padding: 4px 6px; width: 24em; }
"#;

/// Runs first, in the head, so it also catches errors of the main script.
const ERROR_HOOK: &str = "window.addEventListener('error', function (e) { \
    document.documentElement.setAttribute('data-error', String(e.message || e)); });";

const SCRIPT: &str = r#"
(function () {
  var table = document.getElementById('tensors');
  var body = table.tBodies[0];
  var headers = table.tHead.rows[0].cells;
  function key(row, col, numeric) {
    var v = row.cells[col].getAttribute('data-v');
    if (!numeric) return v;
    if (v === '' || v === null) return Infinity;
    return parseFloat(v);
  }
  function sortBy(col, asc) {
    var numeric = headers[col].getAttribute('data-numeric') === '1';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, col, numeric), y = key(b, col, numeric);
      var c = numeric ? (x === y ? 0 : (x < y ? -1 : 1)) : String(x).localeCompare(String(y));
      if (c === 0) c = parseInt(a.getAttribute('data-index'), 10) - parseInt(b.getAttribute('data-index'), 10);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < headers.length; i++) headers[i].className = '';
    headers[col].className = 'sorted' + (asc ? ' asc' : '');
  }
  for (var i = 0; i < headers.length; i++) {
    (function (col) {
      headers[col].addEventListener('click', function () {
        var asc = headers[col].className !== 'sorted asc';
        sortBy(col, asc);
      });
    })(i);
  }
  document.getElementById('filter').addEventListener('input', function (e) {
    var q = e.target.value.toLowerCase();
    Array.prototype.forEach.call(body.rows, function (r) {
      r.style.display = r.getAttribute('data-name').toLowerCase().indexOf(q) >= 0 ? '' : 'none';
    });
  });
  sortBy(SQNR_COLUMN, true);
  document.body.setAttribute('data-ready', '1');
})();
"#;

/// Column of the SQNR in the tensor table; the page opens sorted by it, worst first.
const SQNR_COLUMN: usize = 1;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A number for a `data-v` sort key: empty when not finite.
fn sort_key(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else {
        String::new()
    }
}

const SVG_WIDTH: f64 = 260.0;
const SVG_HEIGHT: f64 = 44.0;

/// The histogram with the encoding's range as a shaded band; the x axis spans both, so a range
/// that misses the data shows as a band beside the bars.
fn histogram_svg(tensor: &TensorReport) -> String {
    let Some(h) = &tensor.histogram else {
        return String::new();
    };
    let encoding = match &tensor.encoding {
        Some(EncodingReport::Integer { min, max, .. }) => Some((*min, *max)),
        _ => None,
    };
    let (mut lo, mut hi) = (h.min, h.max);
    if let Some((min, max)) = encoding {
        lo = lo.min(min);
        hi = hi.max(max);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    let x = |v: f64| ((v - lo) / (hi - lo) * SVG_WIDTH).clamp(0.0, SVG_WIDTH);
    let mut svg = format!(
        r#"<svg width="{SVG_WIDTH}" height="{SVG_HEIGHT}" viewBox="0 0 {SVG_WIDTH} {SVG_HEIGHT}" role="img">"#
    );
    if let Some((min, max)) = encoding {
        let _ = write!(
            svg,
            r#"<rect class="enc" x="{:.2}" y="0" width="{:.2}" height="{SVG_HEIGHT}"><title>encoding [{}, {}]</title></rect>"#,
            x(min),
            (x(max) - x(min)).max(0.5),
            short(min),
            short(max)
        );
    }
    // Square-root heights: a spike of zeros after a ReLU would otherwise flatten the rest.
    let peak = h.counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bin = (h.max - h.min) / h.counts.len() as f64;
    for (k, &count) in h.counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let left = x(h.min + k as f64 * bin);
        let right = if bin > 0.0 {
            x(h.min + (k + 1) as f64 * bin)
        } else {
            left + 2.0
        };
        let height = ((count as f64 / peak).sqrt() * (SVG_HEIGHT - 2.0)).max(1.0);
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{left:.2}" y="{:.2}" width="{:.2}" height="{height:.2}"/>"#,
            SVG_HEIGHT - height,
            (right - left).max(0.6)
        );
    }
    if let Some((min, max)) = encoding {
        for edge in [min, max] {
            let at = x(edge);
            let _ = write!(
                svg,
                r#"<line class="clip" x1="{at:.2}" y1="0" x2="{at:.2}" y2="{SVG_HEIGHT}"/>"#
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

fn encoding_cell(tensor: &TensorReport) -> (String, String) {
    match &tensor.encoding {
        Some(EncodingReport::Integer {
            bitwidth,
            schema,
            scale,
            offset,
            min,
            max,
        }) => (
            format!("{bitwidth}"),
            format!(
                "{bitwidth}-bit {schema}<br>[{}, {}]<br>scale {scale:.4e}, offset {offset}",
                short(*min),
                short(*max)
            ),
        ),
        Some(EncodingReport::Float { bitwidth, .. }) => {
            ("99".to_string(), format!("float{bitwidth}"))
        }
        None => ("100".to_string(), "float (no encoding)".to_string()),
    }
}

/// The whole page.
pub(super) fn render(report: &Report) -> String {
    let mut page = String::new();
    let title = match &report.target {
        Some(target) => format!("{} · {}", target, report.model),
        None => report.model.clone(),
    };
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>quant report: {}</title><style>{STYLE}</style>\
         <script>{ERROR_HOOK}</script></head><body>\n",
        escape(&title)
    );
    let _ = writeln!(page, "<h1>Quantization report: {}</h1>", escape(&title));
    let _ = writeln!(
        page,
        "<div class=\"meta\">{} samples from {}{}{}</div>",
        report.samples,
        escape(&report.input_list),
        report
            .labels
            .as_ref()
            .map(|l| format!(", labels {}", escape(l)))
            .unwrap_or_default(),
        report
            .encodings
            .as_ref()
            .map(|e| format!(", encodings {}", escape(e)))
            .unwrap_or_default()
    );
    page.push_str("<div class=\"cards\">\n");
    if let Some(top1) = &report.metrics.top1 {
        let _ = writeln!(
            page,
            "<div class=\"card\" id=\"top1\">top-1 on {} ({} classes)<b>float {:.2}% · quantized {:.2}%</b>{}/{} vs {}/{}</div>",
            escape(&top1.output),
            top1.classes,
            100.0 * top1.float.accuracy,
            100.0 * top1.quantized.accuracy,
            top1.float.correct,
            top1.samples,
            top1.quantized.correct,
            top1.samples
        );
    }
    for output in &report.metrics.outputs {
        let _ = writeln!(
            page,
            "<div class=\"card output\">output SQNR {}<b>{}</b>mean over {} samples</div>",
            escape(&output.name),
            db(output.sqnr_db_mean),
            output.sqnr_db.len()
        );
    }
    page.push_str("</div>\n");
    page.push_str(
        "<input id=\"filter\" type=\"search\" placeholder=\"filter tensors by name\">\n\
         <table id=\"tensors\"><thead><tr>\
         <th data-numeric=\"1\">#</th><th data-numeric=\"1\">SQNR</th>\
         <th data-numeric=\"1\">clipped</th><th data-numeric=\"1\">encoding</th>\
         <th data-numeric=\"1\">observed range</th><th>histogram and encoding range</th>\
         <th>tensor</th><th>op</th></tr></thead><tbody>\n",
    );
    let worst = report.worst_tensors();
    let low: Vec<usize> = worst.iter().take(super::SUMMARY_TENSORS).copied().collect();
    for (index, tensor) in report.tensors.iter().enumerate() {
        let mut class = Vec::new();
        if low.contains(&index) && tensor.sqnr_db.is_finite() {
            class.push("low");
        }
        if tensor.encoding.is_none() {
            class.push("float");
        }
        let (encoding_key, encoding_text) = encoding_cell(tensor);
        let (observed_key, observed_text) = match &tensor.observed {
            Some(o) => (
                sort_key(o.max - o.min),
                format!("[{}, {}]<br>{}", short(o.min), short(o.max), o.source),
            ),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            page,
            "<tr class=\"tensor {}\" data-index=\"{index}\" data-name=\"{}\">\
             <td class=\"num\" data-v=\"{index}\">{index}</td>\
             <td class=\"num sqnr\" data-v=\"{}\">{}</td>\
             <td class=\"num\" data-v=\"{}\">{:.3}%</td>\
             <td data-v=\"{encoding_key}\">{encoding_text}</td>\
             <td class=\"num\" data-v=\"{observed_key}\">{observed_text}</td>\
             <td>{}</td><td class=\"name\" data-v=\"{}\">{}</td><td data-v=\"{}\">{}</td></tr>",
            class.join(" "),
            escape(&tensor.name),
            sort_key(tensor.sqnr_db),
            db(tensor.sqnr_db),
            sort_key(tensor.clipped_fraction),
            100.0 * tensor.clipped_fraction,
            histogram_svg(tensor),
            escape(&tensor.name),
            escape(&tensor.name),
            escape(&tensor.producer_op),
            escape(&tensor.producer_op)
        );
    }
    page.push_str("</tbody></table>\n");
    let script = SCRIPT.replace("SQNR_COLUMN", &SQNR_COLUMN.to_string());
    let _ = write!(page, "<script>{script}</script>\n</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
    }
}
