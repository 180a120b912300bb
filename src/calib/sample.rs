//! Loading one sample's files into `f32` tensors shaped like the model's inputs.

use std::io::Read;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use super::npy;
use super::{CalibError, InputList, Sample, SampleFile};

/// What the model expects on one input: its name and a shape with every dim known. All inputs
/// are `f32`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// The ONNX graph input name.
    pub name: String,
    /// The dims, batch first (batch 1 for calibration).
    pub shape: Vec<usize>,
}

impl InputSpec {
    /// Number of `f32` values in one tensor of this input, saturating: a model may declare dims
    /// whose product overflows, and no file can hold that many values anyway.
    pub fn element_count(&self) -> usize {
        self.shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
    }

    /// Bytes one tensor of this input takes in a sample file (saturating like
    /// [`InputSpec::element_count`]).
    pub fn byte_count(&self) -> u64 {
        (self.element_count() as u64).saturating_mul(4)
    }
}

/// Non-finite values found in one input's data. They are kept in the tensor (the model sees what
/// the file holds) and excluded by the statistics layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NonFinite {
    /// NaN values.
    pub nan: u64,
    /// +Inf and -Inf values.
    pub inf: u64,
}

impl NonFinite {
    /// Counts NaN and ±Inf in `data`.
    pub fn count(data: &[f32]) -> NonFinite {
        let mut n = NonFinite::default();
        for v in data {
            if v.is_nan() {
                n.nan += 1;
            } else if v.is_infinite() {
                n.inf += 1;
            }
        }
        n
    }

    /// True when there is no NaN and no Inf.
    pub fn is_clean(&self) -> bool {
        self.nan == 0 && self.inf == 0
    }
}

/// One sample read from disk, ready to run.
#[derive(Debug, Clone)]
pub struct LoadedSample {
    /// 1-based line of the sample in the list (for messages).
    pub line: usize,
    /// One tensor per model input, in `specs` order, shaped as the spec says.
    pub tensors: Vec<ArrayD<f32>>,
    /// Non-finite counts per input, in `specs` order.
    pub non_finite: Vec<NonFinite>,
    /// blake3 over the files in input order, each as its length (u64 little-endian) followed by
    /// its bytes; the same files give the same digest whatever their names.
    pub digest: blake3::Hash,
}

impl LoadedSample {
    /// Non-finite counts summed over the inputs.
    pub fn non_finite_total(&self) -> NonFinite {
        self.non_finite
            .iter()
            .fold(NonFinite::default(), |a, b| NonFinite {
                nan: a.nan + b.nan,
                inf: a.inf + b.inf,
            })
    }
}

impl InputList {
    /// Reads sample `index` (0-based, list order) for a model with inputs `specs`.
    pub fn load_sample(
        &self,
        index: usize,
        specs: &[InputSpec],
    ) -> Result<LoadedSample, CalibError> {
        let sample = self.samples.get(index).ok_or(CalibError::SampleIndex {
            index,
            count: self.samples.len(),
        })?;
        self.load(sample, specs)
    }

    /// Reads `sample` (one of this list's samples) for a model with inputs `specs`.
    pub fn load(&self, sample: &Sample, specs: &[InputSpec]) -> Result<LoadedSample, CalibError> {
        let files = self.bind(sample, specs)?;
        let mut hasher = blake3::Hasher::new();
        let mut tensors = Vec::with_capacity(specs.len());
        let mut non_finite = Vec::with_capacity(specs.len());
        for (spec, file) in specs.iter().zip(files) {
            let bytes = std::fs::read(&file.path).map_err(|e| self.read_error(sample, file, &e))?;
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
            let data = decode(self, sample, spec, file, &bytes)?;
            let values: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            non_finite.push(NonFinite::count(&values));
            // decode checked the length, so the shape always fits
            let tensor = ArrayD::from_shape_vec(IxDyn(&spec.shape), values)
                .map_err(|e| self.npy_error(sample, spec, file, e.to_string()))?;
            tensors.push(tensor);
        }
        Ok(LoadedSample {
            line: sample.line,
            tensors,
            non_finite,
            digest: hasher.finalize(),
        })
    }

