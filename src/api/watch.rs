//! The Watch service: one bidirectional stream per client carries any number of
//! watchers, each on a key or range, from a start revision, with etcd's filters.
//!
//! A stream session subscribes to the member's applied-changes broadcast before
//! it handles any request, so no change can fall between history and live
//! events: a new watcher first replays history `(start_revision - 1, current]`
//! from the MVCC store, then takes live batches, skipping revisions it has
//! already sent. A session that falls behind the broadcast (it lagged), or is
//! told that a batch's events were left out (`AppliedEvents::omitted`: the
//! batch began before the session subscribed, or a snapshot replaced the
//! store), replays history from where each watcher stopped. A start revision
//! below the compacted
//! revision (or a negative one, which etcd reads as the first) cancels the
//! watcher with `compact_revision` set and no reason, as etcd does. A watch
//! of an empty range or with an ID in use is refused (watch ID -1, etcd's
//! mvcc reasons), and the IDs a stream gives are never given again.
//! History is replayed at most [`MAX_REVS_PER_RESPONSE`] revisions per response
//! (etcd's `watchBatchMaxRevs`), so a far-behind watcher is caught up in steps
//! without loading its whole backlog at once.
//!
//! Progress: `synced_rev` is the revision up to which every watcher of the
//! session has been sent every matching event. A `ProgressRequest` is answered
//! with it (watch ID -1, as etcd 3.4+), and every
//! `--experimental-watch-progress-notify-interval` a `progress_notify` watcher
//! that got no event since the previous tick is told it too, so a client can
//! tell "nothing happened up to R" from "the stream stalled".
//!
//! Fragments: a watcher created with `fragment` gets responses larger than
//! `--max-request-bytes` plus gRPC's overhead allowance (512 KiB: 2 MiB by
//! default) split into several, all but the last marked `fragment`, never
//! splitting below one event (etcd's `sendFragments`, with its
//! `grpcOverheadBytes`).
//!
//! A stream whose metadata requires a leader (`hasleader`, as `etcdctl
//! watch` sends) ends with `etcdserver: no leader` once the member has had
//! none for three election timeouts ([`super::Core::leader_lost`]).
//!
//! Invariants: each watcher delivers every matching event exactly once, in
//! revision order; `next_rev` is the lowest revision it has not delivered;
//! `synced_rev` never claims a revision whose events are still queued.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::access::Credentials;
use super::Core;
use crate::apply::convert::event_to_pb;
use crate::apply::AppliedEvents;
use crate::auth::Access;
use crate::mvcc::{self, EventKind, KeyRange, MvccError};
use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};

/// Most revisions replayed from history in one response (etcd's `watchBatchMaxRevs`).
pub const MAX_REVS_PER_RESPONSE: i64 = 1000;

/// The Watch service of one member.
pub struct WatchService {
    core: Arc<Core>,
}

