//! The validated policy's own settings: what happens to each PII class and the body limits.
//! The document as written, and how it is read, is [`crate::policy_doc`].
use crate::pii::{PerClass, PiiClass};
use crate::tokens::Mode;

/// Policy format version this build reads.
pub const POLICY_VERSION: u32 = 1;
/// Default largest response body the filter buffers (8 MiB: the largest SP-API pages — 100 Direct
/// Fulfillment orders, label batches — stay well below it).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
pub(crate) const MAX_BODY_BYTES_CEILING: u64 = 64 * 1024 * 1024;
/// Default of Envoy's `per_connection_buffer_limit_bytes`, rendered from the policy: the largest
/// body Envoy holds for the filter, before and after the rewrite.
pub const DEFAULT_BUFFER_LIMIT_BYTES: u64 = 32 * 1024 * 1024;
pub(crate) const BUFFER_LIMIT_CEILING: u64 = 256 * 1024 * 1024;
/// How much a body may grow when tokenized, for the limits to be consistent: a page of Amazon's
/// orders grows ~2.6× (short names, cities and codes become ~70-byte tokens). A body that grows
/// more than the buffer allows is refused at run time (502 `body_too_large`), never written.
pub const EXPECTED_GROWTH: u64 = 3;
/// Room kept in Envoy's buffer beside the rewritten body.
pub const BUFFER_HEADROOM_BYTES: usize = 64 * 1024;
pub(crate) const DEFAULT_REDACT_MASK: &str = "REDACTED";

/// What the filter does with one PII value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Replace with an AES-256-GCM token that approved callers can open.
    Tokenize(Mode),
    /// Replace with the fixed mask.
    Redact,
    /// Replace with a keyed, irreversible pseudonym (HMAC-SHA256).
    Hash,
    /// Pass unchanged.
    Clear,
    /// Remove the field (the object member or array element) altogether.
    Remove,
}

/// The action for each PII class, indexed by [`PiiClass::index`].
pub type ClassActions = PerClass<Action>;

impl Action {
    /// The name used in audit counts and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Action::Tokenize(_) => "tokenized",
            Action::Redact => "redacted",
            Action::Hash => "hashed",
            Action::Clear => "clear",
            Action::Remove => "removed",
        }
    }

    /// Parses an action or access-level name (`none` removes the field).
    pub fn parse(name: &str, mode: Mode) -> Option<Action> {
        Some(match name {
            "tokenize" => Action::Tokenize(mode),
            "redact" => Action::Redact,
            "hash" => Action::Hash,
            "clear" => Action::Clear,
            "none" => Action::Remove,
            _ => return None,
        })
    }

    /// How much of the value the caller gets: the larger, the more (for merging roles).
    pub fn exposure(self) -> u8 {
        match self {
            Action::Remove => 0,
            Action::Redact => 1,
            Action::Hash => 2,
            Action::Tokenize(_) => 3,
            Action::Clear => 4,
        }
    }
}

/// The validated policy (without the catalog and keys, which live in their own modules).
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) actions: ClassActions,
    pub redact_mask: String,
    pub max_body_bytes: usize,
    /// Envoy's buffer limit (the listener's `per_connection_buffer_limit_bytes`).
    pub buffer_limit_bytes: usize,
    /// What PII values that are JSON numbers become.
    pub numbers: NumberAction,
}

/// Decimal places a coarsened number keeps by default.
pub const DEFAULT_NUMBER_DECIMALS: u8 = 1;

/// What a PII value that is a JSON number becomes when its class is tokenized, hashed or redacted.
/// Amazon's SDKs read these members as numbers: a string there fails the whole response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberAction {
    /// Rounded to this many decimal places, still a number (default: 1).
    Coarsen(u8),
    /// `null` (only where the schema does not require the member).
    Null,
    /// A token string: the opt-in that breaks Amazon's official SDKs (docs/CLIENTS.md).
    Tokenize,
}

impl Policy {
    /// The action for values of `class`.
    pub fn action(&self, class: PiiClass) -> Action {
        self.actions[class]
    }

    /// The action of every class.
    pub fn actions(&self) -> &ClassActions {
        &self.actions
    }
}
