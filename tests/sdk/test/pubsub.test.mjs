// Subscribing, receiving server API publications, and client publish.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, connToken, newClient, newSub, connect, subscribe, closeClient, uid, apiPublish,
  rejection,
} from '../lib/harness.mjs';

for (const t of TRANSPORTS) {
  describe(`pub/sub [${t.name}]`, () => {
    test('subscribe, then receive what the server API publishes', async () => {
      const channel = `chat:${uid('room')}`;
      const c = newClient(t, { token: connToken(uid('alice')) });
      await connect(c);
      const sub = newSub(c, channel);
      const sctx = await subscribe(sub);
      assert.equal(sctx.channel, channel);
      assert.equal(sub.state, 'subscribed');

      const payloads = [{ text: 'hello', n: 1 }, { text: 'ünïcødé ✓', n: 2, nested: { a: [1, 2, 3] } }];
      const results = [];
      for (const p of payloads) results.push(await apiPublish(channel, p));
      const pubs = await sub.rec.waitCount('publication', payloads.length);
      assert.deepEqual(pubs.map((p) => t.decode(p.data)), payloads);
      for (const [i, p] of pubs.entries()) {
        assert.equal(p.channel, channel);
        // History is on in `chat`: each publication carries its stream offset.
        assert.equal(p.offset, results[i].offset, `publication ${i} offset`);
      }
      closeClient(c);
    });

    test('client publish to a subscribed channel is delivered, with publisher info', async () => {
      const channel = `chat:${uid('room')}`;
      const user = uid('alice');
      const c = newClient(t, { token: connToken(user, { info: { name: 'Alice' } }) });
      const { client } = await connect(c);
      const sub = newSub(c, channel);
      await subscribe(sub);

      const data = { text: 'from the client', at: 42 };
      const res = await sub.publish(t.encode(data));
      assert.deepEqual(res, {});
      const [pub] = await sub.rec.waitCount('publication', 1);
      assert.deepEqual(t.decode(pub.data), data);
      assert.ok(pub.info, 'client publication must carry info');
      assert.equal(pub.info.user, user);
      assert.equal(pub.info.client, client);
      assert.deepEqual(t.decode(pub.info.connInfo), { name: 'Alice' });
      closeClient(c);
    });

    test('a second subscriber receives the client publication too', async () => {
      const channel = `chat:${uid('room')}`;
      const a = newClient(t, { token: connToken(uid('alice')) });
      const b = newClient(t, { token: connToken(uid('bob')) });
      await Promise.all([connect(a), connect(b)]);
      const sa = newSub(a, channel);
      const sb = newSub(b, channel);
      await Promise.all([subscribe(sa), subscribe(sb)]);
      await sa.publish(t.encode({ from: 'alice' }));
      const [pb] = await sb.rec.waitCount('publication', 1);
      assert.deepEqual(t.decode(pb.data), { from: 'alice' });
      closeClient(a);
      closeClient(b);
    });

    test('publish without subscribing is denied (103) where only subscribers may publish', async () => {
      const channel = `chat:${uid('room')}`;
      const c = newClient(t, { token: connToken(uid('alice')) });
      await connect(c);
      const err = await rejection(c.publish(channel, t.encode({ x: 1 })), 'publish');
      assert.equal(err.code, 103, `publish error: ${JSON.stringify(err)}`);
      assert.equal(c.state, 'connected');
      closeClient(c);
    });
  });
}
