//! Admin requests the trainer answers on its own thread: snapshot, pause,
//! resume, rollback (to last-good or a retained snapshot), readmit, and
//! the quarantine's listing, release and drop.

use super::super::guard::{Held, Selector};
use super::steps::{Applied, Step};
use super::*;

/// Requests to the trainer from the admin API; each carries its reply.
#[derive(Debug)]
pub enum TrainerCommand {
    /// Publish anything trained but unpublished, then write a snapshot.
    Snapshot(oneshot::Sender<Result<SnapshotFile, SnapshotError>>),
    /// Stop taking feedback from the queue (it keeps accepting until full)
    /// after publishing what is trained; answers once paused.
    Pause(oneshot::Sender<()>),
    /// Take feedback again; answers once running.
    Resume(oneshot::Sender<()>),
    /// Publish last-good (`None`) or a retained snapshot's weights as a new
    /// version.
    Rollback {
        version: Option<u64>,
        reply: oneshot::Sender<Result<RolledBack, RollbackError>>,
    },
    /// Take a blamed source back into training; answers whether it was
    /// blamed.
    Readmit {
        source: String,
        reply: oneshot::Sender<bool>,
    },
    /// A page of the quarantine: up to `limit` examples `selector` matches
    /// after position `after`; `None` without a guard.
    ListQuarantine {
        selector: Selector,
        after: Option<u64>,
        limit: usize,
        reply: oneshot::Sender<Option<QuarantinePage>>,
    },
    /// Releases the examples `selector` matches into training; answers how
    /// many (`None` without a guard).
    Release {
        selector: Selector,
        reply: oneshot::Sender<Option<usize>>,
    },
    /// Drops them; answers how many.
    Drop {
        selector: Selector,
        reply: oneshot::Sender<Option<usize>>,
    },
}

/// One page of the quarantine, for the admin API.
#[derive(Debug)]
pub struct QuarantinePage {
    pub examples: Vec<Held>,
    pub total: usize,
    pub next: Option<u64>,
}

impl TrainerCommand {
    /// Whether the caller waiting for the answer has gone (its wait timed
    /// out, or the connection closed).
    fn abandoned(&self) -> bool {
        match self {
            TrainerCommand::Snapshot(reply) => reply.is_closed(),
            TrainerCommand::Pause(reply) | TrainerCommand::Resume(reply) => reply.is_closed(),
            TrainerCommand::Rollback { reply, .. } => reply.is_closed(),
            TrainerCommand::Readmit { reply, .. } => reply.is_closed(),
            TrainerCommand::ListQuarantine { reply, .. } => reply.is_closed(),
            TrainerCommand::Release { reply, .. } | TrainerCommand::Drop { reply, .. } => {
                reply.is_closed()
            }
        }
    }
}

/// An operator's rollback, done.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    /// The new live version.
    pub version: u64,
    /// The version whose weights it carries.
    pub restored: u64,
    pub rolled_back_from: u64,
    /// Examples learned since last-good that the model no longer includes.
    pub dropped: usize,
}

/// Why an operator's snapshot was not written.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error(
        "the gate is holding a candidate that is not published; the snapshot is written once it is decided (the feedback log keeps what it learned)"
    )]
    Holding,
    /// The disk refused it: full, read-only, gone, or an fsync failed.
    #[error("cannot write the snapshot to disk: {0}")]
    Storage(String),
    #[error("snapshot failed: {0}")]
    Failed(String),
    /// A periodic snapshot found the writer still busy with the last one.
    #[error("the snapshot writer is busy; still due")]
    Busy,
}

impl SnapshotError {
    /// The failure without the leading words, for events and reports.
    pub fn cause(&self) -> String {
        match self {
            SnapshotError::Storage(cause) | SnapshotError::Failed(cause) => cause.clone(),
            e => e.to_string(),
        }
    }
}

