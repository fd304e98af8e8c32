//! Configuration errors: every one names the file, the line and column, the field, and
//! what was expected.

use std::fmt;

/// What kind of mistake the file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// Not valid TOML.
    Syntax,
    /// A key holden does not know.
    UnknownKey,
    /// A key that is required is missing.
    MissingKey,
    /// A value of the wrong type or out of range.
    BadValue,
    /// Two services with the same name.
    DuplicateName,
    /// More services than slots.
    TooManyServices,
    /// A group the file names does not exist on this machine (start-up refuses it too).
    UnknownGroup,
    /// A cgroup limit needs a cgroup v2 controller that the services' cgroups cannot have on
    /// this machine (start-up refuses it too).
    MissingController,
    /// A local program or working directory the file names is missing or unusable on this
    /// machine (`--check` refuses it; start-up starts and the spawn fails).
    Missing,
    /// Not an error: something `--check` cannot know or that is probably a mistake.
    Warning,
}

/// A configuration error with its position (1-based line and column, in characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or the pseudo-name of the text) the error is in.
    pub path: String,
    /// 1-based line, 0 when the error has no position (I/O).
    pub line: usize,
    /// 1-based column, 0 when the error has no position.
    pub column: usize,
    /// The kind.
    pub kind: ConfigErrorKind,
    /// The dotted field name (`service.radio.stop_timeout`), empty when there is none.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error at byte offset `offset` of `text`.
    pub(crate) fn at(
        path: &str,
        text: &str,
        offset: usize,
        kind: ConfigErrorKind,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_column(text, offset);
        ConfigError {
            path: path.to_string(),
            line,
            column,
            kind,
            field: field.into(),
            message: message.into(),
        }
    }

    /// An error that has no position in the text (reading the file, command line).
    pub(crate) fn unplaced(
        path: &str,
        kind: ConfigErrorKind,
        field: &str,
        message: String,
    ) -> ConfigError {
        ConfigError {
            path: path.to_string(),
            line: 0,
            column: 0,
            kind,
            field: field.to_string(),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.path, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.path)?;
        }
        if self.kind == ConfigErrorKind::Warning {
            f.write_str("warning: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "`{}`: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Every error of a file (in file order), up to [`ConfigErrors::SHOWN_MAX`]: what
/// `Config::parse`, `load` and `check` return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The errors, sorted by line and column; never empty.
    pub errors: Vec<ConfigError>,
    /// Errors found beyond the first [`ConfigErrors::SHOWN_MAX`], not kept.
    pub omitted: usize,
}

impl ConfigErrors {
    /// Most errors kept (and shown) of one file.
    pub const SHOWN_MAX: usize = 32;

    /// One error.
    pub fn one(error: ConfigError) -> ConfigErrors {
        ConfigErrors {
            errors: vec![error],
            omitted: 0,
        }
    }

    /// Several errors, sorted into file order and capped. `None` when there are none.
    pub(crate) fn of(mut errors: Vec<ConfigError>) -> Option<ConfigErrors> {
        if errors.is_empty() {
            return None;
        }
        errors.sort_by_key(|e| (e.line, e.column));
        let omitted = errors.len().saturating_sub(Self::SHOWN_MAX);
        errors.truncate(Self::SHOWN_MAX);
        Some(ConfigErrors { errors, omitted })
    }

    /// The [`ConfigErrorKind::Missing`] problems of a check as errors (`--check`).
    pub fn of_missing(missing: &[ConfigError]) -> Option<ConfigErrors> {
        ConfigErrors::of(missing.to_vec())
    }

    /// The first error in the file.
    pub fn first(&self) -> &ConfigError {
        &self.errors[0]
    }
}

/// One error per line; then how many were not shown.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        if self.omitted > 0 {
            write!(
                f,
                "\n{}: {} more errors not shown (the first {} are)",
                self.first().path,
                self.omitted,
                Self::SHOWN_MAX
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> ConfigErrors {
        ConfigErrors::one(error)
    }
}
