//! The `.npy` header (format versions 1.0–3.0): just enough to accept C-order little-endian
//! `f32` arrays and to say precisely why anything else is refused.

/// What the header says about the array that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NpyHeader {
    /// Dims from the header's `shape` tuple.
    pub shape: Vec<usize>,
    /// Byte offset of the first data byte.
    pub data_offset: usize,
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Parses the header at the start of `bytes` (which needs to hold at least the whole header).
/// Errors are human sentences, wrapped into a diagnostic by the caller.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<NpyHeader, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (missing the \\x93NUMPY magic)".into());
    }
    let major = bytes[6];
    let (len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (len as usize, 12)
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated .npy header")?;
    let text =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| "the .npy header is not text")?;
    let dict = parse_dict(text)?;

    let descr = dict.descr.ok_or("the .npy header has no 'descr'")?;
    if descr != "<f4" {
        return Err(format!(
            "dtype is `{descr}`{}; only `<f4` (float32, little-endian) is supported",
            describe_dtype(&descr)
        ));
    }
    match dict.fortran_order {
        Some(false) => {}
        Some(true) => {
            return Err("the array is in Fortran order; only C order is supported".into());
        }
        None => return Err("the .npy header has no 'fortran_order'".into()),
    }
    let shape = dict.shape.ok_or("the .npy header has no 'shape'")?;
    Ok(NpyHeader {
        shape,
        data_offset: end,
    })
}

fn describe_dtype(descr: &str) -> &'static str {
    match descr {
        "<f8" => " (float64)",
        "<f2" => " (float16)",
        ">f4" => " (float32, big-endian)",
        "<i8" => " (int64)",
        "<i4" => " (int32)",
        "|u1" => " (uint8)",
        "|i1" => " (int8)",
        "|b1" => " (bool)",
        _ => "",
    }
}

#[derive(Default)]
struct HeaderDict {
    descr: Option<String>,
    fortran_order: Option<bool>,
    shape: Option<Vec<usize>>,
}

/// The header is a Python dict literal with three known keys; values are a quoted string, a
/// bool, or a tuple of ints. Anything else (a structured dtype, say) is refused.
fn parse_dict(text: &str) -> Result<HeaderDict, String> {
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or("the .npy header is not a dict")?;
    let mut dict = HeaderDict::default();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or("malformed .npy header key")?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or("malformed .npy header: expected ':'")?
            .trim_start();
        rest = match key {
            "descr" => {
                let (v, after) = quoted(after)
                    .ok_or("structured dtypes are not supported; only `<f4` (float32)")?;
                dict.descr = Some(v.to_string());
                after
            }
            "fortran_order" => {
                if let Some(a) = after.strip_prefix("True") {
                    dict.fortran_order = Some(true);
                    a
                } else if let Some(a) = after.strip_prefix("False") {
                    dict.fortran_order = Some(false);
                    a
                } else {
                    return Err("malformed 'fortran_order' in .npy header".into());
                }
            }
            "shape" => {
                let inner = after
                    .strip_prefix('(')
                    .ok_or("malformed 'shape' in .npy header")?;
                let close = inner.find(')').ok_or("malformed 'shape' in .npy header")?;
                let dims = inner[..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(|d| d.trim_end_matches('L').parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| "malformed 'shape' in .npy header")?;
                dict.shape = Some(dims);
                &inner[close + 1..]
            }
            other => return Err(format!("unknown key '{other}' in .npy header")),
        };
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(dict)
}

/// Splits a leading `'...'` or `"..."` literal off `s`.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = &s[1..];
    let end = inner.find(quote)?;
    Some((&inner[..end], &inner[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend([1, 0]);
        v.extend((header.len() as u16).to_le_bytes());
        v.extend(header.as_bytes());
        v
    }

    #[test]
    fn reads_numpy_written_header() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 48, 192), }          \n";
        let parsed = parse_header(&file(h)).unwrap();
        assert_eq!(parsed.shape, vec![1, 3, 48, 192]);
        assert_eq!(parsed.data_offset, 10 + h.len());
    }

    #[test]
    fn one_dim_and_scalar_shapes() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }";
        assert_eq!(parse_header(&file(h)).unwrap().shape, vec![5]);
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (), }";
        assert_eq!(parse_header(&file(h)).unwrap().shape, Vec::<usize>::new());
    }

    #[test]
    fn refuses_other_dtypes_and_fortran_order() {
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
        assert_eq!(
            parse_header(&file(h)).unwrap_err(),
            "dtype is `<f8` (float64); only `<f4` (float32, little-endian) is supported"
        );
        let h = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }";
        assert!(
            parse_header(&file(h))
                .unwrap_err()
                .contains("Fortran order")
        );
        let h = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }";
        assert!(parse_header(&file(h)).unwrap_err().contains("structured"));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_header(b"hello world, not numpy").is_err());
        let mut truncated = file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }");
        truncated.truncate(20);
        assert_eq!(
            parse_header(&truncated).unwrap_err(),
            "truncated .npy header"
        );
    }
}
