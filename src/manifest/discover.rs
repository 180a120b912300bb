//! Monorepo discovery: which `quant.toml` files a `quant build ROOT` builds.
//!
//! Either the members a root manifest's `[workspace] members` lists, or every `quant.toml` below
//! ROOT, skipping `.git`, `target`, output and cache folders and what `.gitignore` files ignore.
//! It only finds manifests; it never resolves them.
//!
//! The `.gitignore` support is a documented subset of git's: blank lines and `#` comments,
//! `!` negation (last match wins), a trailing `/` for folders only, patterns with a `/` anchored
//! to the `.gitignore`'s folder and others matching a name at any depth, `*`, `?` and `**`.
//! Not supported: character classes (`[abc]`), escapes, `.git/info/exclude` and the global
//! excludes file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::NamedSource;
use walkdir::WalkDir;

use super::raw::{self, Problems};
use super::{DEFAULT_OUT_DIR, MANIFEST_FILE, ManifestError};

/// Folders never searched for manifests: version control, cargo output, our outputs and cache.
pub const SKIPPED_FOLDERS: &[&str] = &[".git", "target", DEFAULT_OUT_DIR, ".quant"];

/// The manifests to build for `root`, sorted.
///
/// `root` may be a manifest file (just that one), or a folder: if `root/quant.toml` has
/// `[workspace] members = [...]`, the members' manifests (plus the root manifest itself when it
/// declares models or targets); otherwise every `quant.toml` below `root`. A root manifest with
/// syntax or key errors is reported (its `[workspace]` cannot be trusted); other manifests are
/// only found here, and reported when they are loaded.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    if root.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let read_error = |path: &Path, source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(root).map_err(|e| read_error(root, e))?;
    if !metadata.is_dir() {
        return Err(read_error(
            root,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither a file nor a folder",
            ),
        ));
    }
    let root_manifest = root.join(MANIFEST_FILE);
    if root_manifest.is_file() {
        let text =
            std::fs::read_to_string(&root_manifest).map_err(|e| read_error(&root_manifest, e))?;
        let mut problems = Problems::new(NamedSource::new(
            root_manifest.display().to_string(),
            Arc::from(text.as_str()),
        ));
        let parsed = raw::parse(&mut problems, &text);
        if let Some(raw) = parsed.filter(|_| problems.list.is_empty())
            && let Some(members) = &raw.workspace_members
        {
            let mut found = Vec::new();
            if !raw.models.is_empty() || !raw.targets.is_empty() {
                found.push(root_manifest.clone());
            }
            for member in members {
                let matched = expand_member(root, member.get_ref());
                if matched.is_empty() {
                    let diagnostic = problems
                        .at(
                            "quant::manifest::workspace",
                            format!("workspace member `{}` matches no folder with a quant.toml", member.get_ref()),
                            member.span(),
                            "no manifest here",
                        )
                        .with_help("members are folders relative to the workspace root, `*` matching one folder name; each needs a quant.toml");
                    problems.push(diagnostic);
                }
                found.extend(matched);
            }
            if !problems.list.is_empty() {
                return Err(ManifestError::Invalid {
                    path: root_manifest,
                    problems: problems.list,
                });
            }
            found.sort();
            found.dedup();
            return Ok(found);
        }
        if !problems.list.is_empty() {
            problems
                .list
                .sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
            return Err(ManifestError::Invalid {
                path: root_manifest,
                problems: problems.list,
            });
        }
    }
    Ok(walk(root))
}

