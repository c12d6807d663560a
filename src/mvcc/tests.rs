//! Behaviour tests of the MVCC store: one unit test per etcd semantic, and a
//! model-based property test that runs random put/delete/range/compact
//! sequences with random batch boundaries against a plain in-memory history and
//! checks identical results, then checks that reopening, batching differently
//! and snapshot/restore all give the same hashes.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn open_temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("db")).expect("open store");
    (dir, store)
}

/// One batch, one revision transaction with one put; returns the revision.
fn put(store: &Store, key: &[u8], value: &[u8]) -> i64 {
    put_lease(store, key, value, 0)
}

fn put_lease(store: &Store, key: &[u8], value: &[u8], lease: i64) -> i64 {
    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    txn.put(key, value, lease, false, false).unwrap();
    let (rev, _) = txn.end();
    batch.commit().unwrap();
    rev
}

fn delete(store: &Store, key: &[u8], end: &[u8]) -> (i64, Vec<KeyValue>) {
    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    let deleted = txn.delete_range(key, end).unwrap();
    let (rev, _) = txn.end();
    batch.commit().unwrap();
    (rev, deleted)
}

fn compact(store: &Store, rev: i64) -> Result<()> {
    let mut batch = store.batch().unwrap();
    batch.compact(rev)?;
    batch.commit()
}

fn range(store: &Store, key: &[u8], end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
    store.read().unwrap().range(key, end, opts)
}

fn get(store: &Store, key: &[u8]) -> Option<KeyValue> {
    range(store, key, b"", &RangeOptions::default())
        .unwrap()
        .kvs
        .into_iter()
        .next()
}

fn at(rev: i64) -> RangeOptions {
    RangeOptions {
        revision: rev,
        ..RangeOptions::default()
    }
}

fn keys(r: &RangeResult) -> Vec<&[u8]> {
    r.kvs.iter().map(|kv| kv.key.as_slice()).collect()
}

#[test]
fn store_and_types_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send::<Batch<'static>>();
    send::<ReadView>();
}

#[test]
fn empty_store_is_at_revision_one_and_first_put_gets_two() {
    let (_d, store) = open_temp();
    assert_eq!(store.current_revision(), 1);
    assert_eq!(store.compact_revision(), -1);
    assert_eq!(put(&store, b"a", b"1"), 2);
    assert_eq!(
        get(&store, b"a"),
        Some(KeyValue {
            key: b"a".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b"1".to_vec(),
            lease: 0,
        })
    );
    assert_eq!(store.current_revision(), 2);
}

#[test]
fn put_increments_version_keeps_create_revision_and_returns_prev() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    let prev = txn.put(b"a", b"2", 7, false, false).unwrap().unwrap();
    assert_eq!((prev.value.as_slice(), prev.version), (b"1".as_slice(), 1));
    let (rev, events) = txn.end();
    batch.commit().unwrap();
    assert_eq!(rev, 3);
    let kv = get(&store, b"a").unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (2, 3, 2, 7)
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(events[0].kv, kv);
    assert_eq!(events[0].prev_kv, Some(prev));
}

#[test]
fn put_after_delete_starts_a_new_generation() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    put(&store, b"a", b"2");
    let (rev, deleted) = delete(&store, b"a", b"");
    assert_eq!(rev, 4);
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].version, 2);
    assert_eq!(get(&store, b"a"), None);
    put(&store, b"a", b"3");
    let kv = get(&store, b"a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn deleting_nothing_and_read_only_txns_do_not_bump_the_revision() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    assert_eq!(delete(&store, b"zzz", b"").0, 2);
    let mut batch = store.batch().unwrap();
    let txn = batch.txn().unwrap();
    txn.range(b"a", b"", &RangeOptions::default()).unwrap();
    assert_eq!(txn.end(), (2, vec![]));
    let txn = batch.txn().unwrap();
    assert_eq!(txn.end(), (2, vec![]));
    batch.commit().unwrap();
    assert_eq!(store.current_revision(), 2);
}

#[test]
fn changes_in_one_txn_share_the_main_revision_with_increasing_sub_revisions() {
    let (_d, store) = open_temp();
    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    txn.put(b"a", b"1", 0, false, false).unwrap();
    txn.put(b"b", b"1", 0, false, false).unwrap();
    txn.put(b"a", b"2", 0, false, false).unwrap();
    let deleted = txn.delete_range(b"a", b"c").unwrap();
    assert_eq!(deleted.len(), 2);
    assert_eq!(deleted[0].value, b"2");
    assert_eq!(deleted[0].version, 2);
    let (rev, events) = txn.end();
    batch.commit().unwrap();
    assert_eq!(rev, 2);
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.kv.mod_revision)).collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Put, 2),
            (EventKind::Put, 2),
            (EventKind::Put, 2),
            (EventKind::Delete, 2),
            (EventKind::Delete, 2),
        ]
    );
    assert_eq!(events[3].kv, KeyValue::tombstone(b"a".to_vec(), 2));
    // The store records them with sub-revisions 0..5: reading history back
    // gives the same events in the same order.
    let view = store.read().unwrap();
    assert_eq!(view.events(1, 2).unwrap(), events);
    assert_eq!(view.stored_revisions().unwrap(), (5, 5));
}

#[test]
fn reads_see_earlier_writes_of_the_batch_but_read_views_only_committed_ones() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"old");
    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    assert_eq!(txn.revision(), 2);
    txn.put(b"a", b"new", 0, false, false).unwrap();
    assert_eq!(txn.revision(), 3);
    let r = txn.range(b"a", b"", &RangeOptions::default()).unwrap();
    assert_eq!(
        (r.kvs[0].value.as_slice(), r.revision),
        (b"new".as_slice(), 3)
    );
    // The revision before this txn is still readable inside it.
    let old = txn.range(b"a", b"", &at(2)).unwrap();
    assert_eq!(old.kvs[0].value, b"old");
    txn.end();
    let txn = batch.txn().unwrap();
    assert_eq!(
        txn.range(b"a", b"", &RangeOptions::default()).unwrap().kvs[0].value,
        b"new"
    );
    txn.end();
    assert_eq!(get(&store, b"a").unwrap().value, b"old");
    assert_eq!(store.current_revision(), 2);
    batch.commit().unwrap();
    assert_eq!(get(&store, b"a").unwrap().value, b"new");
    assert_eq!(store.current_revision(), 3);
}

#[test]
fn dropped_batch_changes_nothing() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    {
        let mut batch = store.batch().unwrap();
        let mut txn = batch.txn().unwrap();
        txn.put(b"b", b"1", 0, false, false).unwrap();
        txn.end();
        batch.set_meta("applied", b"9").unwrap();
    }
    assert_eq!(store.current_revision(), 2);
    let view = store.read().unwrap();
    assert_eq!(view.current_revision(), 2);
    assert_eq!(view.meta("applied").unwrap(), None);
    assert_eq!(get(&store, b"b"), None);
}

#[test]
fn range_end_forms_follow_etcd() {
    let (_d, store) = open_temp();
    for k in [b"a".as_slice(), b"b", b"b\0", b"ba", b"c", b"\xff"] {
        put(&store, k, b"v");
    }
    let o = RangeOptions::default();
    let r = range(&store, b"b", b"", &o).unwrap();
    assert_eq!(keys(&r), vec![b"b".as_slice()]);
    let r = range(&store, b"b", b"c", &o).unwrap();
    assert_eq!(keys(&r), vec![b"b".as_slice(), b"b\0", b"ba"]);
    let r = range(&store, b"b", b"\0", &o).unwrap();
    assert_eq!(
        keys(&r),
        vec![b"b".as_slice(), b"b\0", b"ba", b"c", b"\xff"]
    );
    let r = range(&store, b"\0", b"\0", &o).unwrap();
    assert_eq!(r.count, 6);
    let r = range(&store, b"c", b"a", &o).unwrap();
    assert_eq!((r.count, r.kvs.len()), (0, 0));
    // Same forms at a past revision (history path) and for deletes.
    let r = range(&store, b"b", b"c", &at(4)).unwrap();
    assert_eq!(keys(&r), vec![b"b".as_slice(), b"b\0"]);
    let (_, deleted) = delete(&store, b"b", b"\0");
    assert_eq!(deleted.len(), 5);
    assert_eq!(keys(&range(&store, b"\0", b"\0", &o).unwrap()), vec![b"a"]);
}

#[test]
fn ranges_at_past_revisions_see_the_keys_as_they_were() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1"); // 2
    put(&store, b"b", b"1"); // 3
    put(&store, b"a", b"2"); // 4
    delete(&store, b"b", b""); // 5
    put(&store, b"b", b"3"); // 6
    let all = |rev| {
        range(&store, b"\0", b"\0", &at(rev))
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value, kv.version))
            .collect::<Vec<_>>()
    };
    assert_eq!(all(1), vec![]);
    assert_eq!(
        all(3),
        vec![
            (b"a".to_vec(), b"1".to_vec(), 1),
            (b"b".to_vec(), b"1".to_vec(), 1)
        ]
    );
    assert_eq!(
        all(4),
        vec![
            (b"a".to_vec(), b"2".to_vec(), 2),
            (b"b".to_vec(), b"1".to_vec(), 1)
        ]
    );
    assert_eq!(all(5), vec![(b"a".to_vec(), b"2".to_vec(), 2)]);
    assert_eq!(
        all(6),
        vec![
            (b"a".to_vec(), b"2".to_vec(), 2),
            (b"b".to_vec(), b"3".to_vec(), 1)
        ]
    );
    let r = range(&store, b"a", b"", &at(3)).unwrap();
    assert_eq!(r.revision, 6, "header revision is the store revision");
}

