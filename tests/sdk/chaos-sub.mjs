// Subscribers of scripts/chaos.sh built on the official SDK (centrifuge-js): the SDK
// itself reconnects, resubscribes and recovers; this file only logs what the app sees,
// in the line format of loadtest/src/chaos/check.rs, for the loss checker.
//
//   node tests/sdk/chaos-sub.mjs NAME DIR NODES CHANNELS CLIENTS [json|protobuf]
//
// NODES and CHANNELS are comma-separated; client i connects to node i (mod the count)
// and stays with it (the SDK has one endpoint): a killed node is reconnected when it
// is back. HERALD_AUTH__HMAC_SECRET signs the connection tokens. When DIR/stop
// exists, each client waits (at most 60 s) until all its subscriptions are subscribed,
// lets live delivery settle for 3 s, logs END and disconnects.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';

const [name, dir, nodesArg, channelsArg, clientsArg, format = 'json'] = process.argv.slice(2);
const secret = process.env.HERALD_AUTH__HMAC_SECRET || '';
const nodes = nodesArg.split(',');
const channels = channelsArg.split(',');
const Centrifuge = format === 'protobuf' ? ProtobufCentrifuge : JsonCentrifuge;
const out = fs.createWriteStream(path.join(dir, `sub-${name}.log`));
const log = (line) => out.write(line + '\n');
const stopFile = path.join(dir, 'stop');

function token(user) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user })}`;
  const sig = crypto.createHmac('sha256', secret).update(body).digest('base64url');
  return `${body}.${sig}`;
}

function payloadId(data) {
  const v = data instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(data)) : data;
  return (v && v.id) || '-';
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function client(i) {
  const me = `${name}.${i}`;
  const c = new Centrifuge(`ws://${nodes[i % nodes.length]}/connection/websocket`, {
    token: token(me),
    websocket: WebSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
  });
  c.on('connecting', (ctx) => { if (ctx.code !== 0) log(`X ${me} ${ctx.code}`); });
  const subs = channels.map((ch) => {
    const s = c.newSubscription(ch, { minResubscribeDelay: 100, maxResubscribeDelay: 1000 });
    // Recovered publications are delivered synchronously right after 'subscribed';
    // the microtask marks the end of the subscribe result for the checker.
    let recovering = false;
    s.on('subscribed', (ctx) => {
      const p = ctx.streamPosition || { offset: 0, epoch: '-' };
      log(`S ${me} ${ch} ${p.epoch || '-'} ${p.offset} ${ctx.recovered ? 1 : 0} ${ctx.wasRecovering ? 1 : 0}`);
      recovering = true;
      queueMicrotask(() => { recovering = false; log(`T ${me} ${ch}`); });
    });
    s.on('publication', (ctx) => {
      log(`D ${me} ${ch} ${ctx.offset || 0} ${payloadId(ctx.data)} ${recovering ? 'R' : 'L'}`);
    });
    s.on('subscribing', (ctx) => { if (ctx.code >= 2500) log(`U ${me} ${ch} ${ctx.code}`); });
    s.on('unsubscribed', (ctx) => log(`U ${me} ${ch} ${ctx.code}`));
    s.on('error', (ctx) => log(`E ${me} ${ch} ${(ctx.error && ctx.error.code) || 0}`));
    s.subscribe();
    return s;
  });
  c.connect();
  while (!fs.existsSync(stopFile)) await sleep(200);
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && !subs.every((s) => s.state === 'subscribed')) await sleep(100);
  await sleep(3000);
  for (const s of subs) log(`END ${me} ${s.channel} ${s.state === 'subscribed' ? 1 : 0}`);
  c.disconnect();
}

await Promise.all(Array.from({ length: Number(clientsArg) }, (_, i) => client(i)));
await new Promise((r) => out.end(r));
process.exit(0);
