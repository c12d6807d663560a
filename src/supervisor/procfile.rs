//! Procfile parsing, in the format goreman and foreman read.
//!
//! A Procfile lists one process per line as `name: command`. Blank lines and
//! lines whose first non-blank character is `#` are ignored, and so is a
//! byte-order mark at the start. A name is made of
//! ASCII letters, digits, `_` and `-`; the command is everything after the
//! first `:`, trimmed, and is later run through `sh -c`.
//!
//! Unlike goreman, which silently skips lines it does not understand, this
//! parser refuses a malformed or duplicate entry and says where it is:
//! `Procfile:3: duplicate process name "m1" (first defined on line 1)`.
//!
//! Invariants of a parsed [`Procfile`]: at least one entry, names unique and
//! valid, commands non-empty, entries in file order (which fixes each
//! process's `PORT`, see [`Procfile::port_of`]).

use std::fmt;

/// One `name: command` line of a Procfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Process name (letters, digits, `_`, `-`).
    pub name: String,
    /// Shell command, trimmed, never empty.
    pub command: String,
    /// 1-based line number the entry came from (for messages).
    pub line: usize,
}

/// A parsed Procfile: its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Procfile {
    /// Entries in file order; names are unique.
    pub entries: Vec<Entry>,
}

/// Why a Procfile line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The line has no `:` separating name and command.
    MissingColon,
    /// Nothing before the `:`.
    EmptyName,
    /// The name has a character other than letters, digits, `_` or `-`.
    InvalidName(String),
    /// Nothing after the `:`.
    EmptyCommand(String),
    /// The name was already used on an earlier line.
    Duplicate { name: String, first_line: usize },
    /// The file has no process at all.
    NoProcesses,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::MissingColon => write!(f, "expected \"name: command\""),
            Reason::EmptyName => write!(f, "missing process name before ':'"),
            Reason::InvalidName(name) => write!(
                f,
                "invalid process name {name:?} (use letters, digits, '_' and '-')"
            ),
            Reason::EmptyCommand(name) => write!(f, "empty command for process {name:?}"),
            Reason::Duplicate { name, first_line } => write!(
                f,
                "duplicate process name {name:?} (first defined on line {first_line})"
            ),
            Reason::NoProcesses => write!(f, "no processes defined"),
        }
    }
}

/// A refused Procfile: file name, 1-based line number and reason.
///
/// Displays as `FILE:LINE: REASON`, the usual compiler-style location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct ParseError {
    /// The file name as given by the user (used only for the message).
    pub file: String,
    /// 1-based line number; for [`Reason::NoProcesses`] the last line.
    pub line: usize,
    /// What is wrong with the line.
    pub reason: Reason,
}

