// The origin behind pushpin for herald-loadtest, speaking WebSocket-over-HTTP (GRIP):
// a client opening ws://<pushpin>/ws/<channel> is subscribed to <channel> and then sent
// {"ready":true}; pushpin delivers what is published to the channel. Node.js built-ins
// only. Loopback only.
//
//   PORT=9001 node origin.js
'use strict';
const http = require('http');

const port = Number(process.env.PORT || 9001);

function textEvent(s) {
  const b = Buffer.from(s);
  return `TEXT ${b.length.toString(16)}\r\n${s}\r\n`;
}

http
  .createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      const m = /^\/ws\/([A-Za-z0-9_:.-]+)/.exec(req.url || '');
      let out = '';
      if (body.startsWith('OPEN')) {
        out += 'OPEN\r\n';
        if (m) {
          out += textEvent('c:' + JSON.stringify({ type: 'subscribe', channel: m[1] }));
          // With GRIP on, messages for the client carry the prefix m:.
          out += textEvent('m:{"ready":true}');
        }
      } else if (/(^|\n)CLOSE/.test(body)) {
        out += 'CLOSE\r\n';
      }
      res.writeHead(200, {
        'Content-Type': 'application/websocket-events',
        'Sec-WebSocket-Extensions': 'grip',
      });
      res.end(out);
    });
  })
  .listen(port, '127.0.0.1', () => console.log(`pushpin origin on 127.0.0.1:${port}`));
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