impl WatchService {
    pub fn new(core: Arc<Core>) -> Self {
        WatchService { core }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let creds = Credentials::of(&request);
        let leader_required = super::stream_requires_leader(request.metadata());
        let input = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        // Read before subscribing: revisions in between are then neither
        // claimed by progress reports nor needed by any watcher (none exists).
        let synced_rev = self.core.store.current_revision();
        let session = Session {
            core: self.core.clone(),
            creds,
            events: self.core.events.subscribe(),
            out: tx,
            watchers: HashMap::new(),
            next_id: 0,
            synced_rev,
        };
        // The session ends when the client closes its side or stops reading,
        // or (if it requires one) when the member has lost its leader.
        tokio::spawn(session.run(input, leader_required));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Watcher {
    range: KeyRange,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// No event was sent since the last progress tick.
    idle: bool,
    /// The lowest revision not delivered yet.
    next_rev: i64,
}

impl Watcher {
    fn wants(&self, ev: &mvcc::Event) -> bool {
        ev.kv.mod_revision >= self.next_rev
            && self.range.contains(&ev.kv.key)
            && !(self.no_put && ev.kind == EventKind::Put)
            && !(self.no_delete && ev.kind == EventKind::Delete)
    }
}

struct Session {
    core: Arc<Core>,
    /// The stream's token / certificate name, resolved at each create (etcd's
    /// `isWatchPermitted`).
    creds: Credentials,
    events: broadcast::Receiver<Arc<AppliedEvents>>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: HashMap<i64, Watcher>,
    next_id: i64,
    /// Every watcher has been sent every matching event up to this revision.
    synced_rev: i64,
}

/// The session stops: the client went away.
struct Gone;

impl Session {
    async fn run(mut self, mut input: Streaming<WatchRequest>, leader_required: bool) {
        let period = self.core.limits.watch_progress_interval;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let core = self.core.clone();
        let leader_lost = core.leader_lost_if(leader_required);
        tokio::pin!(leader_lost);
        // A client that closes its sending half (a Rust client that dropped
        // its `Watcher`, grpc-go's CloseSend) still gets its events, as from
        // etcd: only the end of the call ends the session.
        let mut requests_open = true;
        loop {
            let step = tokio::select! {
                // As etcd: the stream ends with `no leader`, and the client
                // reports every watcher of it canceled.
                () = &mut leader_lost => {
                    let _ = self.out.send(Err(super::errors::no_leader())).await;
                    Err(Gone)
                }
                _ = progress.tick() => self.notify_progress().await,
                msg = input.message(), if requests_open => match msg {
                    Ok(Some(req)) => self.handle(req).await,
                    Ok(None) => {
                        requests_open = false;
                        Ok(())
                    }
                    // A request that cannot be read ends the stream with its
                    // status, as in etcd (not with a silent OK).
                    Err(e) => {
                        let _ = self.out.send(Err(super::errors::from_transport(e))).await;
                        Err(Gone)
                    }
                },
                batch = self.events.recv() => match batch {
                    Ok(batch) if batch.omitted => self.catch_up_all().await,
                    Ok(batch) => self.deliver(&batch.events, batch.revision).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up_all().await,
                    Err(broadcast::error::RecvError::Closed) => Err(Gone),
                },
                _ = self.out.closed() => Err(Gone),
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Gone> {
        self.core.unpaused().await;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    let rev = self.core.store.current_revision();
                    self.send(WatchResponse {
                        header: self.core.header(rev),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.send(WatchResponse {
                    header: self.core.header(self.synced_rev),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let current = self.core.store.current_revision();
        let permitted = self.core.caller(&self.creds).and_then(|caller| {
            self.core
                .require_range(&caller, &c.key, &c.range_end, Access::Read)
        });
        if let Err(refused) = permitted {
            // etcd answers a refused watch with a created-and-canceled response
            // carrying the gRPC error's text as grpc-go prints it: no token,
            // a bad token and a stale auth revision say so; anything else is
            // a denied permission.
            let (code, text) = match refused.code() {
                Code::InvalidArgument | Code::Unauthenticated => {
                    (refused.code(), refused.message().to_owned())
                }
                _ => (
                    Code::PermissionDenied,
                    "etcdserver: permission denied".to_owned(),
                ),
            };
            return self
                .send(WatchResponse {
                    header: self.core.header(current),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: format!("rpc error: code = {code:?} desc = {text}"),
                    ..Default::default()
                })
                .await;
        }
        // etcd's mvcc refusals, in its order: an empty range (a range end
        // of "\0" means every key from the key on), then an ID in use.
        let range = KeyRange::new(&c.key, &c.range_end);
        let refusal = if range.is_empty() {
            Some("mvcc: watcher range is empty")
        } else if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) {
            Some("mvcc: duplicate watch ID provided on the WatchStream")
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self
                .send(WatchResponse {
                    header: self.core.header(current),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason.into(),
                    ..Default::default()
                })
                .await;
        }
        // An ID of the stream's own is never given twice, as in etcd: a late
        // answer for a canceled watch cannot be taken for a new one's.
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let no_put = c.filters.contains(&(FilterType::Noput as i32));
        let no_delete = c.filters.contains(&(FilterType::Nodelete as i32));
        // A negative start revision reads as etcd reads it: history from
        // the first revision, so compacted if anything was (and, as etcd has
        // it, if it is below -1 when nothing was).
        let next_rev = match c.start_revision {
            0 => current + 1,
            r if r < 0 => 1,
            r => r,
        };
        let compacted_below =
            c.start_revision < 0 && c.start_revision < self.core.store.compact_revision();
        let watcher = Watcher {
            range,
            prev_kv: c.prev_kv,
            no_put,
            no_delete,
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            idle: true,
            next_rev,
        };
        self.watchers.insert(id, watcher);
        self.send(WatchResponse {
            header: self.core.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        if compacted_below {
            let compact = self.core.store.compact_revision();
            return self.cancel(id, compact, String::new()).await;
        }
        if next_rev <= current {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Replays history for one watcher, from its `next_rev` to the current
    /// revision, at most [`MAX_REVS_PER_RESPONSE`] revisions per response.
    async fn catch_up(&mut self, id: i64) -> Result<(), Gone> {
        loop {
            let Some(w) = self.watchers.get(&id) else {
                return Ok(());
            };
            let from = w.next_rev - 1;
            let history = self.core.store.read().and_then(|view| {
                let current = view.current_revision();
                let to = current.min(from.saturating_add(MAX_REVS_PER_RESPONSE));
                view.events(from, to).map(|evs| (evs, to, current))
            });
            match history {
                Ok((events, to, current)) => {
                    let selected: Vec<mvcc::Event> =
                        events.into_iter().filter(|e| w.wants(e)).collect();
                    let prev_kv = w.prev_kv;
                    if let Some(w) = self.watchers.get_mut(&id) {
                        w.next_rev = w.next_rev.max(to + 1);
                    }
                    if !selected.is_empty() {
                        self.send_events(id, selected, prev_kv, to).await?;
                    }
                    if to >= current {
                        return Ok(());
                    }
                }
                Err(MvccError::Compacted) => {
                    // No reason given: the compact revision says it (etcd's
                    // clients turn it into "required revision has been
                    // compacted").
                    let compact = self.core.store.compact_revision();
                    return self.cancel(id, compact, String::new()).await;
                }
                Err(e) => return self.cancel(id, 0, format!("etcdserver: {e}")).await,
            }
        }
    }

    /// Drops watcher `id` and tells the client why. A watcher canceled by a
    /// compaction gets a header without a revision, as etcd sends it.
    async fn cancel(&mut self, id: i64, compact_revision: i64, reason: String) -> Result<(), Gone> {
        self.watchers.remove(&id);
        let rev = if compact_revision > 0 {
            0
        } else {
            self.core.store.current_revision()
        };
        self.send(WatchResponse {
            header: self.core.header(rev),
            watch_id: id,
            canceled: true,
            compact_revision,
            cancel_reason: reason,
            ..Default::default()
        })
        .await
    }

    /// After the session lagged behind the broadcast, or was told a batch's
    /// events were left out: replays every watcher's missed history from the
    /// store.
    async fn catch_up_all(&mut self) -> Result<(), Gone> {
        // Every batch up to here is in the store (batches are broadcast after
        // they commit), so once each watcher caught up to the store's current
        // revision, the session is synced at least to `now`.
        let now = self.core.store.current_revision();
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id).await?;
        }
        self.synced_rev = self.synced_rev.max(now);
        Ok(())
    }

    /// A progress tick: every `progress_notify` watcher that got no event
    /// since the previous tick hears the session's synced revision.
    async fn notify_progress(&mut self) -> Result<(), Gone> {
        let mut due = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.progress_notify && w.idle {
                due.push(*id);
            }
            w.idle = true;
        }
        due.sort_unstable();
        for id in due {
            self.send(WatchResponse {
                header: self.core.header(self.synced_rev),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Hands a batch of live events to every interested watcher.
    async fn deliver(&mut self, events: &[mvcc::Event], revision: i64) -> Result<(), Gone> {
        // Puts are applied without reading their previous key-values; read
        // them once for the batch if a watcher that asks for them takes one.
        let needs_prev = |e: &mvcc::Event| e.kind == mvcc::EventKind::Put && e.prev_kv.is_none();
        let loaded;
        let events = if self
            .watchers
            .values()
            .any(|w| w.prev_kv && events.iter().any(|e| needs_prev(e) && w.wants(e)))
        {
            loaded = self.with_prev_kvs(events);
            &loaded[..]
        } else {
            events
        };
        let mut out = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            let selected: Vec<mvcc::Event> =
                events.iter().filter(|e| w.wants(e)).cloned().collect();
            w.next_rev = w.next_rev.max(revision + 1);
            if !selected.is_empty() {
                out.push((*id, selected, w.prev_kv));
            }
        }
        for (id, selected, prev_kv) in out {
            self.send_events(id, selected, prev_kv, revision).await?;
        }
        self.synced_rev = self.synced_rev.max(revision);
        Ok(())
    }

    /// `events` with the previous key-values of their puts read from the
    /// store; as they were if the store cannot tell (a snapshot replaced it),
    /// as etcd's watch then sends no previous key-value either.
    fn with_prev_kvs(&self, events: &[mvcc::Event]) -> Vec<mvcc::Event> {
        let mut events = events.to_vec();
        if let Err(e) = self
            .core
            .store
            .read()
            .and_then(|view| view.load_prev_kvs(&mut events))
        {
            tracing::debug!(error = %e, "watch: previous key-values unavailable");
        }
        events
    }

    async fn send_events(
        &mut self,
        id: i64,
        events: Vec<mvcc::Event>,
        prev_kv: bool,
        revision: i64,
    ) -> Result<(), Gone> {
        let events = events
            .into_iter()
            .map(|mut e| {
                if !prev_kv {
                    e.prev_kv = None;
                }
                event_to_pb(e)
            })
            .collect();
        let resp = WatchResponse {
            header: self.core.header(revision),
            watch_id: id,
            events,
            ..Default::default()
        };
        let fragment = match self.watchers.get_mut(&id) {
            Some(w) => {
                w.idle = false;
                w.fragment
            }
            None => false,
        };
        if fragment {
            let limit = self.core.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
            for part in fragments(resp, limit) {
                self.send(part).await?;
            }
            Ok(())
        } else {
            self.send(resp).await
        }
    }
}

/// What etcd allows a watch response beyond `--max-request-bytes` before it
/// fragments it (its `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Splits `resp` into responses of fewer than `max_bytes` encoded bytes each
/// (but at least one event each), all but the last marked `fragment`. A
/// response already below the limit, or with fewer than two events, is
/// returned whole.
pub fn fragments(resp: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() < max_bytes || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut shell = resp;
    let events = std::mem::take(&mut shell.events);
    shell.fragment = true;
    let base = shell.encoded_len();
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut size = base;
    for ev in events {
        // Each event is a length-delimited field 11 of the response.
        let len = ev.encoded_len();
        let field = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if !current.is_empty() && size + field >= max_bytes {
            parts.push(WatchResponse {
                events: std::mem::take(&mut current),
                ..shell.clone()
            });
            size = base;
        }
        size += field;
        current.push(ev);
    }
    parts.push(WatchResponse {
        events: current,
        fragment: false,
        ..shell
    });
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::{Event, KeyValue};

    fn event(i: usize, value_len: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: format!("k{i}").into_bytes(),
                value: vec![b'x'; value_len],
                mod_revision: i as i64 + 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn response(n: usize, value_len: usize) -> WatchResponse {
        WatchResponse {
            watch_id: 7,
            events: (0..n).map(|i| event(i, value_len)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_small_response_is_not_fragmented() {
        let parts = fragments(response(3, 10), 1024);
        assert_eq!(parts.len(), 1);
        assert!(!parts[0].fragment);
        assert_eq!(parts[0].events.len(), 3);
    }

    #[test]
    fn a_large_response_is_split_below_the_limit_keeping_order() {
        let whole = response(10, 100);
        let parts = fragments(whole.clone(), 350);
        assert!(parts.len() > 1);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.fragment, i + 1 < parts.len(), "only the last is final");
            assert!(
                p.encoded_len() < 350 || p.events.len() == 1,
                "{}",
                p.encoded_len()
            );
            assert_eq!(p.watch_id, 7);
        }
        let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, whole.events);
    }

    #[test]
    fn an_event_larger_than_the_limit_travels_alone() {
        let parts = fragments(response(3, 1000), 500);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.events.len() == 1));
    }

    #[test]
    fn a_single_event_is_never_fragmented() {
        let parts = fragments(response(1, 5000), 100);
        assert_eq!(parts.len(), 1);
        assert!(!parts[0].fragment);
    }
}
