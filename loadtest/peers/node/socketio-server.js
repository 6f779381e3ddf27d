// A tiny socket.io server for herald-loadtest: clients join a room with
// `subscribe` (acknowledged once joined); POST /publish {"channel": c, "data": {...}}
// emits event "m" with the data to room c. WebSocket transport only, loopback only.
//
//   PORT=9000 node socketio-server.js
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.env.PORT || 9000);
const host = process.env.HOST || '127.0.0.1';

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') {
    res.writeHead(404);
    res.end();
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let msg;
    try {
      msg = JSON.parse(Buffer.concat(chunks).toString());
    } catch (e) {
      res.writeHead(400, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ error: 'body is not JSON' }));
      return;
    }
    if (typeof msg.channel !== 'string') {
      res.writeHead(400, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ error: 'channel missing' }));
      return;
    }
    io.to(msg.channel).emit('m', msg.data);
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end('{}');
  });
});

const io = new Server(server, { transports: ['websocket'], serveClient: false });
io.on('connection', (socket) => {
  socket.on('subscribe', (channel, ack) => {
    if (typeof channel === 'string') {
      socket.join(channel);
    }
    if (typeof ack === 'function') {
      ack(typeof channel === 'string');
    }
  });
});

server.listen(port, host, () => console.log(`socket.io server on ${host}:${port}`));
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
