//! Parsing the dims of `--input_dim NAME 1,3,48,192` (also a manifest key): a comma-separated
//! list of positive sizes. It must not touch a model; `OnnxModel::fix_input_dims` applies them.

/// Why a dims list is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputDimError {
    /// Nothing given.
    #[error("empty dims: expected comma-separated sizes such as 1,3,48,192")]
    Empty,
    /// One entry is not a positive integer.
    #[error("dim {position} is `{text}`, not a positive integer (expected e.g. 1,3,48,192)")]
    NotASize {
        /// 1-based position in the list.
        position: usize,
        /// The offending text.
        text: String,
    },
}

/// Parses `1,3,48,192` (spaces around entries allowed; `x` also accepted as separator, as in
/// `1x3x48x192`).
pub fn parse_dims(text: &str) -> Result<Vec<u64>, InputDimError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(InputDimError::Empty);
    }
    text.split([',', 'x'])
        .enumerate()
        .map(|(i, part)| {
            let part = part.trim();
            match part.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(InputDimError::NotASize {
                    position: i + 1,
                    text: part.to_owned(),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comma_and_x_separated_dims() {
        assert_eq!(parse_dims("1,3,48,192").unwrap(), [1, 3, 48, 192]);
        assert_eq!(parse_dims(" 1, 3 ").unwrap(), [1, 3]);
        assert_eq!(parse_dims("1x3x320x320").unwrap(), [1, 3, 320, 320]);
    }

    #[test]
    fn rejects_zero_negative_and_empty() {
        assert_eq!(parse_dims(""), Err(InputDimError::Empty));
        assert!(matches!(
            parse_dims("1,0,4"),
            Err(InputDimError::NotASize { position: 2, .. })
        ));
        assert!(matches!(
            parse_dims("1,-3"),
            Err(InputDimError::NotASize { position: 2, .. })
        ));
        assert!(matches!(
            parse_dims("1,,3"),
            Err(InputDimError::NotASize { position: 2, .. })
        ));
    }
}
