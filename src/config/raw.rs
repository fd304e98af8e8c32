//! The file as serde reads it: every value we validate ourselves is `Spanned` so that its
//! error can point at it.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub slots: Option<Spanned<i64>>,
    pub log_level: Option<Spanned<String>>,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub control: RawControl,
    #[serde(default)]
    pub service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub socket: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub reconnect_initial: Option<Spanned<String>>,
    pub reconnect_max: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShutdown {
    pub stop_services: Option<bool>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    pub socket: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
    pub read_group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackoff {
    pub initial: Spanned<String>,
    pub factor: Option<Spanned<f64>>,
    pub max: Spanned<String>,
    pub reset_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStartLimit {
    pub burst: Spanned<i64>,
    pub interval: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub name: Spanned<String>,
    pub argv: Spanned<Vec<Spanned<String>>>,
    pub partition: Option<Spanned<String>>,
    pub env: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub working_directory: Option<Spanned<String>>,
    pub uid: Option<Spanned<i64>>,
    pub gid: Option<Spanned<i64>>,
    pub restart: Option<Spanned<String>>,
    pub restart_delay: Option<Spanned<String>>,
    pub backoff: Option<Spanned<RawBackoff>>,
    pub start_limit: Option<Spanned<RawStartLimit>>,
    /// A name or a number: checked in `validate` so that the error can say so.
    pub stop_signal: Option<Spanned<toml::Value>>,
    pub stop_timeout: Option<Spanned<String>>,
    pub enabled: Option<bool>,
}