#[test]
fn revision_errors_follow_etcd() {
    let (_d, store) = open_temp();
    for v in [b"1", b"2", b"3"] {
        put(&store, b"a", v);
    }
    assert_eq!(
        range(&store, b"a", b"", &at(5)),
        Err(MvccError::FutureRevision)
    );
    compact(&store, 3).unwrap();
    assert_eq!(range(&store, b"a", b"", &at(2)), Err(MvccError::Compacted));
    assert_eq!(range(&store, b"a", b"", &at(3)).unwrap().kvs[0].value, b"2");
    assert_eq!(
        range(&store, b"a", b"", &at(-5)).unwrap().kvs[0].value,
        b"3"
    );
}

#[test]
fn limit_count_and_more() {
    let (_d, store) = open_temp();
    for k in [b"a", b"b", b"c", b"d"] {
        put(&store, k, b"v");
    }
    let o = |limit| RangeOptions {
        limit,
        ..RangeOptions::default()
    };
    let r = range(&store, b"a", b"\0", &o(2)).unwrap();
    assert_eq!(
        (keys(&r), r.count, r.more),
        (vec![b"a".as_slice(), b"b"], 4, true)
    );
    let r = range(&store, b"a", b"\0", &o(4)).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (4, 4, false));
    let r = range(&store, b"a", b"\0", &o(0)).unwrap();
    assert_eq!((r.kvs.len(), r.more), (4, false));
    let r = range(
        &store,
        b"b",
        b"\0",
        &RangeOptions {
            count_only: true,
            limit: 1,
            ..RangeOptions::default()
        },
    )
    .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 3, false));
    let r = range(
        &store,
        b"a",
        b"",
        &RangeOptions {
            keys_only: true,
            ..RangeOptions::default()
        },
    )
    .unwrap();
    assert_eq!((r.kvs[0].value.len(), r.kvs[0].version), (0, 1));
}

#[test]
fn sort_orders_and_targets() {
    let (_d, store) = open_temp();
    // a: created 2, version 3, value "x"; b: created 3, version 1, value "z";
    // c: created 4, version 2, value "y".
    put(&store, b"a", b"x");
    put(&store, b"b", b"z");
    put(&store, b"c", b"w");
    put(&store, b"a", b"x");
    put(&store, b"c", b"y");
    put(&store, b"a", b"x");
    let sorted = |target, order| {
        let r = range(
            &store,
            b"a",
            b"\0",
            &RangeOptions {
                sort_target: target,
                sort_order: order,
                ..RangeOptions::default()
            },
        )
        .unwrap();
        keys(&r)
            .into_iter()
            .map(|k| k[0] as char)
            .collect::<String>()
    };
    use SortOrder::*;
    use SortTarget::*;
    assert_eq!(sorted(Key, None), "abc");
    assert_eq!(sorted(Key, Ascend), "abc");
    assert_eq!(sorted(Key, Descend), "cba");
    assert_eq!(sorted(Version, Ascend), "bca");
    assert_eq!(sorted(Version, Descend), "acb");
    assert_eq!(
        sorted(Version, None),
        "bca",
        "non-key target without order ascends"
    );
    assert_eq!(sorted(Create, Descend), "cba");
    assert_eq!(sorted(Mod, Ascend), "bca");
    assert_eq!(sorted(Value, Ascend), "acb");
    assert_eq!(sorted(Value, Descend), "bca");
}

#[test]
fn sort_with_limit_reads_all_but_default_order_pushes_the_limit_down() {
    let (_d, store) = open_temp();
    // versions: a=3, b=2, c=1
    for _ in 0..3 {
        put(&store, b"a", b"v");
    }
    for _ in 0..2 {
        put(&store, b"b", b"v");
    }
    put(&store, b"c", b"v");
    let run = |order| {
        range(
            &store,
            b"a",
            b"\0",
            &RangeOptions {
                limit: 1,
                sort_target: SortTarget::Version,
                sort_order: order,
                ..RangeOptions::default()
            },
        )
        .unwrap()
    };
    // Explicit ascending: everything is read and sorted, then truncated.
    let r = run(SortOrder::Ascend);
    assert_eq!(
        (keys(&r), r.count, r.more),
        (vec![b"c".as_slice()], 3, true)
    );
    // No order: etcd pushes limit+1 down (reads a, b), sorts those, truncates.
    let r = run(SortOrder::None);
    assert_eq!(
        (keys(&r), r.count, r.more),
        (vec![b"b".as_slice()], 3, true)
    );
}

#[test]
fn revision_filters_apply_after_reading_and_do_not_change_count() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1"); // 2
    put(&store, b"b", b"1"); // 3
    put(&store, b"c", b"1"); // 4
    put(&store, b"a", b"2"); // 5
    let run = |opts: RangeOptions| range(&store, b"a", b"\0", &opts).unwrap();
    let r = run(RangeOptions {
        min_mod_revision: 4,
        ..RangeOptions::default()
    });
    assert_eq!((keys(&r), r.count), (vec![b"a".as_slice(), b"c"], 3));
    let r = run(RangeOptions {
        max_mod_revision: 3,
        ..RangeOptions::default()
    });
    assert_eq!(keys(&r), vec![b"b".as_slice()]);
    let r = run(RangeOptions {
        min_create_revision: 3,
        max_create_revision: 3,
        ..RangeOptions::default()
    });
    assert_eq!(keys(&r), vec![b"b".as_slice()]);
    // With a filter the limit is not pushed down: the first match past the
    // limit window is still found.
    let r = run(RangeOptions {
        min_mod_revision: 4,
        limit: 1,
        ..RangeOptions::default()
    });
    assert_eq!(
        (keys(&r), r.count, r.more),
        (vec![b"a".as_slice()], 3, true)
    );
    let r = run(RangeOptions {
        min_create_revision: 4,
        limit: 1,
        ..RangeOptions::default()
    });
    assert_eq!((keys(&r), r.more), (vec![b"c".as_slice()], false));
}

#[test]
fn ignore_value_and_ignore_lease_keep_current_ones_or_fail_on_missing_keys() {
    let (_d, store) = open_temp();
    put_lease(&store, b"a", b"v1", 5);
    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    txn.put(b"a", b"", 9, true, false).unwrap();
    assert_eq!(
        txn.put(b"missing", b"x", 0, true, false),
        Err(MvccError::KeyNotFound)
    );
    assert_eq!(
        txn.put(b"missing", b"x", 0, false, true),
        Err(MvccError::KeyNotFound)
    );
    txn.put(b"a", b"v2", 0, false, true).unwrap();
    let (rev, events) = txn.end();
    batch.commit().unwrap();
    assert_eq!((rev, events.len()), (3, 2));
    let kv = get(&store, b"a").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (b"v2".as_slice(), 9, 3)
    );
    assert_eq!(events[0].kv.value, b"v1");
    assert_eq!(events[0].kv.lease, 9);
    assert_eq!(get(&store, b"missing"), None);

    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    assert_eq!(
        txn.put(b"missing", b"x", 0, true, true),
        Err(MvccError::KeyNotFound)
    );
    assert_eq!(txn.end(), (3, vec![]));
    batch.commit().unwrap();
    assert_eq!(store.current_revision(), 3);
}

#[test]
fn compact_errors_follow_etcd() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    put(&store, b"a", b"2");
    assert_eq!(compact(&store, 4), Err(MvccError::FutureRevision));
    compact(&store, 2).unwrap();
    assert_eq!(store.compact_revision(), 2);
    assert_eq!(compact(&store, 2), Err(MvccError::Compacted));
    assert_eq!(compact(&store, 1), Err(MvccError::Compacted));
    compact(&store, 3).unwrap();
    assert_eq!(store.current_revision(), 3, "compaction does not bump");
}

#[test]
fn compact_keeps_the_newest_live_revision_per_key_and_drops_the_rest() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1"); // 2
    put(&store, b"a", b"2"); // 3
    put(&store, b"b", b"1"); // 4
    delete(&store, b"b", b""); // 5
    put(&store, b"c", b"1"); // 6
    put(&store, b"a", b"3"); // 7
    assert_eq!(store.read().unwrap().stored_revisions().unwrap(), (6, 6));
    compact(&store, 6).unwrap();
    // Kept: a@3 (newest <= 6), c@6, a@7. Dropped: a@2, b@4, b's tombstone @5.
    assert_eq!(store.read().unwrap().stored_revisions().unwrap(), (3, 3));
    let r = range(&store, b"\0", b"\0", &at(6)).unwrap();
    let got: Vec<_> = r
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect();
    assert_eq!(got, vec![(b"a".to_vec(), 3), (b"c".to_vec(), 6)]);
    assert_eq!(get(&store, b"a").unwrap().version, 3);
    // A later compaction that skips keys untouched since the first still works.
    put(&store, b"c", b"2"); // 8
    compact(&store, 8).unwrap();
    assert_eq!(store.read().unwrap().stored_revisions().unwrap(), (2, 2));
    let r = range(&store, b"\0", b"\0", &at(8)).unwrap();
    let got: Vec<_> = r
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect();
    assert_eq!(got, vec![(b"a".to_vec(), 7), (b"c".to_vec(), 8)]);
}

