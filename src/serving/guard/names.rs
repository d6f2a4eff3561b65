//! `SourceNames`: the bounded table of source names the guard counts by.
//! At most `max_sources` names get an id of their own (unattributed
//! feedback is the one source `unknown`); when the table is full, a new
//! name takes the id of a source the guard no longer counts anywhere
//! (`idle`: out of every window, nothing waiting, not flagged), else it
//! shares `other`. So a client inventing a name per request costs entries
//! only while its names are recent, and cannot keep later sources out.
//! Ids index the influence windows; the choice depends only on the order
//! of examples, so a replay names the same sources the same.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::learn::guard::labels::{OTHER_SOURCE, UNKNOWN_SOURCE};

use super::influence::SourceId;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Vec<Arc<str>>", into = "Vec<Arc<str>>")]
pub struct SourceNames {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, SourceId>,
    /// The source of the example before: examples of a request share
    /// their source's allocation, so most lookups end here.
    last: Option<(Arc<str>, SourceId)>,
}

impl From<Vec<Arc<str>>> for SourceNames {
    fn from(names: Vec<Arc<str>>) -> Self {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as SourceId))
            .collect();
        Self {
            names,
            index,
            last: None,
        }
    }
}

impl From<SourceNames> for Vec<Arc<str>> {
    fn from(table: SourceNames) -> Self {
        table.names
    }
}

impl Default for SourceNames {
    fn default() -> Self {
        Vec::new().into()
    }
}

impl SourceNames {
    /// The id `source` is counted under, with at most `max` names of
    /// their own.
    pub fn id(
        &mut self,
        source: &Option<Arc<str>>,
        max: usize,
        idle: impl Fn(SourceId, &str) -> bool,
    ) -> SourceId {
        if let (Some(s), Some((last, id))) = (source, &self.last)
            && Arc::ptr_eq(s, last)
        {
            return *id;
        }
        let name = source.as_deref().unwrap_or(UNKNOWN_SOURCE);
        let own = self.names.len() - usize::from(self.index.contains_key(OTHER_SOURCE));
        let id = match self.index.get(name) {
            Some(id) => *id,
            None if own < max || name == OTHER_SOURCE => self.add(name),
            None => match self.reusable(&idle) {
                Some(id) => self.rename(id, name),
                None => match self.index.get(OTHER_SOURCE) {
                    Some(id) => *id,
                    None => self.add(OTHER_SOURCE),
                },
            },
        };
        if let Some(s) = source {
            self.last = Some((s.clone(), id));
        }
        id
    }

    /// The first id that is neither `other` nor `unknown` and is idle.
    fn reusable(&self, idle: &impl Fn(SourceId, &str) -> bool) -> Option<SourceId> {
        self.names
            .iter()
            .enumerate()
            .find(|(i, n)| {
                n.as_ref() != OTHER_SOURCE
                    && n.as_ref() != UNKNOWN_SOURCE
                    && idle(*i as SourceId, n)
            })
            .map(|(i, _)| i as SourceId)
    }

    fn rename(&mut self, id: SourceId, name: &str) -> SourceId {
        let name: Arc<str> = Arc::from(name);
        let old = std::mem::replace(&mut self.names[id as usize], name.clone());
        self.index.remove(&old);
        self.index.insert(name, id);
        // The cached source may have been the one renamed.
        self.last = None;
        id
    }

    fn add(&mut self, name: &str) -> SourceId {
        let id = self.names.len() as SourceId;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.index.insert(name, id);
        id
    }

    pub fn name(&self, id: SourceId) -> &str {
        self.names
            .get(id as usize)
            .map_or(OTHER_SOURCE, |n| n.as_ref())
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_beyond_the_bound_share_other_and_come_back_after_a_round_trip() {
        let mut t = SourceNames::default();
        let a: Option<Arc<str>> = Some("a".into());
        let busy = |_: SourceId, _: &str| false;
        let ids: Vec<SourceId> = (0..100)
            .map(|i| t.id(&Some(Arc::from(format!("s{i}"))), 3, busy))
            .collect();
        assert_eq!(&ids[..3], &[0, 1, 2]);
        assert!(ids[3..].iter().all(|id| *id == 3), "{ids:?}");
        assert_eq!(t.name(3), OTHER_SOURCE);
        assert_eq!(t.id(&None, 3, busy), 3, "no room left for `unknown` either");
        assert_eq!(t.id(&a, 3, busy), 3);
        assert_eq!(t.len(), 4);
        let json = serde_json::to_string(&t).expect("encodes");
        let mut back: SourceNames = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back.id(&Some("s1".into()), 3, busy), 1);
        assert_eq!(back.id(&Some("new".into()), 3, busy), 3);
        // An idle source's id goes to the next new name.
        assert_eq!(back.id(&Some("late".into()), 3, |id, _| id == 1), 1);
        assert_eq!(back.name(1), "late");
        assert_eq!(
            back.id(&Some("s1".into()), 3, busy),
            3,
            "s1 now shares other"
        );
        let mut u = SourceNames::default();
        let id = u.id(&None, 8, busy);
        assert_eq!(u.name(id), UNKNOWN_SOURCE);
    }
}
