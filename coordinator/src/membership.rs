//! Who is in the job (DESIGN §6): registration, ranks, the generation, heartbeat expiry. Pure
//! state transitions over an explicit clock (milliseconds since the coordinator started), so the
//! tests need no sleeps.
//!
//! The ring of generation 1 forms when the configured number of workers has registered. A
//! worker that misses its heartbeats is removed ([`Membership::remove`]): the survivors form
//! the next generation, ranked in their old order, and the removed worker is fenced (every
//! later call of it is refused, so a worker cut off by a partition cannot come back with stale
//! state). Each worker keeps its slot (its first rank), which names its lease queue.

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Id the coordinator gave it (`w<rank>`).
    pub id: String,
    /// Its own description (host, pid), for logs.
    pub name: String,
    /// Where its `Peer` service listens.
    pub peer_addr: String,
    /// Its place in the ring of the current generation.
    pub rank: usize,
    /// Its rank in the first generation: names its lease queue for the whole job (a worker
    /// that joined later has a slot past the first ring's, and no queue of its own).
    pub slot: usize,
    /// The generation it joined the running job in (0: it formed the first ring).
    pub joined_in: u64,
    /// Clock of its last heartbeat (or registration).
    pub last_seen_ms: u64,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    /// The worker loaded another config.
    #[error("config hash {got:#018x} differs from the coordinator's {expected:#018x}")]
    Config {
        /// Sent by the worker.
        got: u64,
        /// The coordinator's.
        expected: u64,
    },
    /// The worker's model has another parameter layout than the first member's.
    #[error("model layout hash {got:#018x} differs from the ring's {expected:#018x}")]
    Layout {
        /// Sent by the worker.
        got: u64,
        /// The ring's.
        expected: u64,
    },
    /// The ring is complete.
    #[error("the job already has its {0} workers")]
    Full(usize),
}

/// The membership of the job.
#[derive(Debug, Clone)]
pub struct Membership {
    expected: usize,
    config_hash: u64,
    layout_hash: Option<u64>,
    members: Vec<Member>,
    generation: u64,
    /// The generation before the first ring (0, or the last one of a coordinator restarted
    /// from its journal: the new ring's generations are newer than any message in flight).
    base: u64,
    /// Workers removed (dead or cut off), with the reason.
    fenced: Vec<(String, String)>,
    /// Workers admitted into the running job so far (their slots follow the first ring's).
    joined: usize,
}

impl Membership {
    /// Waits for `expected` workers running the config of `config_hash`.
    pub fn new(expected: usize, config_hash: u64) -> Self {
        Self {
            expected: expected.max(1),
            config_hash,
            layout_hash: None,
            members: Vec::new(),
            generation: 0,
            base: 0,
            fenced: Vec::new(),
            joined: 0,
        }
    }

    /// Like [`Membership::new`], with generations counted on from `after` (a restart).
    pub fn after(expected: usize, config_hash: u64, after: u64) -> Self {
        Self {
            base: after,
            ..Self::new(expected, config_hash)
        }
    }

    /// Refuses another config or another model layout than the job's.
    fn check_hashes(&self, config_hash: u64, layout_hash: u64) -> Result<(), JoinRefusal> {
        if config_hash != self.config_hash {
            return Err(JoinRefusal::Config {
                got: config_hash,
                expected: self.config_hash,
            });
        }
        match self.layout_hash {
            Some(expected) if expected != layout_hash => Err(JoinRefusal::Layout {
                got: layout_hash,
                expected,
            }),
            _ => Ok(()),
        }
    }