#[test]
fn batches_store_their_records_in_groups_that_compaction_takes_records_out_of() {
    let (dir, store) = open_temp();
    // One batch of five revisions: a@2, b@3, a@4, c@5, b deleted @6. It
    // waits (its transaction stays pending for the next batch).
    let mut batch = store.batch().unwrap();
    batch.set_durable(false);
    {
        let mut writer = batch.writer().unwrap();
        for (key, value) in [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"c", b"1")] {
            let mut txn = writer.txn().unwrap();
            txn.put(key, value, 0, false, false).unwrap();
            txn.end();
        }
        let mut txn = writer.txn().unwrap();
        txn.delete_range(b"b", b"").unwrap();
        txn.end();
    }
    batch.commit().unwrap();
    assert_eq!(get(&store, b"a").unwrap().value, b"2");
    let view = store.read_durable().unwrap();
    assert_eq!(view.stored_entries().unwrap(), 1);
    assert_eq!(view.stored_revisions().unwrap(), (5, 5));
    let b = range(&store, b"b", b"", &at(5)).unwrap();
    assert_eq!(b.kvs[0].mod_revision, 3);
    drop(view);

    // A waiting batch, then one in the same pending transaction that
    // writes, compacts in the middle of the first group (a@2 and b@3 with
    // its tombstone go; the group keeps a@4 and c@5), writes, reads what it
    // wrote and compacts again.
    let mut batch = store.batch().unwrap();
    batch.set_durable(false);
    let mut txn = batch.txn().unwrap();
    txn.put(b"d", b"1", 0, false, false).unwrap(); // 7
    txn.end();
    batch.commit().unwrap();
    let mut batch = store.batch().unwrap();
    {
        let mut writer = batch.writer().unwrap();
        let mut txn = writer.txn().unwrap();
        txn.put(b"d", b"2", 0, false, false).unwrap(); // 8
        txn.end();
        writer.compact(6).unwrap();
        let mut txn = writer.txn().unwrap();
        let prev = txn.put(b"e", b"1", 0, false, false).unwrap(); // 9
        assert_eq!(prev, None);
        let prev = txn.put(b"d", b"3", 0, false, false).unwrap(); // 9.1
        assert_eq!(prev.map(|kv| kv.mod_revision), Some(8));
        let all = txn.range(b"\0", b"\0", &RangeOptions::default()).unwrap();
        let revs: Vec<_> = all.kvs.iter().map(|kv| kv.mod_revision).collect();
        assert_eq!(revs, vec![4, 5, 9, 9]);
        txn.end();
        writer.compact(8).unwrap();
    }
    batch.commit().unwrap();
    let view = store.read().unwrap();
    // Kept: a@4 and c@5 (their group), d@8 (written before the first
    // compaction, an entry of its own), e@9 and d@9.1 (a group written by
    // the second); d@7 went.
    assert_eq!(view.stored_revisions().unwrap(), (5, 5));
    assert_eq!(view.stored_entries().unwrap(), 3);
    let expect = |store: &Store| {
        let r = range(store, b"\0", b"\0", &at(9)).unwrap();
        let got: Vec<_> = r
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = [("a", "2"), ("c", "1"), ("d", "3"), ("e", "1")]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
    };
    expect(&store);
    drop(view);
    drop(store);
    // Reopened, the index is rebuilt from the groups.
    let store = Store::open(dir.path().join("db")).unwrap();
    expect(&store);
    assert_eq!(store.indexed_keys(), 4);
}

#[test]
fn events_from_history_match_txn_events_and_respect_compaction() {
    let (_d, store) = open_temp();
    let mut all = Vec::new();
    for (k, v) in [(b"a", b"1"), (b"b", b"1"), (b"a", b"2")] {
        let mut batch = store.batch().unwrap();
        let mut txn = batch.txn().unwrap();
        txn.put(k, v, 0, false, false).unwrap();
        all.extend(txn.end().1);
        batch.commit().unwrap();
    }
    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    txn.delete_range(b"a", b"").unwrap();
    all.extend(txn.end().1);
    batch.commit().unwrap();
    // revisions: a@2 b@3 a@4 del a@5
    let view = store.read().unwrap();
    assert_eq!(view.events(1, 5).unwrap(), all);
    assert_eq!(view.events(3, 5).unwrap(), all[2..].to_vec());
    assert_eq!(view.events(3, 4).unwrap(), all[2..3].to_vec());
    assert_eq!(all[3].prev_kv.as_ref().unwrap().value, b"2");
    assert_eq!(view.events(5, 5).unwrap(), vec![]);
    assert_eq!(view.events(1, 6), Err(MvccError::FutureRevision));
    drop(view);
    compact(&store, 4).unwrap();
    let view = store.read().unwrap();
    assert_eq!(view.events(4, 5).unwrap(), all[3..].to_vec());
    // Watching from the compacted revision itself is allowed, as in etcd.
    assert!(view.events(3, 5).is_ok());
    assert_eq!(view.events(2, 5), Err(MvccError::Compacted));
}

#[test]
fn hash_kv_is_deterministic_and_covers_revisions_after_compaction() {
    let (_d1, s1) = open_temp();
    let (_d2, s2) = open_temp();
    for (k, v) in [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")] {
        put(&s1, k, v);
    }
    // Same history in one batch of three revision transactions.
    let mut batch = s2.batch().unwrap();
    for (k, v) in [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")] {
        let mut txn = batch.txn().unwrap();
        txn.put(k, v, 0, false, false).unwrap();
        txn.end();
    }
    batch.commit().unwrap();
    let h1 = s1.read().unwrap().hash_kv(0).unwrap();
    assert_eq!(h1, s2.read().unwrap().hash_kv(0).unwrap());
    assert_eq!((h1.compact_revision, h1.hash_revision), (-1, 4));
    assert_eq!(
        s1.read().unwrap().hash().unwrap(),
        s2.read().unwrap().hash().unwrap()
    );
    let at3 = s1.read().unwrap().hash_kv(3).unwrap();
    assert_ne!(at3.hash, h1.hash);
    put(&s1, b"c", b"4");
    assert_eq!(s1.read().unwrap().hash_kv(3).unwrap(), at3);
    assert_ne!(s1.read().unwrap().hash_kv(0).unwrap().hash, h1.hash);
    compact(&s1, 3).unwrap();
    let view = s1.read().unwrap();
    assert_eq!(view.hash_kv(3), Err(MvccError::Compacted));
    assert_eq!(view.hash_kv(6), Err(MvccError::FutureRevision));
    assert_eq!(view.hash_kv(5).unwrap().compact_revision, 3);
}

#[test]
fn meta_is_committed_atomically_with_the_batch() {
    let (_d, store) = open_temp();
    let mut batch = store.batch().unwrap();
    batch
        .set_meta("applied_index", &7u64.to_be_bytes())
        .unwrap();
    batch.set_meta("gone", b"x").unwrap();
    batch.delete_meta("gone").unwrap();
    assert_eq!(
        batch.meta("applied_index").unwrap(),
        Some(7u64.to_be_bytes().to_vec())
    );
    assert_eq!(store.read().unwrap().meta("applied_index").unwrap(), None);
    batch.commit().unwrap();
    let view = store.read().unwrap();
    assert_eq!(
        view.meta("applied_index").unwrap(),
        Some(7u64.to_be_bytes().to_vec())
    );
    assert_eq!(view.meta("gone").unwrap(), None);
}

#[test]
fn reopening_preserves_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (hash, kvh) = {
        let store = Store::open(&path).unwrap();
        put(&store, b"a", b"1");
        put(&store, b"b", b"2");
        delete(&store, b"a", b"");
        compact(&store, 3).unwrap();
        let mut batch = store.batch().unwrap();
        batch.set_meta("m", b"v").unwrap();
        batch.commit().unwrap();
        let view = store.read().unwrap();
        (view.hash().unwrap(), view.hash_kv(0).unwrap())
    };
    let store = Store::open(&path).unwrap();
    assert_eq!((store.current_revision(), store.compact_revision()), (4, 3));
    let view = store.read().unwrap();
    assert_eq!(view.hash().unwrap(), hash);
    assert_eq!(view.hash_kv(0).unwrap(), kvh);
    assert_eq!(view.meta("m").unwrap(), Some(b"v".to_vec()));
    assert_eq!(get(&store, b"b").unwrap().mod_revision, 3);
    assert_eq!(put(&store, b"c", b"3"), 5);
}

