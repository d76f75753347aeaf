// wschat web client: plain JavaScript, no build step, no outside requests.
// Every piece of text that comes from a user or the server is rendered with
// textContent (never innerHTML), so no field can inject markup.
'use strict';

(() => {
  // ---------------------------------------------------------------- constants
  const PROTOCOL = 'wschat.v1';
  const NICK_RE = /^[A-Za-z0-9_.-]{1,32}$/;
  const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
  const MAX_TEXT = 4000;
  const DEFAULT_ROOM = 'general';
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 15000;
  const TYPING_THROTTLE = 3000; // resend "active: true" at most this often
  const TYPING_IDLE = 4000; // send "active: false" after this pause
  const TYPING_EXPIRE = 6000; // forget others' indicators after this
  const GROUP_GAP = 5 * 60 * 1000; // messages closer than this group together
  const PAGE = 50;
  const STORE = { nick: 'wschat.nick', rooms: 'wschat.rooms', active: 'wschat.active' };
  const AVATAR_COLORS = ['#b91c1c', '#c2410c', '#a16207', '#4d7c0f', '#15803d', '#0f766e',
    '#0369a1', '#1d4ed8', '#6d28d9', '#a21caf', '#be185d', '#475569'];
  const ERROR_TEXT = {
    rate_limited: 'You are sending too fast. Wait a moment and try again.',
    bad_json: 'The server could not read a message from this client.',
    unknown_type: 'The server did not understand a request from this client.',
    invalid: 'The server refused a request as invalid',
    nick_taken: 'That nickname is already taken.',
    not_in_room: 'You are not in that room.',
    no_such_user: 'That user is not connected.',
    too_many_rooms: 'You cannot join more rooms.',
    storage_failed: 'The server could not store this (its disk is full or failing); nothing was sent. Try again later.',
  };

  // ---------------------------------------------------------------- helpers
  const $ = (id) => document.getElementById(id);
  const lc = (s) => String(s).toLowerCase();
  const byLower = (a, b) => (lc(a) < lc(b) ? -1 : lc(a) > lc(b) ? 1 : 0);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
    return e;
  }

  function load(key, fallback) {
    try {
      const v = localStorage.getItem(key);
      return v === null ? fallback : JSON.parse(v);
    } catch { return fallback; }
  }
  function save(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); } catch { /* private mode: memory only */ }
  }

  function hashString(s) {
    let h = 2166136261;
    for (const ch of lc(s)) { h ^= ch.codePointAt(0); h = Math.imul(h, 16777619); }
    return h >>> 0;
  }
  function initials(nick) {
    const parts = String(nick).split(/[-_.]+/).filter(Boolean);
    if (parts.length >= 2) return (parts[0][0] + parts[1][0]).toUpperCase();
    return (parts[0] || String(nick) || '?').slice(0, 1).toUpperCase();
  }
  function avatar(nick, size) {
    const a = el('span', { class: 'avatar' + (size ? ' ' + size : ''), 'aria-hidden': 'true', text: initials(nick) });
    a.style.backgroundColor = AVATAR_COLORS[hashString(nick) % AVATAR_COLORS.length];
    return a;
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
  const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
  const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
  const dayYearFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
  const dayKey = (ts) => { const d = new Date(ts); return d.getFullYear() * 10000 + d.getMonth() * 100 + d.getDate(); };
  function dayLabel(ts) {
    const now = new Date();
    const k = dayKey(ts);
    if (k === dayKey(now)) return 'Today';
    if (k === dayKey(now.getTime() - 86400000)) return 'Yesterday';
    return new Date(ts).getFullYear() === now.getFullYear() ? dayFmt.format(ts) : dayYearFmt.format(ts);
  }

  // Text with http(s) links made clickable, built from text nodes and <a> only.
  const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;
  function richText(text) {
    const frag = document.createDocumentFragment();
    let last = 0;
    for (const m of text.matchAll(URL_RE)) {
      let url = m[0];
      // Leave trailing punctuation outside the link, as people write "see https://x.org."
      const trail = /[.,;:!?)\]}]+$/.exec(url);
      if (trail) url = url.slice(0, -trail[0].length);
      let href = null;
      try {
        const u = new URL(url);
        if (u.protocol === 'http:' || u.protocol === 'https:') href = u.href;
      } catch { /* not a URL */ }
      if (!href) continue;
      frag.append(document.createTextNode(text.slice(last, m.index)));
      const a = document.createElement('a');
      a.textContent = url;
      a.href = href;
      a.rel = 'noopener noreferrer';
      a.target = '_blank';
      frag.append(a);
      last = m.index + url.length;
    }
    frag.append(document.createTextNode(text.slice(last)));
    return frag;
  }

  // ---------------------------------------------------------------- state
  const state = {
    desiredNick: load(STORE.nick, null), // what the user asked for
    nick: null, // what the server says we are
    motd: '',
    ws: null,
    conn: 'connecting', // connecting | online | reconnecting
    attempt: 0,
    retryAt: 0,
    retryTimer: null,
    everConnected: false,
    convs: new Map(), // key -> conversation
    roomOrder: load(STORE.rooms, [DEFAULT_ROOM]),
    active: load(STORE.active, 'room:' + DEFAULT_ROOM),
    outstanding: new Map(), // ref -> {kind, ...}: frames that always get an answer, in send order
    refSeq: 0,
    seq: 0,
    nickRetry: null,
    pendingNickRef: null,
  };
  if (!Array.isArray(state.roomOrder)) state.roomOrder = [DEFAULT_ROOM];
  state.roomOrder = state.roomOrder.filter((r) => typeof r === 'string' && ROOM_RE.test(r));

  const nextRef = (p) => p + (++state.refSeq).toString(36);
  const isMe = (nick) => state.nick !== null && lc(nick) === lc(state.nick);

  function newConv(kind, name) {
    return {
      kind, name, key: kind + ':' + (kind === 'dm' ? lc(name) : name),
      msgs: new Map(), // key -> message (rooms: id; dms: seq)
      notices: [],
      pending: [],
      unread: 0,
      members: [],
      typing: new Map(), // lc(nick) -> {nick, until}
      epoch: null,
      lastId: 0, // largest id seen in this epoch
      hasOlder: false,
      loadingOlder: false,
      gap: null, // {lo, hi}: ids lo < id < hi may be missing
      joined: false,
      joining: false,
    };
  }
  function roomConv(name, create) {
    const key = 'room:' + name;
    let c = state.convs.get(key);
    if (!c && create) { c = newConv('room', name); state.convs.set(key, c); }
    return c;
  }
  function dmConv(nick, create) {
    const key = 'dm:' + lc(nick);
    let c = state.convs.get(key);
    if (!c && create) { c = newConv('dm', nick); state.convs.set(key, c); }
    return c;
  }
  const activeConv = () => state.convs.get(state.active) || null;

  function addNotice(conv, text, opts = {}) {
    const n = { seq: ++state.seq, text, tone: opts.tone || 'info', action: opts.action || null,
      after: opts.after !== undefined ? opts.after : (conv.kind === 'room' ? conv.lastId : state.seq), ts: Date.now() };
    conv.notices.push(n);
    if (conv.notices.length > 200) conv.notices.shift();
    scheduleRender(conv);
    return n;
  }

  // ---------------------------------------------------------------- sending
  // Mirror of the server's token bucket (20 tokens, 2/s), slightly pessimistic,
  // so the client paces itself instead of being answered rate_limited.
  const bucket = { tokens: 18, at: performance.now() };
  const outQueue = [];
  let drainTimer = null;
  function refill() {
    const now = performance.now();
    bucket.tokens = Math.min(18, bucket.tokens + (now - bucket.at) / 1000 * 1.8);
    bucket.at = now;
  }
  function rawSend(frame) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    refill();
    bucket.tokens -= 1;
    state.ws.send(JSON.stringify(frame));
    return true;
  }
  function drain() {
    drainTimer = null;
    refill();
    while (outQueue.length && bucket.tokens >= 1) {
      const item = outQueue.shift();
      if (!rawSend(item.frame)) { outQueue.length = 0; return; }
      if (item.onSent) item.onSent();
    }
    if (outQueue.length) drainTimer = setTimeout(drain, Math.ceil((1 - bucket.tokens) / 1.8 * 1000) + 20);
  }
  // Sends a frame, or queues it while the bucket is empty. Droppable frames
  // (typing) are never queued: stale typing is worse than none.
  function send(frame, opts = {}) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    refill();
    if (opts.droppable) {
      if (bucket.tokens < 4 || outQueue.length) return false;
      return rawSend(frame);
    }
    if (frame.ref && opts.expect) state.outstanding.set(frame.ref, opts.expect);
    if (!outQueue.length && bucket.tokens >= 1) {
      rawSend(frame);
      if (opts.onSent) opts.onSent();
    } else {
      outQueue.push({ frame, onSent: opts.onSent });
      if (!drainTimer) drain();
    }
    return true;
  }

  // ---------------------------------------------------------------- connection
  function wsUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = state.desiredNick ? '?nick=' + encodeURIComponent(state.desiredNick) : '';
    return scheme + '//' + location.host + '/ws' + q;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
    setConn(state.everConnected ? 'reconnecting' : 'connecting', true);
    let ws;
    try {
      ws = new WebSocket(wsUrl(), [PROTOCOL]);
    } catch {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') return;
      try { handle(msg); } catch (e) { console.error('wschat: failed to handle', msg, e); }
    };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      onDisconnected(ev);
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  function onDisconnected(ev) {
    outQueue.length = 0;
    clearTimeout(drainTimer); drainTimer = null;
    // Frames in flight are lost with the connection: say so on unacknowledged messages.
    for (const [ref, exp] of state.outstanding) {
      if (exp.kind === 'message' || exp.kind === 'dm') {
        const p = findPending(ref);
        if (p) { p.pending.state = 'unsure'; p.pending.reason = 'Connection lost before the server confirmed it.'; scheduleRender(p.conv); }
      }
    }
    state.outstanding.clear();
    for (const c of state.convs.values()) {
      c.joined = false; c.joining = false; c.loadingOlder = false; ctxView.loading = null;
      if (c.typing.size) { c.typing.clear(); }
      for (const p of c.pending) if (p.state === 'sending') { p.state = 'unsure'; p.reason = 'Connection lost before the server confirmed it.'; }
      scheduleRender(c);
    }
    stopTyping(true);
    if (ev && ev.code === 1008 && ev.reason) toast('Disconnected by the server: ' + ev.reason, 'error');
    scheduleReconnect();
  }

  function scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** state.attempt);
    const delay = Math.max(250, Math.round(base * (0.7 + Math.random() * 0.6))); // ±30 % jitter
    state.attempt = Math.min(state.attempt + 1, 10);
    state.retryAt = Date.now() + delay;
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, delay);
    setConn('reconnecting');
  }
  function retryNow() {
    if (state.ws) return;
    state.attempt = 0;
    connect();
  }

  function setConn(s, attempting) {
    state.conn = s;
    state.attempting = !!attempting;
    document.body.classList.toggle('offline', s !== 'online');
    renderConn();
    renderSidebar();
    renderHeader();
  }

  // ---------------------------------------------------------------- protocol in
  function handle(m) {
    switch (m.type) {
      case 'welcome': return onWelcome(m);
      case 'nick': return onNick(m);
      case 'joined': return onJoined(m);
      case 'left': return onLeft(m);
      case 'presence': return onPresence(m);
      case 'message': return onMessage(m);
      case 'dm': return onDm(m);
      case 'typing': return onTyping(m);
      case 'history': return onHistory(m);
      case 'rooms': return onRooms(m);
      case 'search': return onSearch(m);
      case 'error': return onError(m);
      default: return undefined; // forward compatibility
    }
  }

  function settle(ref) {
    if (typeof ref !== 'string') return null;
    const exp = state.outstanding.get(ref) || null;
    state.outstanding.delete(ref);
    return exp;
  }

  function onWelcome(m) {
    const first = !state.everConnected;
    state.everConnected = true;
    state.attempt = 0;
    state.nick = String(m.nick);
    state.motd = typeof m.motd === 'string' ? m.motd : '';
    setConn('online');
    renderMe();
    renderMotd();
    if (state.desiredNick && !isMe(state.desiredNick)) {
      if (first) {
        openNickDialog(`The nickname “${state.desiredNick}” is taken. You are “${state.nick}” for now; pick another?`);
      } else {
        // Most likely our own previous connection, not yet timed out on the server: try again for a while.
        toast(`“${state.desiredNick}” is still held by a previous connection; you are “${state.nick}” until it is freed.`, 'info');
        scheduleNickRetry(8);
      }
    } else if (!state.desiredNick) {
      state.desiredNick = state.nick;
    }
    // (Re)join every room, asking only for what was missed.
    if (!state.roomOrder.length && !state.convs.size) state.roomOrder = [DEFAULT_ROOM];
    for (const name of state.roomOrder) joinRoom(name, false);
    // Messages typed while offline go out once their room is joined (see onJoined); DMs now.
    for (const c of state.convs.values()) if (c.kind === 'dm') flushQueued(c);
    renderAll();
  }

  function scheduleNickRetry(triesLeft) {
    clearTimeout(state.nickRetry);
    if (triesLeft <= 0 || !state.desiredNick || isMe(state.desiredNick)) return;
    state.nickRetry = setTimeout(() => {
      if (state.conn !== 'online' || isMe(state.desiredNick)) return;
      requestNick(state.desiredNick, { silent: true, retries: triesLeft - 1 });
    }, 10000);
  }

  function requestNick(nick, opts = {}) {
    const ref = nextRef('n');
    state.pendingNickRef = ref;
    send({ type: 'nick', nick, ref }, { expect: { kind: 'nick', nick, silent: !!opts.silent, retries: opts.retries || 0 } });
  }

  function onNick(m) {
    const old = String(m.old), nick = String(m.nick);
    const exp = settle(m.ref);
    const mine = exp ? true : isMe(old);
    if (mine) {
      state.nick = nick;
      if (exp) { state.desiredNick = nick; save(STORE.nick, nick); clearTimeout(state.nickRetry); }
      if (exp && exp.fromDialog) closeNickDialog();
      if (lc(old) !== lc(nick) || old !== nick) {
        for (const c of state.convs.values()) if (c.kind === 'room' && c.joined) addNotice(c, `You are now known as ${nick}.`);
      }
    } else {
      for (const c of state.convs.values()) {
        if (c.kind !== 'room') continue;
        const i = c.members.findIndex((x) => lc(x) === lc(old));
        if (i >= 0) {
          c.members[i] = nick;
          c.members.sort(byLower);
          if (old !== nick) addNotice(c, `${old} is now known as ${nick}.`);
        }
        const t = c.typing.get(lc(old));
        if (t) { c.typing.delete(lc(old)); t.nick = nick; c.typing.set(lc(nick), t); }
      }
      const dc = dmConv(old, false);
      if (dc && lc(old) !== lc(nick)) {
        state.convs.delete(dc.key);
        const existing = dmConv(nick, false);
        dc.name = nick; dc.key = 'dm:' + lc(nick);
        if (!existing) state.convs.set(dc.key, dc);
        if (state.active === 'dm:' + lc(old)) state.active = dc.key;
        addNotice(dc, `${old} is now known as ${nick}.`);
      } else if (dc) {
        dc.name = nick;
      }
    }
    renderAll();
  }

  function joinRoom(name, switchTo) {
    const conv = roomConv(name, true);
    if (!state.roomOrder.includes(name)) { state.roomOrder.push(name); save(STORE.rooms, state.roomOrder); }
    if (switchTo) switchConv(conv.key);
    if (state.conn !== 'online') return;
    conv.joining = true;
    const ref = nextRef('j');
    const frame = { type: 'join', room: name, ref };
    if (conv.epoch !== null) { frame.since = conv.lastId; frame.epoch = conv.epoch; }
    send(frame, { expect: { kind: 'join', room: name } });
    renderSidebar();
  }

  function onJoined(m) {
    settle(m.ref);
    const name = String(m.room);
    const conv = roomConv(name, true);
    if (!state.roomOrder.includes(name)) { state.roomOrder.push(name); save(STORE.rooms, state.roomOrder); }
    const history = Array.isArray(m.history) ? m.history.filter(validMessage) : [];
    const epoch = String(m.epoch);
    const wasKnown = conv.epoch !== null;
    const rejoin = wasKnown && conv.epoch === epoch;
    if (wasKnown && !rejoin) {
      // Ids started again: what we hold belongs to another sequence.
      const hadMessages = conv.msgs.size > 0;
      conv.msgs.clear();
      conv.notices = [];
      conv.gap = null;
      conv.lastId = 0;
      if (hadMessages) addNotice(conv, 'The server started this room’s history afresh; earlier messages shown before are gone.', { tone: 'warn', after: 0 });
    }
    const prevLast = conv.lastId;
    conv.epoch = epoch;
    conv.joined = true;
    conv.joining = false;
    conv.members = (Array.isArray(m.members) ? m.members.map(String) : []).sort(byLower);
    let fresh = 0;
    for (const h of history) if (addRoomMessage(conv, h)) fresh++;
    if (!rejoin) {
      conv.hasOlder = m.complete === false;
    } else if (m.complete === false && history.length) {
      // Some messages after `since` did not fit: mark the hole so it can be paged in.
      const lo = prevLast, hi = history[0].id;
      if (hi > lo + 1) {
        conv.gap = { lo, hi };
        conv.gapNotice = addNotice(conv, 'Some messages may be missing here.', {
          tone: 'warn', after: lo, action: { label: 'Load missing messages', run: () => loadGap(conv) } });
      }
    }
    if (rejoin && fresh && state.active !== conv.key) conv.unread += countUnread(history, prevLast);
    dedupeUnsure(conv, history);
    flushQueued(conv);
    scheduleRender(conv);
    renderSidebar();
    if (conv.key === state.active) { renderHeader(); renderMembers(); renderComposer(); }
  }

  function countUnread(list, after) {
    return list.filter((h) => h.id > after && !isMe(h.from)).length;
  }

  function validMessage(h) {
    return h && Number.isSafeInteger(h.id) && h.id >= 1 && typeof h.text === 'string' && typeof h.from === 'string';
  }

  // Returns true when the message was new to us.
  function addRoomMessage(conv, h) {
    if (conv.msgs.has(h.id)) return false;
    conv.msgs.set(h.id, { id: h.id, from: String(h.from), text: h.text, ts: Number(h.ts) || Date.now() });
    if (h.id > conv.lastId) conv.lastId = h.id;
    return true;
  }

  function onLeft(m) {
    settle(m.ref);
    const name = String(m.room);
    removeRoom(name);
  }
  function removeRoom(name) {
    const conv = roomConv(name, false);
    state.roomOrder = state.roomOrder.filter((r) => r !== name);
    save(STORE.rooms, state.roomOrder);
    if (conv) state.convs.delete(conv.key);
    if (state.active === 'room:' + name) {
      const next = state.roomOrder[0] ? 'room:' + state.roomOrder[0] : ([...state.convs.keys()][0] || null);
      switchConv(next);
    }
    renderAll();
  }

  function onPresence(m) {
    const conv = roomConv(String(m.room), false);
    if (!conv) return;
    const nick = String(m.nick);
    const i = conv.members.findIndex((x) => lc(x) === lc(nick));
    if (m.event === 'join') {
      if (i < 0) { conv.members.push(nick); conv.members.sort(byLower); }
      addNotice(conv, `${nick} joined #${conv.name}.`, { tone: 'presence' });
    } else if (m.event === 'leave') {
      if (i >= 0) conv.members.splice(i, 1);
      conv.typing.delete(lc(nick));
      addNotice(conv, `${nick} left #${conv.name}.`, { tone: 'presence' });
    }
    if (conv.key === state.active) { renderMembers(); renderHeader(); renderTyping(); }
  }

  function onMessage(m) {
    if (!validMessage(m)) return;
    const conv = roomConv(String(m.room), false);
    if (!conv) return;
    const exp = settle(m.ref);
    if (exp) removePending(conv, m.ref);
    conv.typing.delete(lc(m.from));
    const isNew = addRoomMessage(conv, m);
    if (!isNew) { scheduleRender(conv); return; }
    if (!isMe(m.from)) {
      if (state.active !== conv.key) conv.unread++;
      announce(`${m.from} in #${conv.name}: ${m.text}`);
    }
    scheduleRender(conv);
    renderSidebar();
    if (conv.key === state.active) renderTyping();
    updateTitle(!isMe(m.from));
  }

  function onDm(m) {
    if (typeof m.text !== 'string' || typeof m.from !== 'string') return;
    const from = String(m.from), to = String(m.to ?? '');
    const other = isMe(from) ? to : from;
    const conv = dmConv(other, true);
    conv.name = other; // the server's spelling
    const exp = settle(m.ref);
    if (exp) removePending(conv, m.ref);
    const seq = ++state.seq;
    conv.msgs.set(seq, { id: seq, from, text: m.text, ts: Number(m.ts) || Date.now() });
    if (conv.msgs.size > 1000) conv.msgs.delete(conv.msgs.keys().next().value);
    if (!isMe(from)) {
      if (state.active !== conv.key) conv.unread++;
      announce(`Private message from ${from}: ${m.text}`);
    }
    scheduleRender(conv);
    renderSidebar();
    updateTitle(!isMe(from));
  }

  function onTyping(m) {
    const conv = roomConv(String(m.room), false);
    if (!conv || isMe(m.nick)) return;
    const nick = String(m.nick);
    if (m.active === true) conv.typing.set(lc(nick), { nick, until: Date.now() + TYPING_EXPIRE });
    else conv.typing.delete(lc(nick));
    if (conv.key === state.active) renderTyping();
  }

  function onHistory(m) {
    const exp = settle(m.ref);
    if (exp && exp.kind === 'context') return onContextPage(m, exp);
    const conv = roomConv(String(m.room), false);
    if (!conv) return;
    const list = Array.isArray(m.messages) ? m.messages.filter(validMessage) : [];
    if (exp && exp.epoch && exp.epoch !== conv.epoch) return; // answer about a sequence we dropped
    for (const h of list) addRoomMessage(conv, h);
    if (exp && exp.kind === 'gap' && conv.gap) {
      conv.loadingGap = false;
      const min = list.length ? list[0].id : conv.gap.lo;
      if (min <= conv.gap.lo + 1 || m.complete === true || !list.length) {
        const stillMissing = [...Array(Math.max(0, conv.gap.hi - conv.gap.lo - 1)).keys()]
          .some((i) => !conv.msgs.has(conv.gap.lo + 1 + i));
        conv.notices = conv.notices.filter((n) => n !== conv.gapNotice);
        if (stillMissing) addNotice(conv, 'Some messages here are no longer kept by the server.', { tone: 'warn', after: conv.gap.lo });
        conv.gap = null;
      } else {
        conv.gap.hi = min;
      }
    } else {
      conv.loadingOlder = false;
      conv.hasOlder = m.complete === false && list.length > 0;
      continueJump(conv);
    }
    scheduleRender(conv, { keepAnchor: true });
  }

  function onRooms(m) {
    settle(m.ref);
    const rooms = Array.isArray(m.rooms) ? m.rooms : [];
    const conv = activeConv();
    if (!conv) return;
    const text = rooms.length
      ? 'Rooms with people in them: ' + rooms.map((r) => `#${r.name} (${r.members})`).join(', ')
      : 'No room has anyone in it.';
    addNotice(conv, text);
  }

  function onError(m) {
    let exp = settle(m.ref);
    let ref = typeof m.ref === 'string' ? m.ref : null;
    const code = String(m.code || 'error');
    if (!exp && (code === 'rate_limited' || code === 'bad_json')) {
      // These carry no ref. The server answers in order, so the refused frame
      // is the oldest one still waiting for an answer.
      const first = state.outstanding.entries().next();
      if (!first.done) { [ref, exp] = first.value; state.outstanding.delete(ref); }
    }
    const human = describeError(code, m.message);
    if (exp && (exp.kind === 'message' || exp.kind === 'dm')) {
      const p = findPending(ref);
      if (p) { p.pending.state = 'failed'; p.pending.reason = human; scheduleRender(p.conv); }
      if (code === 'rate_limited') toast(human, 'error');
      return;
    }
    if (exp && exp.kind === 'nick') {
      if (exp.silent) {
        if (code === 'nick_taken') scheduleNickRetry(exp.retries);
        return;
      }
      if (dialogOpen()) { showNickError(code === 'nick_taken' ? `“${exp.nick}” is taken. Try another.` : human); return; }
      toast(code === 'nick_taken' ? `The nickname “${exp.nick}” is taken.` : human, 'error');
      return;
    }
    if (exp && exp.kind === 'join') {
      const conv = roomConv(exp.room, false);
      if (conv) conv.joining = false;
      toast(`Could not join #${exp.room}: ${human}`, 'error');
      if (conv && !conv.joined && (code === 'too_many_rooms' || code === 'invalid')) removeRoom(exp.room);
      return;
    }
    if (exp && exp.kind === 'history') {
      const conv = roomConv(exp.room, false);
      if (conv) { conv.loadingOlder = false; conv.loadingGap = false; scheduleRender(conv); }
      if (code === 'rate_limited') toast(human, 'error');
      return;
    }
    if (exp && exp.kind === 'leave' && code === 'not_in_room') { removeRoom(exp.room); return; }
    if (exp && exp.kind === 'search') { search.loading = false; search.error = human; renderSearch(); return; }
    if (exp && exp.kind === 'context') { onContextError(human); return; }
    toast(human, 'error');
  }

  function describeError(code, message) {
    const base = ERROR_TEXT[code] || 'The server refused a request.';
    if (code === 'invalid' && message) return `${base}: ${message}`;
    if (code === 'invalid') return base + '.';
    if (!ERROR_TEXT[code] && message) return String(message);
    return base;
  }

  // ---------------------------------------------------------------- outgoing messages
  function findPending(ref) {
    for (const conv of state.convs.values()) {
      const pending = conv.pending.find((p) => p.ref === ref);
      if (pending) return { conv, pending };
    }
    return null;
  }
  function removePending(conv, ref) {
    conv.pending = conv.pending.filter((p) => p.ref !== ref);
  }
  // After a reconnect, an "unsure" message that the server did receive shows up
  // in the history: drop the local copy so it is not shown twice.
  function dedupeUnsure(conv, history) {
    if (!conv.pending.length) return;
    for (const h of history) {
      if (!isMe(h.from)) continue;
      const i = conv.pending.findIndex((p) => p.state === 'unsure' && p.text === h.text);
      if (i >= 0) conv.pending.splice(i, 1);
    }
    for (const p of conv.pending) if (p.state === 'unsure') { p.state = 'failed'; p.reason = 'Not sent: the connection was lost.'; }
  }

  function sendText(conv, text) {
    if (ctxView.room === conv.name) closeContext(); // show where the message goes
    const p = { ref: nextRef(conv.kind === 'dm' ? 'd' : 'm'), text, ts: Date.now(), state: 'queued', reason: '' };
    conv.pending.push(p);
    dispatchPending(conv, p);
    scheduleRender(conv, { toBottom: true });
  }
  function dispatchPending(conv, p) {
    const ready = state.conn === 'online' && (conv.kind === 'dm' || conv.joined);
    if (!ready) { p.state = 'queued'; return; }
    p.state = 'sending';
    p.reason = '';
    const frame = conv.kind === 'dm'
      ? { type: 'dm', to: conv.name, text: p.text, ref: p.ref }
      : { type: 'message', room: conv.name, text: p.text, ref: p.ref };
    send(frame, { expect: { kind: conv.kind === 'dm' ? 'dm' : 'message', room: conv.name } });
  }
  function flushQueued(conv) {
    for (const p of conv.pending) if (p.state === 'queued') dispatchPending(conv, p);
  }
  function retryPending(conv, p) {
    // A new ref, so a late answer to the old attempt cannot be confused with this one.
    p.ref = nextRef(conv.kind === 'dm' ? 'd' : 'm');
    conv.pending = conv.pending.filter((x) => x !== p);
    conv.pending.push(p);
    dispatchPending(conv, p);
    scheduleRender(conv, { toBottom: true });
  }

  function loadOlder(conv) {
    if (!conv || conv.kind !== 'room' || !conv.joined || conv.loadingOlder || !conv.hasOlder) return;
    const ids = [...conv.msgs.keys()];
    if (!ids.length) { conv.hasOlder = false; scheduleRender(conv); return; }
    const before = Math.min(...ids);
    conv.loadingOlder = true;
    const ref = nextRef('h');
    send({ type: 'history', room: conv.name, before, limit: PAGE, ref }, { expect: { kind: 'history', room: conv.name, epoch: conv.epoch } });
    scheduleRender(conv, { keepAnchor: true });
  }
  function loadGap(conv) {
    if (!conv.gap || conv.loadingGap || !conv.joined) return;
    conv.loadingGap = true;
    const ref = nextRef('g');
    send({ type: 'history', room: conv.name, before: conv.gap.hi, limit: 100, ref }, { expect: { kind: 'gap', room: conv.name, epoch: conv.epoch } });
  }

  // ---------------------------------------------------------------- search
  // A search box for the open room (the server's `search` extension). Each
  // hit comes with the message before and after it (`context`). A hit,
  // clicked, scrolls to it when the room's list holds it, else opens the
  // history around it (`history` with `around`, paged with `before` and
  // `after`) in place of the live list, with a way back to the latest.
  const SEARCH_CONTEXT = 1;
  const search = { room: null, query: '', results: [], complete: true, loading: false, error: '' };
  function openSearch() {
    const conv = activeConv();
    if (!conv || conv.kind !== 'room') return;
    $('search-panel').hidden = false;
    $('search-toggle').setAttribute('aria-expanded', 'true');
    $('search-input').focus();
  }
  function closeSearch() {
    $('search-panel').hidden = true;
    $('search-toggle').setAttribute('aria-expanded', 'false');
    Object.assign(search, { room: null, query: '', results: [], complete: true, loading: false, error: '' });
    renderSearch();
  }
  function runSearch(more) {
    const conv = activeConv();
    if (!conv || conv.kind !== 'room' || !conv.joined) return;
    if (!more) {
      const q = $('search-input').value.trim();
      if (!q) return;
      Object.assign(search, { room: conv.name, query: q, results: [], complete: true, error: '' });
    }
    const frame = { type: 'search', room: search.room, query: search.query, limit: 20, context: SEARCH_CONTEXT, ref: nextRef('s') };
    if (more && search.results.length) frame.before = search.results[search.results.length - 1].id;
    search.loading = send(frame, { expect: { kind: 'search', room: search.room } });
    if (!search.loading) search.error = 'You are offline; try again once connected.';
    renderSearch();
  }
  function onSearch(m) {
    settle(m.ref);
    if (String(m.room) !== search.room || String(m.query) !== search.query) return;
    const list = Array.isArray(m.messages) ? m.messages.filter(validMessage) : [];
    const ctx = (v) => (Array.isArray(v) ? v.filter(validMessage) : []);
    search.results.push(...list.map((h) => ({ ...h, before: ctx(h.context_before), after: ctx(h.context_after) })));
    search.complete = m.complete === true;
    search.loading = false;
    renderSearch();
  }
  // The text with every occurrence of the query's words marked: text nodes
  // and <mark> elements only, never markup from the message.
  function highlighted(text, query) {
    const words = query.split(/\s+/).filter(Boolean).map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    const span = el('span', { class: 'search-text' });
    if (!words.length) { span.textContent = text; return span; }
    const re = new RegExp(words.join('|'), 'giu');
    let last = 0;
    for (const m of text.matchAll(re)) {
      if (!m[0]) continue;
      span.append(document.createTextNode(text.slice(last, m.index)), el('mark', { text: m[0] }));
      last = m.index + m[0].length;
    }
    span.append(document.createTextNode(text.slice(last)));
    return span;
  }
  // A neighbour of a hit: one muted line, nick and text.
  function contextLine(c) {
    return el('span', { class: 'search-context', 'data-testid': 'search-context', 'data-id': c.id },
      el('strong', { text: String(c.from) }), document.createTextNode(' ' + String(c.text)));
  }
  function renderSearch() {
    const ul = $('search-results');
    ul.replaceChildren(...search.results.map((r) => el('li', { class: 'search-hit', 'data-testid': 'search-result', 'data-id': r.id },
      el('button', { type: 'button', class: 'search-hit-btn', onclick: () => jumpTo(search.room, r.id),
        'aria-label': `${r.from}, ${fullFmt.format(r.ts)}: ${r.text}. Show in the conversation` },
        ...r.before.map(contextLine),
        el('span', { class: 'search-match' },
          el('span', { class: 'search-meta' },
            el('strong', { text: r.from }),
            el('time', { datetime: new Date(r.ts).toISOString(), text: fullFmt.format(r.ts) })),
          highlighted(String(r.text), search.query)),
        ...r.after.map(contextLine)))));
    const n = search.results.length;
    $('search-status').textContent = search.error || (search.loading ? 'Searching…'
      : !search.room ? '' : n ? `${n}${search.complete ? '' : '+'} ${n === 1 ? 'message' : 'messages'} in #${search.room}`
        : `No message in #${search.room} matches “${search.query}”.`);
    $('search-more').hidden = search.complete || search.loading || !n;
  }
  function jumpTo(room, id) {
    const conv = roomConv(room, false);
    if (!conv) return;
    if (state.active !== conv.key) switchConv(conv.key);
    if (!conv.msgs.has(id)) { openContext(conv, id); return; }
    closeContext();
    conv.jumpTo = id;
    continueJump(conv);
  }
  function continueJump(conv) {
    const id = conv.jumpTo;
    if (!id) return;
    if (conv.msgs.has(id)) {
      conv.jumpTo = null;
      scheduleRender(conv, { keepAnchor: true });
      requestAnimationFrame(() => requestAnimationFrame(() => {
        const li = $('messages').querySelector(`[data-id="${id}"]`);
        if (!li) return;
        li.scrollIntoView({ block: 'center' });
        li.classList.add('flash');
        setTimeout(() => li.classList.remove('flash'), 2500);
      }));
    } else if (conv.hasOlder) {
      loadOlder(conv);
    } else {
      conv.jumpTo = null;
      toast('That message is no longer kept.', 'error');
    }
  }

  // The history around one message, shown in place of the live list until
  // "Back to latest". Its own pages, apart from the room's live messages.
  const CONTEXT_PAGE = 50;
  const ctxView = { room: null, epoch: null, target: null, msgs: new Map(), complete: true, latest: true, loading: null };
  function openContext(conv, id) {
    Object.assign(ctxView, { room: conv.name, epoch: conv.epoch, target: id, msgs: new Map(), complete: true, latest: true, loading: null });
    // Laid over the live list, which goes on as before underneath.
    $('messages').inert = true;
    $('context-view').hidden = false;
    $('context-bar').hidden = false;
    contextLoad('around');
  }
  function closeContext() {
    if (!ctxView.room) return;
    ctxView.room = null;
    ctxView.msgs = new Map();
    $('context-view').replaceChildren();
    $('context-view').hidden = true;
    $('context-bar').hidden = true;
    $('messages').inert = false;
    scheduleRender(null, { toBottom: true });
  }
  function contextLoad(dir) {
    const conv = ctxView.room && roomConv(ctxView.room, false);
    if (!conv || !conv.joined || ctxView.loading) return;
    const ids = [...ctxView.msgs.keys()];
    const frame = { type: 'history', room: conv.name, limit: CONTEXT_PAGE, ref: nextRef('c') };
    if (dir === 'around') frame.around = ctxView.target;
    else if (dir === 'older') { if (ctxView.complete || !ids.length) return; frame.before = Math.min(...ids); }
    else { if (ctxView.latest || !ids.length) return; frame.after = Math.max(...ids); }
    if (send(frame, { expect: { kind: 'context', dir, room: conv.name, epoch: conv.epoch } })) ctxView.loading = dir;
    renderContext();
  }
  function onContextPage(m, exp) {
    if (exp.room !== ctxView.room || exp.epoch !== ctxView.epoch) return;
    ctxView.loading = null;
    const list = Array.isArray(m.messages) ? m.messages.filter(validMessage) : [];
    for (const h of list) ctxView.msgs.set(h.id, { id: h.id, from: String(h.from), text: h.text, ts: Number(h.ts) || Date.now() });
    ctxView.msgs = new Map([...ctxView.msgs].sort((a, b) => a[0] - b[0]));
    if (exp.dir !== 'newer') ctxView.complete = m.complete === true;
    if (exp.dir !== 'older') ctxView.latest = m.latest === true;
    renderContext(exp.dir);
  }
  function onContextError(human) {
    ctxView.loading = null;
    toast(`Could not load these messages: ${human}`, 'error');
    renderContext();
  }
  function renderContext(dir) {
    const view = $('context-view');
    const conv = ctxView.room && roomConv(ctxView.room, false);
    if (!conv) return;
    const first = ctxView.msgs.values().next().value;
    $('context-text').textContent = first
      ? `Earlier messages in #${conv.name}, from ${fullFmt.format(first.ts)}`
      : `Earlier messages in #${conv.name}`;
    // Keep the reader's place when a page arrives above or below.
    const anchor = dir === 'older' ? view.scrollHeight - view.scrollTop : null;
    const loader = (which, label) => el('li', { class: 'loader', 'data-key': which },
      el('button', { type: 'button', class: 'btn ghost small', 'data-testid': 'context-' + which,
        disabled: ctxView.loading === which || null, onclick: () => contextLoad(which),
        text: ctxView.loading === which ? 'Loading…' : label }));
    const items = [];
    if (!ctxView.complete) items.push(loader('older', 'Show older messages'));
    let prev = null;
    for (const m of ctxView.msgs.values()) {
      const grouped = prev && lc(prev.from) === lc(m.from) && m.ts - prev.ts < GROUP_GAP && dayKey(prev.ts) === dayKey(m.ts);
      const li = messageItem(conv, { k: 'c' + m.id, kind: 'msg', m }, grouped);
      li.dataset.testid = 'context-message'; // not counted with the live list's
      if (m.id === ctxView.target) li.classList.add('target');
      items.push(li);
      prev = m;
    }
    if (!ctxView.latest) items.push(loader('newer', 'Show newer messages'));
    else if (ctxView.msgs.size) items.push(el('li', { class: 'loader', 'data-key': 'live' },
      el('button', { type: 'button', class: 'btn ghost small', 'data-testid': 'context-live', onclick: closeContext, text: 'These are the latest messages: back to the live chat' })));
    view.replaceChildren(...items);
    if (dir === 'around') {
      const li = view.querySelector(`[data-id="${ctxView.target}"]`);
      if (li) {
        li.scrollIntoView({ block: 'center' });
        li.classList.add('flash');
        setTimeout(() => li.classList.remove('flash'), 2500);
      }
    } else if (anchor !== null) {
      view.scrollTop = view.scrollHeight - anchor;
    }
  }

  // ---------------------------------------------------------------- typing (ours)
  const typingOut = { room: null, lastSent: 0, idleTimer: null };
  function noteTyping() {
    const conv = activeConv();
    if (!conv || conv.kind !== 'room' || !conv.joined) return;
    const hasText = input.value.trim().length > 0;
    if (!hasText) { stopTyping(); return; }
    const now = Date.now();
    if (typingOut.room !== conv.name || now - typingOut.lastSent > TYPING_THROTTLE) {
      if (typingOut.room && typingOut.room !== conv.name) stopTyping();
      if (send({ type: 'typing', room: conv.name, active: true }, { droppable: true })) {
        typingOut.room = conv.name;
        typingOut.lastSent = now;
      }
    }
    clearTimeout(typingOut.idleTimer);
    typingOut.idleTimer = setTimeout(() => stopTyping(), TYPING_IDLE);
  }
  function stopTyping(silent) {
    clearTimeout(typingOut.idleTimer);
    if (typingOut.room && !silent) {
      const conv = roomConv(typingOut.room, false);
      if (conv && conv.joined) send({ type: 'typing', room: typingOut.room, active: false }, { droppable: true });
    }
    typingOut.room = null;
    typingOut.lastSent = 0;
  }

  // ---------------------------------------------------------------- UI: elements
  const input = $('composer-input');
  const list = $('messages');
  const sendBtn = $('send');
  const nickDialog = $('nick-dialog');
  const nickInput = $('nick-input');
  const mqNarrow = window.matchMedia('(max-width: 760px)');
  const mqMembers = window.matchMedia('(min-width: 1100px)');

  // ---------------------------------------------------------------- UI: rendering
  let renderQueued = false;
  let renderOpts = {};
  function scheduleRender(conv, opts = {}) {
    if (conv && conv.key !== state.active) { renderSidebar(); return; }
    Object.assign(renderOpts, opts);
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      const o = renderOpts;
      renderOpts = {};
      renderMessages(o);
    });
  }

  function renderAll() {
    renderConn();
    renderMe();
    renderSidebar();
    renderHeader();
    renderMembers();
    renderTyping();
    renderComposer();
    scheduleRender(null, { toBottom: true });
    updateTitle(false);
  }

  function renderConn() {
    const box = $('conn');
    box.dataset.state = state.conn;
    let text = 'Online';
    if (state.conn === 'connecting') text = 'Connecting…';
    if (state.conn === 'reconnecting') {
      const secs = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
      text = state.attempting || secs === 0 ? 'Reconnecting…' : `Reconnecting in ${secs}s`;
    }
    $('conn-text').textContent = text;
    const banner = $('banner');
    if (state.conn === 'reconnecting') {
      banner.hidden = false;
      $('banner-text').textContent = state.attempting
        ? 'Connection lost. Reconnecting…'
        : `Connection lost. Reconnecting in ${Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000))}s.`;
      $('retry-now').hidden = !!state.attempting;
    } else {
      banner.hidden = true;
    }
    renderComposer();
  }

  function renderMe() {
    const nick = state.nick || state.desiredNick || '';
    $('me-nick').textContent = nick || '—';
    const a = $('me-avatar');
    a.textContent = nick ? initials(nick) : '';
    a.style.backgroundColor = nick ? AVATAR_COLORS[hashString(nick) % AVATAR_COLORS.length] : '';
  }

  function renderMotd() {
    $('motd').hidden = !state.motd;
    $('motd-text').textContent = state.motd; // textContent: the motd is plain text
  }

  function convButton(conv) {
    const activeNow = conv.key === state.active;
    const label = conv.kind === 'room' ? `#${conv.name}` : conv.name;
    const unread = conv.unread > 0 ? `, ${conv.unread} unread` : '';
    const btn = el('button', {
      type: 'button', class: 'conv' + (activeNow ? ' active' : '') + (conv.unread ? ' has-unread' : ''),
      'data-testid': conv.kind === 'room' ? 'room-entry' : 'dm-entry',
      'data-room': conv.kind === 'room' ? conv.name : null,
      'data-nick': conv.kind === 'dm' ? conv.name : null,
      'aria-current': activeNow ? 'page' : null,
      'aria-label': (conv.kind === 'room' ? 'Room ' : 'Direct messages with ') + label + unread,
      onclick: () => { switchConv(conv.key); closeDrawers(); input.focus(); },
    });
    if (conv.kind === 'room') btn.append(el('span', { class: 'conv-icon', 'aria-hidden': 'true', text: '#' }));
    else {
      const a = avatar(conv.name, 'xs');
      const online = isOnline(conv.name);
      btn.append(el('span', { class: 'conv-avatar' + (online ? ' online' : '') }, a));
    }
    btn.append(el('span', { class: 'conv-name', text: conv.kind === 'room' ? conv.name : conv.name }));
    if (conv.kind === 'room' && !conv.joined && state.conn === 'online') btn.append(el('span', { class: 'conv-state', text: '…', 'aria-hidden': 'true' }));
    if (conv.unread) btn.append(el('span', { class: 'badge', 'data-testid': 'unread', 'aria-hidden': 'true', text: conv.unread > 99 ? '99+' : String(conv.unread) }));
    return el('li', null, btn);
  }

  function isOnline(nick) {
    for (const c of state.convs.values()) if (c.kind === 'room' && c.members.some((x) => lc(x) === lc(nick))) return true;
    return false;
  }

  function renderSidebar() {
    const rooms = state.roomOrder.map((n) => roomConv(n, true));
    $('room-list').replaceChildren(...rooms.map(convButton));
    const dms = [...state.convs.values()].filter((c) => c.kind === 'dm').sort((a, b) => byLower(a.name, b.name));
    $('dm-list').replaceChildren(...dms.map(convButton));
    $('dm-empty').hidden = dms.length > 0;
    const totalUnread = [...state.convs.values()].reduce((s, c) => s + (c.key === state.active ? 0 : c.unread), 0);
    const mb = $('menu-badge');
    mb.hidden = totalUnread === 0;
    mb.textContent = totalUnread > 99 ? '99+' : String(totalUnread);
    updateTitle(false);
  }

  function renderHeader() {
    const conv = activeConv();
    const title = $('conv-title');
    const sub = $('conv-sub');
    title.replaceChildren();
    if (!conv) {
      title.textContent = 'No conversation';
      sub.textContent = 'Join a room to start chatting';
      $('leave-btn').hidden = true;
      list.setAttribute('aria-label', 'Messages');
      return;
    }
    if (conv.kind === 'room') {
      title.append(el('span', { class: 'title-hash', 'aria-hidden': 'true', text: '#' }), document.createTextNode(conv.name));
      const n = conv.members.length;
      sub.textContent = conv.joined ? `${n} ${n === 1 ? 'member' : 'members'}` : (state.conn === 'online' ? 'Joining…' : 'Offline · messages you send wait for the connection');
      $('leave-btn').setAttribute('aria-label', `Leave #${conv.name}`);
      $('leave-btn').title = `Leave #${conv.name}`;
      list.setAttribute('aria-label', `Messages in #${conv.name}`);
      $('composer-label').textContent = `Message #${conv.name}`;
      input.placeholder = `Message #${conv.name}`;
    } else {
      title.append(avatar(conv.name, 'xs'), document.createTextNode(conv.name));
      sub.textContent = isOnline(conv.name) ? 'Private conversation · online' : 'Private conversation';
      $('leave-btn').setAttribute('aria-label', `Close conversation with ${conv.name}`);
      $('leave-btn').title = 'Close conversation';
      list.setAttribute('aria-label', `Private messages with ${conv.name}`);
      $('composer-label').textContent = `Message ${conv.name}`;
      input.placeholder = `Message ${conv.name}`;
    }
    $('leave-btn').hidden = false;
    $('members-toggle').hidden = conv.kind !== 'room';
    $('search-toggle').hidden = conv.kind !== 'room';
    if (conv.kind !== 'room' || (search.room && search.room !== conv.name)) closeSearch();
    if (ctxView.room && (conv.kind !== 'room' || ctxView.room !== conv.name)) closeContext();
  }

  function renderMembers() {
    const conv = activeConv();
    const ul = $('member-list');
    if (!conv || conv.kind !== 'room') { ul.replaceChildren(); $('members-count').textContent = ''; return; }
    $('members-count').textContent = String(conv.members.length);
    ul.replaceChildren(...conv.members.map((nick) => {
      const me = isMe(nick);
      const btn = el('button', {
        type: 'button', class: 'member' + (me ? ' me' : ''),
        'data-testid': 'member', 'data-nick': nick,
        'aria-label': me ? `${nick} (you)` : `${nick}: send a private message`,
        onclick: () => { if (!me) { openDm(nick); closeDrawers(); } },
      },
      el('span', { class: 'member-avatar' }, avatar(nick, 'sm'), el('span', { class: 'presence-dot', 'aria-hidden': 'true' })),
      el('span', { class: 'member-name', text: nick }),
      me ? el('span', { class: 'you-tag', text: 'you' }) : null);
      if (me) btn.setAttribute('aria-disabled', 'true');
      return el('li', null, btn);
    }));
  }

  function renderTyping() {
    const box = $('typing');
    const conv = activeConv();
    const now = Date.now();
    const names = [];
    if (conv && conv.kind === 'room') {
      for (const [k, t] of conv.typing) {
        if (t.until < now) conv.typing.delete(k);
        else names.push(t.nick);
      }
    }
    names.sort(byLower);
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length === 3) text = `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
    else if (names.length > 3) text = 'Several people are typing…';
    if (box.dataset.text === text) return;
    box.dataset.text = text;
    box.replaceChildren();
    if (text) {
      box.append(el('span', { class: 'dots', 'aria-hidden': 'true' }, el('i'), el('i'), el('i')), el('span', { text }));
    }
  }

  function renderComposer() {
    const conv = activeConv();
    const n = [...input.value].length;
    const blank = input.value.trim().length === 0;
    sendBtn.disabled = !conv || blank || n > MAX_TEXT;
    input.disabled = !conv;
    const counter = $('counter');
    counter.textContent = n > MAX_TEXT - 500 ? ` · ${n}/${MAX_TEXT}` : '';
    counter.classList.toggle('over', n > MAX_TEXT);
  }

  // Builds the list of the active conversation and keeps the reader where they were:
  // stuck to the bottom if they were there, else anchored on the first visible item.
  function renderMessages(opts = {}) {
    const conv = activeConv();
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    let anchorKey = null, anchorOffset = 0;
    if (!atBottom && !opts.toBottom) {
      for (const li of list.children) {
        // Anchor on conversation items only: the loader at the top is replaced by what it loads.
        if (!/^[mnp]/.test(li.dataset.key || '')) continue;
        if (li.offsetTop + li.offsetHeight > list.scrollTop) {
          anchorKey = li.dataset.key; anchorOffset = li.offsetTop - list.scrollTop; break;
        }
      }
    }
    const items = conv ? buildItems(conv) : [emptyState()];
    list.replaceChildren(...items);
    if (atBottom || opts.toBottom || !anchorKey) {
      list.scrollTop = list.scrollHeight;
      $('jump').hidden = true;
    } else {
      const a = [...list.children].find((li) => li.dataset.key === anchorKey);
      if (a) list.scrollTop = a.offsetTop - anchorOffset;
      $('jump').hidden = false;
    }
    if (conv && conv.key === state.active && conv.unread && atBottom) { conv.unread = 0; renderSidebar(); }
    // A short room fills no screen: load older messages until it can scroll.
    if (conv && conv.hasOlder && !conv.loadingOlder && list.scrollHeight <= list.clientHeight + 10) loadOlder(conv);
  }

  function emptyState() {
    return el('li', { class: 'empty', 'data-key': 'empty' },
      el('p', { class: 'empty-title', text: 'No conversation open' }),
      el('p', { text: 'Join a room with the + button beside “Rooms”.' }));
  }

  function buildItems(conv) {
    const entries = [];
    for (const m of conv.msgs.values()) entries.push({ k: 'm' + m.id, sort: m.id, sub: 0, kind: 'msg', m });
    for (const n of conv.notices) entries.push({ k: 'n' + n.seq, sort: n.after + 0.5, sub: n.seq, kind: 'notice', n });
    entries.sort((a, b) => a.sort - b.sort || a.sub - b.sub);
    for (const p of conv.pending) entries.push({ k: 'p' + p.ref, kind: 'pending', m: { from: state.nick || '', text: p.text, ts: p.ts }, p });

    const out = [];
    // Top of the list: older pages, or the beginning.
    if (conv.kind === 'room') {
      if (conv.hasOlder) {
        out.push(el('li', { class: 'loader', 'data-key': 'older' },
          el('button', { type: 'button', class: 'btn ghost small', 'data-testid': 'load-older', disabled: conv.loadingOlder || null,
            onclick: () => loadOlder(conv), text: conv.loadingOlder ? 'Loading older messages…' : 'Load older messages' })));
      } else if (conv.joined) {
        out.push(el('li', { class: 'beginning', 'data-key': 'begin' },
          el('span', { class: 'beginning-icon', 'aria-hidden': 'true', text: '#' }),
          el('p', { class: 'beginning-title', text: `Welcome to #${conv.name}` }),
          el('p', { text: conv.msgs.size ? 'This is the start of the messages the server keeps for this room.' : 'No messages yet. Say hello!' })));
      }
    } else {
      out.push(el('li', { class: 'beginning', 'data-key': 'begin' },
        avatar(conv.name, 'lg'),
        el('p', { class: 'beginning-title', text: conv.name }),
        el('p', { text: `Private messages between you and ${conv.name}. They are not kept by the server: reloading the page clears them.` })));
    }

    let prev = null; // previous message-like entry, for grouping
    let prevDay = null;
    for (const e of entries) {
      if (e.kind === 'notice') {
        const ndk = dayKey(e.n.ts);
        if (ndk !== prevDay) {
          out.push(el('li', { class: 'day', role: 'separator', 'data-key': 'd' + ndk, 'aria-label': dayLabel(e.n.ts) },
            el('span', { text: dayLabel(e.n.ts) })));
          prevDay = ndk;
        }
        out.push(noticeItem(e));
        prev = null;
        continue;
      }
      const m = e.m;
      const dk = dayKey(m.ts);
      if (dk !== prevDay) {
        out.push(el('li', { class: 'day', role: 'separator', 'data-key': 'd' + dk, 'aria-label': dayLabel(m.ts) },
          el('span', { text: dayLabel(m.ts) })));
        prevDay = dk;
        prev = null;
      }
      const grouped = prev && lc(prev.from) === lc(m.from) && m.ts - prev.ts < GROUP_GAP;
      out.push(messageItem(conv, e, grouped));
      prev = m;
    }
    return out;
  }

  function noticeItem(e) {
    const n = e.n;
    const li = el('li', { class: 'notice ' + n.tone, 'data-key': e.k, 'data-testid': 'notice' },
      el('span', { class: 'notice-text', text: n.text }));
    if (n.action) li.append(el('button', { type: 'button', class: 'link-btn', onclick: n.action.run, text: n.action.label }));
    return li;
  }

  function messageItem(conv, e, grouped) {
    const m = e.m;
    const own = isMe(m.from) || e.kind === 'pending';
    const p = e.p;
    const cls = ['msg'];
    if (own) cls.push('own');
    if (grouped) cls.push('grouped');
    if (p) cls.push(p.state);
    const li = el('li', {
      class: cls.join(' '), 'data-key': e.k, 'data-testid': 'message',
      'data-id': e.kind === 'msg' && conv.kind === 'room' ? m.id : null,
      'data-from': m.from, 'data-state': p ? p.state : 'sent',
    });
    const time = el('time', { datetime: new Date(m.ts).toISOString(), title: fullFmt.format(m.ts), text: timeFmt.format(m.ts) });
    if (grouped) {
      li.append(el('span', { class: 'gutter' }, time));
    } else {
      li.append(avatar(m.from));
    }
    const body = el('div', { class: 'body' });
    if (!grouped) {
      body.append(el('div', { class: 'meta' },
        el('span', { class: 'from', text: m.from }),
        own ? el('span', { class: 'you-tag', text: 'you' }) : null,
        time));
    } else {
      body.append(el('span', { class: 'sr-only', text: m.from + ': ' }));
    }
    // dir="auto" (and unicode-bidi: isolate in app.css): each message takes
    // its own direction and no bidi control in it reaches what is around it.
    body.append(el('div', { class: 'text', dir: 'auto', 'data-testid': 'message-text' }, richText(m.text)));
    if (p) {
      const status = el('div', { class: 'status', 'data-testid': 'message-status' });
      if (p.state === 'sending') status.append(el('span', { class: 'spinner', 'aria-hidden': 'true' }), el('span', { text: 'Sending…' }));
      else if (p.state === 'queued') status.append(el('span', { text: 'Waiting for connection…' }));
      else if (p.state === 'unsure') status.append(el('span', { text: 'Connection lost; checking whether it was delivered…' }));
      else if (p.state === 'failed') {
        status.append(el('span', { class: 'status-err', text: p.reason || 'Not sent.' }),
          el('button', { type: 'button', class: 'link-btn', onclick: () => retryPending(conv, p), text: 'Retry' }),
          el('button', { type: 'button', class: 'link-btn', onclick: () => { conv.pending = conv.pending.filter((x) => x !== p); scheduleRender(conv); }, text: 'Discard' }));
      }
      body.append(status);
    }
    li.append(body);
    return li;
  }

  function announce(text) {
    const live = $('live');
    live.textContent = text.length > 300 ? text.slice(0, 300) + '…' : text;
  }

  function updateTitle() {
    const conv = activeConv();
    const total = [...state.convs.values()].reduce((s, c) => s + c.unread, 0);
    const name = conv ? (conv.kind === 'room' ? '#' + conv.name : conv.name) : 'wschat';
    document.title = (total ? `(${total}) ` : '') + name + ' · wschat';
  }

  function toast(text, tone = 'info') {
    const box = $('toasts');
    const t = el('div', { class: 'toast ' + tone, role: tone === 'error' ? 'alert' : 'status', 'data-testid': 'toast' },
      el('span', { text }),
      el('button', { type: 'button', class: 'icon-btn small', 'aria-label': 'Dismiss', onclick: () => t.remove() }, closeIcon()));
    box.append(t);
    while (box.children.length > 3) box.firstElementChild.remove();
    setTimeout(() => t.remove(), tone === 'error' ? 8000 : 6000);
  }
  function closeIcon() {
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
    path.setAttribute('d', 'M6 6l12 12M18 6L6 18');
    svg.append(path);
    return svg;
  }

  // ---------------------------------------------------------------- UI: actions
  function switchConv(key) {
    if (state.active !== key) stopTyping();
    state.active = key;
    save(STORE.active, key);
    const conv = activeConv();
    if (conv) conv.unread = 0;
    $('typing').dataset.text = '-';
    renderSidebar();
    renderHeader();
    renderMembers();
    renderTyping();
    renderComposer();
    scheduleRender(null, { toBottom: true });
    updateTitle();
  }

  function openDm(nick) {
    const conv = dmConv(nick, true);
    switchConv(conv.key);
    input.focus();
  }

  function leaveActive() {
    const conv = activeConv();
    if (!conv) return;
    if (conv.kind === 'dm') {
      state.convs.delete(conv.key);
      switchConv(state.roomOrder[0] ? 'room:' + state.roomOrder[0] : null);
      renderAll();
      return;
    }
    if (state.conn === 'online' && conv.joined) {
      const ref = nextRef('l');
      send({ type: 'leave', room: conv.name, ref }, { expect: { kind: 'leave', room: conv.name } });
      // Remove at once; `left` (or not_in_room) confirms.
    }
    removeRoom(conv.name);
  }

  const HELP = [
    '/join room — join or open a room',
    '/leave — leave the current room',
    '/nick name — change your nickname',
    '/msg nick text — send a private message',
    '/rooms — list rooms with people in them',
  ];

  function submitComposer() {
    const conv = activeConv();
    const raw = input.value.replace(/\r\n?/g, '\n');
    if (!raw.trim() || !conv) return;
    if (raw.startsWith('/') && !raw.startsWith('//')) {
      if (runCommand(conv, raw)) { input.value = ''; autosize(); renderComposer(); }
      return;
    }
    const text = raw.startsWith('//') ? raw.slice(1) : raw;
    if ([...text].length > MAX_TEXT) { toast(`Messages can be at most ${MAX_TEXT} characters.`, 'error'); return; }
    stopTyping();
    sendText(conv, text);
    input.value = '';
    autosize();
    renderComposer();
  }

  function runCommand(conv, raw) {
    const [cmd, ...rest] = raw.trim().split(/\s+/);
    const arg = rest.join(' ');
    switch (cmd.toLowerCase()) {
      case '/join': {
        const room = arg.replace(/^#/, '');
        if (!ROOM_RE.test(room)) { toast('Room names are 1–64 letters, digits, _ or -.', 'error'); return false; }
        joinRoom(room, true);
        return true;
      }
      case '/leave': case '/part': leaveActive(); return true;
      case '/nick': {
        if (!NICK_RE.test(arg)) { toast('Nicknames are 1–32 letters, digits, _ - or .', 'error'); return false; }
        if (state.conn !== 'online') { toast('You are offline; try again once connected.', 'error'); return false; }
        requestNick(arg);
        return true;
      }
      case '/msg': case '/dm': {
        const m = /^\/\S+\s+(\S+)\s+([\s\S]+)$/.exec(raw.trim());
        if (!m) { toast('Usage: /msg nick text', 'error'); return false; }
        const dc = dmConv(m[1], true);
        sendText(dc, m[2]);
        switchConv(dc.key);
        return true;
      }
      case '/rooms':
        if (state.conn === 'online') send({ type: 'rooms', ref: nextRef('r') }, { expect: { kind: 'rooms' } });
        return true;
      case '/help':
        addNotice(conv, 'Commands: ' + HELP.join(' · ') + '. Start a message with // to send a leading slash.');
        return true;
      default:
        toast(`Unknown command ${cmd}. Type /help for the list.`, 'error');
        return false;
    }
  }

  function autosize() {
    input.style.height = 'auto';
    input.style.height = Math.min(input.scrollHeight, 200) + 'px';
  }

  // ---------------------------------------------------------------- nick dialog
  let dialogMode = 'first';
  function dialogOpen() { return nickDialog.open; }
  function openNickDialog(errorText) {
    dialogMode = state.everConnected ? 'change' : 'first';
    $('nick-title').textContent = dialogMode === 'first' ? 'Welcome to wschat' : 'Change your nickname';
    $('nick-submit').textContent = dialogMode === 'first' ? 'Start chatting' : 'Save';
    $('nick-cancel').hidden = dialogMode === 'first';
    nickInput.value = dialogMode === 'first' ? (state.desiredNick || '') : (state.nick || '');
    showNickError(errorText || '');
    if (!nickDialog.open) nickDialog.showModal();
    nickInput.focus();
    nickInput.select();
  }
  function closeNickDialog() { if (nickDialog.open) nickDialog.close(); }
  function showNickError(text) {
    $('nick-error').textContent = text;
    nickInput.setAttribute('aria-invalid', text ? 'true' : 'false');
  }
  $('nick-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const nick = nickInput.value.trim();
    if (!NICK_RE.test(nick)) { showNickError('Use 1–32 letters, digits, _ - or . (no spaces).'); return; }
    if (!state.everConnected && !state.ws) {
      state.desiredNick = nick;
      save(STORE.nick, nick);
      closeNickDialog();
      renderMe();
      connect();
      input.focus();
      return;
    }
    if (state.nick === nick) { closeNickDialog(); return; }
    if (state.conn !== 'online') { showNickError('You are offline; try again once connected.'); return; }
    const ref = nextRef('n');
    send({ type: 'nick', nick, ref }, { expect: { kind: 'nick', nick, fromDialog: true } });
  });
  $('nick-cancel').addEventListener('click', () => closeNickDialog());
  nickDialog.addEventListener('cancel', (ev) => { if (dialogMode === 'first' && !state.everConnected) ev.preventDefault(); });
  nickInput.addEventListener('input', () => showNickError(''));

  // ---------------------------------------------------------------- drawers (phone width)
  function closeDrawers() {
    document.body.classList.remove('sidebar-open');
    if (!mqMembers.matches) document.body.classList.remove('members-open');
    syncDrawers();
  }
  function syncDrawers() {
    const sOpen = document.body.classList.contains('sidebar-open');
    const mOpen = mqMembers.matches ? !document.body.classList.contains('members-hidden') : document.body.classList.contains('members-open');
    $('menu-toggle').setAttribute('aria-expanded', String(sOpen));
    $('members-toggle').setAttribute('aria-expanded', String(mOpen));
    $('members-toggle').setAttribute('aria-label', mOpen ? 'Hide members' : 'Show members');
    $('scrim').hidden = !(mqNarrow.matches && sOpen) && !(!mqMembers.matches && mOpen);
    // Off-screen drawers must not take focus.
    $('sidebar').inert = mqNarrow.matches && !sOpen;
    $('members').inert = !mOpen;
  }
  $('menu-toggle').addEventListener('click', () => {
    document.body.classList.toggle('sidebar-open');
    syncDrawers();
    if (document.body.classList.contains('sidebar-open')) {
      const a = document.querySelector('#sidebar .conv.active') || $('join-toggle');
      a.focus();
    }
  });
  $('sidebar-close').addEventListener('click', () => { closeDrawers(); $('menu-toggle').focus(); });
  $('members-toggle').addEventListener('click', () => {
    if (mqMembers.matches) document.body.classList.toggle('members-hidden');
    else document.body.classList.toggle('members-open');
    syncDrawers();
  });
  $('members-close').addEventListener('click', () => {
    if (mqMembers.matches) document.body.classList.add('members-hidden');
    else document.body.classList.remove('members-open');
    syncDrawers();
    $('members-toggle').focus();
  });
  $('scrim').addEventListener('click', closeDrawers);
  mqNarrow.addEventListener('change', syncDrawers);
  mqMembers.addEventListener('change', syncDrawers);
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && (document.body.classList.contains('sidebar-open') || document.body.classList.contains('members-open'))) {
      closeDrawers();
      $('menu-toggle').focus();
    }
    // Alt+Up / Alt+Down: previous / next conversation.
    if (ev.altKey && (ev.key === 'ArrowUp' || ev.key === 'ArrowDown')) {
      const keys = [...state.roomOrder.map((r) => 'room:' + r),
        ...[...state.convs.values()].filter((c) => c.kind === 'dm').map((c) => c.key)];
      const i = keys.indexOf(state.active);
      if (keys.length) {
        ev.preventDefault();
        switchConv(keys[(i + (ev.key === 'ArrowUp' ? -1 : 1) + keys.length) % keys.length]);
      }
    }
  });

  // ---------------------------------------------------------------- wiring
  $('join-toggle').addEventListener('click', () => {
    const f = $('join-form');
    f.hidden = !f.hidden;
    $('join-toggle').setAttribute('aria-expanded', String(!f.hidden));
    if (!f.hidden) $('join-input').focus();
  });
  $('join-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const room = $('join-input').value.trim().replace(/^#/, '');
    if (!ROOM_RE.test(room)) { $('join-error').textContent = 'Use 1–64 letters, digits, _ or - (case-sensitive).'; return; }
    if (state.roomOrder.length >= 32 && !state.roomOrder.includes(room)) { $('join-error').textContent = 'You can be in at most 32 rooms.'; return; }
    $('join-error').textContent = '';
    $('join-input').value = '';
    $('join-form').hidden = true;
    $('join-toggle').setAttribute('aria-expanded', 'false');
    joinRoom(room, true);
    closeDrawers();
    input.focus();
  });
  $('join-input').addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') { ev.stopPropagation(); $('join-form').hidden = true; $('join-toggle').setAttribute('aria-expanded', 'false'); $('join-toggle').focus(); }
  });
  $('nick-change').addEventListener('click', () => openNickDialog());
  $('leave-btn').addEventListener('click', leaveActive);
  $('search-toggle').addEventListener('click', () => ($('search-panel').hidden ? openSearch() : closeSearch()));
  $('search-close').addEventListener('click', closeSearch);
  $('search-form').addEventListener('submit', (ev) => { ev.preventDefault(); runSearch(false); });
  $('search-more').addEventListener('click', () => runSearch(true));
  $('search-input').addEventListener('keydown', (ev) => { if (ev.key === 'Escape') { ev.stopPropagation(); closeSearch(); $('search-toggle').focus(); } });
  $('retry-now').addEventListener('click', retryNow);
  $('jump').addEventListener('click', () => { list.scrollTop = list.scrollHeight; });
  $('context-close').addEventListener('click', closeContext);
  $('context-view').addEventListener('scroll', () => {
    const v = $('context-view');
    if (v.scrollTop < 120) contextLoad('older');
    if (v.scrollHeight - v.scrollTop - v.clientHeight < 120) contextLoad('newer');
  }, { passive: true });
  $('context-view').addEventListener('keydown', (ev) => { if (ev.key === 'Escape') { ev.stopPropagation(); closeContext(); } });

  $('composer').addEventListener('submit', (ev) => { ev.preventDefault(); submitComposer(); input.focus(); });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      submitComposer();
    }
  });
  input.addEventListener('input', () => { autosize(); renderComposer(); noteTyping(); });

  list.addEventListener('scroll', () => {
    const conv = activeConv();
    if (!conv) return;
    if (list.scrollTop < 120) loadOlder(conv);
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    if (atBottom) {
      $('jump').hidden = true;
      if (conv.unread) { conv.unread = 0; renderSidebar(); }
    }
  }, { passive: true });

  window.addEventListener('online', retryNow);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) updateTitle(); });

  // One clock for countdowns and for expiring stale typing indicators.
  setInterval(() => {
    if (state.conn === 'reconnecting') renderConn();
    renderTyping();
  }, 500);

  // ---------------------------------------------------------------- start
  for (const r of state.roomOrder) roomConv(r, true);
  if (!state.convs.has(state.active)) state.active = state.roomOrder.length ? 'room:' + state.roomOrder[0] : null;
  syncDrawers();
  renderAll();
  renderMotd();
  if (state.desiredNick && NICK_RE.test(state.desiredNick)) {
    connect();
  } else {
    state.desiredNick = null;
    setConn('connecting');
    $('conn-text').textContent = 'Not connected';
    $('conn').dataset.state = 'idle';
    openNickDialog();
  }
})();
