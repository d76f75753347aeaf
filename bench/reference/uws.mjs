// A uWebSockets.js server that speaks just enough of wschat's protocol for
// wschat-bench to run every scenario against it side by side with wschat:
// /echo echoes; /ws answers `join` with `joined` (and subscribes), and
// publishes every other message, the bytes as received, to every
// subscriber of its room, the sender included, with `app.publish`: one
// call per message, no JavaScript per delivery. The sender's copy carries
// its `ref` ("b"), which is how wschat-bench recognises its own messages.
// This mirrors the uWebSockets C++ reference of docs/benchmarks.md.
// Usage: node uws.mjs PORT
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const uWS = require('@trufflesuite/uws-js-unofficial');

const port = Number(process.argv[2] || 9002);
const ROOM = Buffer.from('"room":"');
const JOIN = Buffer.from('{"type":"join"');

// The room named in a message, found without parsing the JSON.
function roomOf(buf) {
  const i = buf.indexOf(ROOM);
  if (i < 0) return null;
  const start = i + ROOM.length;
  const end = buf.indexOf(0x22, start);
  return end < 0 ? null : buf.toString('latin1', start, end);
}

const app = uWS.App();
app
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
    open: (ws) => { ws.send('{"type":"welcome","nick":"guest","motd":"","protocol":1}'); },
    message: (ws, msg) => {
      const buf = Buffer.from(msg);
      const room = roomOf(buf);
      if (room === null) return;
      if (buf.subarray(0, JOIN.length).equals(JOIN)) {
        ws.subscribe(room);
        ws.send(`{"type":"joined","room":"${room}","epoch":"e","members":[],"history":[],"complete":true}`);
        return;
      }
      app.publish(room, msg, false);
    },
  })
  .listen('127.0.0.1', port, (ok) => {
    if (!ok) { console.error(`cannot listen on ${port}`); process.exit(1); }
    console.log(`uws listening on 127.0.0.1:${port}`);
  });
