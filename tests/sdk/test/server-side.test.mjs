// Server-side subscriptions: token `channels` claim and the server API subscribe.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, connToken, newClient, connect, closeClient, uid, api, apiPublish,
} from '../lib/harness.mjs';

for (const t of TRANSPORTS) {
  describe(`server-side subscriptions [${t.name}]`, () => {
    test('token channels claim: client-level subscribed and publication events', async () => {
      const user = uid('alice');
      const chA = `feed:${uid('a')}`;
      const chB = `feed:${uid('b')}`;
      const c = newClient(t, { token: connToken(user, { channels: [chA, chB] }) });
      await connect(c);
      const subscribed = await c.rec.waitCount('subscribed', 2);
      assert.deepEqual(subscribed.map((s) => s.channel).sort(), [chA, chB].sort());

      await apiPublish(chA, { to: 'a' });
      await apiPublish(chB, { to: 'b' });
      const pubs = await c.rec.waitCount('publication', 2);
      assert.deepEqual(
        pubs.map((p) => [p.channel, t.decode(p.data)]),
        [[chA, { to: 'a' }], [chB, { to: 'b' }]],
      );
      closeClient(c);
    });

    test('server API subscribe/unsubscribe reach the client as subscribed/unsubscribed', async () => {
      const user = uid('alice');
      const channel = `feed:${uid('c')}`;
      const c = newClient(t, { token: connToken(user) });
      await connect(c);
      await api('subscribe', { user, channel });
      const s = await c.rec.wait('subscribed', (x) => x.channel === channel);
      assert.equal(s.channel, channel);
      await apiPublish(channel, { n: 1 });
      const p = await c.rec.wait('publication', (x) => x.channel === channel);
      assert.deepEqual(t.decode(p.data), { n: 1 });
      await api('unsubscribe', { user, channel });
      await c.rec.wait('unsubscribed', (x) => x.channel === channel);
      closeClient(c);
    });
  });
}
