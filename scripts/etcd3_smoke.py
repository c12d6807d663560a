"""Smoke test of Python's `etcd3` client against a running cluster.

Usage: python3 scripts/etcd3_smoke.py HOST:PORT
Needs `pip install etcd3 "protobuf<3.21"`. Exercises KV, prefix reads, a txn,
a lease, a watch, a lock, member list and status; prints what it saw and
exits non-zero on any mismatch.
"""
import sys
import threading
import time

import etcd3

host, port = sys.argv[1].rsplit(":", 1)
c = etcd3.client(host=host, port=int(port))
c.put('py/a', '1'); c.put('py/b', '2')
assert c.get('py/a')[0] == b'1'
assert sorted(m.key for _, m in c.get_prefix('py/')) == [b'py/a', b'py/b']
ok, _ = c.transaction(compare=[c.transactions.value('py/a') == '1'], success=[c.transactions.put('py/a', '10')], failure=[])
assert ok and c.get('py/a')[0] == b'10'
lease = c.lease(5); c.put('py/leased', 'x', lease=lease); assert 0 < lease.remaining_ttl <= 5
events = []
it, cancel = c.watch_prefix('py/w')
def w():
    for e in it:
        events.append((type(e).__name__, e.key.decode()))
        if len(events) == 2: cancel()
t = threading.Thread(target=w); t.start(); time.sleep(0.3)
c.put('py/w1', 'a'); c.delete('py/w1'); t.join(5)
assert events == [('PutEvent', 'py/w1'), ('DeleteEvent', 'py/w1')], events
with c.lock('py-lock', ttl=5) as l:
    assert l.is_acquired()
assert len(list(c.members)) >= 1
assert c.status().leader is not None
print('etcd3 smoke test: ok')
