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

/// Turns a toml/serde error into a [`ConfigError`].
pub(crate) fn from_toml(path: &str, text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start);
    let message = error.message().trim().to_string();
    let kind = if message.starts_with("unknown field") || message.starts_with("unknown variant") {
        if message.starts_with("unknown field") {
            ConfigErrorKind::UnknownKey
        } else {
            ConfigErrorKind::BadValue
        }
    } else if message.starts_with("missing field") {
        ConfigErrorKind::MissingKey
    } else if message.starts_with("invalid")
        || message.contains("expected") && error_keys(error).is_some()
    {
        ConfigErrorKind::BadValue
    } else {
        ConfigErrorKind::Syntax
    };
    let mut field = error_keys(error).unwrap_or_default();
    // Name the key itself when serde names it in the message (unknown or missing field).
    for prefix in ["unknown field `", "missing field `"] {
        if let Some(key) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
        {
            field = if field.is_empty() {
                key.to_string()
            } else {
                format!("{field}.{key}")
            };
        }
    }
    if field.is_empty() && message.starts_with("duplicate key") {
        if let Some(key) = error.span().and_then(|span| text.get(span)) {
            field = key.trim().trim_matches('"').to_string();
        }
    }
    ConfigError::at(path, text, offset, kind, field, message)
}

/// The dotted key path toml recorded for a deserialization error, if any.
fn error_keys(error: &toml::de::Error) -> Option<String> {
    let mut bare = error.clone();
    bare.set_input(None);
    let rendered = bare.to_string();
    let keys = rendered
        .lines()
        .last()?
        .strip_prefix("in `")?
        .strip_suffix('`')?;
    Some(keys.to_string())
}
