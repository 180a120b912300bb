//! The smallest query chain that shows early cutoff: a file → its lines → one value per line.
//!
//! It is the executable specification of the shape the real chain follows (a coarse query,
//! then a per-item projection that backdates, then per-item work): edit one line and exactly one
//! [`line_value`] re-executes, as editing one override must re-encode exactly one tensor. The
//! engine's tests drive it; it must not grow product logic.

use super::db::Db;
use super::source::{FileError, SourceFile};

pub use line::Line;

// Salsa generates the constructor and getters without docs; the fields are documented.
#[allow(missing_docs)]
mod line {
    use super::SourceFile;

    /// One line of a file, by position: the key of the per-line queries.
    #[salsa::interned(debug)]
    pub struct Line<'db> {
        /// The file the line belongs to.
        #[returns(copy)]
        pub file: SourceFile,
        /// The zero-based line number.
        #[returns(copy)]
        pub index: usize,
    }
}

/// The file's lines (the coarse query: re-runs whenever any byte of the file changes).
#[salsa::tracked(returns(ref))]
pub fn parsed_lines(db: &dyn Db, file: SourceFile) -> Result<Vec<String>, FileError> {
    let bytes = file.bytes(db)?;
    Ok(String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The text of one line, `None` past the end or when the file cannot be read (the projection:
/// it re-runs with the file but returns an equal value for untouched lines, which backdates it
/// and spares everything downstream).
#[salsa::tracked]
pub fn line_text<'db>(db: &'db dyn Db, line: Line<'db>) -> Option<String> {
    let lines = parsed_lines(db, line.file(db)).as_ref().ok()?;
    lines.get(line.index(db)).cloned()
}

/// The per-line work: here, the sum of the integers on the line (non-numbers count as 0).
#[salsa::tracked]
pub fn line_value<'db>(db: &'db dyn Db, line: Line<'db>) -> i64 {
    line_text(db, line)
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|word| word.parse::<i64>().ok())
        .sum()
}

/// The sum of every line's value (the merge at the end of the chain).
#[salsa::tracked]
pub fn file_total(db: &dyn Db, file: SourceFile) -> Result<i64, FileError> {
    let count = parsed_lines(db, file).as_ref().map_err(Clone::clone)?.len();
    Ok((0..count)
        .map(|index| line_value(db, Line::new(db, file, index)))
        .sum())
}
