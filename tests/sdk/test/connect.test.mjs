// Connecting with a JWT, rejected tokens, and RPC errors.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, connToken, sign, nowSec, newClient, connect, closeClient, uid, rejection,
} from '../lib/harness.mjs';

for (const t of TRANSPORTS) {
  describe(`connect [${t.name}]`, () => {
    test('connects with a JWT: connected event with a client id', async () => {
      const user = uid('alice');
      const c = newClient(t, { token: connToken(user) });
      const ctx = await connect(c);
      assert.equal(typeof ctx.client, 'string');
      assert.ok(ctx.client.length > 0, 'client id must not be empty');
      assert.equal(ctx.transport, 'websocket');
      assert.equal(c.state, 'connected');
      assert.equal(c.rec.count('disconnected'), 0);
      closeClient(c);
    });

    test('two connections get distinct client ids', async () => {
      const user = uid('alice');
      const a = newClient(t, { token: connToken(user) });
      const b = newClient(t, { token: connToken(user) });
      const [ca, cb] = await Promise.all([connect(a), connect(b)]);
      assert.notEqual(ca.client, cb.client);
      closeClient(a);
      closeClient(b);
    });

    test('a token with a bad signature ends in disconnected 3500 (invalid token), no reconnect', async () => {
      const user = uid('mallory');
      const token = sign({ sub: user, exp: nowSec() + 600 }, 'not-the-secret');
      const c = newClient(t, { token, minReconnectDelay: 100, maxReconnectDelay: 200 });
      c.connect();
      const ctx = await c.rec.wait('disconnected');
      assert.equal(ctx.code, 3500, `disconnected: ${JSON.stringify(ctx)}`);
      assert.equal(c.state, 'disconnected');
      assert.equal(c.rec.count('connected'), 0);
      closeClient(c);
    });

    test('RPC to an unknown method rejects with error 104', async () => {
      const c = newClient(t, { token: connToken(uid('alice')) });
      await connect(c);
      const err = await rejection(c.rpc('no.such.method', t.encode({ x: 1 })), 'rpc');
      assert.equal(err.code, 104, `rpc error: ${JSON.stringify(err)}`);
      assert.equal(typeof err.message, 'string');
      // The connection survives the error.
      assert.equal(c.state, 'connected');
      assert.equal(c.rec.count('disconnected'), 0);
      closeClient(c);
    });
  });
}

