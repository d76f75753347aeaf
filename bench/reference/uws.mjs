// A uWebSockets.js server that speaks just enough of wschat's protocol for
// wschat-bench to run every scenario against it side by side with wschat:
// /echo echoes; /ws answers `join` with `joined` and broadcasts `message`
// to the room (serialised once, published by uWS), the sender's copy
// carrying its `ref` as wschat's does. Usage: node uws.mjs PORT
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const uWS = require('@trufflesuite/uws-js-unofficial');

const port = Number(process.argv[2] || 9002);
const rooms = new Map(); // room -> next id
let guest = 0;

uWS.App()
  .ws('/echo', {
    compression: uWS.DISABLED,
    maxPayloadLength: 16 << 20,
    maxBackpressure: 64 << 20,
    idleTimeout: 0,
    message: (ws, msg, isBinary) => { ws.send(msg, isBinary); },
  })
  .ws('/ws', {
    compression: uWS.DISABLED,
    maxPayloadLength: 64 << 10,
    maxBackpressure: 1 << 20,
    idleTimeout: 0,
    upgrade: (res, req, ctx) => {
      const nick = new URLSearchParams(req.getQuery() || '').get('nick') || `guest-${++guest}`;
      res.upgrade({ nick }, req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'),
        req.getHeader('sec-websocket-extensions'), ctx);
    },
    open: (ws) => { ws.send(JSON.stringify({ type: 'welcome', nick: ws.nick, motd: '', protocol: 1 })); },
    message: (ws, msg) => {
      let m;
      try { m = JSON.parse(Buffer.from(msg).toString()); } catch { return; }
      if (m.type === 'join') {
        ws.subscribe(m.room);
        if (!rooms.has(m.room)) rooms.set(m.room, 1);
        ws.send(JSON.stringify({ type: 'joined', room: m.room, epoch: 'e', members: [], history: [], complete: true, ref: m.ref }));
      } else if (m.type === 'message') {
        const id = rooms.get(m.room) || 1;
        rooms.set(m.room, id + 1);
        const out = { type: 'message', room: m.room, id, from: ws.nick, text: m.text, ts: Date.now() };
        ws.publish(m.room, JSON.stringify(out)); // everyone but the sender
        if (m.ref !== undefined) out.ref = m.ref;
        ws.send(JSON.stringify(out));
      }
    },
  })
  .listen('127.0.0.1', port, (ok) => {
    if (!ok) { console.error(`cannot listen on ${port}`); process.exit(1); }
    console.log(`uws listening on 127.0.0.1:${port}`);
  });
