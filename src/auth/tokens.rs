//! etcd's simple tokens (`--auth-token simple`): opaque strings handed out by
//! `Authenticate`, valid for `--auth-token-ttl` after their last use.
//!
//! Tokens are chosen by the member that checked the password and replicated
//! through Raft (like etcd's `InternalAuthenticateRequest`), so every member
//! knows every token; they live in memory only, so a restarted member forgets
//! them and clients authenticate again (clientv3 does so on `invalid auth
//! token`). Expired tokens are dropped lazily, when a token is added.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;

/// Live tokens and the users they stand for.
#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    live: HashMap<String, (String, Instant)>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            live: HashMap::new(),
        }
    }

    /// A fresh token: 16 random letters, a dot, and `seq` (etcd's shape).
    pub fn generate(seq: u64) -> String {
        let mut rng = rand::thread_rng();
        let prefix: String = (0..16)
            .map(|_| {
                let i = rng.gen_range(0..52u8);
                (if i < 26 { b'a' + i } else { b'A' + i - 26 }) as char
            })
            .collect();
        format!("{prefix}.{seq}")
    }

    /// Records `token` for `user`, valid for the TTL from `now`.
    pub fn insert(&mut self, token: String, user: String, now: Instant) {
        self.live.retain(|_, (_, deadline)| *deadline > now);
        self.live.insert(token, (user, now + self.ttl));
    }

    /// The user of a live token, whose TTL restarts (etcd resets it on use).
    pub fn user(&mut self, token: &str, now: Instant) -> Option<String> {
        let (user, deadline) = self.live.get_mut(token)?;
        if *deadline <= now {
            self.live.remove(token);
            return None;
        }
        *deadline = now + self.ttl;
        Some(user.clone())
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&mut self, user: &str) {
        self.live.retain(|_, (u, _)| u != user);
    }

    /// Keeps only the tokens of users for which `keep` holds.
    pub fn retain_users(&mut self, keep: impl Fn(&str) -> bool) {
        self.live.retain(|_, (u, _)| keep(u));
    }

    /// Forgets every token (auth enabled or disabled).
    pub fn clear(&mut self) {
        self.live.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_expires_after_its_ttl_without_use() {
        let mut t = Tokens::new(Duration::from_secs(10));
        let now = Instant::now();
        t.insert("a.1".into(), "alice".into(), now);
        assert_eq!(
            t.user("a.1", now + Duration::from_secs(9)).as_deref(),
            Some("alice")
        );
        // Use restarted the TTL.
        assert!(t.user("a.1", now + Duration::from_secs(18)).is_some());
        assert!(t.user("a.1", now + Duration::from_secs(40)).is_none());
    }

    #[test]
    fn invalidating_a_user_drops_only_its_tokens() {
        let mut t = Tokens::new(Duration::from_secs(10));
        let now = Instant::now();
        t.insert("a.1".into(), "alice".into(), now);
        t.insert("b.2".into(), "bob".into(), now);
        t.invalidate_user("alice");
        assert!(t.user("a.1", now).is_none());
        assert!(t.user("b.2", now).is_some());
    }

    #[test]
    fn generated_tokens_have_etcds_shape() {
        let tok = Tokens::generate(42);
        let (prefix, seq) = tok.split_once('.').unwrap();
        assert_eq!(prefix.len(), 16);
        assert!(prefix.chars().all(|c| c.is_ascii_alphabetic()));
        assert_eq!(seq, "42");
    }
}