    /// Adds a worker; ranks follow registration order. The ring (generation 1) forms when the
    /// last expected worker registers.
    pub fn register(
        &mut self,
        name: &str,
        peer_addr: &str,
        config_hash: u64,
        layout_hash: u64,
        now_ms: u64,
    ) -> Result<Member, JoinRefusal> {
        self.check_hashes(config_hash, layout_hash)?;
        if self.generation > 0 || self.members.len() >= self.expected {
            return Err(JoinRefusal::Full(self.expected));
        }
        self.layout_hash = Some(layout_hash);
        let rank = self.members.len();
        let member = Member {
            id: format!("w{rank}"),
            name: name.to_string(),
            peer_addr: peer_addr.to_string(),
            rank,
            slot: rank,
            joined_in: 0,
            last_seen_ms: now_ms,
        };
        self.members.push(member.clone());
        if self.members.len() == self.expected {
            self.generation = self.base + 1;
        }
        Ok(member)
    }

    /// The current generation: 0 while the first ring is incomplete.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The model layout every member shares (once one has registered).
    pub fn layout_hash(&self) -> Option<u64> {
        self.layout_hash
    }

    /// Members in rank order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Workers the ring needs.
    pub fn expected(&self) -> usize {
        self.expected
    }

    /// The member with `id`.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Records a heartbeat; false for an unknown worker.
    pub fn heartbeat(&mut self, id: &str, now_ms: u64) -> bool {
        match self.members.iter_mut().find(|m| m.id == id) {
            Some(m) => {
                m.last_seen_ms = m.last_seen_ms.max(now_ms);
                true
            }
            None => false,
        }
    }

    /// Admits a worker into the running job (a replacement for a lost one): it takes the next
    /// slot and the last rank of a new generation, and must fetch the ring's state from a
    /// member that is not joining. Refused while the ring has its configured workers.
    pub fn join(
        &mut self,
        name: &str,
        peer_addr: &str,
        config_hash: u64,
        layout_hash: u64,
        now_ms: u64,
    ) -> Result<Member, JoinRefusal> {
        self.check_hashes(config_hash, layout_hash)?;
        if self.members.len() >= self.expected || self.members.is_empty() {
            return Err(JoinRefusal::Full(self.expected));
        }
        let slot = self.expected + self.joined;
        self.joined += 1;
        self.generation += 1;
        let member = Member {
            id: format!("w{slot}"),
            name: name.to_string(),
            peer_addr: peer_addr.to_string(),
            rank: self.members.len(),
            slot,
            joined_in: self.generation,
            last_seen_ms: now_ms,
        };
        self.members.push(member.clone());
        Ok(member)
    }

    /// The member a worker joining in this generation takes the state from: the lowest-ranked
    /// member that did not join in it.
    pub fn donor(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.joined_in != self.generation)
    }

    /// Removes `ids` (dead or cut off) and forms the next generation from the others, ranked
    /// in their old order. Returns the removed members; nothing changes if none was a member.
    pub fn remove(&mut self, ids: &[String], reason: &str) -> Vec<Member> {
        let (gone, kept): (Vec<Member>, Vec<Member>) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|m| ids.contains(&m.id));
        self.members = kept;
        if !gone.is_empty() {
            for (rank, m) in self.members.iter_mut().enumerate() {
                m.rank = rank;
            }
            self.generation += 1;
            self.fenced
                .extend(gone.iter().map(|m| (m.id.clone(), reason.to_string())));
        }
        gone
    }

    /// Why `id` was fenced out, if it was.
    pub fn fenced(&self, id: &str) -> Option<&str> {
        self.fenced
            .iter()
            .find(|(f, _)| f == id)
            .map(|(_, why)| why.as_str())
    }

    /// Members silent for longer than `timeout_ms` at `now_ms`.
    pub fn expired(&self, now_ms: u64, timeout_ms: u64) -> Vec<&Member> {
        self.members
            .iter()
            .filter(|m| is_expired(m.last_seen_ms, now_ms, timeout_ms))
            .collect()
    }
}