#[test]
fn snapshot_restore_replaces_contents_with_an_identical_store() {
    let (_d1, src) = open_temp();
    put(&src, b"a", b"1");
    put(&src, b"b", b"2");
    put(&src, b"a", b"3");
    compact(&src, 3).unwrap();
    let mut batch = src.batch().unwrap();
    batch.set_meta("m", b"v").unwrap();
    batch.commit().unwrap();
    let (_d2, dst) = open_temp();
    put(&dst, b"zzz", b"old contents");
    let mut batch = dst.batch().unwrap();
    batch.set_meta("other", b"x").unwrap();
    batch.commit().unwrap();

    let bytes = src.read().unwrap().snapshot_bytes().unwrap();
    dst.restore(&bytes).unwrap();
    assert_eq!(
        (dst.current_revision(), dst.compact_revision()),
        (src.current_revision(), src.compact_revision())
    );
    let (sv, dv) = (src.read().unwrap(), dst.read().unwrap());
    assert_eq!(dv.hash_kv(0).unwrap(), sv.hash_kv(0).unwrap());
    assert_eq!(dv.hash().unwrap(), sv.hash().unwrap());
    assert_eq!(dv.meta("m").unwrap(), Some(b"v".to_vec()));
    assert_eq!(dv.meta("other").unwrap(), None);
    assert_eq!(get(&dst, b"zzz"), None);
    assert_eq!(dv.snapshot_bytes().unwrap(), bytes);
    // The source wrote its three remaining records in three batches; the
    // restore writes them as one group.
    assert_eq!(sv.stored_entries().unwrap(), 3);
    assert_eq!(dv.stored_entries().unwrap(), 1);
    assert_eq!(
        dv.stored_revisions().unwrap(),
        sv.stored_revisions().unwrap()
    );

    let mut bad = bytes.clone();
    bad[20] ^= 1;
    assert!(matches!(dst.restore(&bad), Err(MvccError::Corrupt(_))));
    assert_eq!(dst.read().unwrap().hash().unwrap(), sv.hash().unwrap());
}

#[test]
fn defragment_works_when_idle_and_reports_busy_otherwise() {
    let (_d, store) = open_temp();
    for i in 0..200u32 {
        put(&store, &i.to_be_bytes(), &[7u8; 512]);
    }
    delete(&store, b"\0", b"\0");
    compact(&store, store.current_revision()).unwrap();
    assert!(store.db_size() > 0);
    assert!(store.db_size_in_use().unwrap() > 0);
    {
        let _batch = store.batch().unwrap();
        assert!(matches!(store.defragment(), Err(MvccError::Busy(_))));
        assert!(store.db_size_in_use().unwrap() > 0);
    }
    {
        let _view = store.read().unwrap();
        assert!(matches!(store.defragment(), Err(MvccError::Busy(_))));
    }
    store.defragment().unwrap();
    assert_eq!(put(&store, b"after", b"1"), store.current_revision());
}

// ---------------------------------------------------------------------------
// Model-based property test.

/// A plain in-memory MVCC history: every revision of every key, never pruned
/// (compaction only moves the compacted revision).
#[derive(Debug, Clone)]
struct Model {
    history: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
    current: i64,
    compact: i64,
}

impl Model {
    fn new() -> Self {
        Model {
            history: BTreeMap::new(),
            current: 1,
            compact: -1,
        }
    }

    fn at(&self, key: &[u8], rev: i64) -> Option<&KeyValue> {
        self.history
            .get(key)?
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)
            .and_then(|(_, kv)| kv.as_ref())
    }

    /// How many keys exist at the newest revision.
    fn live(&self) -> usize {
        self.history
            .keys()
            .filter(|k| self.at(k, self.current).is_some())
            .count()
    }

    fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
        if end.is_empty() {
            key == start
        } else if end == [0] {
            key >= start
        } else {
            key >= start && key < end
        }
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        o: &RangeOptions,
        current: i64,
    ) -> Result<RangeResult> {
        if o.revision > current {
            return Err(MvccError::FutureRevision);
        }
        let rev = if o.revision <= 0 { current } else { o.revision };
        if rev < self.compact {
            return Err(MvccError::Compacted);
        }
        let all: Vec<KeyValue> = self
            .history
            .keys()
            .filter(|k| Self::in_range(k, start, end))
            .filter_map(|k| self.at(k, rev).cloned())
            .collect();
        let count = all.len() as i64;
        if o.count_only {
            return Ok(RangeResult {
                kvs: vec![],
                count,
                more: false,
                revision: current,
            });
        }
        let default_order = o.sort_order == SortOrder::None
            || (o.sort_target == SortTarget::Key && o.sort_order == SortOrder::Ascend);
        let filtered = o.min_mod_revision != 0
            || o.max_mod_revision != 0
            || o.min_create_revision != 0
            || o.max_create_revision != 0;
        let mut kvs: Vec<KeyValue> = if default_order && !filtered && o.limit > 0 {
            all.into_iter().take(o.limit as usize + 1).collect()
        } else {
            all
        };
        kvs.retain(|kv| {
            (o.max_mod_revision == 0 || kv.mod_revision <= o.max_mod_revision)
                && (o.min_mod_revision == 0 || kv.mod_revision >= o.min_mod_revision)
                && (o.max_create_revision == 0 || kv.create_revision <= o.max_create_revision)
                && (o.min_create_revision == 0 || kv.create_revision >= o.min_create_revision)
        });
        let order = if o.sort_target != SortTarget::Key && o.sort_order == SortOrder::None {
            SortOrder::Ascend
        } else {
            o.sort_order
        };
        if !(order == SortOrder::None
            || (o.sort_target == SortTarget::Key && order == SortOrder::Ascend))
        {
            kvs.sort_by(|a, b| {
                let c = match o.sort_target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                };
                if order == SortOrder::Descend {
                    c.reverse()
                } else {
                    c
                }
            });
        }
        let mut more = false;
        if o.limit > 0 && kvs.len() > o.limit as usize {
            kvs.truncate(o.limit as usize);
            more = true;
        }
        if o.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResult {
            kvs,
            count,
            more,
            revision: current,
        })
    }
}

/// A revision transaction being applied to the model.
struct ModelTxn<'m> {
    m: &'m mut Model,
    begin: i64,
    changes: usize,
    events: Vec<Event>,
}

impl ModelTxn<'_> {
    fn revision(&self) -> i64 {
        self.begin + i64::from(self.changes > 0)
    }

    fn change(&mut self, key: &[u8], kv: Option<KeyValue>) {
        self.changes += 1;
        self.m.current = self.begin + 1;
        self.m
            .history
            .entry(key.to_vec())
            .or_default()
            .push((self.begin + 1, kv));
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        iv: bool,
        il: bool,
    ) -> Result<Option<KeyValue>> {
        let cur = self.revision();
        let prev = self.m.at(key, cur).cloned();
        if (iv || il) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let main = self.begin + 1;
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.as_ref().map_or(main, |p| p.create_revision),
            mod_revision: main,
            version: prev.as_ref().map_or(0, |p| p.version) + 1,
            value: if iv {
                prev.as_ref().map(|p| p.value.clone()).unwrap_or_default()
            } else {
                value.to_vec()
            },
            lease: if il {
                prev.as_ref().map_or(0, |p| p.lease)
            } else {
                lease
            },
        };
        self.change(key, Some(kv.clone()));
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev.clone(),
        });
        Ok(prev)
    }

    fn delete(&mut self, start: &[u8], end: &[u8]) -> Vec<KeyValue> {
        let cur = self.revision();
        let doomed: Vec<KeyValue> = self
            .m
            .history
            .keys()
            .filter(|k| Model::in_range(k, start, end))
            .filter_map(|k| self.m.at(k, cur).cloned())
            .collect();
        for prev in &doomed {
            self.change(&prev.key, None);
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue::tombstone(prev.key.clone(), self.begin + 1),
                prev_kv: Some(prev.clone()),
            });
        }
        doomed
    }
}

const KEYS: [&[u8]; 7] = [b"a", b"a\0", b"ab", b"b", b"c", b"\0", b"\xff"];
const ENDS: [&[u8]; 8] = [b"", b"\0", b"a", b"ab", b"b", b"c", b"d", b"\xff"];

#[derive(Debug, Clone)]
struct GenOpts {
    limit: i64,
    rev: Option<u8>,
    count_only: bool,
    keys_only: bool,
    order: u8,
    target: u8,
    filters: [Option<u8>; 4],
}

impl GenOpts {
    /// Maps generated selectors onto revisions around the model's range,
    /// so that future and compacted revisions are hit too.
    fn to_options(&self, current: i64) -> RangeOptions {
        let pick = |s: Option<u8>| s.map_or(0, |s| i64::from(s) % (current + 2));
        RangeOptions {
            limit: self.limit,
            revision: pick(self.rev),
            count_only: self.count_only,
            keys_only: self.keys_only,
            sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend]
                [self.order as usize % 3],
            sort_target: [
                SortTarget::Key,
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value,
            ][self.target as usize % 5],
            min_mod_revision: pick(self.filters[0]),
            max_mod_revision: pick(self.filters[1]),
            min_create_revision: pick(self.filters[2]),
            max_create_revision: pick(self.filters[3]),
        }
    }
}

