//! Which Raft messages from the network may reach raft-rs, and in what
//! shape. raft-rs trusts its peers: a message that asks it to commit past
//! its log aborts the process (`commit_to`), an append that rewrites a
//! committed entry aborts it (`find_conflict`), and a `MsgPropose` from
//! anyone puts its bytes into the log, where every replica would meet them
//! when applying. Peers are not authenticated yet (the security issue), so
//! this cannot stop a forger who knows the term; it keeps every message off
//! raft-rs's fatal paths and off the log's proposal path.
//!
//! `admit_from_network` runs on the connection (no state needed);
//! `admit_to_log` runs on the driver thread, against the replica's log.

use raft::prelude::{Message, MessageType};

/// Why a message was dropped (for the log; the sender is not told).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("message type {0:?} is never sent between replicas here")]
    LocalType(MessageType),
    #[error("addressed to replica {to}, not to this one")]
    NotForUs { to: u64 },
    #[error("from {from}, which is not another member")]
    UnknownSender { from: u64 },
    #[error("entries are not numbered one after another from the append's index")]
    Gap,
    #[error("an entry's term is above the message's term, or falls")]
    BadTerms,
    #[error("rewrites committed entry {0}")]
    RewritesCommitted(u64),
    #[error("acknowledges index {index}, past this log's last {last}")]
    PastLog { index: u64, last: u64 },
}

/// The message types replicas send each other. Everything else (proposals,
/// read-index requests, leader transfers, and raft-rs's local ticks) is
/// made by this replica itself; from the network it is refused.
fn sent_between_replicas(t: MessageType) -> bool {
    use MessageType::*;
    matches!(
        t,
        MsgAppend
            | MsgAppendResponse
            | MsgRequestVote
            | MsgRequestVoteResponse
            | MsgRequestPreVote
            | MsgRequestPreVoteResponse
            | MsgSnapshot
            | MsgHeartbeat
            | MsgHeartbeatResponse
            | MsgTimeoutNow
    )
}

/// Checks that need no state: the type, and that the message names this
/// replica as its receiver and some other replica as its sender.
pub fn admit_from_network(m: &Message, this: u64) -> Result<(), Refused> {
    let t = m.get_msg_type();
    if !sent_between_replicas(t) {
        return Err(Refused::LocalType(t));
    }
    if m.to != this {
        return Err(Refused::NotForUs { to: m.to });
    }
    if m.from == 0 || m.from == this {
        return Err(Refused::UnknownSender { from: m.from });
    }
    Ok(())
}

/// What `admit_to_log` needs of the replica.
pub struct LogView<'a> {
    pub last_index: u64,
    pub committed: u64,
    /// The term of the entry at an index, if the log holds it.
    pub term: &'a dyn Fn(u64) -> Option<u64>,
    /// Whether a replica id is a voter or learner of the configuration.
    pub is_member: &'a dyn Fn(u64) -> bool,
    /// False while this replica has no configuration (it is being added and
    /// learns the group from the leader's first messages).
    pub configured: bool,
}

/// Checks against the log, and trims what raft-rs would abort on: a
/// heartbeat's commit index is clamped to the log's end (a true leader
/// never sends more than the follower matched).
pub fn admit_to_log(m: &mut Message, v: &LogView<'_>) -> Result<(), Refused> {
    if v.configured && !(v.is_member)(m.from) {
        return Err(Refused::UnknownSender { from: m.from });
    }
    match m.get_msg_type() {
        MessageType::MsgHeartbeat => {
            m.commit = m.commit.min(v.last_index);
        }
        MessageType::MsgAppend => check_append(m, v)?,
        MessageType::MsgAppendResponse => {
            if !m.reject && m.index > v.last_index {
                return Err(Refused::PastLog {
                    index: m.index,
                    last: v.last_index,
                });
            }
            m.reject_hint = m.reject_hint.min(v.last_index);
        }
        _ => {}
    }
    Ok(())
}

