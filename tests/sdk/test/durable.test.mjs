// Persisted namespaces with the official SDK: a long gap recovered from the durable
// store, and ephemeral conversation events (typing, read receipts) that carry no offset
// and must not disturb the SDK's position tracking.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, connToken, newClient, newSub, connect, subscribe, closeClient, uid, api, apiPublish, env,
} from '../lib/harness.mjs';

/** `batch` answers `{"replies": [...]}` at the top level, not under `result`. */
async function apiBatch(commands) {
  const res = await fetch(`${env.api}/batch`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': env.apiKey },
    body: JSON.stringify({ commands }),
  });
  assert.equal(res.status, 200);
  return res.json();
}

async function forceReconnect(c, user) {
  const connecting = c.rec.wait('connecting', (ctx) => ctx.code === 3011);
  await api('disconnect', { user, disconnect: { code: 3011, reason: 'force reconnect' } });
  await connecting;
}

for (const t of TRANSPORTS) {
  describe(`durable history [${t.name}]`, () => {
    test('500 publications missed while away are all recovered, in order, once', async () => {
      const channel = `durable:${uid('log')}`;
      const user = uid('alice');
      const c = newClient(t, { token: connToken(user), minReconnectDelay: 1500, maxReconnectDelay: 2500 });
      const first = await connect(c);
      const sub = newSub(c, channel, { recoverable: true });
      const s1 = await subscribe(sub);
      assert.equal(s1.recoverable, true);
      await apiPublish(channel, { n: 0 });
      await sub.rec.waitCount('publication', 1);

      await forceReconnect(c, user);
      const commands = [];
      for (let n = 1; n <= 500; n++) commands.push({ publish: { channel, data: { n } } });
      for (let i = 0; i < commands.length; i += 100) {
        const res = await apiBatch(commands.slice(i, i + 100));
        assert.ok(res.replies.every((r) => r.publish), JSON.stringify(res.replies[0]));
        assert.equal(res.replies.length, 100);
      }

      await c.rec.wait('connected', (ctx) => ctx.client !== first.client);
      const s2 = await sub.rec.wait('subscribed', (ctx) => ctx !== s1);
      assert.equal(s2.wasRecovering, true);
      assert.equal(s2.recovered, true, `subscribed: ${JSON.stringify({ ...s2, publications: undefined })}`);
      await sub.rec.waitCount('publication', 501);
      const got = sub.rec.all('publication');
      assert.deepEqual(got.map((p) => t.decode(p.data).n), [...Array(501).keys()], 'every publication, in order, once');
      assert.deepEqual(got.map((p) => p.offset), [...Array(501).keys()].map((i) => i + 1));
      closeClient(c);
    });

    test('typing and read events carry no offset and leave recovery intact', async () => {
      const channel = `convo:${uid('team')}`;
      const alice = uid('alice');
      const bob = uid('bob');
      await api('conversation_create', { channel, users: [alice, bob] });
      const a = newClient(t, { token: connToken(alice), minReconnectDelay: 1500, maxReconnectDelay: 2500 });
      const firstA = await connect(a);
      const sub = newSub(a, channel, { recoverable: true });
      const s1 = await subscribe(sub);
      const b = newClient(t, { token: connToken(bob) });
      await connect(b);

      await apiPublish(channel, { text: 'one' });
      await sub.rec.waitCount('publication', 1);
      await b.rpc('chat.typing', t.encode({ channel }));
      await sub.rec.waitCount('publication', 2);
      const typing = sub.rec.all('publication')[1];
      assert.deepEqual(t.decode(typing.data), { type: 'typing', user: bob });
      assert.ok(!typing.offset, `typing has no offset: ${typing.offset}`);
      const read = await b.rpc('chat.read', t.encode({ channel, offset: 1 }));
      assert.deepEqual(t.decode(read.data), { channel, offset: 1 });
      await sub.rec.waitCount('publication', 3);
      assert.equal(t.decode(sub.rec.all('publication')[2].data).type, 'read');

      // The SDK's position is still offset 1: a reconnect recovers exactly what follows.
      await forceReconnect(a, alice);
      await apiPublish(channel, { text: 'two' });
      await apiPublish(channel, { text: 'three' });
      await a.rec.wait('connected', (ctx) => ctx.client !== firstA.client);
      const s2 = await sub.rec.wait('subscribed', (ctx) => ctx !== s1);
      assert.equal(s2.recovered, true);
      await sub.rec.waitCount('publication', 5);
      const tail = sub.rec.all('publication').slice(3);
      assert.deepEqual(tail.map((p) => t.decode(p.data).text), ['two', 'three']);
      assert.deepEqual(tail.map((p) => p.offset), [2, 3]);
      closeClient(a);
      closeClient(b);
    });
  });
}