#[derive(Debug, Clone)]
enum TxnOp {
    Put {
        key: usize,
        value: u8,
        lease: i64,
        ignore_value: bool,
        ignore_lease: bool,
    },
    Delete {
        key: usize,
        end: usize,
    },
    Range {
        key: usize,
        end: usize,
        opts: GenOpts,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Txn(Vec<TxnOp>),
    Compact(u8),
    Meta(u8),
    /// Commits the open batch, to redb (`true`) or pending (`false`).
    Commit(bool),
    /// Commits whatever is pending.
    Flush,
    Read {
        key: usize,
        end: usize,
        opts: GenOpts,
    },
    Events(u8, u8),
}

fn gen_opts() -> impl Strategy<Value = GenOpts> {
    (
        0i64..4,
        proptest::option::of(any::<u8>()),
        proptest::bool::weighted(0.15),
        proptest::bool::weighted(0.2),
        0u8..3,
        0u8..5,
        proptest::array::uniform4(proptest::option::weighted(0.15, any::<u8>())),
    )
        .prop_map(
            |(limit, rev, count_only, keys_only, order, target, filters)| GenOpts {
                limit,
                rev,
                count_only,
                keys_only,
                order,
                target,
                filters,
            },
        )
}

fn gen_txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        5 => (0..KEYS.len(), 0u8..4, 0i64..3, proptest::bool::weighted(0.1), proptest::bool::weighted(0.1))
            .prop_map(|(key, value, lease, ignore_value, ignore_lease)| TxnOp::Put { key, value, lease, ignore_value, ignore_lease }),
        2 => (0..KEYS.len(), 0..ENDS.len()).prop_map(|(key, end)| TxnOp::Delete { key, end }),
        2 => (0..KEYS.len(), 0..ENDS.len(), gen_opts()).prop_map(|(key, end, opts)| TxnOp::Range { key, end, opts }),
    ]
}

fn gen_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => proptest::collection::vec(gen_txn_op(), 0..4).prop_map(Step::Txn),
        1 => any::<u8>().prop_map(Step::Compact),
        1 => any::<u8>().prop_map(Step::Meta),
        2 => any::<bool>().prop_map(Step::Commit),
        1 => Just(Step::Flush),
        3 => (0..KEYS.len(), 0..ENDS.len(), gen_opts()).prop_map(|(key, end, opts)| Step::Read { key, end, opts }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Step::Events(a, b)),
    ]
}

/// Applies one step to a store batch; `commit_each` commits after every step
/// (the "one batch per entry" twin store).
fn apply_to_twin(store: &Store, step: &Step, model_compact_target: Option<i64>) {
    match step {
        Step::Txn(ops) => {
            let mut batch = store.batch().unwrap();
            let mut txn = batch.txn().unwrap();
            for op in ops {
                match op {
                    TxnOp::Put {
                        key,
                        value,
                        lease,
                        ignore_value,
                        ignore_lease,
                    } => {
                        let _ =
                            txn.put(KEYS[*key], &[*value], *lease, *ignore_value, *ignore_lease);
                    }
                    TxnOp::Delete { key, end } => {
                        txn.delete_range(KEYS[*key], ENDS[*end]).unwrap();
                    }
                    TxnOp::Range { .. } => {}
                }
            }
            txn.end();
            batch.commit().unwrap();
        }
        Step::Compact(_) => {
            if let Some(rev) = model_compact_target {
                let mut batch = store.batch().unwrap();
                let _ = batch.compact(rev);
                batch.commit().unwrap();
            }
        }
        _ => {}
    }
}