fn check_append(m: &Message, v: &LogView<'_>) -> Result<(), Refused> {
    let mut prev_term = m.log_term;
    for (i, e) in m.entries.iter().enumerate() {
        let want = m.index.checked_add(1 + i as u64).ok_or(Refused::Gap)?;
        if e.index != want {
            return Err(Refused::Gap);
        }
        if e.term > m.term || e.term < prev_term {
            return Err(Refused::BadTerms);
        }
        prev_term = e.term;
        // raft-rs truncates at the first conflicting entry and aborts if
        // that entry is committed; a true leader's log holds every committed
        // entry with the same term.
        if e.index <= v.committed && (v.term)(e.index) != Some(e.term) {
            return Err(Refused::RewritesCommitted(e.index));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::Entry;

    fn msg(t: MessageType, from: u64, to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = from;
        m.to = to;
        m.term = 5;
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e
    }

    /// A log of entries 1..=10, all of term 3, committed up to 8, members 1-3.
    fn with_view<T>(f: impl FnOnce(&LogView<'_>) -> T) -> T {
        let term = |i: u64| (1..=10).contains(&i).then_some(3);
        let is_member = |id: u64| (1..=3).contains(&id);
        f(&LogView {
            last_index: 10,
            committed: 8,
            term: &term,
            is_member: &is_member,
            configured: true,
        })
    }

    #[test]
    fn local_and_proposal_types_are_refused() {
        for t in [
            MessageType::MsgPropose,
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgReadIndex,
            MessageType::MsgTransferLeader,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
        ] {
            assert_eq!(
                admit_from_network(&msg(t, 2, 1), 1),
                Err(Refused::LocalType(t))
            );
        }
        assert!(admit_from_network(&msg(MessageType::MsgHeartbeat, 2, 1), 1).is_ok());
        assert!(admit_from_network(&msg(MessageType::MsgHeartbeat, 2, 3), 1).is_err());
        assert!(admit_from_network(&msg(MessageType::MsgHeartbeat, 1, 1), 1).is_err());
        assert!(admit_from_network(&msg(MessageType::MsgHeartbeat, 0, 1), 1).is_err());
    }

    #[test]
    fn a_heartbeat_never_commits_past_the_log() {
        let mut m = msg(MessageType::MsgHeartbeat, 2, 1);
        m.commit = u64::MAX;
        with_view(|v| admit_to_log(&mut m, v)).expect("admitted");
        assert_eq!(m.commit, 10);
    }

    #[test]
    fn strangers_are_refused_once_configured() {
        let mut m = msg(MessageType::MsgHeartbeat, 9, 1);
        assert_eq!(
            with_view(|v| admit_to_log(&mut m, v)),
            Err(Refused::UnknownSender { from: 9 })
        );
    }

    #[test]
    fn an_append_that_rewrites_committed_entries_is_refused() {
        let mut m = msg(MessageType::MsgAppend, 2, 1);
        m.index = 6;
        m.log_term = 3;
        m.entries = vec![entry(7, 3), entry(8, 4), entry(9, 4)].into();
        assert_eq!(
            with_view(|v| admit_to_log(&mut m, v)),
            Err(Refused::RewritesCommitted(8))
        );
        // The same entries past the commit index are a true leader's right.
        m.index = 8;
        m.entries = vec![entry(9, 4), entry(10, 4), entry(11, 5)].into();
        assert!(with_view(|v| admit_to_log(&mut m, v)).is_ok());
        m.entries = vec![entry(9, 4), entry(11, 4)].into();
        assert_eq!(with_view(|v| admit_to_log(&mut m, v)), Err(Refused::Gap));
        m.entries = vec![entry(9, 6)].into();
        assert_eq!(
            with_view(|v| admit_to_log(&mut m, v)),
            Err(Refused::BadTerms)
        );
        m.index = u64::MAX;
        m.entries = vec![entry(0, 3)].into();
        assert_eq!(with_view(|v| admit_to_log(&mut m, v)), Err(Refused::Gap));
    }

    #[test]
    fn an_acknowledgement_past_the_log_is_refused() {
        let mut m = msg(MessageType::MsgAppendResponse, 2, 1);
        m.index = 11;
        assert!(with_view(|v| admit_to_log(&mut m, v)).is_err());
        m.index = 10;
        assert!(with_view(|v| admit_to_log(&mut m, v)).is_ok());
    }
}