#[derive(Debug, Error)]
pub enum RollbackError {
    #[error("the monitor is disabled for this model, so there is no last-good version; name one")]
    NoLastGood,
    #[error("version {version} is not retained (snapshots on disk: {retained:?})")]
    NotRetained { version: u64, retained: Vec<u64> },
    #[error("{0}")]
    Unusable(String),
    #[error("{0}")]
    Failed(String),
}

impl Trainer {
    /// Answers an admin request with the steps it asks for.
    pub(super) fn command(&mut self, command: TrainerCommand) {
        if command.abandoned() {
            // The admin call timed out (503 `trainer_busy`) before the
            // trainer got to it: the operator was told it was withdrawn, so
            // acting on it now would surprise them.
            tracing::info!(model = %self.model, ?command, "admin command given up by its caller; not carried out");
            return;
        }
        // A requester that has gone away needs no answer.
        match command {
            TrainerCommand::Pause(reply) => {
                self.publish_live(true);
                if !self.stats.paused.load(Ordering::Acquire) {
                    self.take(Step::Pause, &mut Vec::new());
                }
                // Answered once it is in the log: an acknowledged pause
                // survives a crash.
                self.log_steps();
                let _ = reply.send(());
            }
            TrainerCommand::Resume(reply) => {
                self.take(Step::Resume, &mut Vec::new());
                self.publish_live(self.backlog.is_empty() && self.stream.is_empty());
                // As a pause: with a backlog to learn, the step would
                // otherwise wait in the buffer while the caller hears 200.
                self.log_steps();
                let _ = reply.send(());
            }
            TrainerCommand::Snapshot(reply) => {
                self.publish_live(true);
                let holding = self.cadence.minibatches > 0 && self.journal.keeps_records();
                let written = if holding {
                    Err(SnapshotError::Holding)
                } else {
                    self.snapshot_live(true).and_then(|file| {
                        file.ok_or_else(|| SnapshotError::Failed("not written".to_owned()))
                    })
                };
                let _ = reply.send(written);
            }
            TrainerCommand::Rollback { version, reply } => {
                let last_good = self.monitor.as_ref().map(|m| m.last_good().version);
                let from_file = version.is_some_and(|v| Some(v) != last_good);
                let Applied::RolledBack(result) =
                    self.take(Step::Rollback { version }, &mut Vec::new())
                else {
                    return;
                };
                if from_file && result.is_ok() {
                    // Weights from a retained file: snapshot now, so that a
                    // replay never needs that file again.
                    if let Some(policy) = &mut self.snapshots {
                        policy.owed.store(true, Ordering::Release);
                    }
                    self.snapshot_if_due();
                }
                let _ = reply.send(result);
            }
            TrainerCommand::Readmit { source, reply } => {
                let Applied::Readmitted(readmitted) =
                    self.take(Step::Readmit { source }, &mut Vec::new())
                else {
                    return;
                };
                let _ = reply.send(readmitted);
            }
            TrainerCommand::ListQuarantine {
                selector,
                after,
                limit,
                reply,
            } => {
                let page = self.guard.as_ref().map(|g| {
                    let page = g.quarantine().page(&selector, after, limit);
                    QuarantinePage {
                        examples: page.examples.into_iter().map(|(_, h)| h.clone()).collect(),
                        total: page.total,
                        next: page.next,
                    }
                });
                let _ = reply.send(page);
            }
            TrainerCommand::Release { selector, reply } => {
                if self.guard.is_none() {
                    let _ = reply.send(None);
                    return;
                }
                let Applied::Released(n) = self.take(Step::Release { selector }, &mut Vec::new())
                else {
                    return;
                };
                self.refresh_report();
                let _ = reply.send(Some(n));
            }
            TrainerCommand::Drop { selector, reply } => {
                if self.guard.is_none() {
                    let _ = reply.send(None);
                    return;
                }
                let Applied::Dropped(n) = self.take(Step::Drop { selector }, &mut Vec::new())
                else {
                    return;
                };
                self.refresh_report();
                let _ = reply.send(Some(n));
            }
        }
    }