fn run_script(steps: &[Step]) -> std::result::Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path).unwrap();
    let twin = Store::open(dir.path().join("twin")).unwrap();
    let mut model = Model::new();
    let mut committed = model.clone();
    let mut all_events: Vec<Event> = Vec::new();
    let mut batch: Option<Batch<'_>> = None;

    for step in steps {
        let mut compact_target = None;
        match step {
            Step::Txn(ops) => {
                let b = match &mut batch {
                    Some(b) => b,
                    None => batch.insert(store.batch().unwrap()),
                };
                let mut txn = b.txn().unwrap();
                let begin = model.current;
                let mut mt = ModelTxn {
                    m: &mut model,
                    begin,
                    changes: 0,
                    events: vec![],
                };
                for op in ops {
                    match op {
                        TxnOp::Put {
                            key,
                            value,
                            lease,
                            ignore_value,
                            ignore_lease,
                        } => {
                            let got = txn.put(
                                KEYS[*key],
                                &[*value],
                                *lease,
                                *ignore_value,
                                *ignore_lease,
                            );
                            let want =
                                mt.put(KEYS[*key], &[*value], *lease, *ignore_value, *ignore_lease);
                            prop_assert_eq!(got, want, "put {:?}", op);
                        }
                        TxnOp::Delete { key, end } => {
                            let got = txn.delete_range(KEYS[*key], ENDS[*end]).unwrap();
                            let want = mt.delete(KEYS[*key], ENDS[*end]);
                            prop_assert_eq!(got, want, "delete {:?}", op);
                        }
                        TxnOp::Range { key, end, opts } => {
                            let cur = mt.revision();
                            let o = opts.to_options(cur);
                            let got = txn.range(KEYS[*key], ENDS[*end], &o);
                            let want = mt.m.range(KEYS[*key], ENDS[*end], &o, cur);
                            prop_assert_eq!(got, want, "txn range {:?}", o);
                        }
                    }
                    prop_assert_eq!(txn.revision(), mt.revision());
                }
                let (rev, events) = txn.end();
                prop_assert_eq!(rev, mt.revision());
                prop_assert_eq!(&events, &mt.events);
                all_events.extend(events);
            }
            Step::Compact(sel) => {
                let b = match &mut batch {
                    Some(b) => b,
                    None => batch.insert(store.batch().unwrap()),
                };
                let rev = i64::from(*sel) % (model.current + 2);
                let want = if rev > model.current {
                    Err(MvccError::FutureRevision)
                } else if rev <= model.compact {
                    Err(MvccError::Compacted)
                } else {
                    model.compact = rev;
                    Ok(())
                };
                prop_assert_eq!(b.compact(rev), want);
                compact_target = Some(rev);
            }
            Step::Meta(v) => {
                let b = match &mut batch {
                    Some(b) => b,
                    None => batch.insert(store.batch().unwrap()),
                };
                b.set_meta("applied", &[*v]).unwrap();
                prop_assert_eq!(b.meta("applied").unwrap(), Some(vec![*v]));
            }
            Step::Commit(_) | Step::Flush | Step::Read { .. } | Step::Events(..) => {
                if let Some(mut b) = batch.take() {
                    // Reads look at a batch that waits: through the buffer.
                    b.set_durable(matches!(step, Step::Commit(true)));
                    b.commit().unwrap();
                }
                if let Step::Flush = step {
                    store.flush().unwrap();
                    prop_assert_eq!(store.buffered_records(), 0);
                }
                committed = model.clone();
                prop_assert_eq!(store.current_revision(), model.current);
                prop_assert_eq!(store.compact_revision(), model.compact);
            }
        }
        apply_to_twin(&twin, step, compact_target);
        // The count includes the open batch, as the index does.
        prop_assert_eq!(store.live_keys(), model.live(), "live keys");

        let view = store.read().unwrap();
        prop_assert_eq!(view.current_revision(), committed.current);
        match step {
            Step::Read { key, end, opts } => {
                let o = opts.to_options(committed.current);
                let got = view.range(KEYS[*key], ENDS[*end], &o);
                let want = committed.range(KEYS[*key], ENDS[*end], &o, committed.current);
                prop_assert_eq!(got, want, "read {:?}", o);
                // Hashed through the buffer or from redb alone: the same.
                prop_assert_eq!(view.hash_kv(0), twin.read().unwrap().hash_kv(0));
            }
            Step::Events(a, b) => {
                let cur = committed.current;
                let from = i64::from(*a) % (cur + 1);
                let to = from + i64::from(*b) % (cur + 2 - from);
                let got = view.events(from, to);
                if to > cur {
                    prop_assert_eq!(got, Err(MvccError::FutureRevision));
                } else if from + 1 < committed.compact {
                    prop_assert_eq!(got, Err(MvccError::Compacted));
                } else {
                    // Revisions above the compacted one are complete; the
                    // compacted revision itself keeps only surviving puts.
                    let lo = from.max(committed.compact);
                    let got: Vec<Event> = got?
                        .into_iter()
                        .filter(|e| e.kv.mod_revision > lo)
                        .collect();
                    let want: Vec<Event> = all_events
                        .iter()
                        .filter(|e| e.kv.mod_revision > lo && e.kv.mod_revision <= to)
                        .cloned()
                        .collect();
                    prop_assert_eq!(got, want);
                }
            }
            _ => {}
        }
    }
    if let Some(b) = batch.take() {
        b.commit().unwrap();
    }
    drop(batch);

    // Same history, different batch boundaries: same contents.
    let view = store.read_durable().unwrap();
    let hash = view.hash().unwrap();
    let hash_kv = view.hash_kv(0).unwrap();
    prop_assert_eq!(twin.read().unwrap().hash().unwrap(), hash);
    prop_assert_eq!(twin.read().unwrap().hash_kv(0).unwrap(), hash_kv);
    for rev in (model.compact + 1).max(1)..=model.current {
        prop_assert_eq!(
            view.hash_kv(rev).unwrap(),
            twin.read().unwrap().hash_kv(rev).unwrap()
        );
    }

    // Snapshot into a fresh store: identical.
    let bytes = view.snapshot_bytes().unwrap();
    drop(view);
    let restored = Store::open(dir.path().join("restored")).unwrap();
    restored.restore(&bytes).unwrap();
    prop_assert_eq!(restored.read().unwrap().hash().unwrap(), hash);
    prop_assert_eq!(restored.read().unwrap().hash_kv(0).unwrap(), hash_kv);
    prop_assert_eq!(restored.current_revision(), model.current);
    prop_assert_eq!(restored.live_keys(), model.live());

    // Reopen: identical, and every revision still reads like the model.
    drop(store);
    let store = Store::open(&path).unwrap();
    prop_assert_eq!(store.live_keys(), model.live());
    let view = store.read().unwrap();
    prop_assert_eq!(view.hash().unwrap(), hash);
    for rev in model.compact.max(1)..=model.current {
        let o = at(rev);
        prop_assert_eq!(
            view.range(b"\0", b"\0", &o),
            model.range(b"\0", b"\0", &o, model.current)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_in_memory_model(steps in proptest::collection::vec(gen_step(), 1..40)) {
        run_script(&steps)?;
    }
}

/// One step of [`golden_plan`].
enum Golden {
    Put(Vec<u8>, Vec<u8>, i64),
    Delete(&'static [u8], &'static [u8]),
    Compact(i64),
    Meta,
}

/// A fixed history touching every write path, as batches of revision
/// transactions (a `Compact` or `Meta` step stands alone): puts in one and in
/// several transactions, a batch with many transactions, partial deletes, a
/// delete of every key, a put after it, a compaction, a meta entry, a delete of
/// nothing.
fn golden_plan() -> Vec<Vec<Vec<Golden>>> {
    use Golden::*;
    let put = |k: &[u8], v: &[u8], lease| vec![Put(k.to_vec(), v.to_vec(), lease)];
    let mut first: Vec<Vec<Golden>> = (0u8..20)
        .map(|i| put(&[b'k', i], &[i; 3], i64::from(i % 3)))
        .collect();
    first.push(vec![Meta]);
    vec![
        first,
        vec![put(b"k\x03", b"again", 0)],
        vec![put(b"\0zero", b"z", 0)],
        vec![vec![
            Put(b"k\x05".to_vec(), Vec::new(), 7),
            Delete(b"k\x02", b"k\x06"),
            Put(b"k\x04".to_vec(), b"back".to_vec(), 0),
        ]],
        vec![vec![Delete(b"k\x10", b"")]],
        vec![vec![Compact(24)]],
        vec![vec![Delete(b"\0", b"\0")]],
        vec![put(b"k\x01", b"new generation", 0)],
        vec![vec![Delete(b"nothing", b"")]],
    ]
}

/// Runs one revision transaction of [`golden_plan`].
fn golden_txn(txn: &mut RevTxn<'_, '_>, ops: &[Golden], lean: bool, deleted: &mut Vec<usize>) {
    for op in ops {
        match (op, lean) {
            (Golden::Put(k, v, lease), false) => {
                txn.put(k, v, *lease, false, false).unwrap();
            }
            (Golden::Put(k, v, lease), true) => {
                txn.put_without_prev(k, v, *lease, false, false).unwrap();
            }
            (Golden::Delete(k, e), false) => deleted.push(txn.delete_range(k, e).unwrap().len()),
            (Golden::Delete(k, e), true) => deleted.push(txn.delete_range_count(k, e).unwrap()),
            (Golden::Compact(_) | Golden::Meta, _) => unreachable!("stands alone"),
        }
    }
}

/// Runs [`golden_plan`] through `Batch::txn` with `put`/`delete_range`, or
/// (`lean`) through a [`Writer`] with `put_without_prev`/`delete_range_count`.
/// Returns the events and the number of keys each delete removed.
fn golden_history(store: &Store, lean: bool) -> (Vec<Event>, Vec<usize>) {
    golden_history_with(store, lean, true)
}

/// [`golden_history`] with batches that collect events or not.
fn golden_history_with(store: &Store, lean: bool, collect: bool) -> (Vec<Event>, Vec<usize>) {
    let mut events = Vec::new();
    let mut deleted = Vec::new();
    for steps in golden_plan() {
        let first = events.len();
        let mut batch = store.batch().unwrap();
        batch.set_events(collect);
        if lean {
            let mut w = batch.writer().unwrap();
            for ops in steps {
                match ops.as_slice() {
                    [Golden::Compact(rev)] => w.compact(*rev).unwrap(),
                    [Golden::Meta] => w.set_meta("applied", b"x").unwrap(),
                    _ => {
                        let mut txn = w.txn().unwrap();
                        golden_txn(&mut txn, &ops, true, &mut deleted);
                        events.extend(txn.end().1);
                    }
                }
            }
        } else {
            for ops in steps {
                match ops.as_slice() {
                    [Golden::Compact(rev)] => batch.compact(*rev).unwrap(),
                    [Golden::Meta] => batch.set_meta("applied", b"x").unwrap(),
                    _ => {
                        let mut txn = batch.txn().unwrap();
                        golden_txn(&mut txn, &ops, false, &mut deleted);
                        events.extend(txn.end().1);
                    }
                }
            }
        }
        batch.commit().unwrap();
        if lean {
            // Lean puts leave their previous key-values for watchers to read.
            let view = store.read().unwrap();
            view.load_prev_kvs(&mut events[first..]).unwrap();
        }
    }
    (events, deleted)
}

/// Hash, revision, hash_kv fields and the CRC of the snapshot bytes.
fn golden_hashes(store: &Store) -> (u32, i64, u32, i64, i64, u32) {
    let view = store.read().unwrap();
    let (hash, rev) = view.hash().unwrap();
    let kv = view.hash_kv(0).unwrap();
    let snapshot = crate::mvcc::hash::crc32c(&view.snapshot_bytes().unwrap());
    (
        hash,
        rev,
        kv.hash,
        kv.compact_revision,
        kv.hash_revision,
        snapshot,
    )
}

#[test]
fn a_fixed_history_gives_the_same_hashes_as_ever() {
    // hash_kv (what members compare to find corruption) is the value computed
    // by every store since the first: the stored records must not change, or
    // existing data dirs and mixed-version clusters would disagree. The whole
    // store hash and the snapshot CRC changed once, when the key-ordered index
    // tables left the disk for memory (they were 2_245_831_888 and
    // 3_226_966_943; `golden-v1.snap` holds that snapshot).
    let (_d, store) = open_temp();
    golden_history(&store, false);
    assert_eq!(
        golden_hashes(&store),
        (3_378_709_004, 27, 116_712_893, 24, 27, 301_117_206),
        "hash, revision, hash_kv, compacted, hash revision, snapshot crc"
    );
}

/// The snapshot of [`golden_plan`]'s history as the store wrote it while the
/// key index was two redb tables (format version 1).
const GOLDEN_V1_SNAPSHOT: &[u8] = include_bytes!("testdata/golden-v1.snap");

/// A table of a snapshot: its name and its entries.
type NamedTable = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// The tables of a snapshot (a test's own reader of the format, independent of
/// `snapshot::decode`).
fn snapshot_tables(bytes: &[u8]) -> Vec<NamedTable> {
    let mut r = super::codec::Reader::new(&bytes[..bytes.len() - 4]);
    r.bytes(8).unwrap();
    let mut tables = Vec::new();
    while r.remaining() > 0 {
        let name = String::from_utf8(r.chunk().unwrap().to_vec()).unwrap();
        let count = r.u64().unwrap();
        let entries = (0..count)
            .map(|_| (r.chunk().unwrap().to_vec(), r.chunk().unwrap().to_vec()))
            .collect();
        tables.push((name, entries));
    }
    tables
}

/// Everything a client can read of a store: every range at every revision
/// from the compaction on, and every event.
fn readable(store: &Store) -> (Vec<RangeResult>, Vec<Event>) {
    let view = store.read().unwrap();
    let from = view.compact_revision().max(1);
    let ranges = (from..=view.current_revision())
        .map(|rev| view.range(b"\0", b"\0", &at(rev)).unwrap())
        .collect();
    (ranges, view.events(from, view.current_revision()).unwrap())
}

#[test]
fn a_version_1_snapshot_restores_with_its_index_rebuilt() {
    let tables = snapshot_tables(GOLDEN_V1_SNAPSHOT);
    let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["mvcc_kv", "mvcc_index", "mvcc_live", "mvcc_state", "meta"]
    );
    let (_d1, fresh) = open_temp();
    golden_history(&fresh, false);
    let (_d2, restored) = open_temp();
    restored.restore(GOLDEN_V1_SNAPSHOT).unwrap();
    assert_eq!(golden_hashes(&restored), golden_hashes(&fresh));
    assert_eq!(readable(&restored), readable(&fresh));
    assert_eq!(restored.indexed_keys(), fresh.indexed_keys());
}

