//! One PII value of a document → what the caller gets: the class's action, with the token
//! engine and keys of the response rewriter (src/guard.rs), so tokens open with the same
//! detokenizer and command line.
use std::collections::HashMap;
use std::rc::Rc;

use crate::drift::{worth_a_look, DriftFindings};
use crate::guard::{FieldCounts, Guard};
use crate::keyring::ActiveKeys;
use crate::pii::PiiClass;
use crate::policy::{Action, ClassActions};
use crate::tokens::{Mode, ValueKind};

use super::DocumentError;

/// Deterministic outputs remembered per document (values repeat: cities, states, a buyer on
/// several rows), in two generations of this many: when the young one is full it becomes the
/// old one (the previous old one is dropped), and a value found in the old one moves back, so
/// values that keep coming back stay while the memo stays bounded.
const MEMO_ENTRIES: usize = 4096;
/// Values longer than this are not remembered.
const MEMO_VALUE_BYTES: usize = 256;

/// What replaces a value.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The original bytes (an empty value, or the class is `clear`).
    Keep,
    /// Nothing: an empty field or element (`none`: the caller may not see the class).
    Empty,
    /// A token or pseudonym: URL-safe ASCII, nothing to quote or escape.
    Token(&'a str),
    /// The policy's redaction mask: may need quoting or escaping.
    Mask(&'a str),
}

/// Applies the caller's action per class to each value, counting what it did.
pub struct ValueProtector {
    guard: Rc<Guard>,
    actions: ClassActions,
    keys: ActiveKeys,
    pub counts: FieldCounts,
    /// What the drift detectors found in values no catalog entry names.
    pub drift: DriftFindings,
    token: String,
    scratch: Vec<u8>,
    memo_key: Vec<u8>,
    memo: HashMap<Vec<u8>, Box<str>>,
    old_memo: HashMap<Vec<u8>, Box<str>>,
}

impl ValueProtector {
    /// Refuses a class to tokenize or hash that has no active key at `now_ms`.
    pub fn new(guard: Rc<Guard>, actions: ClassActions, now_ms: u64) -> Result<ValueProtector, DocumentError> {
        let keys = guard.tokens.active_keys(now_ms);
        if actions.iter().any(|(class, action)| matches!(action, Action::Tokenize(_) | Action::Hash) && keys.get(class).is_none()) {
            return Err(DocumentError::NoActiveKey);
        }
        Ok(ValueProtector {
            guard,
            actions,
            keys,
            counts: FieldCounts::default(),
            drift: DriftFindings::default(),
            token: String::new(),
            scratch: Vec::new(),
            memo_key: Vec::new(),
            memo: HashMap::new(),
            old_memo: HashMap::new(),
        })
    }

    /// The guard (JSON documents go through its response rewriter).
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The caller's actions.
    pub fn actions(&self) -> &ClassActions {
        &self.actions
    }

    /// Whether any drift detector runs (else values no catalog entry names are not read).
    pub fn detecting(&self) -> bool {
        self.guard.drift.any_detector()
    }

    /// The drift detectors (src/drift.rs) over a value no catalog entry names, under the column
    /// or element `key` (and its `parent` element): the class to protect it as, if a detector the
    /// policy sets to `tokenize` found it; `None` to keep it (nothing found, or reported only).
    /// Findings are recorded at `path` (a template: a column or element name, never a value).
    pub fn detect(&mut self, key: &str, parent: Option<&str>, value: &[u8], path: impl FnOnce() -> String) -> Option<PiiClass> {
        // Most values are refused by their bytes alone; a value that is not UTF-8 is no text the
        // detectors read (kept, as the JSON rewriter keeps what it cannot read as a string).
        let text = std::str::from_utf8(value).ok().filter(|t| worth_a_look(t) && !t.trim_ascii().is_empty())?;
        self.guard.drift.judge(Some(key), parent, text, false, &mut self.drift, path).map(|kind| kind.class())
    }

    /// Bytes held by the memo (the memory test's probe).
    pub fn memo_bytes(&self) -> usize {
        self.memo.iter().chain(self.old_memo.iter()).map(|(k, v)| k.len() + v.len()).sum()
    }

    /// What replaces `value`, a value of `class` (the document's bytes, tokenized as they are:
    /// a document in another encoding than UTF-8 opens to the same bytes). A value of white
    /// space only carries nothing: kept, not counted.
    pub fn apply(&mut self, class: PiiClass, value: &[u8]) -> Outcome<'_> {
        if value.iter().all(u8::is_ascii_whitespace) {
            return Outcome::Keep;
        }
        let action = self.actions[class];
        self.counts.add(class, action);
        let mode = match action {
            Action::Clear => return Outcome::Keep,
            Action::Remove => return Outcome::Empty,
            Action::Redact => return Outcome::Mask(&self.guard.policy.redact_mask),
            Action::Tokenize(mode) => Some(mode),
            Action::Hash => None,
        };
        let memo = mode != Some(Mode::Randomized) && value.len() <= MEMO_VALUE_BYTES;
        if memo {
            self.memo_key.clear();
            self.memo_key.extend_from_slice(&[u8::from(mode.is_some()), class.index() as u8]);
            self.memo_key.extend_from_slice(value);
            if let Some(token) = self.memo.get(&self.memo_key) {
                self.token.clear();
                self.token.push_str(token);
                return Outcome::Token(&self.token);
            }
            if let Some(token) = self.old_memo.remove(&self.memo_key) {
                self.token.clear();
                self.token.push_str(&token);
                self.remember(token);
                return Outcome::Token(&self.token);
            }
        }
        self.token.clear();
        match mode {
            Some(mode) => self.guard.tokens.seal_once_into(&self.keys, class, mode, ValueKind::Text, value, &mut self.scratch, &mut self.token),
            None => self.guard.tokens.hash_into(&self.keys, class, ValueKind::Text, value, &mut self.token),
        }
        if memo {
            self.remember(self.token.as_str().into());
        }
        Outcome::Token(&self.token)
    }

    /// Remembers `token` for the value in `memo_key`.
    fn remember(&mut self, token: Box<str>) {
        if self.memo.len() >= MEMO_ENTRIES {
            self.old_memo = std::mem::take(&mut self.memo);
        }
        self.memo.insert(self.memo_key.clone(), token);
    }
}