    fn read_error(&self, sample: &Sample, file: &SampleFile, e: &std::io::Error) -> CalibError {
        CalibError::ReadSample {
            line: sample.line,
            path: file.path.clone(),
            list_dir: self.dir(),
            reason: e.to_string(),
            src: self.named_source(),
            span: file.span,
        }
    }

    fn npy_error(
        &self,
        sample: &Sample,
        spec: &InputSpec,
        file: &SampleFile,
        reason: String,
    ) -> CalibError {
        CalibError::Npy {
            line: sample.line,
            input: spec.name.clone(),
            path: file.path.clone(),
            reason,
            src: self.named_source(),
            span: file.span,
        }
    }

    fn size_error(
        &self,
        sample: &Sample,
        spec: &InputSpec,
        file: &SampleFile,
        found: u64,
    ) -> CalibError {
        CalibError::WrongSize {
            line: sample.line,
            input: spec.name.clone(),
            path: file.path.clone(),
            expected: spec.byte_count(),
            found,
            shape: spec.shape.clone(),
            src: self.named_source(),
            span: file.span,
        }
    }
}

fn is_npy(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// The little-endian `f32` payload of a file: all of it for raw files, the part after the header
/// for `.npy`. Checks size and (for `.npy`) dtype, order and shape.
fn decode<'b>(
    list: &InputList,
    sample: &Sample,
    spec: &InputSpec,
    file: &SampleFile,
    bytes: &'b [u8],
) -> Result<&'b [u8], CalibError> {
    let expected = spec.byte_count();
    if !is_npy(&file.path) {
        if bytes.len() as u64 != expected {
            return Err(list.size_error(sample, spec, file, bytes.len() as u64));
        }
        return Ok(bytes);
    }
    let header = npy::parse_header(bytes).map_err(|r| list.npy_error(sample, spec, file, r))?;
    check_npy_shape(list, sample, spec, file, &header.shape)?;
    let data = &bytes[header.data_offset..];
    if data.len() as u64 != expected {
        return Err(list.size_error(sample, spec, file, data.len() as u64));
    }
    Ok(data)
}

/// A `.npy` array may omit or add size-1 dims (a sample saved without its batch dim), but must
/// otherwise have the input's dims in the same order.
fn check_npy_shape(
    list: &InputList,
    sample: &Sample,
    spec: &InputSpec,
    file: &SampleFile,
    shape: &[usize],
) -> Result<(), CalibError> {
    let squeeze = |s: &[usize]| s.iter().copied().filter(|d| *d != 1).collect::<Vec<_>>();
    if squeeze(shape) != squeeze(&spec.shape) {
        return Err(list.npy_error(
            sample,
            spec,
            file,
            format!("its shape is {shape:?}, the input's is {:?}", spec.shape),
        ));
    }
    Ok(())
}

/// The cheap part of loading: existence, size, `.npy` header. Reads at most the header.
pub(super) fn check_file(
    list: &InputList,
    sample: &Sample,
    spec: &InputSpec,
    file: &SampleFile,
) -> Result<(), CalibError> {
    let read_err = |e: std::io::Error| list.read_error(sample, file, &e);
    let len = std::fs::metadata(&file.path).map_err(read_err)?.len();
    let expected = spec.byte_count();
    if !is_npy(&file.path) {
        if len != expected {
            return Err(list.size_error(sample, spec, file, len));
        }
        return Ok(());
    }
    let mut head = Vec::new();
    std::fs::File::open(&file.path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(read_err)?;
    let header = npy::parse_header(&head).map_err(|r| list.npy_error(sample, spec, file, r))?;
    check_npy_shape(list, sample, spec, file, &header.shape)?;
    let data_len = len.saturating_sub(header.data_offset as u64);
    if data_len != expected {
        return Err(list.size_error(sample, spec, file, data_len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_non_finite() {
        let n = NonFinite::count(&[1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0]);
        assert_eq!(n, NonFinite { nan: 1, inf: 2 });
        assert!(!n.is_clean());
        assert!(NonFinite::count(&[0.0, f32::MAX]).is_clean());
    }
}