#[test]
fn a_store_with_the_on_disk_index_tables_drops_them_and_serves_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (_d, fresh) = open_temp();
    golden_history(&fresh, false);
    // A store as the previous version left it: the same records, and the two
    // index tables with what that version kept in them.
    Store::open(&path)
        .unwrap()
        .restore(GOLDEN_V1_SNAPSHOT)
        .unwrap();
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        for (name, entries) in snapshot_tables(GOLDEN_V1_SNAPSHOT) {
            if name == "mvcc_index" || name == "mvcc_live" {
                let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new(&name);
                let mut table = txn.open_table(def).unwrap();
                for (k, v) in &entries {
                    table.insert(k.as_slice(), v.as_slice()).unwrap();
                }
                assert!(!entries.is_empty());
            }
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(golden_hashes(&store), golden_hashes(&fresh));
    assert_eq!(readable(&store), readable(&fresh));
    drop(store);
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let names: Vec<String> = redb::ReadTransaction::list_tables(&txn)
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    assert!(
        !names.iter().any(|n| n == "mvcc_index" || n == "mvcc_live"),
        "{names:?}"
    );
}

#[test]
fn a_read_view_older_than_a_compaction_gets_compacted_not_a_wrong_answer() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    put(&store, b"a", b"2");
    put(&store, b"a", b"3");
    let view = store.read().unwrap();
    assert_eq!(view.range(b"a", b"", &at(2)).unwrap().kvs[0].value, b"1");
    compact(&store, 3).unwrap();
    // The view's snapshot still has revision 2, but the shared index no longer
    // knows it: the view answers as a view taken after the compaction.
    assert!(matches!(
        view.range(b"a", b"", &at(2)),
        Err(MvccError::Compacted)
    ));
    assert!(matches!(view.events(1, 4), Err(MvccError::Compacted)));
    assert_eq!(view.range(b"a", b"", &at(4)).unwrap().kvs[0].value, b"3");
}

#[test]
fn a_read_view_older_than_a_restore_gets_compacted() {
    let (_d1, src) = open_temp();
    put(&src, b"x", b"1");
    let (_d2, dst) = open_temp();
    put(&dst, b"a", b"1");
    let view = dst.read().unwrap();
    dst.restore(&src.read().unwrap().snapshot_bytes().unwrap())
        .unwrap();
    assert!(matches!(
        view.range(b"a", b"", &RangeOptions::default()),
        Err(MvccError::Compacted)
    ));
    assert_eq!(get(&dst, b"x").unwrap().value, b"1");
    assert_eq!(get(&dst, b"a"), None);
}

#[test]
fn a_dropped_batch_takes_its_changes_back_from_the_index() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    {
        let mut batch = store.batch().unwrap();
        let mut txn = batch.txn().unwrap();
        txn.put(b"a", b"2", 0, false, false).unwrap();
        txn.put(b"new", b"x", 0, false, false).unwrap();
        txn.delete_range(b"a", b"").unwrap();
        txn.end();
    }
    assert_eq!(store.indexed_keys(), 1);
    assert_eq!(store.read().unwrap().stored_revisions().unwrap(), (1, 1));
    // The same revision is written again, by another change.
    assert_eq!(put(&store, b"a", b"3"), 3);
    let a = get(&store, b"a").unwrap();
    assert_eq!((a.version, a.value.as_slice()), (2, &b"3"[..]));
}

#[test]
fn writer_and_no_copy_variants_give_the_same_store_and_events() {
    let (_d1, plain) = open_temp();
    let (_d2, lean) = open_temp();
    let (events, deleted) = golden_history(&plain, false);
    let (lean_events, lean_deleted) = golden_history(&lean, true);
    assert_eq!(lean_events, events);
    assert_eq!(lean_deleted, deleted);
    assert_eq!(deleted, vec![4, 1, 17, 0]);
    assert_eq!(golden_hashes(&lean), golden_hashes(&plain));
    assert_eq!(lean.current_revision(), plain.current_revision());
    assert_eq!(lean.compact_revision(), 24);
    assert_eq!(
        lean.read().unwrap().meta("applied").unwrap(),
        Some(b"x".to_vec())
    );
}

#[test]
fn batches_without_events_store_the_same_and_return_none() {
    let (_d1, plain) = open_temp();
    let (_d2, silent) = open_temp();
    let (events, deleted) = golden_history(&plain, true);
    let (silent_events, silent_deleted) = golden_history_with(&silent, true, false);
    assert!(!events.is_empty());
    assert_eq!(silent_events, Vec::new());
    assert_eq!(silent_deleted, deleted);
    assert_eq!(golden_hashes(&silent), golden_hashes(&plain));
    // What readers see of batches that wait, through the read buffer.
    for (store, collect) in [(&plain, true), (&silent, false)] {
        put_waiting(store, b"w", b"1");
        let mut batch = store.batch().unwrap();
        batch.set_events(collect);
        let mut txn = batch.txn().unwrap();
        txn.put(b"w", b"2", 0, false, false).unwrap();
        txn.delete_range(b"a", b"").unwrap();
        txn.end();
        batch.set_durable(false);
        batch.commit().unwrap();
    }
    let all = |s: &Store| range(s, b"\0", b"\0", &RangeOptions::default()).unwrap();
    assert_eq!(all(&silent).kvs, all(&plain).kvs);
    let from = plain.current_revision() - 2;
    let history = |s: &Store| {
        s.read()
            .unwrap()
            .events(from, s.current_revision())
            .unwrap()
    };
    assert_eq!(history(&silent), history(&plain));
    assert!(history(&plain).len() >= 2);
}

#[test]
fn deleting_every_key_keeps_history_and_later_puts_start_new_generations() {
    let (_d, store) = open_temp();
    for k in [b"a", b"b", b"c"] {
        put(&store, k, b"1");
    }
    put(&store, b"b", b"2");
    // A range holding some of the keys leaves the others.
    let (rev, deleted) = delete(&store, b"a", b"b");
    assert_eq!((rev, keys_of(&deleted)), (6, vec![&b"a"[..]]));
    // A range holding every key (the live-key table is emptied at once).
    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    assert_eq!(txn.delete_range_count(b"\0", b"\0").unwrap(), 2);
    assert_eq!(
        txn.range(b"\0", b"\0", &RangeOptions::default())
            .unwrap()
            .count,
        0
    );
    // The same transaction can write again after the table was recreated.
    txn.put(b"b", b"3", 0, false, false).unwrap();
    let (rev, events) = txn.end();
    batch.commit().unwrap();
    assert_eq!(rev, 7);
    let kinds: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.kv.key.as_slice()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Delete, &b"b"[..]),
            (EventKind::Delete, &b"c"[..]),
            (EventKind::Put, &b"b"[..])
        ]
    );
    assert_eq!(events[0].prev_kv.as_ref().map(|kv| kv.version), Some(2));
    assert_eq!(events[2].prev_kv, None);
    let b = get(&store, b"b").unwrap();
    assert_eq!(
        (b.create_revision, b.version, b.value.as_slice()),
        (7, 1, &b"3"[..])
    );
    assert_eq!(get(&store, b"c"), None);
    let before = range(&store, b"\0", b"\0", &at(6)).unwrap();
    assert_eq!(keys(&before), vec![&b"b"[..], &b"c"[..]]);
    // Deleting from an empty table changes nothing.
    delete(&store, b"c", b"");
    assert_eq!(store.current_revision(), 7);
}

fn keys_of(kvs: &[KeyValue]) -> Vec<&[u8]> {
    kvs.iter().map(|kv| kv.key.as_slice()).collect()
}

/// One batch that waits for a later commit, with one put; returns the revision.
fn put_waiting(store: &Store, key: &[u8], value: &[u8]) -> i64 {
    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    txn.put(key, value, 0, false, false).unwrap();
    let (rev, _) = txn.end();
    batch.set_durable(false);
    batch.commit().unwrap();
    rev
}

#[test]
fn batches_that_wait_are_read_through_the_buffer_until_a_flush() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    assert_eq!(put_waiting(&store, b"a", b"2"), 3);
    assert_eq!(put_waiting(&store, b"b", b"1"), 4);
    assert_eq!(store.current_revision(), 4);
    assert_eq!(store.buffered_records(), 2);
    let view = store.read().unwrap();
    assert_eq!(view.current_revision(), 4);
    assert_eq!(
        view.range(b"a", b"c", &RangeOptions::default())
            .unwrap()
            .count,
        2
    );
    assert_eq!(get(&store, b"a").unwrap().version, 2);
    let events = view.events(1, 4).unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b"1");

    store.flush().unwrap();
    assert_eq!(store.buffered_records(), 0);
    let after = store.read().unwrap();
    assert_eq!(after.events(1, 4).unwrap(), events);
    assert_eq!(after.hash_kv(0).unwrap(), view.hash_kv(0).unwrap());
    // The view opened before the commit still reads its buffer.
    assert_eq!(view.range(b"b", b"", &at(4)).unwrap().kvs[0].value, b"1");
}

#[test]
fn batches_that_wait_are_lost_by_a_crash_and_kept_by_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = Store::open(&path).unwrap();
        put(&store, b"kept", b"1");
        put_waiting(&store, b"lost", b"1");
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.current_revision(), 2);
    assert_eq!(get(&store, b"lost"), None);
    put_waiting(&store, b"flushed", b"1");
    store.flush().unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(get(&store, b"flushed").unwrap().mod_revision, 3);
}