/// Whether a member last seen at `last_seen_ms` is dead at `now_ms`.
pub fn is_expired(last_seen_ms: u64, now_ms: u64, timeout_ms: u64) -> bool {
    now_ms.saturating_sub(last_seen_ms) > timeout_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_forms_when_the_last_worker_registers() {
        let mut m = Membership::new(3, 11);
        let a = m.register("a", "127.0.0.1:1", 11, 5, 0).expect("joins");
        assert_eq!((a.rank, a.id.as_str(), m.generation()), (0, "w0", 0));
        m.register("b", "127.0.0.1:2", 11, 5, 1).expect("joins");
        assert_eq!(m.generation(), 0);
        let c = m.register("c", "127.0.0.1:3", 11, 5, 2).expect("joins");
        assert_eq!((c.rank, m.generation()), (2, 1));
        assert_eq!(m.register("d", "x", 11, 5, 3), Err(JoinRefusal::Full(3)));
        let mut r = Membership::after(1, 11, 7);
        r.register("a", "x", 11, 5, 0).expect("joins");
        assert_eq!(r.generation(), 8, "a restarted coordinator counts on");
    }

    #[test]
    fn wrong_config_or_layout_is_refused() {
        let mut m = Membership::new(2, 11);
        assert!(matches!(
            m.register("a", "x", 12, 5, 0),
            Err(JoinRefusal::Config {
                got: 12,
                expected: 11
            })
        ));
        m.register("a", "x", 11, 5, 0).expect("joins");
        assert!(matches!(
            m.register("b", "y", 11, 6, 0),
            Err(JoinRefusal::Layout {
                got: 6,
                expected: 5
            })
        ));
        assert_eq!(m.members().len(), 1);
    }

    #[test]
    fn silence_past_the_timeout_expires_a_member() {
        let mut m = Membership::new(2, 1);
        m.register("a", "x", 1, 1, 0).expect("joins");
        m.register("b", "y", 1, 1, 0).expect("joins");
        assert!(m.heartbeat("w0", 900));
        assert!(!m.heartbeat("w9", 900));
        assert!(m.expired(1000, 1000).is_empty());
        let dead: Vec<&str> = m
            .expired(1001, 1000)
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(dead, ["w1"]);
        assert!(
            !is_expired(5, 3, 1),
            "a clock behind the last beat is not expiry"
        );
    }

    #[test]
    fn removing_a_member_forms_the_next_generation_and_fences_it() {
        let mut m = Membership::new(3, 1);
        for (n, a) in [("a", "x"), ("b", "y"), ("c", "z")] {
            m.register(n, a, 1, 1, 0).expect("joins");
        }
        let gone = m.remove(&["w1".to_string()], "no heartbeat");
        assert_eq!(gone.len(), 1);
        assert_eq!(m.generation(), 2);
        let ranks: Vec<(&str, usize, usize)> = m
            .members()
            .iter()
            .map(|x| (x.id.as_str(), x.rank, x.slot))
            .collect();
        assert_eq!(ranks, [("w0", 0, 0), ("w2", 1, 2)]);
        assert_eq!(m.fenced("w1"), Some("no heartbeat"));
        assert!(
            !m.heartbeat("w1", 5),
            "a fenced worker's heartbeat is refused"
        );
        assert!(m.remove(&["w9".to_string()], "?").is_empty());
        assert_eq!(m.generation(), 2, "removing nobody changes nothing");
        assert_eq!(m.register("d", "q", 1, 1, 9), Err(JoinRefusal::Full(3)));
        assert_eq!(m.join("d", "q", 1, 1, 9).map(|_| ()), Ok(()));
        let ids: Vec<(&str, usize, usize, u64)> = m
            .members()
            .iter()
            .map(|x| (x.id.as_str(), x.rank, x.slot, x.joined_in))
            .collect();
        assert_eq!(ids, [("w0", 0, 0, 0), ("w2", 1, 2, 0), ("w3", 2, 3, 3)]);
        assert_eq!(m.generation(), 3);
        assert_eq!(m.donor().map(|d| d.id.as_str()), Some("w0"));
        assert_eq!(m.join("e", "r", 1, 1, 9), Err(JoinRefusal::Full(3)));
        assert!(matches!(
            m.join("e", "r", 2, 1, 9),
            Err(JoinRefusal::Config { .. })
        ));
    }
}
