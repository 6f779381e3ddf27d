// Presence, presence stats, and join/leave events.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, connToken, newClient, newSub, connect, subscribe, closeClient, uid, rejection,
  apiPublish,
} from '../lib/harness.mjs';

for (const t of TRANSPORTS) {
  describe(`presence [${t.name}]`, () => {
    test('presence lists both subscribers; presenceStats counts them', async () => {
      const channel = `chat:${uid('room')}`;
      const alice = uid('alice');
      const bob = uid('bob');
      const a = newClient(t, { token: connToken(alice, { info: { name: 'Alice' } }) });
      const b = newClient(t, { token: connToken(bob, { info: { name: 'Bob' } }) });
      const [ca, cb] = await Promise.all([connect(a), connect(b)]);
      const sa = newSub(a, channel);
      const sb = newSub(b, channel);
      await subscribe(sa);
      await subscribe(sb);

      const p = await sa.presence();
      const ids = Object.keys(p.clients).sort();
      assert.deepEqual(ids, [ca.client, cb.client].sort(), `presence: ${JSON.stringify(p)}`);
      assert.equal(p.clients[ca.client].user, alice);
      assert.equal(p.clients[ca.client].client, ca.client);
      assert.equal(p.clients[cb.client].user, bob);
      assert.deepEqual(t.decode(p.clients[cb.client].connInfo), { name: 'Bob' });

      const stats = await sa.presenceStats();
      assert.deepEqual(stats, { numClients: 2, numUsers: 2 });

      // Two connections of one user: 3 clients, still 2 users.
      const a2 = newClient(t, { token: connToken(alice) });
      const ca2 = await connect(a2);
      const sa2 = newSub(a2, channel);
      await subscribe(sa2);
      assert.deepEqual(await sb.presenceStats(), { numClients: 3, numUsers: 2 });

      // Leaving removes the client from presence.
      sb.unsubscribe();
      await sb.rec.wait('unsubscribed');
      // The SDK reports 'unsubscribed' before the server has handled the command; a
      // reply to a later command on the same connection proves it was handled.
      await rejection(b.rpc('no.such.method', t.encode({})), 'rpc after unsubscribe');
      const after = await sa.presence();
      assert.deepEqual(Object.keys(after.clients).sort(), [ca.client, ca2.client].sort());
      closeClient(a);
      closeClient(b);
      closeClient(a2);
    });

    test('presence of a channel the client is not subscribed to is denied (103)', async () => {
      const c = newClient(t, { token: connToken(uid('alice')) });
      await connect(c);
      const err = await rejection(c.presence(`chat:${uid('room')}`), 'presence');
      assert.equal(err.code, 103, `presence error: ${JSON.stringify(err)}`);
      closeClient(c);
    });

    test('join and leave events of a second client (joinLeave: true)', async () => {
      const channel = `chat:${uid('room')}`;
      const bob = uid('bob');
      const a = newClient(t, { token: connToken(uid('alice')) });
      const b = newClient(t, { token: connToken(bob, { info: { name: 'Bob' } }) });
      await connect(a);
      const { client: bobClient } = await connect(b);
      const sa = newSub(a, channel, { joinLeave: true });
      await subscribe(sa);

      const sb = newSub(b, channel);
      await subscribe(sb);
      const join = await sa.rec.wait('join', (j) => j.info.client === bobClient);
      assert.equal(join.channel, channel);
      assert.equal(join.info.user, bob);
      assert.deepEqual(t.decode(join.info.connInfo), { name: 'Bob' });

      sb.unsubscribe();
      const leave = await sa.rec.wait('leave', (l) => l.info.client === bobClient);
      assert.equal(leave.channel, channel);
      assert.equal(leave.info.user, bob);

      // Subscribing again joins again; a client that disconnects leaves too.
      await subscribe(sb);
      const fromBob = (name) => sa.rec.all(name).filter((e) => e.info.client === bobClient);
      await sa.rec.wait('join', () => fromBob('join').length >= 2);
      closeClient(b);
      await sa.rec.wait('leave', () => fromBob('leave').length >= 2);
      assert.equal(fromBob('join').length, 2, 'exactly two joins of bob');
      assert.equal(fromBob('leave').length, 2, 'exactly two leaves of bob');
      closeClient(a);
    });

    test('without joinLeave the subscriber gets no join/leave events', async () => {
      const channel = `chat:${uid('room')}`;
      const a = newClient(t, { token: connToken(uid('alice')) });
      const b = newClient(t, { token: connToken(uid('bob')) });
      await Promise.all([connect(a), connect(b)]);
      const sa = newSub(a, channel);
      await subscribe(sa);
      const sb = newSub(b, channel);
      await subscribe(sb);
      await sb.publish(t.encode({ from: 'bob' }));
      sb.unsubscribe();
      await sb.rec.wait('unsubscribed');
      // A publication after bob left marks the point by which a leave would have arrived.
      await apiPublish(channel, { marker: true });
      const pubs = await sa.rec.waitCount('publication', 2);
      assert.deepEqual(pubs.map((p) => t.decode(p.data)), [{ from: 'bob' }, { marker: true }]);
      assert.equal(sa.rec.count('join'), 0);
      assert.equal(sa.rec.count('leave'), 0);
      closeClient(a);
      closeClient(b);
    });
  });
}
