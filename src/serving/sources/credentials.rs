//! `Credential`: one `[[sources]]` entry as the server holds it: its name,
//! a digest of its token and its rate limit (over all models); what that
//! limit refused is counted per model (`ModelSources`).
//!
//! A presented token is matched against every configured token in
//! constant time: both sides are blake3 digests (so the comparison does not
//! depend on the token's length either), every entry is compared, and the
//! match is picked with a constant-time select, so how long a check takes
//! says nothing about which token, if any, matched.

use std::sync::Arc;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::SourceConfig;

use super::bucket::Buckets;

#[derive(Debug)]
pub struct Credential {
    /// The source of every example sent with this token.
    pub name: Arc<str>,
    digest: [u8; 32],
    /// `None`: unlimited (`rate = 0`).
    pub(super) bucket: Option<Buckets>,
    /// Its place among the configured sources (where each model counts
    /// what this limit refused).
    pub(super) index: usize,
}

impl Credential {
    pub(super) fn new(config: &SourceConfig, index: usize) -> Self {
        Self {
            name: config.name.as_str().into(),
            digest: *blake3::hash(config.token.as_bytes()).as_bytes(),
            bucket: config.limit().map(|limit| Buckets::new(limit, 1)),
            index,
        }
    }
}

/// The entry whose token `presented` is, if any (see the module doc).
pub(super) fn find<'a>(
    entries: &'a [Arc<Credential>],
    presented: &[u8],
) -> Option<&'a Arc<Credential>> {
    let digest = blake3::hash(presented);
    // 0: none; i + 1: entry i.
    let mut chosen = 0u64;
    for (i, entry) in entries.iter().enumerate() {
        let matched = digest.as_bytes().ct_eq(&entry.digest);
        chosen.conditional_assign(&(i as u64 + 1), matched);
    }
    let i = usize::try_from(chosen).ok()?.checked_sub(1)?;
    entries.get(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, token: &str) -> Arc<Credential> {
        let config = SourceConfig {
            name: name.into(),
            token: token.into(),
            token_file: Default::default(),
            rate: 0.0,
            burst: 0,
        };
        Arc::new(Credential::new(&config, 1))
    }

    #[test]
    fn a_token_finds_its_own_entry_and_nothing_else_does() {
        let entries = [
            entry("crm", "t-crm"),
            entry("shop", "t-shop"),
            entry("x", "t"),
        ];
        let name = |token: &[u8]| find(&entries, token).map(|c| c.name.to_string());
        assert_eq!(name(b"t-crm").as_deref(), Some("crm"));
        assert_eq!(name(b"t-shop").as_deref(), Some("shop"));
        assert_eq!(name(b"t").as_deref(), Some("x"));
        for wrong in [&b""[..], b"t-cr", b"t-crmm", b"T-CRM", b"t-shop "] {
            assert_eq!(name(wrong), None, "{:?}", String::from_utf8_lossy(wrong));
        }
        assert!(find(&[], b"t-crm").is_none());
    }
}