/// Whether `name` is a valid process name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Procfile {
    /// Parses Procfile `text`; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Procfile, ParseError> {
        let mut entries: Vec<Entry> = Vec::new();
        let err = |line: usize, reason: Reason| ParseError {
            file: file.to_string(),
            line,
            reason,
        };
        // A byte-order mark, as some editors write, is not part of a name.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw).trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, command)) = line.split_once(':') else {
                return Err(err(line_no, Reason::MissingColon));
            };
            let (name, command) = (name.trim(), command.trim());
            if name.is_empty() {
                return Err(err(line_no, Reason::EmptyName));
            }
            if !is_valid_name(name) {
                return Err(err(line_no, Reason::InvalidName(name.to_string())));
            }
            if command.is_empty() {
                return Err(err(line_no, Reason::EmptyCommand(name.to_string())));
            }
            if let Some(first) = entries.iter().find(|e| e.name == name) {
                let reason = Reason::Duplicate {
                    name: name.to_string(),
                    first_line: first.line,
                };
                return Err(err(line_no, reason));
            }
            entries.push(Entry {
                name: name.to_string(),
                command: command.to_string(),
                line: line_no,
            });
        }
        if entries.is_empty() {
            return Err(err(text.lines().count().max(1), Reason::NoProcesses));
        }
        Ok(Procfile { entries })
    }

    /// Renders the Procfile back to text, one `name: command` per line.
    pub fn render(&self) -> String {
        self.entries
            .iter()
            .map(|e| format!("{}: {}\n", e.name, e.command))
            .collect()
    }

    /// The `PORT` goreman gives the process at `index` (Procfile order):
    /// `base`, then 100 more for each following process. `None` when it
    /// would not fit in a port number.
    pub fn port_of(base: u16, index: usize) -> Option<u16> {
        let port = u32::from(base).checked_add(u32::try_from(index).ok()?.checked_mul(100)?)?;
        u16::try_from(port).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Procfile, ParseError> {
        Procfile::parse(text, "Procfile")
    }

    #[test]
    fn parses_entries_comments_and_blank_lines() {
        let text =
            "# cluster\n\nm1: localcluster member --name m1\r\n  m-2_b :  sleep 10  \n#m3: x\n";
        let pf = parse(text).unwrap();
        assert_eq!(
            pf.entries,
            vec![
                Entry {
                    name: "m1".into(),
                    command: "localcluster member --name m1".into(),
                    line: 3
                },
                Entry {
                    name: "m-2_b".into(),
                    command: "sleep 10".into(),
                    line: 4
                },
            ]
        );
    }

    #[test]
    fn command_may_contain_colons() {
        let pf = parse("web: curl http://127.0.0.1:2379/health").unwrap();
        assert_eq!(pf.entries[0].command, "curl http://127.0.0.1:2379/health");
    }

    #[test]
    fn duplicate_name_is_refused_with_line_number() {
        let e = parse("m1: a\nm2: b\nm1: c\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Procfile:3: duplicate process name \"m1\" (first defined on line 1)"
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_name() {
        let p = Procfile::parse("\u{feff}web: run\n", "Procfile").unwrap();
        assert_eq!(p.entries[0].name, "web");
    }

    #[test]
    fn malformed_lines_are_refused_with_reason() {
        let cases = [
            ("a: x\njust words\n", 2, "expected \"name: command\""),
            (": x\n", 1, "missing process name before ':'"),
            ("we b: x\n", 1, "invalid process name \"we b\""),
            ("a.b: x\n", 1, "invalid process name \"a.b\""),
            ("\n\nweb:   \n", 3, "empty command for process \"web\""),
            ("# only a comment\n\n", 2, "no processes defined"),
            ("", 1, "no processes defined"),
        ];
        for (text, line, reason) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(e.to_string().contains(reason), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("Procfile:{line}: ")));
        }
    }

    #[test]
    fn ports_follow_goreman() {
        assert_eq!(Procfile::port_of(5000, 0), Some(5000));
        assert_eq!(Procfile::port_of(5000, 2), Some(5200));
        assert_eq!(Procfile::port_of(65500, 1), None);
    }

    /// A valid entry: name and a command with no newline, not starting with
    /// whitespace and not ending with it.
    fn entry() -> impl Strategy<Value = (String, String)> {
        (
            "[A-Za-z0-9_-]{1,12}",
            "[a-zA-Z0-9./$=:'\"#-][ a-zA-Z0-9./$=:'\"#|&;-]{0,30}[a-zA-Z0-9]",
        )
    }

    /// Lines that must be ignored between entries.
    fn filler() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("   ".to_string()),
            "# [ -~]{0,20}",
            "  #[ -~]{0,20}",
        ]
    }

    proptest! {
        #[test]
        fn valid_procfiles_round_trip(
            entries in proptest::collection::vec((entry(), proptest::collection::vec(filler(), 0..3)), 1..8)
        ) {
            let mut seen = std::collections::HashSet::new();
            let entries: Vec<_> = entries.into_iter().filter(|((n, _), _)| seen.insert(n.clone())).collect();
            let mut text = String::new();
            for ((name, command), fill) in &entries {
                for f in fill {
                    text.push_str(f);
                    text.push('\n');
                }
                text.push_str(&format!("{name}: {command}\n"));
            }
            let pf = parse(&text).unwrap();
            let got: Vec<_> = pf.entries.iter().map(|e| (e.name.clone(), e.command.clone())).collect();
            let want: Vec<_> = entries.iter().map(|(e, _)| e.clone()).collect();
            prop_assert_eq!(&got, &want);
            // Rendering and parsing again gives the same processes.
            let again = parse(&pf.render()).unwrap();
            let got2: Vec<_> = again.entries.iter().map(|e| (e.name.clone(), e.command.clone())).collect();
            prop_assert_eq!(got2, want);
        }

        #[test]
        fn arbitrary_text_never_panics_and_refusals_say_where(
            lines in proptest::collection::vec(prop_oneof![
                "[a-z_-]{0,6}:[ \t]*[ -~]{0,10}",
                "[ \t]*[a-zA-Z0-9#:=. \t\r\u{e9}\u{3000}-]{0,14}",
                ".{0,16}",
            ], 0..8),
            crlf in any::<bool>(),
        ) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            let line_count = text.split('\n').count();
            match Procfile::parse(&text, "Procfile.test") {
                Ok(pf) => {
                    prop_assert!(!pf.entries.is_empty());
                    let mut names = std::collections::HashSet::new();
                    for e in &pf.entries {
                        prop_assert!(is_valid_name(&e.name), "{e:?}");
                        prop_assert!(names.insert(e.name.clone()), "{e:?} twice");
                        prop_assert!(!e.command.is_empty() && !e.command.contains('\n'), "{e:?}");
                        prop_assert!((1..=line_count).contains(&e.line), "{e:?}");
                    }
                    // What was read renders back to the same processes.
                    let again = Procfile::parse(&pf.render(), "Procfile.test").unwrap();
                    let pairs = |p: &Procfile| -> Vec<(String, String)> {
                        p.entries.iter().map(|e| (e.name.clone(), e.command.clone())).collect()
                    };
                    prop_assert_eq!(pairs(&again), pairs(&pf));
                }
                Err(e) => {
                    prop_assert!((1..=line_count).contains(&e.line), "{e} in {text:?}");
                    let prefix = format!("Procfile.test:{}: ", e.line);
                    prop_assert!(e.to_string().starts_with(&prefix), "{e}");
                }
            }
        }

        #[test]
        fn malformed_line_is_reported_at_its_line(
            entries in proptest::collection::vec(entry(), 1..6),
            bad in prop_oneof!["[a-z ]{1,10}", "[a-z]{1,5}[.!@ ][a-z]{1,5}: x", "[a-z]{1,8}:[ ]*"],
            at in 0usize..6,
        ) {
            let mut lines: Vec<String> = entries
                .iter()
                .enumerate()
                .map(|(i, (n, c))| format!("{n}{i}x: {c}"))
                .collect();
            let at = at.min(lines.len());
            // A line of only spaces is blank, hence valid: force content.
            let bad = if bad.trim().is_empty() { "oops".to_string() } else { bad };
            lines.insert(at, bad);
            let text = lines.join("\n");
            let e = parse(&text).unwrap_err();
            prop_assert_eq!(e.line, at + 1, "{}", e);
        }
    }
}