/// Manifests of the folders `pattern` names below `root`.
fn expand_member(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let mut folders = vec![root.to_path_buf()];
    for segment in pattern.split('/').filter(|s| !s.is_empty() && *s != ".") {
        let mut next = Vec::new();
        for folder in &folders {
            if segment.contains(['*', '?']) {
                let Ok(entries) = std::fs::read_dir(folder) else {
                    continue;
                };
                let mut names: Vec<_> = entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter(|e| wildcard(segment, &e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect();
                names.sort();
                next.extend(names);
            } else {
                next.push(folder.join(segment));
            }
        }
        folders = next;
    }
    folders
        .into_iter()
        .map(|f| f.join(MANIFEST_FILE))
        .filter(|m| m.is_file())
        .collect()
}

/// `*` and `?` within one path segment, `**` across segments.
fn wildcard(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p {
            [] => t.is_empty(),
            [b'*', b'*', rest @ ..] => {
                let rest = rest.strip_prefix(b"/").unwrap_or(rest);
                (0..=t.len()).any(|i| go(rest, &t[i..]))
            }
            [b'*', rest @ ..] => {
                let stop = t.iter().position(|c| *c == b'/').unwrap_or(t.len());
                (0..=stop).any(|i| go(rest, &t[i..]))
            }
            [b'?', rest @ ..] => matches!(t, [c, ..] if *c != b'/') && go(rest, &t[1..]),
            [c, rest @ ..] => matches!(t, [d, ..] if d == c) && go(rest, &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// One `.gitignore` line.
#[derive(Debug)]
struct IgnoreRule {
    pattern: String,
    negate: bool,
    dir_only: bool,
    anchored: bool,
}

fn parse_gitignore(text: &str) -> Vec<IgnoreRule> {
    text.lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (negate, line) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let (dir_only, line) = match line.strip_suffix('/') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let anchored = line.contains('/');
            IgnoreRule {
                pattern: line.trim_start_matches('/').to_string(),
                negate,
                dir_only,
                anchored,
            }
        })
        .collect()
}

impl IgnoreRule {
    fn matches(&self, relative: &str, is_dir: bool) -> bool {
        if self.dir_only && !is_dir {
            return false;
        }
        if self.anchored {
            wildcard(&self.pattern, relative)
        } else {
            let name = relative.rsplit('/').next().unwrap_or(relative);
            wildcard(&self.pattern, name)
        }
    }
}

/// Every `quant.toml` below `root`, sorted.
fn walk(root: &Path) -> Vec<PathBuf> {
    // (folder, its .gitignore rules); only ancestors of the current entry stay on the stack.
    let mut ignores: Vec<(PathBuf, Vec<IgnoreRule>)> = Vec::new();
    // Custom `out_dir`s of manifests found so far.
    let mut out_dirs: Vec<PathBuf> = Vec::new();
    let mut found = Vec::new();
    // Files before folders, so a folder's manifest and .gitignore are seen before its children.
    let mut entries = WalkDir::new(root)
        .sort_by(|a, b| {
            let key = |e: &walkdir::DirEntry| (e.file_type().is_dir(), e.file_name().to_owned());
            key(a).cmp(&key(b))
        })
        .into_iter();
    while let Some(entry) = entries.next() {
        let Ok(entry) = entry else {
            continue;
        };
        let path = entry.path();
        let is_dir = entry.file_type().is_dir();
        ignores.retain(|(folder, _)| path.starts_with(folder) && path != folder);
        if entry.depth() > 0 {
            let name = entry.file_name().to_string_lossy();
            let skipped = is_dir
                && (SKIPPED_FOLDERS.contains(&name.as_ref()) || out_dirs.iter().any(|d| d == path));
            if skipped || is_ignored(&ignores, path, is_dir) {
                if is_dir {
                    entries.skip_current_dir();
                }
                continue;
            }
        }
        if is_dir {
            if let Ok(text) = std::fs::read_to_string(path.join(".gitignore")) {
                ignores.push((path.to_path_buf(), parse_gitignore(&text)));
            }
            let manifest = path.join(MANIFEST_FILE);
            if manifest.is_file() {
                if let Some(out_dir) = declared_out_dir(&manifest) {
                    out_dirs.push(path.join(out_dir));
                }
                found.push(manifest);
            }
        }
    }
    found.sort();
    found
}

fn is_ignored(ignores: &[(PathBuf, Vec<IgnoreRule>)], path: &Path, is_dir: bool) -> bool {
    let mut ignored = false;
    for (folder, rules) in ignores {
        let Ok(relative) = path.strip_prefix(folder) else {
            continue;
        };
        let relative = relative.to_string_lossy().replace('\\', "/");
        for rule in rules {
            if rule.matches(&relative, is_dir) {
                ignored = !rule.negate;
            }
        }
    }
    ignored
}

/// A manifest's `[pipeline] out_dir`, when it parses; discovery tolerates broken manifests (the
/// build reports them).
fn declared_out_dir(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let mut problems = Problems::new(NamedSource::new(String::new(), Arc::from("")));
    let raw = raw::parse(&mut problems, &text)?;
    raw.pipeline.out_dir.map(|d| d.into_inner())
}

/// The `quant build` flag that lets manifests write outside their own folder and read files
/// outside the build root.
pub const ALLOW_OUTSIDE_ROOT_FLAG: &str = "--allow-outside-root";

/// Checks the manifests [`discover`] found under `root` against `root` and each other, before
/// anything is read or written:
///
/// - a manifest's `out_dir` must stay inside the manifest's own folder, and the models, input
///   lists (and the samples they list), overrides and labels it names inside `root`, unless
///   `allow_outside` ([`ALLOW_OUTSIDE_ROOT_FLAG`]): a manifest found in a monorepo must not
///   overwrite or read another project's files by a `../..` path;
/// - two manifests must not share a pipeline name (reports and `--json` name units by it).
///
/// One error per manifest with problems, in `manifests` order. Paths are compared after
/// resolving `..` and symbolic links, so neither leads out unnoticed.
pub fn check_workspace(
    root: &Path,
    manifests: &[PathBuf],
    allow_outside: bool,
) -> Vec<ManifestError> {
    // `quant build path/to/quant.toml`: the root is the manifest's folder.
    let root = if root.is_file() {
        real(folder_of(root))
    } else {
        real(root)
    };
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    let mut errors = Vec::new();
    for manifest in manifests {
        let Ok(text) = std::fs::read_to_string(manifest) else {
            continue; // the build reports unreadable manifests itself
        };
        let mut problems = Problems::new(NamedSource::new(
            manifest.display().to_string(),
            Arc::from(text.as_str()),
        ));
        let Some(raw) = raw::parse(&mut problems, &text) else {
            continue;
        };
        problems.list.clear(); // syntax problems are the build's to report
        let folder = folder_of(manifest);
        let name = raw
            .pipeline
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .or_else(|| {
                real(folder)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
            let span = raw.pipeline.name.as_ref().map_or(0..0, |n| n.span());
            let diagnostic = problems
                .at(
                    "quant::manifest::duplicate_pipeline",
                    format!(
                        "pipeline `{name}` is also the name of {}",
                        first.display()
                    ),
                    span,
                    "same name",
                )
                .with_help(format!(
                    "pipeline names must be unique under one build root: set `[pipeline] name` in {} or {}",
                    first.display(),
                    manifest.display()
                ));
            problems.push(diagnostic);
        } else {
            names.push((name, manifest.clone()));
        }
        if !allow_outside {
            confine(&mut problems, &raw, folder, &root);
        }
        if !problems.list.is_empty() {
            errors.push(ManifestError::Invalid {
                path: manifest.clone(),
                problems: problems.list,
            });
        }
    }
    errors
}

/// The folder a file is in; `.` for a bare file name.
fn folder_of(file: &Path) -> &Path {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Problems for every path of `raw` that leads out: `out_dir` out of `folder`, inputs out of
/// `root`.
fn confine(problems: &mut Problems, raw: &raw::RawManifest, folder: &Path, root: &Path) {
    let own = real(folder);
    let help = format!(
        "paths in a manifest found under a build root stay inside it; pass {ALLOW_OUTSIDE_ROOT_FLAG} to allow this one"
    );
    if let Some(out_dir) = &raw.pipeline.out_dir {
        let target = real(&folder.join(out_dir.get_ref()));
        if !target.starts_with(&own) {
            let diagnostic = problems
                .at(
                    "quant::manifest::outside",
                    format!(
                        "`out_dir` resolves to {}, outside the manifest's folder {}",
                        target.display(),
                        own.display()
                    ),
                    out_dir.span(),
                    "writes outside the manifest's folder",
                )
                .with_help(help.clone());
            problems.push(diagnostic);
        }
    }
    let mut inputs: Vec<(&str, &toml::Spanned<String>)> = Vec::new();
    inputs.extend(
        raw.models
            .iter()
            .filter_map(|m| Some(("model", m.path.as_ref()?))),
    );
    inputs.extend(
        raw.overrides
            .iter()
            .filter_map(|o| Some(("overrides", o.path.as_ref()?))),
    );
    inputs.extend(
        raw.eval
            .iter()
            .filter_map(|e| Some(("labels", e.labels.as_ref()?))),
    );
    let lists = raw
        .calibration
        .iter()
        .filter_map(|c| c.input_list.as_ref())
        .chain(raw.eval.iter().filter_map(|e| e.input_list.as_ref()));
    inputs.extend(lists.clone().map(|l| ("input list", l)));
    for (what, given) in inputs {
        let path = real(&folder.join(given.get_ref()));
        if !path.starts_with(root) {
            let diagnostic = problems
                .at(
                    "quant::manifest::outside",
                    format!(
                        "{what} `{}` resolves to {}, outside the build root {}",
                        given.get_ref(),
                        path.display(),
                        root.display()
                    ),
                    given.span(),
                    "reads outside the build root",
                )
                .with_help(help.clone());
            problems.push(diagnostic);
        }
    }
    // The samples a list names are read too: one problem per list, naming the first.
    for list in lists {
        let path = folder.join(list.get_ref());
        let Ok(parsed) = crate::calib::InputList::read(&path) else {
            continue; // the build reports a missing or broken list
        };
        let outside = parsed
            .samples
            .iter()
            .flat_map(|s| s.files.iter().map(move |f| (s.line, &f.path)));
        let mut outside = outside.filter(|(_, p)| !real(p).starts_with(root));
        if let Some((line, sample)) = outside.next() {
            let more = outside.count();
            let diagnostic = problems
                .at(
                    "quant::manifest::outside",
                    format!(
                        "input list `{}` line {line} reads {}, outside the build root {}{}",
                        list.get_ref(),
                        real(sample).display(),
                        root.display(),
                        if more > 0 {
                            format!(" (and {more} more)")
                        } else {
                            String::new()
                        }
                    ),
                    list.span(),
                    "lists samples outside the build root",
                )
                .with_help(help.clone());
            problems.push(diagnostic);
        }
    }
}

/// `path` made absolute with `..` and symbolic links resolved: the deepest existing ancestor is
/// canonicalized and the rest appended lexically, so paths that do not exist yet (an output
/// folder) compare like those that do.
fn real(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut lexical = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            return rest.iter().rev().fold(canonical, |p, r| p.join(r));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_stay_within_a_segment_unless_doubled() {
        assert!(wildcard("models/*", "models/cls"));
        assert!(!wildcard("models/*", "models/cls/sub"));
        assert!(wildcard("**/build", "a/b/build"));
        assert!(wildcard("**/build", "build"));
        assert!(wildcard("*.onnx", "cls.onnx"));
        assert!(!wildcard("?.onnx", "ab.onnx"));
    }

    #[test]
    fn gitignore_rules_follow_git_for_the_supported_subset() {
        let rules = parse_gitignore("# comment\n\nscratch/\n/build\n!keep\n*.tmp\n");
        let ignored = |path: &str, is_dir| {
            let mut out = false;
            for rule in &rules {
                if rule.matches(path, is_dir) {
                    out = !rule.negate;
                }
            }
            out
        };
        assert!(ignored("a/scratch", true));
        assert!(
            !ignored("a/scratch", false),
            "trailing slash matches folders only"
        );
        assert!(ignored("build", true));
        assert!(
            !ignored("a/build", true),
            "a leading slash anchors the pattern"
        );
        assert!(ignored("x.tmp", false));
        assert!(!ignored("keep", true));
    }
}
