//! A calibration's samples: the input list parsed, and its projection on each sample, so that
//! adding a line to the list reads (and runs) only the new sample. Shared by every stage that
//! runs a calibration's samples: statistics, and the means bias correction measures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::db::Db;
use super::error::{BuildError, display_path};
use super::inputs::{source_file, text_of};
use super::keys::{CalibrationKey, SampleKey};
use super::source::SourceFile;
use crate::calib::{CalibError, InputList, InputSpec, LoadedSample, Sample};
use crate::store::{Digest, KeyBuilder};

/// The input list, parsed.
#[salsa::tracked(returns(ref), no_eq)]
pub fn input_list(db: &dyn Db, list: SourceFile) -> Result<Arc<InputList>, BuildError> {
    let text = text_of(db, list, "input list")?;
    InputList::parse(Path::new(&display_path(list.path(db))), text)
        .map(Arc::new)
        .map_err(|e| BuildError::List(Arc::new(e)))
}

/// The number of samples of a calibration.
pub fn sample_count<'db>(
    db: &'db dyn Db,
    calibration: CalibrationKey<'db>,
) -> Result<usize, BuildError> {
    let list = input_list(db, calibration.list(db))
        .as_ref()
        .map_err(Clone::clone)?;
    Ok(list.samples.len())
}

/// One line of the input list as far as statistics care: its files (input name and path), and
/// the parsed line itself for reading the sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleLine {
    /// The files in the order written.
    pub files: Vec<(Option<String>, PathBuf)>,
    /// The line as parsed.
    pub sample: Sample,
    /// The list's path as given to the parser.
    pub list_path: PathBuf,
}

/// The projection of the input list on one sample: adding a line re-runs this for every
/// sample, but only the new one gets a new value, so only it is calibrated.
#[salsa::tracked(returns(ref))]
pub fn sample_line<'db>(db: &'db dyn Db, sample: SampleKey<'db>) -> Option<SampleLine> {
    let list = input_list(db, sample.calibration(db).list(db))
        .as_ref()
        .ok()?;
    let line = list.samples.get(sample.index(db))?;
    Some(SampleLine {
        files: line
            .files
            .iter()
            .map(|f| (f.input.clone(), f.path.clone()))
            .collect(),
        sample: line.clone(),
        list_path: list.path.clone(),
    })
}

/// [`sample_line`], or the reason there is none: the list's own error when it failed to parse,
/// or that it changed (shrank) under the build.
pub(super) fn listed_sample<'db>(
    db: &'db dyn Db,
    sample: SampleKey<'db>,
) -> Result<&'db SampleLine, BuildError> {
    match sample_line(db, sample) {
        Some(line) => Ok(line),
        None => {
            let calibration = sample.calibration(db);
            input_list(db, calibration.list(db))
                .as_ref()
                .map_err(Clone::clone)?;
            Err(BuildError::Changed {
                path: display_path(calibration.list(db).path(db)),
            })
        }
    }
}

/// The input list's own diagnostic for a sample file that cannot be read.
pub(super) fn missing_sample(
    db: &dyn Db,
    sample: SampleKey<'_>,
    path: &Path,
    file: SourceFile,
) -> BuildError {
    let reason = match file.contents(db) {
        Err(e) => e.to_string(),
        Ok(_) => "unreadable".to_string(),
    };
    let calibration = sample.calibration(db);
    match input_list(db, calibration.list(db)) {
        Ok(list) => {
            let entry = &list.samples[sample.index(db)];
            let span = entry
                .files
                .iter()
                .find(|f| f.path == path)
                .map(|f| f.span)
                .unwrap_or(entry.span);
            BuildError::List(Arc::new(CalibError::ReadSample {
                line: entry.line,
                path: PathBuf::from(display_path(path)),
                list_dir: list.dir(),
                reason,
                src: list.named_source(),
                span,
            }))
        }
        Err(e) => e.clone(),
    }
}

/// Each file of a sample with its input name and digest; a file that cannot be read is the
/// input list's own diagnostic, pointing at its line.
pub fn sample_file_digests<'a>(
    db: &dyn Db,
    sample: SampleKey<'_>,
    line: &'a SampleLine,
) -> Result<Vec<(&'a Option<String>, Digest)>, BuildError> {
    let mut digests = Vec::with_capacity(line.files.len());
    for (input, path) in &line.files {
        let file = source_file(db, path);
        match file.digest(db) {
            Some(digest) => digests.push((input, digest)),
            None => return Err(missing_sample(db, sample, path, file)),
        }
    }
    Ok(digests)
}

/// Reads one sample's files into tensors for a runner with `specs`, through a one-line list
/// built from the projection, and checks they still hold the bytes the build digested.
pub fn load_sample(
    db: &dyn Db,
    sample: SampleKey<'_>,
    line: &SampleLine,
    specs: &[InputSpec],
) -> Result<LoadedSample, BuildError> {
    let calibration = sample.calibration(db);
    // Read through a one-line list built from the projection, not the whole parsed list: a
    // dependency on the list would re-run every sample whenever a line is added.
    let one = InputList {
        path: line.list_path.clone(),
        outputs: Default::default(),
        samples: vec![line.sample.clone()],
        source: Arc::from(""),
    };
    let entry = &one.samples[0];
    let read = one.load(entry, specs).ok().zip(one.bind(entry, specs).ok());
    let (loaded, bound) = match read {
        Some(read) => read,
        None => {
            // Failed: the whole list's diagnostic points at the right line and span.
            let list = input_list(db, calibration.list(db))
                .as_ref()
                .map_err(Clone::clone)?;
            let error = match list.samples.get(sample.index(db)) {
                Some(entry) => list.load(entry, specs).err(),
                None => None,
            };
            return Err(match error {
                Some(e) => BuildError::List(Arc::new(e)),
                None => BuildError::Changed {
                    path: display_path(&line.list_path),
                },
            });
        }
    };
    let mut expected = blake3::Hasher::new();
    for file in bound {
        let Ok(bytes) = source_file(db, &file.path).bytes(db) else {
            return Err(BuildError::Changed {
                path: display_path(&file.path),
            });
        };
        expected.update(&(bytes.len() as u64).to_le_bytes());
        expected.update(bytes);
    }
    if expected.finalize() != loaded.digest {
        return Err(BuildError::Changed {
            path: display_path(&line.files[0].1),
        });
    }
    Ok(loaded)
}

/// Adds a sample's files to a store key: per file, its input name (empty for a bare path) and
/// its digest, in the order the line gives them.
pub fn key_files(mut key: KeyBuilder, digests: &[(&Option<String>, Digest)]) -> KeyBuilder {
    for (input, digest) in digests {
        key = key
            .str("input", input.as_deref().unwrap_or(""))
            .digest("file", digest);
    }
    key
}
