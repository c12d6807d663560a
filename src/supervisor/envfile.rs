//! The children's environment: `.env` files, `PORT` and `PATH`.
//!
//! Like goreman, the supervisor reads `.env` beside the Procfile when it
//! exists, or the files given with `-e` (repeatable or comma-separated; a file
//! named explicitly must exist). Files are read in order with `dotenvy`, so a
//! later file overrides an earlier one. The resulting variables are added on
//! top of the supervisor's own environment for every child; then each child
//! gets its own `PORT`, and the directory of the running executable is put in
//! front of `PATH` so a Procfile can say `localcluster member ...`.
//!
//! Nothing here touches the supervisor's own process environment: the result
//! is a list of pairs applied to each child's `Command`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A `.env` file that could not be read: `FILE:LINE: ...` for a line that
/// does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{path}{}: {source}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct EnvFileError {
    /// The file as named by the user.
    pub path: String,
    /// The 1-based line that does not parse, when dotenvy names one.
    pub line: Option<usize>,
    /// What dotenvy reported.
    #[source]
    pub source: dotenvy::Error,
}

/// The 1-based number of the first line of `path` holding the text dotenvy
/// could not parse (dotenvy reports that text, often only the value, and no
/// line number).
fn line_of(path: &Path, error: &dotenvy::Error) -> Option<usize> {
    let dotenvy::Error::LineParse(text, _) = error else {
        return None;
    };
    let first = text.lines().next()?.trim();
    if first.is_empty() {
        return None;
    }
    let content = std::fs::read_to_string(path).ok()?;
    // The whole line, or its value (after `KEY=`), is the text: dotenvy
    // reports the rest of the physical line from where it failed.
    let holds = |line: &str| {
        let line = line.trim();
        !line.starts_with('#')
            && (line == first
                || line
                    .split_once('=')
                    .is_some_and(|(_, value)| value.trim() == first))
    };
    content.lines().position(holds).map(|i| i + 1)
}

/// Which env files to read: those named with `-e`, or else `.env` in
/// `procfile_dir` if it exists.
pub fn env_files_to_load(explicit: &[PathBuf], procfile_dir: &Path) -> Vec<(PathBuf, bool)> {
    if explicit.is_empty() {
        vec![(procfile_dir.join(".env"), false)]
    } else {
        explicit.iter().map(|p| (p.clone(), true)).collect()
    }
}

/// Reads env files in order; `required == false` skips a missing file.
/// Later files override earlier ones; the order of first appearance is kept.
pub fn load(files: &[(PathBuf, bool)]) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for (path, required) in files {
        if !required && !path.exists() {
            continue;
        }
        let wrap = |source| EnvFileError {
            path: path.display().to_string(),
            line: line_of(path, &source),
            source,
        };
        for item in dotenvy::from_path_iter(path).map_err(wrap)? {
            let (key, value) = item.map_err(wrap)?;
            match vars.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => vars.push((key, value)),
            }
        }
    }
    Ok(vars)
}

/// `PATH` for the children: the executable's directory first, then `path`
/// (the `.env` value if it set one, else the supervisor's own).
pub fn child_path(exe_dir: Option<&Path>, path: Option<OsString>) -> Option<OsString> {
    let mut dirs: Vec<PathBuf> = exe_dir.map(Path::to_path_buf).into_iter().collect();
    if let Some(path) = &path {
        dirs.extend(std::env::split_paths(path));
    }
    if dirs.is_empty() {
        return None;
    }
    std::env::join_paths(dirs).ok().or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_files_override_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.env");
        let b = dir.path().join("b.env");
        std::fs::write(&a, "X=1\nY=\"two words\"\n# comment\n").unwrap();
        std::fs::write(&b, "X=3\nZ=z\n").unwrap();
        let vars = load(&[(a, true), (b, true)]).unwrap();
        let want = [("X", "3"), ("Y", "two words"), ("Z", "z")];
        let want: Vec<_> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(vars, want);
    }

    #[test]
    fn default_dotenv_is_optional_but_explicit_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let files = env_files_to_load(&[], dir.path());
        assert!(load(&files).unwrap().is_empty());
        let missing = dir.path().join("nope.env");
        let err = load(&env_files_to_load(&[missing], dir.path())).unwrap_err();
        assert!(err.to_string().contains("nope.env"), "{err}");
    }

    #[test]
    fn a_line_that_does_not_parse_is_named_by_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        let text = "# SPACE=a b c is wrong\nQUOTED=\"a b c\"\nGOOD=1\nSPACE=a b c\n";
        std::fs::write(&path, text).unwrap();
        let err = load(&[(path.clone(), true)]).unwrap_err();
        assert_eq!(err.line, Some(4));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}:4: ", path.display())),
            "{text}"
        );
    }

    #[test]
    fn exe_dir_goes_first_in_path() {
        let p = child_path(Some(Path::new("/opt/lc")), Some("/usr/bin:/bin".into()));
        assert_eq!(p, Some(OsString::from("/opt/lc:/usr/bin:/bin")));
        assert_eq!(child_path(None, None), None);
    }
}