    /// Takes a blamed source back into training; false if it was not blamed.
    pub(super) fn readmit(&mut self, source: &str) -> bool {
        let blamed = self.monitor.as_mut().is_some_and(|m| m.readmit(source));
        let flagged = self.guard.as_mut().is_some_and(|g| g.clear_source(source));
        let readmitted = blamed || flagged;
        if readmitted {
            self.events.push(Event::new(
                EventKind::SourceReadmitted,
                self.live.version,
                format!("an operator readmitted source `{source}`; its feedback is trained again"),
            ));
            self.refresh_report();
        }
        readmitted
    }

    pub(super) fn set_paused(&mut self, paused: bool, why: &str) {
        self.stats.paused.store(paused, Ordering::Release);
        let kind = if paused {
            EventKind::Paused
        } else {
            EventKind::Resumed
        };
        self.events
            .push(Event::new(kind, self.live.version, why.to_owned()));
    }

    /// An operator's rollback to last-good or to a retained snapshot.
    pub(super) fn rollback(
        &mut self,
        version: Option<u64>,
        at: Duration,
    ) -> Result<RolledBack, RollbackError> {
        let from = self.live.version;
        let last_good = self.monitor.as_ref().map(|m| m.last_good().version);
        let (restored, dropped) = match (version, &mut self.monitor) {
            (None, None) => return Err(RollbackError::NoLastGood),
            (None, Some(m)) => (
                m.last_good().version,
                m.restore_last_good(&mut self.learner),
            ),
            (Some(v), Some(m)) if Some(v) == last_good => {
                (v, m.restore_last_good(&mut self.learner))
            }
            (Some(v), _) => {
                let (learner, examples_trained) = self.load_retained(v)?;
                // What was learned after that snapshot was taken.
                let dropped = self.examples_trained().saturating_sub(examples_trained);
                self.learner = learner;
                if let Some(m) = &mut self.monitor {
                    m.adopt_last_good(Checkpoint {
                        version: v,
                        learner: self.learner.clone(),
                        position: self.trained_position,
                        examples_trained,
                    });
                }
                (v, usize::try_from(dropped).unwrap_or(usize::MAX))
            }
        };
        self.cadence.published(at);
        let Some(new) = self.publish(Some(from)) else {
            self.cadence.minibatches = 1;
            return Err(RollbackError::Failed(
                "cannot reserve a version number; the rollback is published at the next attempt"
                    .into(),
            ));
        };
        if let Some(m) = &mut self.monitor {
            m.note_rollback_version(new);
        }
        self.stats
            .rollbacks_operator
            .fetch_add(1, Ordering::Relaxed);
        self.events.push(
            Event::new(
                EventKind::Rollback,
                new,
                format!("an operator rolled back to v{restored} (published as v{new}, rolled back from v{from}); {dropped} examples learned since were dropped"),
            )
            .figure("rolled_back_from", from)
            .figure("restored", restored)
            .figure("dropped", dropped),
        );
        self.refresh_report();
        Ok(RolledBack {
            version: new,
            restored,
            rolled_back_from: from,
            dropped,
        })
    }

    /// Loads a retained snapshot of `version` for a rollback.
    pub(super) fn load_retained(&self, version: u64) -> Result<(Learner, u64), RollbackError> {
        let Some(policy) = &self.snapshots else {
            return Err(RollbackError::NotRetained {
                version,
                retained: Vec::new(),
            });
        };
        let failed = |e: crate::persist::snapshot::Error| RollbackError::Failed(e.to_string());
        let Some(file) = policy.store.find(version).map_err(failed)? else {
            let retained = policy
                .store
                .list()
                .map_err(failed)?
                .into_iter()
                .map(|f| f.version)
                .collect();
            return Err(RollbackError::NotRetained { version, retained });
        };
        let snapshot =
            SnapshotStore::load(&file.path).map_err(|e| RollbackError::Unusable(e.to_string()))?;
        snapshot
            .check_compatible(&policy.model, &file.path)
            .map_err(|e| RollbackError::Unusable(e.to_string()))?;
        let examples = snapshot.meta.examples_trained;
        Ok((snapshot.adopt(*self.learner.optimizer()), examples))
    }
}