#[test]
fn a_durable_batch_commits_the_batches_that_waited_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = Store::open(&path).unwrap();
        put_waiting(&store, b"a", b"1");
        put_waiting(&store, b"b", b"1");
        put(&store, b"c", b"1");
        assert_eq!(store.buffered_records(), 0);
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(
        range(&store, b"a", b"d", &RangeOptions::default())
            .unwrap()
            .count,
        3
    );
}

#[test]
fn read_durable_commits_what_waits_so_whole_store_scans_see_it() {
    let (_d1, waiting) = open_temp();
    let (_d2, durable) = open_temp();
    for (i, key) in [b"a", b"b", b"c"].iter().enumerate() {
        put_waiting(&waiting, *key, &[i as u8]);
        put(&durable, *key, &[i as u8]);
    }
    let view = waiting.read_durable().unwrap();
    assert_eq!(
        view.hash().unwrap(),
        durable.read().unwrap().hash().unwrap()
    );
    assert_eq!(
        view.snapshot_bytes().unwrap(),
        durable.read().unwrap().snapshot_bytes().unwrap()
    );
}

#[test]
fn a_batch_dropped_without_changes_keeps_what_waits() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    put_waiting(&store, b"b", b"1");
    drop(store.batch().unwrap());
    assert_eq!(get(&store, b"b").unwrap().mod_revision, 3);
    store.flush().unwrap();
    assert_eq!(store.buffered_records(), 0);
    assert_eq!(get(&store, b"b").unwrap().mod_revision, 3);
}

#[test]
fn a_batch_that_compacts_is_committed_even_when_asked_to_wait() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    put_waiting(&store, b"a", b"2");
    let mut batch = store.batch().unwrap();
    batch.compact(3).unwrap();
    batch.set_durable(false);
    batch.commit().unwrap();
    assert_eq!(store.buffered_records(), 0);
    assert_eq!(store.read().unwrap().stored_revisions().unwrap(), (1, 1));
}

#[test]
fn losing_batches_that_readers_saw_fails_the_store_until_it_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path).unwrap();
    put(&store, b"a", b"1");
    put_waiting(&store, b"b", b"1");
    let before = store.read().unwrap();
    {
        // A storage error in the next batch would end it like this.
        let mut batch = store.batch().unwrap();
        batch
            .txn()
            .unwrap()
            .put(b"c", b"1", 0, false, false)
            .unwrap();
    }
    assert!(matches!(store.read(), Err(MvccError::Failed)));
    assert!(matches!(store.batch().map(|_| ()), Err(MvccError::Failed)));
    assert!(matches!(store.flush(), Err(MvccError::Failed)));
    // A view from before no longer trusts the index.
    assert_eq!(
        before.range(b"a", b"", &RangeOptions::default()),
        Err(MvccError::Compacted)
    );
    drop(before);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.current_revision(), 2);
    assert_eq!(put(&store, b"b", b"2"), 3);
}

/// The pairing invariant under races: a view opened while batches wait,
/// commit or flush always finds the record of every revision up to its own.
#[test]
fn read_views_racing_commits_find_every_revision_up_to_their_own() {
    let (_d, store) = open_temp();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..600u32 {
                let mut batch = store.batch().unwrap();
                let mut txn = batch.txn().unwrap();
                txn.put(b"k", &i.to_be_bytes(), 0, false, false).unwrap();
                txn.end();
                batch.set_durable(i % 7 == 0);
                batch.commit().unwrap();
                if i % 13 == 0 {
                    store.flush().unwrap();
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let view = store.read().unwrap();
                    let rev = view.current_revision();
                    if rev < 2 {
                        continue;
                    }
                    let got = view.range(b"k", b"", &RangeOptions::default()).unwrap();
                    assert_eq!(got.kvs[0].mod_revision, rev);
                    let events = view.events(rev - 1, rev).unwrap();
                    assert_eq!(events.len(), 1);
                    assert_eq!(view.hash_kv(rev).unwrap().hash_revision, rev);
                }
            });
        }
    });
    assert_eq!(store.current_revision(), 601);
}

#[test]
fn hash_kv_of_a_view_overtaken_by_a_compaction_is_compacted() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    put(&store, b"a", b"2");
    let view = store.read().unwrap();
    put(&store, b"a", b"3");
    compact(&store, 4).unwrap();
    assert_eq!(view.hash_kv(0), Err(MvccError::Compacted));
    assert_eq!(view.hash_kv(3), Err(MvccError::Compacted));
}

#[test]
fn the_database_size_follows_the_file_as_batches_that_wait_grow_it() {
    let (d, store) = open_temp();
    let file_len = || std::fs::metadata(d.path().join("db")).unwrap().len();
    assert_eq!(store.db_size(), file_len());
    let before = file_len();
    for i in 0..400u32 {
        put_waiting(&store, &i.to_be_bytes(), &[7u8; 4096]);
    }
    assert!(file_len() > before, "redb grew the file before any commit");
    assert_eq!(store.db_size(), file_len());
    store.flush().unwrap();
    assert_eq!(store.db_size(), file_len());
}

#[test]
fn size_in_use_asked_again_at_once_follows_a_file_that_grew() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    store.flush().unwrap();
    let small = store.db_size_in_use().unwrap();
    let value = vec![7u8; 64 * 1024];
    for i in 0..200u32 {
        put(&store, &i.to_be_bytes(), &value);
    }
    store.flush().unwrap();
    // 12.5 MiB of values later, well within the figure's 30 s.
    let grown = store.db_size_in_use().unwrap();
    assert!(
        grown >= small + 10 * 1024 * 1024,
        "{grown} after 12.5 MiB of values, {small} before"
    );
    assert!(grown <= store.db_size(), "{grown} > {}", store.db_size());
}

#[test]
fn size_in_use_shows_a_defragmentation_at_once() {
    let (_d, store) = open_temp();
    let value = vec![7u8; 1024];
    for i in 0..2000u32 {
        put(&store, &i.to_be_bytes(), &value);
    }
    store.flush().unwrap();
    let full = store.db_size_in_use().unwrap();
    // A compaction frees pages for reuse; redb counts them allocated until
    // a defragmentation gives them back.
    delete(&store, b"\0", b"\0");
    compact(&store, store.current_revision()).unwrap();
    store.flush().unwrap();
    let compacted = store.db_size_in_use().unwrap();
    assert!(
        compacted >= full / 2,
        "{compacted} after compaction, {full} before"
    );
    // Asked again at once, after the defragmentation: not the figure above.
    store.defragment().unwrap();
    let defragmented = store.db_size_in_use().unwrap();
    assert!(
        defragmented < full / 10,
        "{defragmented} after defragmentation, {full} before"
    );
}

#[test]
fn the_live_key_count_follows_puts_deletes_and_a_batch_taken_back() {
    let (_d, store) = open_temp();
    put(&store, b"a", b"1");
    put(&store, b"a", b"2");
    put(&store, b"b", b"1");
    assert_eq!(store.live_keys(), 2, "a put again is still one key");
    delete(&store, b"a", b"");
    assert_eq!(store.live_keys(), 1);
    compact(&store, store.current_revision()).unwrap();
    assert_eq!(
        store.live_keys(),
        1,
        "a compaction changes no key's existence"
    );
    {
        let mut batch = store.batch().unwrap();
        let mut txn = batch.txn().unwrap();
        txn.put(b"c", b"1", 0, false, false).unwrap();
        txn.delete_range(b"b", b"").unwrap();
        txn.end();
        assert_eq!(store.live_keys(), 1, "c in, b out");
        // Dropped without a commit: the batch is taken back.
    }
    assert_eq!(store.live_keys(), 1);
    assert_eq!(get(&store, b"b").map(|kv| kv.value), Some(b"1".to_vec()));
}

#[test]
fn revision_transactions_count_their_ranges_puts_and_deletes_once_committed() {
    let registry = prometheus::Registry::new();
    let counter = |name: &str| {
        let c = prometheus::IntCounter::new(name, name).unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c
    };
    let ops = OpCounters {
        ranges: counter("ranges"),
        puts: counter("puts"),
        deletes: counter("deletes"),
        txns: counter("txns"),
    };
    let dir = tempfile::tempdir().unwrap();
    let metrics = StoreMetrics {
        commit_seconds: None,
        ops: Some(ops.clone()),
    };
    let store = Store::open_with(
        dir.path().join("db"),
        &crate::disk::DiskOptions::default(),
        metrics,
    )
    .unwrap();
    put(&store, b"a", b"1");
    delete(&store, b"a", b"");
    let counts = |o: &OpCounters| [o.ranges.get(), o.puts.get(), o.deletes.get(), o.txns.get()];
    assert_eq!(counts(&ops), [0, 1, 1, 0], "a lone put or delete is no txn");

    // A txn's compare is a range; it did more than one thing: a txn.
    let mut batch = store.batch().unwrap();
    let mut txn = batch.txn().unwrap();
    txn.range(b"a", b"", &RangeOptions::default()).unwrap();
    txn.put(b"b", b"1", 0, false, false).unwrap();
    txn.end();
    let mut txn = batch.txn().unwrap();
    txn.put(b"c", b"1", 0, false, false).unwrap();
    drop(txn);
    assert_eq!(counts(&ops), [0, 1, 1, 0], "counted when the batch commits");
    batch.commit().unwrap();
    assert_eq!(counts(&ops), [1, 3, 1, 1]);
}
