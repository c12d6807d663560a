//! The Watch service: one bidirectional stream per client carries any number of
//! watchers, each on a key or range, from a start revision, with etcd's filters.
//!
//! A stream session subscribes to the member's applied-changes broadcast before
//! it handles any request, so no change can fall between history and live
//! events: a new watcher first replays history `(start_revision - 1, current]`
//! from the MVCC store, then takes live batches, skipping revisions it has
//! already sent. A session that falls behind the broadcast (it lagged) replays
//! history from where each watcher stopped. A start revision below the compacted
//! revision cancels the watcher with `compact_revision` set, as etcd does.
//!
//! Invariants: each watcher delivers every matching event exactly once, in
//! revision order; `next_rev` is the lowest revision it has not delivered.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

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
        let input = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let session = Session {
            core: self.core.clone(),
            creds,
            events: self.core.events.subscribe(),
            out: tx,
            watchers: HashMap::new(),
            next_id: 0,
        };
        // The session ends when the client closes its side or stops reading.
        tokio::spawn(session.run(input));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Watcher {
    range: KeyRange,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
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
}

/// The session stops: the client went away.
struct Gone;

impl Session {
    async fn run(mut self, mut input: Streaming<WatchRequest>) {
        loop {
            let step = tokio::select! {
                msg = input.message() => match msg {
                    Ok(Some(req)) => self.handle(req).await,
                    Ok(None) | Err(_) => Err(Gone),
                },
                batch = self.events.recv() => match batch {
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
                let rev = self.core.store.current_revision();
                self.send(WatchResponse {
                    header: self.core.header(rev),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let current = self.core.store.current_revision();
        let permitted = self.core.caller(&self.creds).and_then(|caller| {
            self.core
                .require_range(&caller, &c.key, &c.range_end, Access::Read)
        });
        if permitted.is_err() {
            // etcd answers a refused watch with a created-and-canceled response
            // carrying the gRPC error's text.
            return self
                .send(WatchResponse {
                    header: self.core.header(current),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason:
                        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
                            .into(),
                    ..Default::default()
                })
                .await;
        }
        if self.watchers.contains_key(&id) {
            return self
                .send(WatchResponse {
                    header: self.core.header(current),
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason: "etcdserver: mvcc: watcher ID already exists".into(),
                    ..Default::default()
                })
                .await;
        }
        let no_put = c.filters.contains(&(FilterType::Noput as i32));
        let no_delete = c.filters.contains(&(FilterType::Nodelete as i32));
        let next_rev = if c.start_revision > 0 {
            c.start_revision
        } else {
            current + 1
        };
        let watcher = Watcher {
            range: KeyRange::new(&c.key, &c.range_end),
            prev_kv: c.prev_kv,
            no_put,
            no_delete,
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
        if next_rev <= current {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Replays history for one watcher, from its `next_rev` to the current revision.
    async fn catch_up(&mut self, id: i64) -> Result<(), Gone> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(());
        };
        let from = w.next_rev - 1;
        let history = self.core.store.read().and_then(|view| {
            let to = view.current_revision();
            view.events(from, to).map(|evs| (evs, to))
        });
        match history {
            Ok((events, to)) => {
                let selected: Vec<mvcc::Event> =
                    events.into_iter().filter(|e| w.wants(e)).collect();
                let prev_kv = w.prev_kv;
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.next_rev = to + 1;
                }
                if !selected.is_empty() {
                    self.send_events(id, selected, prev_kv, to).await?;
                }
                Ok(())
            }
            Err(MvccError::Compacted) => {
                self.watchers.remove(&id);
                let compact = self.core.store.compact_revision();
                let rev = self.core.store.current_revision();
                self.send(WatchResponse {
                    header: self.core.header(rev),
                    watch_id: id,
                    canceled: true,
                    compact_revision: compact,
                    cancel_reason: super::errors::COMPACTED.into(),
                    ..Default::default()
                })
                .await
            }
            Err(e) => {
                self.watchers.remove(&id);
                let rev = self.core.store.current_revision();
                self.send(WatchResponse {
                    header: self.core.header(rev),
                    watch_id: id,
                    canceled: true,
                    cancel_reason: format!("etcdserver: {e}"),
                    ..Default::default()
                })
                .await
            }
        }
    }

    async fn catch_up_all(&mut self) -> Result<(), Gone> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Hands a batch of live events to every interested watcher.
    async fn deliver(&mut self, events: &[mvcc::Event], revision: i64) -> Result<(), Gone> {
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
        Ok(())
    }

    async fn send_events(
        &self,
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
        self.send(WatchResponse {
            header: self.core.header(revision),
            watch_id: id,
            events,
            ..Default::default()
        })
        .await
    }
}
