// wschat web client: plain JavaScript, no build step, no outside requests.
// Every piece of text that comes from a user or the server is rendered with
// textContent (never innerHTML), so no field can inject markup.
'use strict';

(() => {
  // ---------------------------------------------------------------- constants
  const PROTOCOL = 'wschat.v1';
  const NICK_RE = /^[A-Za-z0-9_.-]{1,32}$/;
  const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
  // The server's limits: the contract's defaults until `welcome` says otherwise.
  const limits = { text: 4000, bytes: 65536, burst: 20, rate: 2, rooms: 32 };
  const DEFAULT_ROOM = 'general';
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 15000;
  const TYPING_THROTTLE = 3000; // resend "active: true" at most this often
  const TYPING_IDLE = 4000; // send "active: false" after this pause
  const TYPING_EXPIRE = 6000; // forget others' indicators after this
  const GROUP_GAP = 5 * 60 * 1000; // messages closer than this group together
  const PAGE = 50;
  const STORE = { nick: 'wschat.nick', rooms: 'wschat.rooms', active: 'wschat.active', prefs: 'wschat.prefs', read: 'wschat.read', session: 'wschat.session' };
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
    login_failed: 'Wrong nickname or password.',
    login_limited: 'Too many failed logins. Wait a little and try again.',
    registration_closed: 'This server does not let anyone register: ask its operator for an account.',
    already_registered: 'That nickname is already registered. Log in with its password instead.',
    busy: 'The server is busy checking passwords. Try again in a moment.',
    forbidden: 'You are not allowed to do that.',
    not_logged_in: 'You are not logged in.',
    account_required: 'This server lets only registered users join rooms and send private messages. Log in or register first.',
    banned: 'You are banned.',
    muted: 'You are muted in this room for now.',
    slow_mode: 'This room is in slow mode: wait a little before your next message.',
    no_such_message: 'That message is no longer kept.',
    no_such_account: 'That nickname has no account.',
    too_many_reactions: 'That message has as many reactions as it may have.',
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
  // Two letters where they tell people apart: the initials of two parts
  // (ann-lee, annLee: AL), the digits of a numbered nick (guest-12: 12,
  // carol2: C2), else the first two letters (anna: An, alice: Al).
  function initials(nick) {
    const s = String(nick);
    const parts = s.replace(/([a-z])([A-Z])/g, '$1 $2').split(/[-_. ]+/).filter(Boolean);
    if (!parts.length) return '?';
    if (parts.length >= 2) {
      const last = parts[parts.length - 1];
      if (/^\d+$/.test(last)) return last.length >= 2 ? last.slice(-2) : (parts[0][0].toUpperCase() + last);
      return (parts[0][0] + last[0]).toUpperCase();
    }
    const p = parts[0];
    const num = /^([A-Za-z])[A-Za-z]*(\d+)$/.exec(p); // carol2: C2
    if (num) return num[1].toUpperCase() + num[2].slice(-1);
    return p.length >= 2 ? p[0].toUpperCase() + p[1].toLowerCase() : p.toUpperCase();
  }
  // A colour from the whole nick: any of 360 hues at two lightness and two
  // chroma steps in OKLCH, whose lightness is perceptual, so white initials
  // keep a contrast of at least 4.5:1 on every one of them.
  function avatarColor(nick) {
    const h = hashString(nick);
    return `oklch(${(h >>> 9) & 1 ? 0.47 : 0.53} ${(h >>> 10) & 1 ? 0.13 : 0.17} ${h % 360})`;
  }
  function avatar(nick, size) {
    const a = el('span', { class: 'avatar' + (size ? ' ' + size : ''), 'aria-hidden': 'true', text: initials(nick) });
    a.style.backgroundColor = avatarColor(nick);
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

  // ---------------------------------------------------------------- formatting
  // A safe Markdown subset, built from DOM nodes (text nodes and a fixed set
  // of elements): ```code blocks```, > quotes, `code`, **bold**, *italic*,
  // _italic_, links (http(s)://, www., [text](https://…)) and @mentions.
  // Nothing from a message is ever parsed as HTML.
  const INLINE_RE = new RegExp([
    '(?<ticks>`+)(?<code>[^`]|[^`][\\s\\S]*?[^`])\\k<ticks>(?!`)',
    '\\[(?<mtext>[^\\]\\n]{1,300})\\]\\((?<murl>https?:\\/\\/[^\\s()<>]+)\\)',
    '(?<url>\\b(?:https?:\\/\\/|www\\.(?=[^\\s.]+\\.[^\\s]))[^\\s<>"\']+)',
    '\\*\\*(?<bold>[^\\s*](?:[\\s\\S]*?[^\\s*])?)\\*\\*',
    '(?<![\\w])__(?<bold2>[^\\s_](?:[\\s\\S]*?[^\\s_])?)__(?!\\w)',
    '\\*(?<em>[^\\s*](?:[^*\\n]*?[^\\s*])?)\\*',
    '(?<![\\w])_(?<em2>[^\\s_](?:[^_\\n]*?[^\\s_])?)_(?!\\w)',
    '(?<![\\w@])@(?<nick>[A-Za-z0-9_.-]*[A-Za-z0-9_])',
  ].join('|'), 'g');

  function safeHref(url) {
    try {
      const u = new URL(/^www\./i.test(url) ? 'https://' + url : url);
      if (u.protocol === 'http:' || u.protocol === 'https:') return u;
    } catch { /* not a URL */ }
    return null;
  }
  function link(text, u, host) {
    const a = el('a', { href: u.href, rel: 'noopener noreferrer', target: '_blank', title: u.href }, text);
    // A link whose text is not its address shows where it really goes.
    if (host) a.append(el('span', { class: 'link-host', text: ' (' + u.host + ')' }));
    return a;
  }
  function inline(text, ctx, depth) {
    const out = [];
    let last = 0;
    const re = new RegExp(INLINE_RE.source, 'g');
    for (let m; (m = re.exec(text));) {
      const g = m.groups;
      let node = null, end = m.index + m[0].length;
      if (g.code !== undefined) node = el('code', { text: g.code });
      else if (g.mtext !== undefined) {
        const u = safeHref(g.murl);
        if (u) node = link(g.mtext, u, true);
      } else if (g.url !== undefined) {
        let url = g.url;
        // Trailing punctuation stays outside the link, as in "see https://x.org."
        const trail = /[.,;:!?)\]}]+$/.exec(url);
        if (trail) url = url.slice(0, -trail[0].length);
        const u = url && safeHref(url);
        if (u) { node = link(url, u, false); end = m.index + url.length; }
      } else if (depth < 4 && (g.bold !== undefined || g.bold2 !== undefined)) {
        node = el('strong', null, ...inline(g.bold ?? g.bold2, ctx, depth + 1));
      } else if (depth < 4 && (g.em !== undefined || g.em2 !== undefined)) {
        node = el('em', null, ...inline(g.em ?? g.em2, ctx, depth + 1));
      } else if (g.nick !== undefined) {
        const me = isMe(g.nick);
        if (me) ctx.mentionsMe = true;
        node = el('span', { class: 'mention' + (me ? ' is-me' : ''), 'data-testid': 'mention', text: '@' + g.nick });
      }
      if (!node) continue;
      if (m.index > last) out.push(document.createTextNode(text.slice(last, m.index)));
      out.push(node);
      last = end;
      re.lastIndex = end;
    }
    if (last < text.length) out.push(document.createTextNode(text.slice(last)));
    return out;
  }
  // Returns {frag, mentionsMe}. The list is rebuilt on every change, so each
  // text is parsed once (per nick of ours) and its nodes cloned after that.
  const textCache = new Map();
  function renderText(text) {
    const key = (state.nick || '') + '\u0000' + text;
    let hit = textCache.get(key);
    if (!hit) {
      hit = parseText(text);
      textCache.set(key, hit);
      if (textCache.size > 1500) textCache.delete(textCache.keys().next().value);
    }
    return { frag: hit.frag.cloneNode(true), mentionsMe: hit.mentionsMe };
  }
  function parseText(text) {
    const ctx = { mentionsMe: false };
    const frag = document.createDocumentFragment();
    const lines = text.split('\n');
    let para = [];
    const flush = () => {
      if (!para.length) return;
      frag.append(el('p', { class: 'para' }, ...inline(para.join('\n'), ctx, 0)));
      para = [];
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = /^\s*```\s*([\w+-]*)\s*$/.exec(line);
      if (fence) {
        let j = i + 1;
        while (j < lines.length && !/^\s*```\s*$/.test(lines[j])) j++;
        flush();
        const body = lines.slice(i + 1, j).join('\n');
        frag.append(el('pre', { class: 'code-block' }, el('code', { text: body })));
        i = j; // past the closing fence (or the end)
        continue;
      }
      if (/^>( |$)/.test(line)) {
        let j = i;
        const q = [];
        while (j < lines.length && /^>( |$)/.test(lines[j])) q.push(lines[j++].replace(/^> ?/, ''));
        flush();
        frag.append(el('blockquote', null, ...inline(q.join('\n'), ctx, 0)));
        i = j - 1;
        continue;
      }
      para.push(line);
    }
    flush();
    return { frag, mentionsMe: ctx.mentionsMe };
  }
  // Whether a text @mentions `nick` (outside code), without building nodes.
  function mentions(text, nick) {
    if (!nick) return false;
    const re = new RegExp(INLINE_RE.source, 'g');
    for (let m; (m = re.exec(text));) {
      const g = m.groups;
      if (g.nick !== undefined && lc(g.nick) === lc(nick)) return true;
      if (g.bold !== undefined || g.bold2 !== undefined || g.em !== undefined || g.em2 !== undefined) {
        if (mentions(g.bold ?? g.bold2 ?? g.em ?? g.em2, nick)) return true;
      }
    }
    return false;
  }

  // Emoji shortcodes: converted in the composer (as the closing colon is
  // typed, and on send), so every client and bot sees the emoji itself.
  const EMOJI = {
    smile: '😄', smiley: '😃', grin: '😁', laughing: '😆', joy: '😂', rofl: '🤣', wink: '😉', blush: '😊',
    slight_smile: '🙂', upside_down: '🙃', heart_eyes: '😍', kissing_heart: '😘', thinking: '🤔', neutral_face: '😐',
    sweat_smile: '😅', confused: '😕', cry: '😢', sob: '😭', angry: '😠', scream: '😱', sunglasses: '😎',
    party: '🥳', shrug: '🤷', facepalm: '🤦', skull: '💀', see_no_evil: '🙈', thumbsup: '👍', '+1': '👍',
    thumbsdown: '👎', '-1': '👎', clap: '👏', wave: '👋', pray: '🙏', muscle: '💪', ok_hand: '👌',
    raised_hands: '🙌', handshake: '🤝', eyes: '👀', heart: '❤️', broken_heart: '💔', fire: '🔥', star: '⭐',
    sparkles: '✨', tada: '🎉', '100': '💯', rocket: '🚀', white_check_mark: '✅', check: '✅', x: '❌',
    warning: '⚠️', question: '❓', bulb: '💡', zap: '⚡', bug: '🐛', lock: '🔒', coffee: '☕', tea: '🍵',
    beer: '🍺', pizza: '🍕', cake: '🍰', sun: '☀️', rainbow: '🌈', poop: '💩',
  };
  const PICKER = ['smile', 'joy', 'rofl', 'wink', 'blush', 'slight_smile', 'heart_eyes', 'thinking', 'sweat_smile',
    'cry', 'sob', 'angry', 'scream', 'sunglasses', 'party', 'shrug', 'facepalm', 'see_no_evil', 'thumbsup',
    'thumbsdown', 'clap', 'wave', 'pray', 'muscle', 'ok_hand', 'raised_hands', 'eyes', 'heart', 'fire', 'star',
    'sparkles', 'tada', '100', 'rocket', 'check', 'x', 'warning', 'bulb', 'bug', 'coffee', 'beer', 'pizza'];
  const SHORTCODE_RE = /(?<![\w:]):([a-z0-9_+-]{1,32}):(?![\w:])/g;
  // Replaces known :shortcodes: outside `code`.
  function emojify(text) {
    return text.split(/(```[\s\S]*?(?:```|$)|`[^`\n]*`)/).map((part, i) => (i % 2 ? part
      : part.replace(SHORTCODE_RE, (all, name) => EMOJI[name] || all))).join('');
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
    pendingNickRef: null,
    // Accounts: the session kept on this device ({account, token}; never the password).
    session: load(STORE.session, null),
    account: null, // the account this connection is logged in to
    op: false,
    pendingAuth: null, // a login or register typed before the connection was up
    // Notifications: off until asked for; muted conversation keys.
    prefs: Object.assign({ notify: false, sound: false, muted: [] }, load(STORE.prefs, {})),
    // Per room, the epoch and id of the last message read (this device).
    read: load(STORE.read, {}),
  };
  if (!state.session || typeof state.session.token !== 'string' || typeof state.session.account !== 'string') state.session = null;
  if (!Array.isArray(state.prefs.muted)) state.prefs.muted = [];
  if (!state.read || typeof state.read !== 'object') state.read = {};
  if (!Array.isArray(state.roomOrder)) state.roomOrder = [DEFAULT_ROOM];
  state.roomOrder = state.roomOrder.filter((r) => typeof r === 'string' && ROOM_RE.test(r));

  const nextRef = (p) => p + (++state.refSeq).toString(36);
  // Logged in, a message from the account is ours from any of its devices (another one may hold the nick).
  const isMe = (nick) => (state.nick !== null && lc(nick) === lc(state.nick)) || (state.account !== null && state.account !== undefined && lc(nick) === lc(state.account));

  function newConv(kind, name) {
    return {
      kind, name, key: kind + ':' + (kind === 'dm' ? lc(name) : name),
      msgs: new Map(), // key -> message (rooms: id; dms: seq)
      notices: [],
      pending: [],
      unread: 0,
      mentions: 0, // unread messages that @mention us
      readId: 0, // rooms: id, DMs: seq of the last message read
      markerId: null, // "New messages" sits after this id while the conversation is open
      members: [],
      // Accounts and moderation (rooms): lc(nick) of the members holding
      // their account's nick, of those who may moderate (with their rank,
      // RANK, where the server said it), and our own role.
      registered: new Set(),
      mods: new Set(),
      ranks: new Map(),
      role: null,
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
    const n = { seq: ++state.seq, text, tone: opts.tone || 'info', action: opts.action || null, presence: opts.presence || null,
      after: opts.after !== undefined ? opts.after : (conv.kind === 'room' ? conv.lastId : state.seq), ts: Date.now() };
    conv.notices.push(n);
    if (conv.notices.length > 200) conv.notices.shift();
    scheduleRender(conv);
    return n;
  }

  // ---------------------------------------------------------------- sending
  // Mirror of the server's token bucket (the sizes `welcome` announced), 10 %
  // pessimistic, so the client paces itself instead of being answered
  // rate_limited. A burst of 0 is no limit.
  const bucket = { tokens: 18, at: performance.now() };
  const outQueue = [];
  let drainTimer = null;
  const bucketMax = () => (limits.burst ? Math.max(1, limits.burst * 0.9) : Infinity);
  const bucketRate = () => Math.max(0.05, limits.rate * 0.9);
  function refill() {
    const now = performance.now();
    bucket.tokens = Math.min(bucketMax(), bucket.tokens + (now - bucket.at) / 1000 * bucketRate());
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
    if (outQueue.length) drainTimer = setTimeout(drain, Math.ceil((1 - bucket.tokens) / bucketRate() * 1000) + 20);
  }
  // Sends a frame, or queues it while the bucket is empty. Droppable frames
  // (typing) are never queued: stale typing is worse than none.
  function send(frame, opts = {}) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    refill();
    if (opts.droppable) {
      if (bucket.tokens < Math.min(4, bucketMax() / 4) || outQueue.length) return false;
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
      case 'session': return onSession(m);
      case 'registered': settle(m.ref); toast(`Account “${m.account}” registered.`); return undefined;
      case 'logged_out': return onLoggedOut(m);
      case 'moderation': return onModeration(m);
      case 'member': return onMember(m);
      case 'role': return onRole(m);
      case 'rank': return onRank(m);
      case 'reaction': return onReaction(m);
      case 'edited': return onEdited(m);
      case 'dm_history': return onDmHistory(m);
      case 'read': return onReadPos(m);
      case 'reads': return onReads(m);
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
    msgx.mine.clear(); // a guest's messages were its old connection's
    const first = !state.everConnected;
    state.everConnected = true;
    state.attempt = 0;
    state.nick = String(m.nick);
    state.motd = typeof m.motd === 'string' ? m.motd : '';
    readLimits(m.limits);
    setConn('online');
    renderMe();
    renderMotd();
    state.account = null; state.op = false;
    const authNick = authAfterWelcome();
    if (authNick && state.desiredNick && lc(state.desiredNick) === lc(authNick)) {
      // The account's nick: the token login that just went out gives it back.
    } else if (state.desiredNick && !isMe(state.desiredNick)) {
      // Someone else holds it (whoever connects first gets a name). Say so
      // and stop: trying again until it is free would take a friend's nick
      // the moment they drop. A reload asks once more.
      const wanted = state.desiredNick;
      state.desiredNick = state.nick;
      openNickDialog(`The nickname “${wanted}” is taken by someone else on this server, so you are “${state.nick}” for now. Pick another nickname?`);
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

  // Takes what the server announced; a field missing or absurd keeps the default.
  function readLimits(l) {
    if (!l || typeof l !== 'object') return;
    const pick = (v, min) => (Number.isSafeInteger(v) && v >= min ? v : null);
    limits.text = pick(l.text_chars, 1) ?? limits.text;
    limits.bytes = pick(l.message_bytes, 64) ?? limits.bytes;
    limits.burst = pick(l.rate_burst, 0) ?? limits.burst;
    limits.rate = pick(l.rate_per_sec, 0) ?? limits.rate;
    limits.rooms = pick(l.rooms_per_conn, 1) ?? limits.rooms;
    bucket.tokens = Math.min(bucket.tokens, bucketMax());
  }

  // Why a nickname cannot be used, in plain words, or null.
  function nickProblem(nick) {
    const n = [...nick].length;
    if (!n) return 'Type a nickname.';
    if (n > 32) return `Nicknames can be at most 32 characters; “${nick}” has ${n}. Shorten it.`;
    const bad = [...new Set([...nick].filter((c) => !/[A-Za-z0-9_.-]/.test(c)))];
    if (bad.length) {
      const names = bad.slice(0, 5).map((c) => (c === ' ' ? 'spaces' : `“${c}”`));
      return `Nicknames use only letters A–Z, digits, _ - and . (not ${names.join(', ')}).`;
    }
    return null;
  }

  function requestNick(nick) {
    const ref = nextRef('n');
    state.pendingNickRef = ref;
    send({ type: 'nick', nick, ref }, { expect: { kind: 'nick', nick } });
  }

  function onNick(m) {
    const old = String(m.old), nick = String(m.nick);
    const exp = settle(m.ref);
    const mine = exp ? true : isMe(old);
    if (mine) {
      state.nick = nick;
      if (exp) { state.desiredNick = nick; save(STORE.nick, nick); }
      if (exp && exp.then) exp.then();
      else if (exp && exp.fromDialog) closeNickDialog();
      for (const c of state.convs.values()) {
        if (c.kind !== 'room') continue;
        // Our own entry in the member lists (the server tells the owner once, not per room).
        const i = c.members.findIndex((x) => lc(x) === lc(old));
        if (i >= 0) { c.members[i] = nick; c.members.sort(byLower); }
        renameMarks(c, old, nick, m.registered === true);
        if (c.joined && old !== nick) addNotice(c, `You are now known as ${nick}.`);
      }
    } else {
      for (const c of state.convs.values()) {
        if (c.kind !== 'room') continue;
        const i = c.members.findIndex((x) => lc(x) === lc(old));
        if (i >= 0) {
          c.members[i] = nick;
          c.members.sort(byLower);
          renameMarks(c, old, nick, m.registered === true);
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
    conv.topic = typeof m.topic === 'string' ? m.topic : '';
    conv.registered = new Set(Array.isArray(m.registered) ? m.registered.map(lc) : []);
    conv.mods = new Set(Array.isArray(m.moderators) ? m.moderators.map(lc) : []);
    conv.ranks = new Map(m.roles && typeof m.roles === 'object'
      ? Object.entries(m.roles).filter(([, r]) => RANK(r)).map(([n, r]) => [lc(n), RANK(r)]) : []);
    conv.role = typeof m.role === 'string' && m.role !== 'member' ? m.role : null;
    for (const h of history) addRoomMessage(conv, h);
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
    if (!rejoin) {
      // A page (re)loaded: where this device stopped reading, if the ids still mean the same.
      const st = state.read[name];
      conv.readId = st && st.e === epoch && Number.isSafeInteger(st.id) ? Math.min(st.id, conv.lastId) : conv.lastId;
    }
    serverReadOnJoin(conv, m, rejoin);
    recount(conv);
    let toMarker = false;
    if (conv.key === state.active && conv.unread && conv.markerId === null) { conv.markerId = conv.readId; toMarker = true; }
    dedupeUnsure(conv, history);
    flushQueued(conv);
    scheduleRender(conv, toMarker ? { toMarker: true } : {});
    renderSidebar();
    if (conv.key === state.active) { renderHeader(); renderMembers(); renderComposer(); }
  }

  // Unread and mention counts from the read position.
  function recount(conv) {
    let u = 0, men = 0;
    for (const m of conv.msgs.values()) {
      if (m.id <= conv.readId || isMe(m.from)) continue;
      u++;
      if (conv.kind === 'dm' || mentions(m.text, state.nick)) men++;
    }
    conv.unread = u;
    conv.mentions = men;
  }

  const isMuted = (conv) => state.prefs.muted.includes(conv.key);
  const atBottomNow = () => list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  // The reader sees new messages of `conv` as they arrive.
  const reading = (conv) => conv.key === state.active && !document.hidden && atBottomNow() && !dialogShown();

  // Everything in `conv` up to its newest message is read.
  let readSaveTimer = null;
  // Written at most every 400 ms while reading, and at once when the page
  // goes (a reload or a closed tab within those 400 ms kept the old place).
  function saveReadNow() {
    clearTimeout(readSaveTimer);
    readSaveTimer = null;
    save(STORE.read, state.read);
  }
  window.addEventListener('pagehide', () => { if (readSaveTimer !== null) saveReadNow(); });
  function markRead(conv) {
    if (!conv) return;
    conv.readId = Math.max(conv.readId, conv.lastId);
    if (conv.unread || conv.mentions) { conv.unread = 0; conv.mentions = 0; renderSidebar(); }
    if (conv.kind === 'room' && conv.epoch) {
      const st = state.read[conv.name];
      if (!st || st.e !== conv.epoch || st.id !== conv.readId) {
        state.read[conv.name] = { e: conv.epoch, id: conv.readId };
        clearTimeout(readSaveTimer);
        readSaveTimer = setTimeout(saveReadNow, 400);
      }
    }
    syncRead(conv);
    updateJump();
  }

  // A new message from someone else: counted unless it is being read,
  // and a mention or DM alerts (unless the conversation is muted).
  function noteIncoming(conv, m) {
    const mention = conv.kind === 'dm' || mentions(m.text, state.nick);
    if (!reading(conv)) {
      conv.unread++;
      if (mention) conv.mentions++;
      if (conv.key === state.active && conv.markerId === null) conv.markerId = conv.readId;
    }
    if (mention && !isMuted(conv)) alertUser(conv, m);
  }

  let audioCtx = null;
  function ping() {
    try {
      audioCtx = audioCtx || new AudioContext();
      if (audioCtx.state === 'suspended') audioCtx.resume();
      const t = audioCtx.currentTime;
      const o = audioCtx.createOscillator();
      const g = audioCtx.createGain();
      o.type = 'sine';
      o.frequency.setValueAtTime(880, t);
      o.frequency.setValueAtTime(1318.5, t + 0.09);
      g.gain.setValueAtTime(0.0001, t);
      g.gain.exponentialRampToValueAtTime(0.12, t + 0.015);
      g.gain.exponentialRampToValueAtTime(0.0001, t + 0.32);
      o.connect(g).connect(audioCtx.destination);
      o.start(t);
      o.stop(t + 0.34);
      // Counted where a test (or a curious user) can see it.
      document.documentElement.dataset.sounds = String(Number(document.documentElement.dataset.sounds || 0) + 1);
    } catch { /* no audio output */ }
  }
  function alertUser(conv, m) {
    const away = document.hidden;
    if (state.prefs.sound && (away || conv.key !== state.active)) ping();
    if (!away || !state.prefs.notify || !('Notification' in window) || Notification.permission !== 'granted') return;
    const title = conv.kind === 'dm' ? `${m.from} (private message)` : `${m.from} mentioned you in #${conv.name}`;
    try {
      const n = new Notification(title, { body: m.text.length > 180 ? m.text.slice(0, 180) + '…' : m.text, tag: conv.key, icon: '/favicon.svg' });
      n.onclick = () => { window.focus(); switchConv(conv.key); n.close(); };
    } catch { /* a browser that allows notifications only from a service worker */ }
  }

  function validMessage(h) {
    return h && Number.isSafeInteger(h.id) && h.id >= 1 && typeof h.text === 'string' && typeof h.from === 'string';
  }

  // A room message as kept here, from a live one or a history entry: both
  // carry `registered` (the lock) and `image`.
  function roomMsg(h) {
    return withExtras({ id: h.id, from: String(h.from), text: h.text, ts: Number(h.ts) || Date.now(), registered: h.registered === true, image: imageId(h.image) }, h);
  }
  // Returns true when the message was new to us.
  function addRoomMessage(conv, h) {
    if (h.id > conv.lastId) conv.lastId = h.id;
    if (h.deleted === true) { conv.msgs.delete(h.id); return false; } // a tombstone: nothing to show
    if (conv.msgs.has(h.id)) { withExtras(conv.msgs.get(h.id), h); return false; } // newer reactions, edits
    conv.msgs.set(h.id, roomMsg(h));
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
    if (state.read[name]) { delete state.read[name]; save(STORE.read, state.read); }
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
      if (m.registered === true) conv.registered.add(lc(nick));
      if (typeof m.role === 'string' && m.role !== 'member') conv.mods.add(lc(nick));
      if (RANK(m.role)) conv.ranks.set(lc(nick), RANK(m.role)); else conv.ranks.delete(lc(nick));
      addNotice(conv, `${nick} joined #${conv.name}.`, { tone: 'presence', presence: { nick, event: 'join' } });
    } else if (m.event === 'leave') {
      if (i >= 0) conv.members.splice(i, 1);
      conv.registered.delete(lc(nick)); conv.mods.delete(lc(nick)); conv.ranks.delete(lc(nick));
      conv.typing.delete(lc(nick));
      addNotice(conv, `${nick} left #${conv.name}.`, { tone: 'presence', presence: { nick, event: 'leave' } });
    }
    if (conv.key === state.active) { renderMembers(); renderHeader(); renderTyping(); }
  }

  function onMessage(m) {
    if (!validMessage(m)) return;
    const conv = roomConv(String(m.room), false);
    if (!conv) return;
    const exp = settle(m.ref);
    if (exp) { removePending(conv, m.ref); noteMine(conv, m.id); }
    conv.typing.delete(lc(m.from));
    const isNew = addRoomMessage(conv, m);
    if (!isNew) { scheduleRender(conv); return; }
    if (!isMe(m.from)) {
      noteIncoming(conv, m);
      announce(`${m.from} in #${conv.name}: ${m.text}`);
    } else if (exp) {
      conv.markerId = null; // answering: what was new is now behind us
    }
    scheduleRender(conv);
    renderSidebar();
    if (conv.key === state.active) renderTyping();
    updateTitle(!isMe(m.from));
  }

  function onDm(m) {
    if (typeof m.text !== 'string' || typeof m.from !== 'string') return;
    if (Number.isSafeInteger(m.id)) return onStoredDm(m);
    const from = String(m.from), to = String(m.to ?? '');
    const other = isMe(from) ? to : from;
    const conv = dmConv(other, true);
    conv.name = other; // the server's spelling
    const exp = settle(m.ref);
    if (exp) removePending(conv, m.ref);
    const seq = ++state.seq;
    conv.msgs.set(seq, { id: seq, from, text: m.text, ts: Number(m.ts) || Date.now() });
    conv.lastId = seq;
    if (conv.msgs.size > 1000) conv.msgs.delete(conv.msgs.keys().next().value);
    if (!isMe(from)) {
      noteIncoming(conv, conv.msgs.get(seq));
      announce(`Private message from ${from}: ${m.text}`);
    } else if (exp) {
      conv.markerId = null;
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
    const exp = settle(m.ref);
    const rooms = (Array.isArray(m.rooms) ? m.rooms : [])
      .filter((r) => r && typeof r.name === 'string' && ROOM_RE.test(r.name))
      .map((r) => ({ name: r.name, members: Number.isSafeInteger(r.members) ? r.members : 0, topic: typeof r.topic === 'string' ? r.topic.slice(0, 300) : '' }));
    if (exp && exp.directory) { dir.rooms = rooms; dir.loading = false; renderDirectory(); return; }
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
    if (exp && exp.kind === 'auth') return onAuthError(exp, code, m, human);
    if (exp && exp.kind === 'mod') { toast(human, 'error'); return; }
    if (exp && exp.kind === 'nick') {
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
    if (exp && exp.kind === 'dm_history') { onDmHistoryError(exp, code, human); return; }
    if (exp && exp.kind === 'leave' && code === 'not_in_room') { removeRoom(exp.room); return; }
    if (exp && exp.kind === 'search') { search.loading = false; search.error = human; renderSearch(); return; }
    if (exp && exp.kind === 'context') { onContextError(human); return; }
    toast(human, 'error');
  }

  // The server's `invalid` answers about a message text, in plain words.
  function plainInvalid(message) {
    const m = /^invalid field "(\w+)": ([\s\S]*)$/.exec(String(message || ''));
    if (!m) return null;
    const [, field, why] = m;
    if (field === 'text') {
      if (/too long/.test(why)) return `This message is too long: this server takes at most ${limits.text} characters.`;
      if (/white space/.test(why)) return 'There is nothing to send: the message is only spaces.';
      if (/visible/.test(why)) return 'There is nothing visible to send: the message has only invisible characters (such as zero-width spaces).';
      if (/control/.test(why)) return 'This message holds control characters (other than new lines and tabs), which the server does not accept. Remove them and try again.';
      if (/bidi/.test(why)) return 'This message holds text-direction override characters (U+202A to U+202E, U+2066 to U+2069), which the server refuses because they can disguise text. Remove them and try again.';
    }
    if (field === 'nick') return 'Nicknames are 1–32 letters A–Z, digits, _ - or . (no spaces).';
    if (field === 'room') return 'Room names are 1–64 letters A–Z, digits, _ or -.';
    return null;
  }

  function describeError(code, message) {
    if (code === 'invalid') { const p = plainInvalid(message); if (p) return p; }
    const base = ERROR_TEXT[code] || 'The server refused a request.';
    if (code === 'invalid' && message) return `${base}: ${message}`;
    if (code === 'invalid') return base + '.';
    if (!ERROR_TEXT[code] && message) return String(message);
    return base;
  }

  // ---------------------------------------------------------------- accounts
  // Right after `welcome`: the login typed before the connection was up, or
  // the kept token. Returns the nick that login will give us, if any.
  function authAfterWelcome() {
    if (state.pendingAuth) {
      const a = state.pendingAuth;
      state.pendingAuth = null;
      if (a.register && !isMe(a.nick)) return null; // the nick was taken: onWelcome says so
      sendAuth(a);
      return a.register ? null : a.nick;
    }
    if (state.session) { loginWithToken(); return state.session.account; }
    return null;
  }
  function loginWithToken() {
    send({ type: 'login', token: state.session.token, ref: nextRef('l') }, { expect: { kind: 'auth', via: 'token' } });
  }
  function sendAuth(a) {
    if (a.register) send({ type: 'register', password: a.password, ref: nextRef('r') }, { expect: { kind: 'auth', via: 'register', nick: a.nick } });
    else send({ type: 'login', account: a.nick, password: a.password, ref: nextRef('l') }, { expect: { kind: 'auth', via: 'password', nick: a.nick } });
  }
  function forgetSession() {
    state.session = null;
    save(STORE.session, null);
  }
  function onSession(m) {
    const exp = settle(m.ref);
    state.account = String(m.account);
    state.op = m.op === true;
    if (typeof m.token === 'string' && /^[0-9a-f]{64}$/i.test(m.token)) {
      state.session = { account: state.account, token: m.token };
      save(STORE.session, state.session);
    }
    state.desiredNick = state.account;
    save(STORE.nick, state.account);
    $('password-input').value = '';
    if (exp && exp.via !== 'token') {
      closeNickDialog();
      toast(exp.via === 'register' ? `Registered: “${state.account}” is yours now.` : `Logged in as ${state.account}.`);
    }
    renderAll();
  }
  function onLoggedOut(m) {
    settle(m.ref);
    state.account = null;
    state.op = false;
    forgetSession();
    for (const c of state.convs.values()) c.mod = false;
    if (!m.ref) toast('You were logged out: your session was ended elsewhere.', 'error');
    renderAll();
  }
  function onAuthError(exp, code, m, human) {
    if (exp.via === 'token') {
      if (code === 'busy' || code === 'login_limited') {
        const wait = Number.isFinite(m.retry_after) ? m.retry_after * 1000 : 1000;
        setTimeout(() => { if (state.conn === 'online' && !state.account && state.session) loginWithToken(); }, Math.min(wait, 60000));
        return;
      }
      if (code === 'login_failed') { forgetSession(); toast('Your saved login has ended. Log in again from “Change”.', 'error'); return; }
      toast(human, 'error');
      return;
    }
    if (exp.via === 'logout') return; // already forgotten here
    let text = human;
    if (code === 'login_limited' && Number.isFinite(m.retry_after)) text = `Too many failed logins. Try again in ${Math.max(1, Math.ceil(m.retry_after))} s.`;
    if (dialogOpen()) showNickError(text); else toast(text, 'error');
  }
  function startAuth(register) {
    const nick = nickInput.value.trim();
    const password = $('password-input').value;
    const why = nickProblem(nick);
    if (why) { showNickError(why); return; }
    const n = [...password].length;
    if (register && (n < 8 || n > 256)) { showNickError('Passwords are 8 to 256 characters.'); return; }
    if (!register && !n) { showNickError('Type your password to log in.'); return; }
    showNickError('');
    const a = { nick, password, register };
    if (!state.everConnected && !state.ws) {
      state.desiredNick = nick;
      save(STORE.nick, nick);
      state.pendingAuth = a;
      renderMe();
      connect();
      return;
    }
    if (state.conn !== 'online') { showNickError('You are offline; try again once connected.'); return; }
    if (register && !isMe(nick)) {
      // Take the nick first, then register it.
      send({ type: 'nick', nick, ref: nextRef('n') }, { expect: { kind: 'nick', nick, fromDialog: true, then: () => sendAuth(a) } });
      return;
    }
    sendAuth(a);
  }
  function logout() {
    const had = state.session || state.account;
    forgetSession();
    if (had && state.conn === 'online') send({ type: 'logout', ref: nextRef('o') }, { expect: { kind: 'auth', via: 'logout' } });
    state.account = null;
    state.op = false;
    closeNickDialog();
    renderAll();
  }
  function accountBadge() {
    return el('span', { class: 'acct-badge', 'data-testid': 'account-badge', title: state.op ? 'Logged in (server operator)' : 'Logged in to a registered account', 'aria-label': state.op ? 'logged in, operator' : 'logged in', text: state.op ? '★' : '✓' });
  }

  // ---------------------------------------------------------------- moderation
  // Operators moderate every room; a room's owner and its moderators theirs
  // (`role` in `joined` and `role` events). Appointing is the operators' and
  // the owner's.
  const canModerate = (conv) => !!conv && conv.kind === 'room' && (state.op || !!conv.role || conv.mod === true);
  const canAppoint = (conv) => !!conv && conv.kind === 'room' && (state.op || conv.role === 'operator' || conv.role === 'owner');
  // Ranks (docs/protocol.md, "Roles"): the server refuses a kick, mute or
  // room ban unless the actor ranks above the target, so the controls show
  // only there. A member listed among the moderators without a rank (a
  // server that sends no `roles`) counts as a moderator; the server decides.
  const RANK = (role) => (role === 'operator' ? 3 : role === 'owner' ? 2 : role === 'moderator' ? 1 : 0);
  const myRank = (conv) => (state.op ? 3 : Math.max(RANK(conv.role) || 0, conv.mod === true ? 1 : 0));
  const rankOf = (conv, nick) => conv.ranks.get(lc(nick)) ?? (conv.mods.has(lc(nick)) ? 1 : 0);
  // Operators act on anyone; everyone else only below themselves.
  const outranks = (conv, nick) => myRank(conv) === 3 || myRank(conv) > rankOf(conv, nick);
  // A nick changed: its marks follow (registered as the event says; a role
  // follows the account, which a rename keeps).
  function renameMarks(conv, old, nick, registered) {
    conv.registered.delete(lc(old));
    if (registered) conv.registered.add(lc(nick));
    if (conv.mods.delete(lc(old))) conv.mods.add(lc(nick));
    const rank = conv.ranks.get(lc(old));
    if (rank !== undefined) { conv.ranks.delete(lc(old)); conv.ranks.set(lc(nick), rank); }
  }
  function onMember(m) {
    const nick = lc(String(m.nick || ''));
    for (const c of state.convs.values()) {
      if (c.kind !== 'room' || !c.members.some((x) => lc(x) === nick)) continue;
      if (m.registered === true) c.registered.add(nick); else c.registered.delete(nick);
    }
    const c = activeConv();
    if (c && c.kind === 'room') { renderMembers(); scheduleRender(c); }
  }
  function onRole(m) {
    const conv = roomConv(String(m.room || ''), false);
    if (!conv) return;
    const role = typeof m.role === 'string' && m.role !== 'member' ? m.role : null;
    if (role === conv.role) return;
    conv.role = role;
    if (state.nick) {
      if (role) conv.mods.add(lc(state.nick)); else conv.mods.delete(lc(state.nick));
      if (RANK(role)) conv.ranks.set(lc(state.nick), RANK(role)); else conv.ranks.delete(lc(state.nick));
    }
    const words = { operator: 'You moderate this room as a server operator.', owner: 'You own this room: you moderate it and appoint its moderators.', moderator: 'You are now a moderator of this room.' };
    addNotice(conv, role ? (words[role] || `Your role here: ${role}.`) : 'You no longer moderate this room.');
    if (conv.key === state.active) { renderHeader(); renderMembers(); scheduleRender(conv); }
  }
  // Another member's role here changed (a login, a logout, an appointment):
  // the controls offered on them follow the rank the server now checks.
  function onRank(m) {
    const conv = roomConv(String(m.room || ''), false);
    const nick = lc(String(m.nick || ''));
    if (!conv || !nick) return;
    const rank = RANK(m.role);
    if (rank) { conv.mods.add(nick); conv.ranks.set(nick, rank); } else { conv.mods.delete(nick); conv.ranks.delete(nick); }
    if (conv.key === state.active) renderMembers();
  }
  function registeredBadge(nick) {
    return el('span', { class: 'reg-badge', 'data-testid': 'registered-badge', title: `${nick} is logged in to this registered nick`, 'aria-label': 'registered', text: '🔒' });
  }
  function modTag() {
    return el('span', { class: 'mod-tag', 'data-testid': 'mod-tag', title: 'Moderates this room', text: 'mod' });
  }
  function modSend(frame) {
    frame.ref = nextRef('x');
    send(frame, { expect: { kind: 'mod' } });
  }
  function whenText(until) {
    return Number.isFinite(until) && until > 0 ? 'until ' + fullFmt.format(until) : 'for good';
  }
  function onModeration(m) {
    settle(m.ref);
    const action = String(m.action || ''), by = String(m.by || 'a moderator'), nick = String(m.nick || '');
    const reason = typeof m.reason === 'string' ? m.reason : '';
    const conv = typeof m.room === 'string' ? roomConv(m.room, false) : null;
    if (action === 'delete') {
      if (conv && Number.isSafeInteger(m.id)) { conv.msgs.delete(m.id); onMsgDeleted(conv, m.id); scheduleRender(conv); }
      return;
    }
    const why = reason && action !== 'topic' ? ` (${reason})` : '';
    let text;
    switch (action) {
      case 'kick': text = `${nick} was removed from the room by ${by}${why}.`; break;
      case 'ban': text = `${nick} was banned from ${conv ? 'the room' : 'the server'} by ${by} ${whenText(m.until)}${why}.`; break;
      case 'unban': text = `${by} lifted the ban on ${nick}${conv ? ' here' : ' from the server'}.`; break;
      case 'mute': text = `${nick} was muted by ${by} ${whenText(m.until)}${why}.`; break;
      case 'slow': text = Number(m.interval) > 0 ? `${by} turned on slow mode: one message every ${Number(m.interval)} s.` : `${by} turned slow mode off.`; break;
      case 'topic': text = reason ? `${by} set the topic: ${reason}` : `${by} cleared the topic.`; break;
      case 'moderator': text = `${nick} is now a moderator here (appointed by ${by}).`; break;
      case 'unmoderator': text = `${nick} is no longer a moderator here.`; break;
      default: text = `${by}: ${action} ${nick}${why}`.trim();
    }
    // The one who banned can take it back from the notice (`unban`).
    const undo = action === 'ban' && isMe(by) && nick
      ? { action: { label: 'Lift ban', run: () => modSend(conv ? { type: 'unban', room: conv.name, nick } : { type: 'unban', nick }) } } : {};
    if (conv) {
      if (action === 'topic') conv.topic = reason;
      if ((action === 'moderator' || action === 'unmoderator') && isMe(nick)) conv.mod = action === 'moderator';
      // An appointment makes a moderator of a member (an owner or operator
      // keeps the higher rank), a removal a plain member again.
      if (action === 'moderator') { conv.mods.add(lc(nick)); conv.ranks.set(lc(nick), Math.max(rankOf(conv, nick), 1)); }
      if (action === 'unmoderator' && rankOf(conv, nick) <= 1) { conv.mods.delete(lc(nick)); conv.ranks.delete(lc(nick)); }
      addNotice(conv, text, undo);
      if (conv.key === state.active) { renderHeader(); renderMembers(); }
    } else {
      const c = activeConv();
      if (c) addNotice(c, text, undo);
    }
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

  function sendText(conv, text, image) {
    if (ctxView.room === conv.name) closeContext(); // show where the message goes
    const p = { ref: nextRef(conv.kind === 'dm' ? 'd' : 'm'), text, ts: Date.now(), state: 'queued', reason: '', reply: takeReply(conv), image: image || null };
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
    if (p.reply && conv.kind === 'room') frame.reply_to = p.reply.id;
    if (p.image && conv.kind === 'room') frame.image = p.image;
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
    if (conv && conv.kind === 'dm') return loadOlderDm(conv);
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
  // A private conversation between accounts is searched the same way
  // (`search` with `with`): one the server keeps (`stored`: both sides
  // logged in), not a guest's, which it never keeps.
  const SEARCH_CONTEXT = 1;
  const search = { room: null, with: null, key: null, query: '', results: [], complete: true, loading: false, error: '' };
  const searchable = (conv) => !!conv && (conv.kind === 'room' || (conv.kind === 'dm' && !!state.account && conv.stored === true));
  function openSearch() {
    const conv = activeConv();
    if (!searchable(conv)) return;
    $('search-panel').hidden = false;
    $('search-toggle').setAttribute('aria-expanded', 'true');
    $('search-input').focus();
  }
  function closeSearch() {
    $('search-panel').hidden = true;
    $('search-toggle').setAttribute('aria-expanded', 'false');
    Object.assign(search, { room: null, with: null, key: null, query: '', results: [], complete: true, loading: false, error: '' });
    renderSearch();
  }
  function runSearch(more) {
    const conv = activeConv();
    if (!searchable(conv) || (conv.kind === 'room' && !conv.joined)) return;
    if (!more) {
      const q = $('search-input').value.trim();
      if (!q) return;
      const room = conv.kind === 'room' ? conv.name : null;
      Object.assign(search, { room, with: room ? null : conv.name, key: conv.key, query: q, results: [], complete: true, error: '' });
    }
    const frame = search.room ? { type: 'search', room: search.room } : { type: 'search', with: search.with };
    Object.assign(frame, { query: search.query, limit: 20, context: SEARCH_CONTEXT, ref: nextRef('s') });
    if (more && search.results.length) frame.before = search.results[search.results.length - 1].id;
    search.loading = send(frame, { expect: { kind: 'search', room: search.room } });
    if (!search.loading) search.error = 'You are offline; try again once connected.';
    renderSearch();
  }
  function onSearch(m) {
    settle(m.ref);
    const mine = search.room ? String(m.room) === search.room : typeof m.with === 'string' && lc(m.with) === lc(search.with || '');
    if (!mine || String(m.query) !== search.query) return;
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
      el('button', { type: 'button', class: 'search-hit-btn', onclick: () => (search.room ? jumpTo(search.room, r.id) : jumpToDm(search.with, r.id)),
        'aria-label': `${r.from}, ${fullFmt.format(r.ts)}: ${r.text}. Show in the conversation` },
        ...r.before.map(contextLine),
        el('span', { class: 'search-match' },
          el('span', { class: 'search-meta' },
            el('strong', { text: r.from }),
            r.registered === true ? registeredBadge(String(r.from)) : null,
            el('time', { datetime: new Date(r.ts).toISOString(), text: fullFmt.format(r.ts) })),
          highlighted(String(r.text), search.query)),
        ...r.after.map(contextLine)))));
    const n = search.results.length;
    const where = search.room ? `in #${search.room}` : `with ${search.with}`;
    $('search-status').textContent = search.error || (search.loading ? 'Searching…'
      : !search.key ? '' : n ? `${n}${search.complete ? '' : '+'} ${n === 1 ? 'message' : 'messages'} ${where}`
        : `No message ${where} matches “${search.query}”.`);
    $('search-more').hidden = search.complete || search.loading || !n;
  }
  // A DM hit: its conversation pages older history until the hit shows.
  function jumpToDm(nick, id) {
    const conv = dmConv(nick, false);
    if (!conv) return;
    if (state.active !== conv.key) switchConv(conv.key);
    conv.jumpTo = id;
    continueJump(conv);
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
    for (const h of list) if (h.deleted !== true) ctxView.msgs.set(h.id, roomMsg(h));
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
    $('me-nick').nextElementSibling.replaceChildren(state.account ? (state.op ? 'Logged in · operator ' : 'Logged in ') : 'Signed in as', ...(state.account ? [accountBadge()] : []));
    const a = $('me-avatar');
    a.textContent = nick ? initials(nick) : '';
    a.style.backgroundColor = nick ? avatarColor(nick) : '';
  }

  function renderMotd() {
    $('motd').hidden = !state.motd;
    $('motd-text').textContent = state.motd; // textContent: the motd is plain text
  }

  function convButton(conv) {
    const activeNow = conv.key === state.active;
    const label = conv.kind === 'room' ? `#${conv.name}` : conv.name;
    const muted = isMuted(conv);
    const unread = (conv.unread > 0 ? `, ${conv.unread} unread` : '') + (conv.mentions > 0 ? `, ${conv.mentions} ${conv.kind === 'dm' ? 'new' : (conv.mentions === 1 ? 'mention' : 'mentions')}` : '') + (muted ? ', muted' : '');
    const btn = el('button', {
      type: 'button', class: 'conv' + (activeNow ? ' active' : '') + (conv.unread ? ' has-unread' : '') + (muted ? ' muted' : ''),
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
    if (muted) btn.append(bellIcon(true, 'conv-muted'));
    // Mentions (and private messages) get a badge of their own beside the unread count.
    if (conv.mentions && conv.kind === 'room') btn.append(el('span', { class: 'badge mention-badge', 'data-testid': 'mention-badge', 'aria-hidden': 'true', text: '@' + (conv.mentions > 99 ? '99+' : String(conv.mentions)) }));
    if (conv.unread) btn.append(el('span', { class: 'badge' + (conv.kind === 'dm' ? ' mention-badge' : ''), 'data-testid': 'unread', 'aria-hidden': 'true', text: conv.unread > 99 ? '99+' : String(conv.unread) }));
    return el('li', null, btn);
  }

  function svgIcon(d, cls) {
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    if (cls) svg.setAttribute('class', cls);
    for (const x of d) {
      const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
      path.setAttribute('d', x);
      svg.append(path);
    }
    return svg;
  }
  const BELL = ['M6 16V11a6 6 0 0 1 12 0v5l1.5 2h-15z', 'M10 20.5a2 2 0 0 0 4 0'];
  function bellIcon(off, cls) { return svgIcon(off ? [...BELL, 'M4 4l16 16'] : BELL, cls); }

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
    $('menu-badge').classList.toggle('mention-badge', [...state.convs.values()].some((c) => c.key !== state.active && c.mentions));
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
    const topicEl = $('conv-topic');
    topicEl.hidden = !(conv && conv.kind === 'room' && conv.topic);
    topicEl.textContent = topicEl.hidden ? '' : conv.topic;
    topicEl.title = topicEl.textContent;
    if (!conv) {
      title.textContent = 'No conversation';
      sub.textContent = 'Join a room to start chatting';
      $('leave-btn').hidden = true;
      list.setAttribute('aria-label', 'Messages');
      renderNotify();
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
    $('search-toggle').hidden = !searchable(conv);
    $('search-toggle').setAttribute('aria-label', conv.kind === 'room' ? 'Search this room' : 'Search this conversation');
    if (!searchable(conv) || (search.key && search.key !== conv.key)) closeSearch();
    if (ctxView.room && (conv.kind !== 'room' || ctxView.room !== conv.name)) closeContext();
    renderNotify();
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
      me && state.account ? accountBadge() : (conv.registered.has(lc(nick)) ? registeredBadge(nick) : null),
      conv.mods.has(lc(nick)) ? modTag() : null,
      me ? el('span', { class: 'you-tag', text: 'you' }) : null);
      if (me) btn.setAttribute('aria-disabled', 'true');
      if (me || !canModerate(conv) || !outranks(conv, nick)) return el('li', null, btn);
      const act = (label, frame, id) => el('button', { type: 'button', class: 'link-btn', 'data-testid': 'member-' + (id || frame.type), 'aria-label': `${label} ${nick}`, text: label, onclick: () => modSend(frame) });
      const isMod = conv.mods.has(lc(nick));
      return el('li', { class: 'member-row' }, btn, el('span', { class: 'mod-actions', role: 'group', 'aria-label': `Moderate ${nick}` },
        act('Kick', { type: 'kick', room: conv.name, nick }),
        act('Mute 10 min', { type: 'mute', room: conv.name, nick, duration: 600 }),
        act('Ban', { type: 'ban', room: conv.name, nick }),
        // Only an account can be appointed: a guest's nick is nobody's.
        canAppoint(conv) && (isMod || conv.registered.has(lc(nick)))
          ? act(isMod ? 'Remove moderator' : 'Make moderator', { type: 'moderator', room: conv.name, nick, on: !isMod }, isMod ? 'unmoderator' : 'moderator') : null,
        state.op ? act('Ban from server', { type: 'ban', nick }, 'server-ban') : null));
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
    const over = n - limits.text;
    sendBtn.disabled = !conv || blank || over > 0;
    input.disabled = !conv;
    const counter = $('counter');
    // Shown from 80 % of the limit on; past it, how much to cut, in words.
    counter.textContent = over > 0 ? `${over} ${over === 1 ? 'character' : 'characters'} over this server’s limit of ${limits.text}`
      : n > Math.min(limits.text - 200, limits.text * 0.8) ? `${n}/${limits.text}` : '';
    counter.hidden = !counter.textContent;
    counter.classList.toggle('over', over > 0);
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
    const marker = opts.toMarker ? list.querySelector('.new-marker') : null;
    if (marker) {
      // Open where the unread part begins, with a little of what came before.
      list.scrollTop = Math.max(0, marker.offsetTop - 80);
    } else if (atBottom || opts.toBottom || !anchorKey) {
      list.scrollTop = list.scrollHeight;
    } else {
      const a = [...list.children].find((li) => li.dataset.key === anchorKey);
      if (a) list.scrollTop = a.offsetTop - anchorOffset;
    }
    if (conv && reading(conv)) markRead(conv);
    updateJump();
    // A short room fills no screen: load older messages until it can scroll.
    if (conv && conv.hasOlder && !conv.loadingOlder && list.scrollHeight <= list.clientHeight + 10) loadOlder(conv);
  }

  // "Jump to latest", with how many unread messages are below.
  function updateJump() {
    const conv = activeConv();
    const j = $('jump');
    const show = !!conv && !atBottomNow();
    j.hidden = !show;
    if (!show) return;
    const text = conv.unread ? `Jump to latest (${conv.unread} new)` : 'Jump to latest';
    if (j.dataset.text !== text) { j.dataset.text = text; j.replaceChildren(document.createTextNode(text + ' '), el('span', { 'aria-hidden': 'true', text: '↓' })); }
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
    for (const p of conv.pending) entries.push({ k: 'p' + p.ref, kind: 'pending', m: { from: state.nick || '', text: p.text, ts: p.ts, reply: p.reply, image: p.image || null }, p });

    const out = [];
    // Top of the list: older pages, or the beginning.
    if (conv.kind === 'room' || conv.stored) {
      if (conv.hasOlder) {
        out.push(el('li', { class: 'loader', 'data-key': 'older' },
          el('button', { type: 'button', class: 'btn ghost small', 'data-testid': 'load-older', disabled: conv.loadingOlder || null,
            onclick: () => loadOlder(conv), text: conv.loadingOlder ? 'Loading older messages…' : 'Load older messages' })));
      } else if (conv.kind === 'dm') {
        out.push(dmBeginning(conv));
      } else if (conv.joined) {
        out.push(el('li', { class: 'beginning', 'data-key': 'begin' },
          el('span', { class: 'beginning-icon', 'aria-hidden': 'true', text: '#' }),
          el('p', { class: 'beginning-title', text: `Welcome to #${conv.name}` }),
          el('p', { text: conv.msgs.size ? 'This is the start of the messages the server keeps for this room.' : 'No messages yet. Say hello!' })));
      }
    } else {
      out.push(dmBeginning(conv));
    }

    let prev = null; // previous message-like entry, for grouping
    let prevDay = null;
    let markerPlaced = conv.markerId === null;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i];
      if (e.kind === 'notice') {
        const ndk = dayKey(e.n.ts);
        if (ndk !== prevDay) {
          out.push(el('li', { class: 'day', role: 'separator', 'data-key': 'd' + ndk, 'aria-label': dayLabel(e.n.ts) },
            el('span', { text: dayLabel(e.n.ts) })));
          prevDay = ndk;
        }
        // Consecutive joins and leaves of one day make one line.
        let j = i;
        if (e.n.presence) {
          while (j + 1 < entries.length && entries[j + 1].kind === 'notice' && entries[j + 1].n.presence && dayKey(entries[j + 1].n.ts) === ndk) j++;
        }
        out.push(j > i ? presenceGroup(conv, entries.slice(i, j + 1)) : noticeItem(e));
        i = j;
        prev = null;
        continue;
      }
      const m = e.m;
      if (!markerPlaced && e.kind === 'msg' && m.id > conv.markerId && !isMe(m.from)) {
        markerPlaced = true;
        out.push(el('li', { class: 'new-marker', role: 'separator', 'data-key': 'new', 'data-testid': 'new-marker', 'aria-label': 'New messages' },
          el('span', { text: 'New messages' })));
        prev = null;
      }
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

  // "alice, bob and carol joined · dave left", or "5 people joined · 2 left";
  // opens to the full list.
  const openGroups = new Set();
  function presenceGroup(conv, run) {
    const joined = [], left = [];
    for (const e of run) {
      const { nick, event } = e.n.presence;
      const into = event === 'join' ? joined : left;
      if (!into.some((x) => lc(x) === lc(nick))) into.push(nick);
    }
    const names = (l) => (l.length <= 3 ? (l.length === 1 ? l[0] : l.slice(0, -1).join(', ') + ' and ' + l[l.length - 1])
      : `${l.length} people`);
    const parts = [];
    if (joined.length) parts.push(`${names(joined)} joined`);
    if (left.length) parts.push(`${left.length <= 3 || !joined.length ? names(left) : left.length} left`);
    const key = run[0].k;
    const d = el('details', { class: 'presence-group', open: openGroups.has(key) || null },
      el('summary', { 'data-testid': 'presence-summary', text: parts.join(' · ') }),
      el('ul', null, ...run.map((e) => el('li', { text: e.n.text }))));
    d.addEventListener('toggle', () => {
      if (d.open) openGroups.add(key); else openGroups.delete(key);
      if (stuckToBottom) list.scrollTop = list.scrollHeight;
    });
    return el('li', { class: 'notice presence grouped', 'data-key': key, 'data-testid': 'notice' }, d);
  }

  function noticeItem(e) {
    const n = e.n;
    const li = el('li', { class: 'notice ' + n.tone, 'data-key': e.k, 'data-testid': 'notice' },
      el('span', { class: 'notice-text', text: n.text }));
    if (n.action) li.append(el('button', { type: 'button', class: 'link-btn', 'data-testid': 'notice-action', onclick: n.action.run, text: n.action.label }));
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
      'data-id': e.kind === 'msg' && (conv.kind === 'room' || m.srv === true) ? m.id : null,
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
        m.registered ? registeredBadge(m.from) : null,
        own ? el('span', { class: 'you-tag', text: 'you' }) : null,
        time));
    } else {
      body.append(el('span', { class: 'sr-only', text: m.from + ': ' }));
    }
    // dir="auto" (and unicode-bidi: isolate in app.css): each message takes
    // its own direction and no bidi control in it reaches what is around it.
    const r = renderText(m.text);
    body.append(el('div', { class: 'text', dir: 'auto', 'data-testid': 'message-text' }, r.frag));
    if (m.image) body.append(imageThumb(m));
    if (r.mentionsMe && !own) { li.classList.add('mentions-me'); li.dataset.mention = 'me'; }
    msgDecorate(conv, e, li, body);
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
    if (!p && e.kind === 'msg' && canModerate(conv)) {
      body.append(el('span', { class: 'mod-actions', role: 'group', 'aria-label': 'Moderate this message' },
        el('button', { type: 'button', class: 'link-btn', 'data-testid': 'msg-delete', 'aria-label': `Delete this message from ${m.from}`, text: 'Delete',
          onclick: () => modSend({ type: 'delete', room: conv.name, id: m.id }) })));
    }
    li.append(body);
    return li;
  }

  // ---------------------------------------------------------------- replies, reactions, edits
  // The server's extensions (docs/protocol.md, "Replies, reactions and
  // edits"). A message may carry `reply_to` with a quote of its parent,
  // `edited` (ms) and `reactions`; `reaction` and `edited` events change
  // them live, and a `moderation` delete (also the author's own) drops a
  // message. Hooks elsewhere: withExtras when a message is stored,
  // msgDecorate when one is drawn, takeReply when one is sent.
  const REACTIONS = [
    ['\u{1F44D}', 'thumbs up'], ['\u2764\uFE0F', 'red heart'], ['\u{1F602}', 'face with tears of joy'], ['\u{1F389}', 'party popper'],
    ['\u{1F62E}', 'face with open mouth'], ['\u{1F622}', 'crying face'], ['\u{1F440}', 'eyes'], ['\u{1F64F}', 'folded hands'],
  ];
  const emojiName = (e) => (REACTIONS.find(([x]) => x === e) || [e, e])[1];
  const msgx = { replyTo: null, editing: null, mine: new Set(), picker: null };
  function withExtras(msg, h) {
    if (Number.isSafeInteger(h.reply_to) && h.reply && typeof h.reply === 'object') {
      msg.reply = { id: h.reply_to, from: String(h.reply.from ?? ''), text: String(h.reply.text ?? ''), deleted: h.reply.deleted === true };
    }
    if (Number.isSafeInteger(h.edited)) { msg.edited = h.edited; msg.text = String(h.text); }
    msg.reactions = Array.isArray(h.reactions)
      ? h.reactions.filter((r) => r && typeof r.emoji === 'string' && Array.isArray(r.nicks))
        .map((r) => ({ emoji: r.emoji, nicks: r.nicks.map(String) }))
      : [];
    return msg;
  }
  const roomMsgs = (conv) => [conv.msgs, ctxView.room === conv.name ? ctxView.msgs : null].filter(Boolean);
  function noteMine(conv, id) { if (Number.isSafeInteger(id)) msgx.mine.add(conv.name + ':' + id); }
  // Mine to edit: sent from this page, or (logged in) under the account's
  // nick. The server decides; a refusal is shown as a toast.
  function isMine(conv, m) {
    return msgx.mine.has(conv.name + ':' + m.id) || (!!state.account && lc(m.from) === lc(state.account) && isMe(m.from));
  }
  function onReaction(m) {
    settle(m.ref);
    const conv = roomConv(String(m.room), false);
    if (!conv || !Number.isSafeInteger(m.id) || typeof m.emoji !== 'string') return;
    const nick = String(m.nick);
    for (const map of roomMsgs(conv)) {
      const msg = map.get(m.id);
      if (!msg) continue;
      msg.reactions = msg.reactions || [];
      let r = msg.reactions.find((x) => x.emoji === m.emoji);
      if (!r) { r = { emoji: m.emoji, nicks: [] }; msg.reactions.push(r); msg.reactions.sort((a, b) => REACTIONS.findIndex(([e]) => e === a.emoji) - REACTIONS.findIndex(([e]) => e === b.emoji)); }
      r.nicks = r.nicks.filter((n) => lc(n) !== lc(nick));
      if (m.on === true) r.nicks.push(nick);
      msg.reactions = msg.reactions.filter((x) => x.nicks.length);
    }
    redrawMsgs(conv);
  }
  function onEdited(m) {
    settle(m.ref);
    const conv = roomConv(String(m.room), false);
    if (!conv || !Number.isSafeInteger(m.id) || typeof m.text !== 'string') return;
    for (const map of roomMsgs(conv)) {
      const msg = map.get(m.id);
      if (msg) { msg.text = m.text; msg.edited = Number(m.edited) || Date.now(); }
      for (const x of map.values()) if (x.reply && x.reply.id === m.id) x.reply.text = excerptOf(m.text);
    }
    redrawMsgs(conv);
  }
  function onMsgDeleted(conv, id) {
    for (const map of roomMsgs(conv)) {
      map.delete(id);
      for (const x of map.values()) if (x.reply && x.reply.id === id) { x.reply.text = ''; x.reply.deleted = true; }
    }
    if (msgx.editing && msgx.editing.room === conv.name && msgx.editing.id === id) msgx.editing = null;
    if (msgx.replyTo && msgx.replyTo.room === conv.name && msgx.replyTo.id === id) setReply(null);
    if (ctxView.room === conv.name) renderContext();
  }
  function redrawMsgs(conv) {
    scheduleRender(conv, { keepAnchor: true });
    if (ctxView.room === conv.name) renderContext();
  }
  // The server's quote: the first 100 characters on one line.
  function excerptOf(text) {
    const chars = [...String(text).replace(/[\n\t]/g, ' ')];
    return chars.length > 100 ? chars.slice(0, 100).join('') + '…' : chars.join('');
  }

  // Replying: a bar over the composer names the message; Escape or × ends it.
  function setReply(target) {
    msgx.replyTo = target;
    let bar = $('reply-bar');
    if (!target) { if (bar) bar.remove(); return; }
    if (!bar) {
      bar = el('div', { class: 'reply-bar', id: 'reply-bar', 'data-testid': 'reply-bar', role: 'status' });
      $('composer').querySelector('.composer-box').before(bar);
    }
    bar.replaceChildren(
      el('span', { class: 'reply-bar-text' }, document.createTextNode('Replying to '), el('strong', { text: target.from }),
        el('span', { class: 'reply-bar-quote', dir: 'auto', text: target.text ? ' — ' + excerptOf(target.text) : '' })),
      el('button', { type: 'button', class: 'icon-btn small', 'aria-label': 'Cancel the reply', 'data-testid': 'reply-cancel', onclick: () => { setReply(null); input.focus(); } }, closeIcon()));
  }
  function takeReply(conv) {
    const t = msgx.replyTo;
    if (!t || conv.kind !== 'room' || t.room !== conv.name) return null;
    setReply(null);
    return { id: t.id, from: t.from, text: excerptOf(t.text) };
  }
  function startReply(conv, m) {
    setReply({ room: conv.name, id: m.id, from: m.from, text: m.text });
    input.focus();
  }

  // Editing happens in place: the text becomes a box; Enter saves, Escape cancels.
  function startEdit(conv, m) {
    msgx.editing = { room: conv.name, id: m.id };
    redrawMsgs(conv);
    requestAnimationFrame(() => { const t = document.querySelector('[data-testid="edit-input"]'); if (t) { t.focus(); t.setSelectionRange(t.value.length, t.value.length); } });
  }
  function saveEdit(conv, m, text) {
    const t = emojify(text.replace(/\r\n?/g, '\n'));
    if (!t.trim()) { toast('An edited message cannot be empty: delete it instead.', 'error'); return; }
    if ([...t].length > limits.text) { toast(`This message is too long: this server takes at most ${limits.text} characters.`, 'error'); return; }
    msgx.editing = null;
    if (t !== m.text) send({ type: 'edit', room: conv.name, id: m.id, text: t, ref: nextRef('e') }, { expect: { kind: 'msgop' } });
    redrawMsgs(conv);
    input.focus();
  }
  function cancelEdit(conv) { msgx.editing = null; redrawMsgs(conv); }
  function deleteOwn(conv, m) {
    if (!window.confirm('Delete this message for everyone? This cannot be undone.')) return;
    send({ type: 'delete', room: conv.name, id: m.id, ref: nextRef('x') }, { expect: { kind: 'msgop' } });
  }
  function react(conv, m, emoji) {
    send({ type: 'react', room: conv.name, id: m.id, emoji, ref: nextRef('r') }, { expect: { kind: 'msgop' } });
  }

  // The reaction picker: one popover, put beside the button that opened it.
  function openPicker(conv, m, btn) {
    closePicker();
    const pop = el('div', { class: 'react-picker', role: 'group', 'aria-label': 'Add a reaction', 'data-testid': 'react-picker' },
      ...REACTIONS.map(([e, name]) => el('button', { type: 'button', class: 'react-pick', 'aria-label': name, title: name, text: e,
        onclick: () => { closePicker(); react(conv, m, e); btn.focus(); } })));
    pop.addEventListener('keydown', (ev) => {
      const all = [...pop.querySelectorAll('button')];
      const i = all.indexOf(document.activeElement);
      if (ev.key === 'Escape') { ev.stopPropagation(); closePicker(); btn.focus(); }
      else if (ev.key === 'ArrowRight' || ev.key === 'ArrowLeft') { ev.preventDefault(); all[(i + (ev.key === 'ArrowRight' ? 1 : all.length - 1)) % all.length].focus(); }
    });
    document.body.append(pop);
    const r = btn.getBoundingClientRect();
    const w = pop.offsetWidth, h = pop.offsetHeight;
    pop.style.left = Math.max(8, Math.min(window.innerWidth - w - 8, r.right - w)) + 'px';
    pop.style.top = (r.top - h - 6 > 8 ? r.top - h - 6 : r.bottom + 6) + 'px';
    msgx.picker = pop;
    pop.querySelector('button').focus();
  }
  function closePicker() { if (msgx.picker) { msgx.picker.remove(); msgx.picker = null; } }
  document.addEventListener('pointerdown', (ev) => {
    if (msgx.picker && !msgx.picker.contains(ev.target) && !ev.target.closest('[data-testid="msg-react"]')) closePicker();
    if (!ev.target.closest('.msg.actions-open')) for (const li of document.querySelectorAll('.msg.actions-open')) li.classList.remove('actions-open');
  });
  window.addEventListener('resize', closePicker);

  // Line icons drawn like the app's others (stroke: currentColor).
  const ACTION_ICONS = {
    react: ['M12 3.5a8.5 8.5 0 1 0 0 17 8.5 8.5 0 0 0 0-17z', 'M8.5 14.5c.9 1.3 2.1 2 3.5 2s2.6-.7 3.5-2', 'M9.2 9.5h.01M14.8 9.5h.01'],
    reply: ['M9 7L4 12l5 5', 'M4 12h10a6 6 0 0 1 6 6v1'],
    edit: ['M15.5 4.5l4 4L9 19H5v-4z', 'M13 7l4 4'],
    delete: ['M4.5 7h15', 'M9.5 7V4.5h5V7', 'M6.5 7l1 12.5h9l1-12.5', 'M10 10.5v6M14 10.5v6'],
  };
  function actionIcon(name) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('class', 'act-icon');
    for (const d of ACTION_ICONS[name]) {
      const p = document.createElementNS(NS, 'path');
      p.setAttribute('d', d);
      svg.append(p);
    }
    return svg;
  }
  // The quote above a reply, the edit mark, the reactions and the actions.
  function msgDecorate(conv, e, li, body) {
    const m = e.m;
    const text = body.querySelector('.text');
    if (m.reply && conv.kind === 'room') {
      const q = m.reply;
      const quote = el('button', { type: 'button', class: 'reply-quote' + (q.deleted ? ' gone' : ''), 'data-testid': 'reply-quote', 'data-reply-to': q.id,
        'aria-label': q.deleted ? 'Reply to a deleted message' : `Reply to ${q.from}: ${q.text}. Show that message`,
        onclick: q.deleted || e.kind !== 'msg' ? null : () => jumpTo(conv.name, q.id) },
        el('span', { class: 'reply-from', text: q.from }),
        el('span', { class: 'reply-text', dir: 'auto', text: q.deleted ? 'Message deleted' : q.text }));
      if (q.deleted || e.kind !== 'msg') quote.disabled = true;
      body.insertBefore(quote, text);
    }
    if (e.kind !== 'msg' || conv.kind !== 'room') return;
    const editing = msgx.editing && msgx.editing.room === conv.name && msgx.editing.id === m.id;
    if (editing) {
      const box = el('textarea', { class: 'edit-input', 'data-testid': 'edit-input', 'aria-label': 'Edit your message', rows: Math.min(8, m.text.split('\n').length) });
      box.value = m.text;
      box.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); saveEdit(conv, m, box.value); }
        else if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); cancelEdit(conv); }
      });
      text.replaceWith(el('div', { class: 'edit-box' }, box,
        el('div', { class: 'edit-help' }, el('span', { text: 'Escape to ' }),
          el('button', { type: 'button', class: 'link-btn', onclick: () => cancelEdit(conv), text: 'cancel' }),
          el('span', { text: ' · Enter to ' }),
          el('button', { type: 'button', class: 'link-btn', 'data-testid': 'edit-save', onclick: () => saveEdit(conv, m, box.value), text: 'save' }))));
    } else if (m.edited) {
      // Inline, after the last line of text (inside its paragraph).
      const last = text.lastElementChild && text.lastElementChild.tagName === 'P' ? text.lastElementChild : text;
      last.append(el('span', { class: 'edited', 'data-testid': 'edited-mark', title: 'Edited ' + fullFmt.format(m.edited), text: ' (edited)' }));
    }
    if (m.reactions && m.reactions.length) {
      body.append(el('div', { class: 'reactions', role: 'group', 'aria-label': 'Reactions' },
        ...m.reactions.map((r) => {
          const me = r.nicks.some((n) => isMe(n) || (state.account && lc(n) === lc(state.account)));
          const who = r.nicks.length <= 5 ? r.nicks.join(', ') : r.nicks.slice(0, 5).join(', ') + ` and ${r.nicks.length - 5} more`;
          return el('button', { type: 'button', class: 'reaction' + (me ? ' mine' : ''), 'data-testid': 'reaction', 'data-emoji': r.emoji,
            'aria-pressed': me ? 'true' : 'false', title: `${who} reacted with ${emojiName(r.emoji)}`,
            'aria-label': `${emojiName(r.emoji)}: ${r.nicks.length} (${who})${me ? ', including you' : ''}`,
            onclick: () => react(conv, m, r.emoji) },
          el('span', { class: 'reaction-emoji', 'aria-hidden': 'true', text: r.emoji }),
          el('span', { class: 'reaction-count', 'data-testid': 'reaction-count', text: String(r.nicks.length) }));
        })));
    }
    if (editing) return;
    const mine = isMine(conv, m);
    const bar = el('div', { class: 'msg-actions', role: 'toolbar', 'aria-label': `Actions for the message from ${m.from}` },
      el('button', { type: 'button', class: 'act', 'data-testid': 'msg-react', 'aria-label': 'Add a reaction', title: 'Add a reaction',
        'aria-haspopup': 'true', onclick: (ev) => openPicker(conv, m, ev.currentTarget) }, actionIcon('react')),
      el('button', { type: 'button', class: 'act', 'data-testid': 'msg-reply', 'aria-label': `Reply to ${m.from}`, title: 'Reply',
        onclick: () => startReply(conv, m) }, actionIcon('reply')),
      mine ? el('button', { type: 'button', class: 'act', 'data-testid': 'msg-edit', 'aria-label': 'Edit your message', title: 'Edit',
        onclick: () => startEdit(conv, m) }, actionIcon('edit')) : null,
      mine && !canModerate(conv) ? el('button', { type: 'button', class: 'act danger', 'data-testid': 'msg-delete-own', 'aria-label': 'Delete your message', title: 'Delete',
        onclick: () => deleteOwn(conv, m) }, actionIcon('delete')) : null);
    li.append(bar);
    // Touch: a long press shows the actions (a tap elsewhere hides them).
    let timer = null;
    li.addEventListener('touchstart', () => { timer = setTimeout(() => li.classList.add('actions-open'), 450); }, { passive: true });
    for (const t of ['touchend', 'touchmove', 'touchcancel']) li.addEventListener(t, () => clearTimeout(timer), { passive: true });
  }

  function announce(text) {
    const live = $('live');
    live.textContent = text.length > 300 ? text.slice(0, 300) + '…' : text;
  }

  function updateTitle() {
    const conv = activeConv();
    let total = 0, men = 0;
    for (const c of state.convs.values()) { total += c.unread; men += c.mentions; }
    const name = conv ? (conv.kind === 'room' ? '#' + conv.name : conv.name) : 'wschat';
    // "(3) #team", or "(3 · @1) #team" when some of them mention you or are private.
    document.title = (total ? `(${total}${men ? ' · @' + men : ''}) ` : '') + name + ' · wschat';
  }

  function toast(text, tone = 'info') {
    const box = $('toasts');
    const t = el('div', { class: 'toast ' + tone, role: tone === 'error' ? 'alert' : 'status', 'data-testid': 'toast' },
      el('span', { text }),
      el('button', { type: 'button', class: 'icon-btn small', 'aria-label': 'Dismiss', onclick: () => t.remove() }, closeIcon()));
    // The same words twice make one toast, shown afresh.
    for (const o of box.children) if (o.firstElementChild && o.firstElementChild.textContent === text) o.remove();
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
    const prev = activeConv();
    if (state.active !== key) { stopTyping(); if (prev) prev.markerId = null; }
    state.active = key;
    save(STORE.active, key);
    const conv = activeConv();
    if (conv && state.active !== (prev && prev.key)) conv.markerId = conv.unread ? conv.readId : null;
    closeCompletion();
    $('typing').dataset.text = '-';
    renderSidebar();
    renderHeader();
    renderMembers();
    renderTyping();
    renderComposer();
    scheduleRender(null, conv && conv.markerId !== null ? { toMarker: true } : { toBottom: true });
    updateTitle();
    if (conv && conv.kind === 'dm') loadDm(conv);
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
    '/topic text — set the room’s topic (moderators)',
    '/slow seconds — slow mode, 0 for off (moderators)',
    '/unban nick — lift a ban from the room (moderators; operators: /unban nick server)',
  ];

  function submitComposer() {
    const conv = activeConv();
    const raw = input.value.replace(/\r\n?/g, '\n');
    if (!raw.trim() || !conv) return;
    if (raw.startsWith('/') && !raw.startsWith('//')) {
      if (runCommand(conv, raw)) { input.value = ''; autosize(); renderComposer(); }
      return;
    }
    const text = emojify(raw.startsWith('//') ? raw.slice(1) : raw);
    const problem = textProblem(conv, text);
    if (problem) { composerError(problem); return; }
    stopTyping();
    sendText(conv, text);
    input.value = '';
    autosize();
    renderComposer();
  }

  // Why `text` cannot be sent to `conv`, in plain words, or null.
  function textProblem(conv, text) {
    const n = [...text].length;
    if (n > limits.text) return `This message is ${n} characters long; this server takes at most ${limits.text}. Shorten it by ${n - limits.text}.`;
    // The whole frame must fit the server's message size, or it closes the connection (1009).
    const frame = conv.kind === 'dm' ? { type: 'dm', to: conv.name, text, ref: 'd000000' } : { type: 'message', room: conv.name, text, ref: 'm000000' };
    const bytes = new TextEncoder().encode(JSON.stringify(frame)).length;
    if (bytes > limits.bytes) return `This message takes ${Math.ceil(bytes / 1024)} KiB to send; this server takes at most ${Math.floor(limits.bytes / 1024)} KiB. Shorten it.`;
    return null;
  }
  // An error about what is in the composer: shown under it, never over the Send button.
  let composerErrorTimer = null;
  function composerError(text) {
    const e = $('composer-error');
    e.textContent = text;
    e.hidden = !text;
    clearTimeout(composerErrorTimer);
    if (text) composerErrorTimer = setTimeout(() => { e.hidden = true; e.textContent = ''; }, 10000);
  }

  function runCommand(conv, raw) {
    const [cmd, ...rest] = raw.trim().split(/\s+/);
    const arg = rest.join(' ');
    switch (cmd.toLowerCase()) {
      case '/join': {
        const room = arg.replace(/^#/, '');
        if (!ROOM_RE.test(room)) { composerError('Room names are 1–64 letters A–Z, digits, _ or - (no spaces).'); return false; }
        joinRoom(room, true);
        return true;
      }
      case '/leave': case '/part': leaveActive(); return true;
      case '/nick': {
        const why = nickProblem(arg);
        if (why) { composerError(why); return false; }
        if (state.conn !== 'online') { composerError('You are offline; try again once connected.'); return false; }
        requestNick(arg);
        return true;
      }
      case '/msg': case '/dm': {
        const m = /^\/\S+\s+(\S+)\s+([\s\S]+)$/.exec(raw.trim());
        if (!m) { composerError('Usage: /msg nick text'); return false; }
        const dc = dmConv(m[1], true);
        sendText(dc, m[2]);
        switchConv(dc.key);
        return true;
      }
      case '/rooms':
        if (state.conn === 'online') send({ type: 'rooms', ref: nextRef('r') }, { expect: { kind: 'rooms' } });
        return true;
      case '/topic': case '/slow': {
        if (!conv || conv.kind !== 'room') { composerError(`${cmd} works in a room.`); return false; }
        if (state.conn !== 'online') { composerError('You are offline; try again once connected.'); return false; }
        if (cmd.toLowerCase() === '/topic') {
          if ([...arg].length > 200) { composerError('A topic is at most 200 characters.'); return false; }
          modSend({ type: 'topic', room: conv.name, topic: arg });
        } else {
          const n = Number(arg || '0');
          if (!Number.isInteger(n) || n < 0 || n > 86400) { composerError('Usage: /slow seconds (0 turns slow mode off)'); return false; }
          modSend({ type: 'slow', room: conv.name, interval: n });
        }
        return true;
      }
      case '/unban': {
        const m = /^(\S+)(?:\s+(server))?$/i.exec(arg);
        if (!m) { composerError('Usage: /unban nick (or, for operators, /unban nick server)'); return false; }
        if (!m[2] && (!conv || conv.kind !== 'room')) { composerError('/unban nick works in a room; /unban nick server lifts a server ban.'); return false; }
        if (state.conn !== 'online') { composerError('You are offline; try again once connected.'); return false; }
        modSend(m[2] ? { type: 'unban', nick: m[1] } : { type: 'unban', room: conv.name, nick: m[1] });
        return true;
      }
      case '/help':
        addNotice(conv, 'Commands: ' + HELP.join(' · ') + '. Start a message with // to send a leading slash.');
        return true;
      default:
        composerError(`Unknown command ${cmd}. Type /help for the list.`);
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
  function dialogShown() { return nickDialog.open; }
  function openNickDialog(errorText) {
    dialogMode = state.everConnected ? 'change' : 'first';
    $('nick-title').textContent = dialogMode === 'first' ? 'Welcome to wschat' : 'Change your nickname';
    $('nick-submit').textContent = dialogMode === 'first' ? 'Start chatting' : 'Save';
    $('nick-cancel').hidden = dialogMode === 'first';
    nickInput.value = dialogMode === 'first' ? (state.desiredNick || '') : (state.nick || '');
    showNickError(errorText || '');
    $('logout-btn').hidden = !(state.account || state.session);
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
    const why = nickProblem(nick);
    if (why) { showNickError(why); return; }
    if ($('password-input').value) { startAuth(false); return; } // Enter in the password field: log in
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
  $('login-btn').addEventListener('click', () => startAuth(false));
  $('register-btn').addEventListener('click', () => startAuth(true));
  $('logout-btn').addEventListener('click', () => logout());
  $('password-input').addEventListener('input', () => showNickError(''));
  nickDialog.addEventListener('close', () => { const c = activeConv(); if (c && reading(c)) markRead(c); });
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

  // ---------------------------------------------------------------- completion (@nick, :emoji:)
  // As you type "@al" or ":sm", a list of the room's members or of emoji
  // opens above the composer: arrows move, Tab or Enter takes, Escape closes.
  const completion = { items: [], index: 0, start: 0, end: 0, kind: null };
  const completeBox = $('complete');
  function closeCompletion() {
    completion.items = [];
    completion.kind = null;
    completeBox.hidden = true;
    input.setAttribute('aria-expanded', 'false');
    input.removeAttribute('aria-activedescendant');
  }
  function updateCompletion() {
    const conv = activeConv();
    const caret = input.selectionStart;
    if (!conv || caret !== input.selectionEnd) { closeCompletion(); return; }
    const before = input.value.slice(0, caret);
    let m = /(?:^|[^\w@])@([A-Za-z0-9_.-]{0,32})$/.exec(before);
    let items = [];
    let kind = null;
    if (m) {
      const q = lc(m[1]);
      const pool = conv.kind === 'room' ? conv.members : [conv.name];
      items = pool.filter((n) => !isMe(n) && lc(n).startsWith(q)).slice(0, 8).map((n) => ({ label: n, insert: '@' + n + ' ', nick: n }));
      kind = 'nick';
    } else if ((m = /(?:^|[\s(])(:([a-z0-9_+-]{2,32}))$/.exec(before))) {
      const q = m[2];
      const names = Object.keys(EMOJI);
      items = [...names.filter((n) => n.startsWith(q)), ...names.filter((n) => !n.startsWith(q) && n.includes(q))]
        .slice(0, 8).map((n) => ({ label: ':' + n + ':', insert: EMOJI[n], emoji: EMOJI[n] }));
      kind = 'emoji';
      m = [m[1], m[1]];
    }
    if (!items.length) { closeCompletion(); return; }
    Object.assign(completion, { items, kind, index: Math.min(completion.kind === kind ? completion.index : 0, items.length - 1), start: caret - m[0].length + (m[0].length - (kind === 'nick' ? m[1].length + 1 : m[1].length)), end: caret });
    renderCompletion();
  }
  function renderCompletion() {
    completeBox.setAttribute('aria-label', completion.kind === 'nick' ? 'Members' : 'Emoji');
    completeBox.replaceChildren(...completion.items.map((it, i) => el('li', {
      id: 'complete-' + i, role: 'option', class: 'complete-item', 'aria-selected': String(i === completion.index),
      'data-testid': 'completion-item',
      onmousedown: (ev) => { ev.preventDefault(); acceptCompletion(i); },
    }, it.nick ? avatar(it.nick, 'xs') : el('span', { class: 'complete-emoji', 'aria-hidden': 'true', text: it.emoji }),
    el('span', { text: it.label }))));
    completeBox.hidden = false;
    input.setAttribute('aria-expanded', 'true');
    input.setAttribute('aria-activedescendant', 'complete-' + completion.index);
  }
  function acceptCompletion(i) {
    const it = completion.items[i];
    if (!it) return;
    const v = input.value;
    input.value = v.slice(0, completion.start) + it.insert + v.slice(completion.end);
    const caret = completion.start + it.insert.length;
    input.setSelectionRange(caret, caret);
    closeCompletion();
    autosize();
    renderComposer();
  }
  // A :shortcode: closed by its colon becomes its emoji at once.
  function replaceShortcodeAtCaret() {
    const caret = input.selectionStart;
    if (caret !== input.selectionEnd) return;
    const before = input.value.slice(0, caret);
    const m = /(?:^|[^\w:]):([a-z0-9_+-]{1,32}):$/.exec(before);
    if (!m || !EMOJI[m[1]] || (before.split('`').length % 2 === 0)) return;
    const start = caret - m[1].length - 2;
    input.value = input.value.slice(0, start) + EMOJI[m[1]] + input.value.slice(caret);
    const c = start + EMOJI[m[1]].length;
    input.setSelectionRange(c, c);
  }
  function insertAtCaret(text) {
    const a = input.selectionStart ?? input.value.length, b = input.selectionEnd ?? a;
    input.value = input.value.slice(0, a) + text + input.value.slice(b);
    input.setSelectionRange(a + text.length, a + text.length);
    autosize();
    renderComposer();
  }

  // ---------------------------------------------------------------- emoji picker
  const picker = $('emoji-picker');
  function togglePicker(open) {
    const show = open ?? picker.hidden;
    if (show && !picker.childElementCount) {
      picker.append(...PICKER.map((n) => el('button', {
        type: 'button', class: 'emoji-cell', title: ':' + n + ':', 'aria-label': n.replace(/_/g, ' '), 'data-testid': 'emoji', text: EMOJI[n],
        onclick: () => { insertAtCaret(EMOJI[n]); togglePicker(false); input.focus(); },
      })));
    }
    picker.hidden = !show;
    $('emoji-toggle').setAttribute('aria-expanded', String(show));
    if (show) picker.querySelector('button').focus();
  }
  $('emoji-toggle').addEventListener('click', () => togglePicker());
  picker.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') { ev.stopPropagation(); togglePicker(false); $('emoji-toggle').focus(); return; }
    const cells = [...picker.querySelectorAll('button')];
    const i = cells.indexOf(document.activeElement);
    const cols = Math.max(1, Math.round(picker.clientWidth / (cells[0]?.offsetWidth || 36)));
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols }[ev.key];
    if (step && i >= 0) { ev.preventDefault(); cells[Math.max(0, Math.min(cells.length - 1, i + step))].focus(); }
  });

  // ---------------------------------------------------------------- notifications panel
  const notifyPanel = $('notify-panel');
  function renderNotify() {
    const conv = activeConv();
    const muted = !!conv && isMuted(conv);
    const btn = $('notify-toggle');
    btn.replaceChildren(bellIcon(muted));
    btn.hidden = !conv;
    btn.classList.toggle('is-muted', muted);
    btn.setAttribute('aria-label', conv ? `Notifications${muted ? ' (muted)' : ''}` : 'Notifications');
    $('mute-conv').checked = muted;
    $('mute-label').textContent = conv ? (conv.kind === 'room' ? `Mute #${conv.name}` : `Mute ${conv.name}`) : 'Mute';
    const can = 'Notification' in window;
    $('pref-notify').checked = state.prefs.notify && can && Notification.permission === 'granted';
    $('pref-notify').disabled = !can;
    $('pref-sound').checked = state.prefs.sound;
    $('notify-hint').textContent = !can ? 'This browser has no desktop notifications.'
      : Notification.permission === 'denied' ? 'Notifications are blocked for this site: allow them in the browser’s site settings.'
        : 'For mentions and private messages while this tab is hidden.';
  }
  function savePrefs() { save(STORE.prefs, state.prefs); renderNotify(); renderSidebar(); }
  function toggleNotifyPanel(open) {
    const show = open ?? notifyPanel.hidden;
    notifyPanel.hidden = !show;
    $('notify-toggle').setAttribute('aria-expanded', String(show));
    if (show) { renderNotify(); $('mute-conv').focus(); }
  }
  $('notify-toggle').addEventListener('click', () => toggleNotifyPanel());
  notifyPanel.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') { ev.stopPropagation(); toggleNotifyPanel(false); $('notify-toggle').focus(); } });
  $('mute-conv').addEventListener('change', (ev) => {
    const conv = activeConv();
    if (!conv) return;
    state.prefs.muted = state.prefs.muted.filter((k) => k !== conv.key);
    if (ev.target.checked) state.prefs.muted.push(conv.key);
    savePrefs();
  });
  $('pref-notify').addEventListener('change', async (ev) => {
    if (!ev.target.checked) { state.prefs.notify = false; savePrefs(); return; }
    let perm = Notification.permission;
    if (perm === 'default') { try { perm = await Notification.requestPermission(); } catch { perm = 'denied'; } }
    state.prefs.notify = perm === 'granted';
    savePrefs();
  });
  $('pref-sound').addEventListener('change', (ev) => {
    state.prefs.sound = ev.target.checked;
    // Made and unlocked here, inside the click: browsers start audio only after a gesture.
    if (state.prefs.sound) ping();
    savePrefs();
  });
  document.addEventListener('pointerdown', (ev) => {
    if (!notifyPanel.hidden && !notifyPanel.contains(ev.target) && !$('notify-toggle').contains(ev.target)) toggleNotifyPanel(false);
    if (!picker.hidden && !picker.contains(ev.target) && !$('emoji-toggle').contains(ev.target)) togglePicker(false);
  });

  // ---------------------------------------------------------------- room directory
  // The server's `rooms` list (rooms with members, and a topic if the server
  // sends one), filtered here; a room is joined from its row.
  const dir = { rooms: null, loading: false };
  const dirDialog = $('dir-dialog');
  const DIR_SHOWN = 200;
  function openDirectory() {
    $('dir-filter').value = '';
    if (!dirDialog.open) dirDialog.showModal();
    $('dir-filter').focus();
    refreshDirectory();
  }
  function refreshDirectory() {
    dir.loading = send({ type: 'rooms', ref: nextRef('r') }, { expect: { kind: 'rooms', directory: true } });
    renderDirectory();
  }
  function renderDirectory() {
    const q = lc($('dir-filter').value.trim().replace(/^#/, ''));
    const all = dir.rooms || [];
    const hits = q ? all.filter((r) => lc(r.name).includes(q) || (r.topic && lc(r.topic).includes(q))) : all;
    $('dir-list').replaceChildren(...hits.slice(0, DIR_SHOWN).map((r) => {
      const mine = roomConv(r.name, false)?.joined;
      return el('li', { class: 'dir-room', 'data-testid': 'dir-room', 'data-room': r.name },
        el('span', { class: 'conv-icon', 'aria-hidden': 'true', text: '#' }),
        el('div', { class: 'dir-text' },
          el('span', { class: 'dir-name', text: r.name }),
          el('span', { class: 'dir-sub', text: `${r.members} ${r.members === 1 ? 'member' : 'members'}` + (r.topic ? ' · ' + r.topic : '') })),
        el('button', { type: 'button', class: 'btn small' + (mine ? ' ghost' : ' primary'), 'data-testid': 'dir-join',
          'aria-label': (mine ? 'Open #' : 'Join #') + r.name, text: mine ? 'Open' : 'Join',
          onclick: () => { dirDialog.close(); joinRoom(r.name, true); closeDrawers(); input.focus(); } }));
    }));
    const st = !state.ws ? 'You are offline; the list shows once connected.'
      : dir.loading && !dir.rooms ? 'Loading rooms…'
        : !all.length ? 'No room has anyone in it. Create one with the + button.'
          : !hits.length ? `No room matches “${q}”.`
            : hits.length > DIR_SHOWN ? `${hits.length} rooms; the first ${DIR_SHOWN} shown: type to narrow them down.`
              : `${hits.length} ${hits.length === 1 ? 'room' : 'rooms'} with people in them`;
    $('dir-status').textContent = st;
  }
  $('browse-rooms').addEventListener('click', openDirectory);
  $('dir-close').addEventListener('click', () => dirDialog.close());
  $('dir-refresh').addEventListener('click', refreshDirectory);
  $('dir-filter').addEventListener('input', renderDirectory);
  dirDialog.addEventListener('click', (ev) => { if (ev.target === dirDialog) dirDialog.close(); });

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
    if (state.roomOrder.length >= limits.rooms && !state.roomOrder.includes(room)) { $('join-error').textContent = `This server lets you be in at most ${limits.rooms} rooms; leave one first.`; return; }
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
  $('jump').addEventListener('click', () => { list.scrollTop = list.scrollHeight; const c = activeConv(); if (c && reading(c)) markRead(c); updateJump(); });
  $('context-close').addEventListener('click', closeContext);
  $('context-view').addEventListener('scroll', () => {
    const v = $('context-view');
    if (v.scrollTop < 120) contextLoad('older');
    if (v.scrollHeight - v.scrollTop - v.clientHeight < 120) contextLoad('newer');
  }, { passive: true });
  $('context-view').addEventListener('keydown', (ev) => { if (ev.key === 'Escape') { ev.stopPropagation(); closeContext(); } });

  $('composer').addEventListener('submit', (ev) => { ev.preventDefault(); submitComposer(); input.focus(); });
  input.addEventListener('keydown', (ev) => {
    if (!completeBox.hidden && completion.items.length) {
      const n = completion.items.length;
      if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
        ev.preventDefault();
        completion.index = (completion.index + (ev.key === 'ArrowDown' ? 1 : n - 1)) % n;
        renderCompletion();
        return;
      }
      if ((ev.key === 'Tab' || ev.key === 'Enter') && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        acceptCompletion(completion.index);
        return;
      }
      if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); closeCompletion(); return; }
    }
    if (ev.key === 'Escape' && msgx.replyTo) { ev.preventDefault(); ev.stopPropagation(); setReply(null); return; }
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      submitComposer();
    }
  });
  input.addEventListener('input', (ev) => {
    if (ev.data === ':') replaceShortcodeAtCaret();
    autosize(); renderComposer(); noteTyping(); updateCompletion();
    if ($('composer-error').textContent && !textProblem(activeConv() || { kind: 'room', name: '' }, input.value)) composerError('');
  });
  input.addEventListener('blur', () => setTimeout(closeCompletion, 150));
  input.addEventListener('click', updateCompletion);

  list.addEventListener('scroll', () => {
    const conv = activeConv();
    if (!conv) return;
    if (list.scrollTop < 120) loadOlder(conv);
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    if (atBottom && reading(conv)) markRead(conv);
    updateJump();
  }, { passive: true });

  // A resize (a phone's keyboard, a rotated screen) keeps a reader who was at the end there.
  let stuckToBottom = true;
  list.addEventListener('scroll', () => { stuckToBottom = atBottomNow(); }, { passive: true });
  new ResizeObserver(() => { if (stuckToBottom && !atBottomNow()) list.scrollTop = list.scrollHeight; }).observe(list);
  window.addEventListener('online', retryNow);
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) return;
    const conv = activeConv();
    if (conv && reading(conv)) { markRead(conv); scheduleRender(conv); }
    updateTitle();
  });

  // One clock for countdowns and for expiring stale typing indicators.
  setInterval(() => {
    if (state.conn === 'reconnecting') renderConn();
    renderTyping();
  }, 500);

  // ---------------------------------------------------------------- images
  // Paste, drop or pick an image: it is uploaded over HTTP (POST /upload,
  // with the session token: only logged-in users upload), then sent as a
  // message naming it (`image`), with the composer's text, or the file's
  // name, as its caption. Shown as a thumbnail that opens full size in a
  // tab of its own (served with a sandbox CSP). See docs/protocol.md, "Images".
  const IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'];
  const IMAGE_MAX = 5 * 1024 * 1024; // the server's default; its 413 says so otherwise
  let uploading = null;
  function imageId(v) {
    return typeof v === 'string' && /^[0-9a-f]{16}$/.test(v) ? v : null;
  }
  function imageThumb(m) {
    const url = '/uploads/' + m.image;
    const img = el('img', { src: url, alt: `Image from ${m.from}`, loading: 'lazy', decoding: 'async', class: 'msg-image', 'data-testid': 'message-image' });
    img.addEventListener('error', () => { img.replaceWith(el('span', { class: 'msg-image-gone', text: 'Image no longer available' })); }, { once: true });
    // A plain click (or Enter) opens the viewer; a middle or modified click
    // still opens the image in a tab of its own, as a link does.
    const a = el('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'msg-image-link', title: 'View full size', 'aria-label': `View the image from ${m.from} full size`, 'aria-haspopup': 'dialog' }, img);
    a.addEventListener('click', (ev) => {
      if (ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return;
      ev.preventDefault();
      openViewer(m, a);
    });
    return a;
  }

  // The image viewer: a modal dialog over the chat with the image at its
  // own size (scaled down to fit the window), who sent it, when, and its
  // caption. Escape, the
  // close button or a click on the image or around it closes it; focus
  // goes back to the thumbnail it was opened from.
  const viewer = { dialog: null, img: null, from: null, when: null, caption: null, open: null, back: null };
  function buildViewer() {
    const d = el('dialog', { class: 'image-viewer', id: 'image-viewer', 'data-testid': 'image-viewer' });
    viewer.from = el('strong', { class: 'viewer-from' });
    viewer.when = el('time', { class: 'viewer-when' });
    viewer.caption = el('p', { class: 'viewer-caption', dir: 'auto', 'data-testid': 'viewer-caption' });
    viewer.open = el('a', { class: 'icon-btn viewer-btn', target: '_blank', rel: 'noopener noreferrer', 'aria-label': 'Open the original in a new tab', title: 'Open the original in a new tab', 'data-testid': 'viewer-original' },
      svgIcon(['M14 4h6v6', 'M20 4l-9 9', 'M18 14v5a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1V7a1 1 0 0 1 1-1h5']));
    const close = el('button', { type: 'button', class: 'icon-btn viewer-btn', 'aria-label': 'Close the image', title: 'Close (Esc)', 'data-testid': 'viewer-close', onclick: () => d.close() }, closeIcon());
    viewer.img = el('img', { class: 'viewer-img', alt: '', 'data-testid': 'viewer-image' });
    d.append(
      el('div', { class: 'viewer-bar' },
        el('div', { class: 'viewer-meta' }, el('div', { class: 'viewer-head' }, viewer.from, viewer.when), viewer.caption),
        viewer.open, close),
      el('div', { class: 'viewer-stage' }, viewer.img));
    // The image and the dark space around it close it; the bar's controls
    // and text do not.
    d.addEventListener('click', (ev) => { if (!ev.target.closest('.viewer-bar')) d.close(); });
    d.addEventListener('close', () => {
      const back = viewer.back;
      viewer.back = null;
      viewer.img.removeAttribute('src');
      // The list may have been drawn anew meanwhile: the same message's thumbnail.
      const el2 = back && (back.link.isConnected ? back.link
        : document.querySelector(`#messages [data-id="${back.id}"] a.msg-image-link, #context-view [data-id="${back.id}"] a.msg-image-link`));
      (el2 || input).focus();
    });
    document.body.append(d);
    viewer.dialog = d;
  }
  function openViewer(m, link) {
    if (!viewer.dialog) buildViewer();
    const url = '/uploads/' + m.image;
    viewer.back = { link, id: m.id };
    viewer.dialog.setAttribute('aria-label', `Image from ${m.from}`);
    viewer.img.src = url;
    viewer.img.alt = `Image from ${m.from}` + (m.text ? `: ${m.text}` : '');
    viewer.from.textContent = m.from;
    viewer.when.dateTime = new Date(m.ts).toISOString();
    viewer.when.textContent = fullFmt.format(m.ts);
    viewer.caption.textContent = m.text || '';
    viewer.caption.hidden = !m.text;
    viewer.open.href = url;
    if (!viewer.dialog.open) viewer.dialog.showModal();
    viewer.dialog.querySelector('[data-testid="viewer-close"]').focus();
  }
  function humanSize(n) {
    return n >= 1048576 ? (n / 1048576).toFixed(1) + ' MB' : Math.max(1, Math.round(n / 1024)) + ' KB';
  }
  function uploadStatus(text) {
    let s = $('upload-status');
    if (!s) {
      s = el('span', { id: 'upload-status', class: 'upload-status', 'data-testid': 'upload-status' });
      $('composer-status').prepend(s);
    }
    s.textContent = text;
    s.hidden = !text;
  }
  function uploadProblem(status, body) {
    if (status === 401) return 'Log in again to share images (your session ended).';
    if (status === 413) return 'This image is too large for this server.';
    if (status === 415) return 'Only PNG, JPEG, GIF and WebP images can be shared.';
    if (status === 429 || status === 507) return (body || '').replace(/^\d+ [^:]*: /, '').trim() || 'Too many images right now; try again later.';
    if (status === 404) return 'This server does not take images.';
    if (status === 0) return 'The upload failed: no connection to the server.';
    return 'The image could not be uploaded; try again.';
  }
  function shareImage(file) {
    const conv = activeConv();
    if (!conv || conv.kind !== 'room') { composerError('Images can be shared in rooms.'); return; }
    if (!state.session) { composerError('Log in or register to share images.'); return; }
    if (!IMAGE_TYPES.includes(file.type)) { composerError('Only PNG, JPEG, GIF and WebP images can be shared.'); return; }
    if (file.size > IMAGE_MAX) { composerError(`This image is ${humanSize(file.size)}; at most ${humanSize(IMAGE_MAX)} can be shared.`); return; }
    if (uploading) { composerError('One image at a time: wait for this upload to finish.'); return; }
    const caption = input.value.replace(/\r\n?/g, '\n').trim();
    const text = emojify(caption) || file.name || 'image';
    const problem = textProblem(conv, text);
    if (problem) { composerError(problem); return; }
    const xhr = new XMLHttpRequest();
    uploading = xhr;
    xhr.open('POST', '/upload');
    xhr.setRequestHeader('Authorization', 'Bearer ' + state.session.token);
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) uploadStatus(`Uploading image… ${Math.round(ev.loaded / ev.total * 100)} %`);
    };
    xhr.onloadend = () => {
      uploading = null;
      uploadStatus('');
      let id = null;
      if (xhr.status === 201) {
        try { id = imageId(JSON.parse(xhr.responseText).id); } catch { id = null; }
      }
      if (!id) { composerError(uploadProblem(xhr.status, xhr.responseText)); return; }
      if (caption && input.value.replace(/\r\n?/g, '\n').trim() === caption) { input.value = ''; autosize(); renderComposer(); }
      sendText(conv, text, id);
    };
    uploadStatus('Uploading image…');
    xhr.send(file);
  }
  function firstImage(list) {
    for (const f of list || []) if (f && f.type && f.type.startsWith('image/')) return f;
    return null;
  }
  (function initImages() {
    const box = document.querySelector('.composer-box');
    const picker = el('input', { type: 'file', accept: IMAGE_TYPES.join(','), hidden: true, 'data-testid': 'image-input' });
    picker.addEventListener('change', () => { const f = picker.files && picker.files[0]; picker.value = ''; if (f) shareImage(f); });
    const btn = el('button', { type: 'button', class: 'icon-btn attach-btn', 'aria-label': 'Share an image', title: 'Share an image', 'data-testid': 'image-button', onclick: () => picker.click() });
    btn.append(svgIcon(['M4 6.5h16v11H4z', 'M4 15l4.5-4.5 4 4 2.5-2.5 5 5', 'M15.5 9.5h.01']));
    box.insertBefore(btn, $('emoji-toggle'));
    box.append(picker);
    input.addEventListener('paste', (ev) => {
      const f = firstImage(ev.clipboardData && ev.clipboardData.files);
      if (f) { ev.preventDefault(); shareImage(f); }
    });
    const composer = $('composer');
    composer.addEventListener('dragover', (ev) => { if (ev.dataTransfer && [...ev.dataTransfer.types].includes('Files')) { ev.preventDefault(); composer.classList.add('dropping'); } });
    composer.addEventListener('dragleave', () => composer.classList.remove('dropping'));
    composer.addEventListener('drop', (ev) => {
      composer.classList.remove('dropping');
      const f = firstImage(ev.dataTransfer && ev.dataTransfer.files);
      if (f) { ev.preventDefault(); shareImage(f); }
    });
  })();
  // ---------------------------------------------------------------- server-kept DMs and read positions
  // Logged in, the server keeps DMs between accounts (`dm` with an `id`,
  // paged with `dm_history`) and the account's read position per room and
  // conversation (`read`, `reads`, `joined.read`), so a reload or another
  // device shows the same conversations and unread counts. Guests keep the
  // contract's live DMs and this device's localStorage positions.
  const READ_SYNC_MS = 500; // at most one `read` per conversation this often
  const readSync = new Map(); // conv key -> conv waiting to send its position

  function dmBeginning(conv) {
    return el('li', { class: 'beginning', 'data-key': 'begin' },
      avatar(conv.name, 'lg'),
      el('p', { class: 'beginning-title', text: conv.name }),
      el('p', { text: conv.stored
        ? `Private messages between you and ${conv.name}. The server keeps them for your accounts: you see them on every device you log in on.`
        : `Private messages between you and ${conv.name}. They are not kept by the server: reloading the page clears them.` }));
  }

  // A DM the server kept: its id orders the conversation.
  function addStoredDm(conv, h) {
    if (!conv.stored) {
      // Live-only messages (seq keys) from before the login would mix with ids.
      conv.stored = true;
      for (const [k, v] of conv.msgs) if (!v.srv) conv.msgs.delete(k);
      if (conv.key === state.active) renderHeader(); // now searchable
    }
    if (h.id > conv.lastId) conv.lastId = h.id;
    if (conv.msgs.has(h.id)) return false;
    conv.msgs.set(h.id, { id: h.id, from: String(h.from), text: h.text, ts: Number(h.ts) || Date.now(), srv: true });
    return true;
  }

  function onStoredDm(m) {
    const from = String(m.from), to = String(m.to ?? '');
    const mine = state.account !== null && lc(from) === lc(state.account);
    const other = mine ? to : from;
    const conv = dmConv(other, true);
    conv.name = other;
    const exp = settle(m.ref);
    if (exp) removePending(conv, m.ref);
    const fresh = addStoredDm(conv, m);
    if (fresh && !mine) {
      noteIncoming(conv, conv.msgs.get(m.id));
      announce(`Private message from ${from}: ${m.text}`);
    } else if (mine) {
      // Written here or on another device: what came before is read.
      conv.markerId = exp ? null : conv.markerId;
      conv.readId = Math.max(conv.readId, m.id);
      recount(conv);
      if (exp) syncRead(conv);
    }
    scheduleRender(conv);
    renderSidebar();
    updateTitle(fresh && !mine);
  }

  // The newest page of a stored conversation, once per connection.
  function loadDm(conv) {
    if (!conv.stored || !state.account || state.conn !== 'online' || conv.dmLoaded || conv.loadingOlder) return;
    conv.loadingOlder = true;
    send({ type: 'dm_history', with: conv.name, before: Number.MAX_SAFE_INTEGER, limit: PAGE, ref: nextRef('dh') },
      { expect: { kind: 'dm_history', with: lc(conv.name) } });
  }
  function loadOlderDm(conv) {
    if (!conv.stored || conv.loadingOlder || !conv.hasOlder || state.conn !== 'online') return;
    const ids = [...conv.msgs.keys()];
    if (!ids.length) return;
    conv.loadingOlder = true;
    send({ type: 'dm_history', with: conv.name, before: Math.min(...ids), limit: PAGE, ref: nextRef('dh') },
      { expect: { kind: 'dm_history', with: lc(conv.name) } });
    scheduleRender(conv, { keepAnchor: true });
  }
  function onDmHistory(m) {
    settle(m.ref);
    if (typeof m.with !== 'string') return;
    const conv = dmConv(m.with, true);
    conv.name = m.with;
    conv.loadingOlder = false;
    const list = (Array.isArray(m.messages) ? m.messages : []).filter(validMessage);
    const first = !conv.dmLoaded;
    conv.dmLoaded = true;
    conv.stored = true;
    for (const h of list) addStoredDm(conv, h);
    if (first || conv.hasOlder) conv.hasOlder = m.complete === false && list.length > 0;
    if (Number.isSafeInteger(m.read)) conv.readId = Math.max(first ? 0 : conv.readId, Math.min(m.read, conv.lastId));
    recount(conv);
    let toMarker = false;
    if (first && conv.key === state.active && conv.unread && conv.markerId === null) { conv.markerId = conv.readId; toMarker = true; }
    scheduleRender(conv, toMarker ? { toMarker: true } : { keepAnchor: !first });
    renderSidebar();
    updateTitle();
    if (conv.jumpTo) continueJump(conv);
  }

  function onDmHistoryError(exp, code, human) {
    const conv = dmConv(exp.with, false);
    if (conv) { conv.loadingOlder = false; scheduleRender(conv); }
    if (code !== 'no_such_account' && code !== 'not_logged_in') toast(human, 'error');
  }

  // `joined` carries the account's position: it wins over this device's.
  function serverReadOnJoin(conv, m, rejoin) {
    if (!Number.isSafeInteger(m.read)) return;
    const id = Math.min(m.read, conv.lastId);
    conv.readId = rejoin ? Math.max(conv.readId, id) : id;
    conv.sentRead = Math.max(conv.sentRead || 0, m.read);
  }

  // Another device (or this one) read further: counts and badges follow.
  function applyRead(conv, id) {
    if (!conv || !Number.isSafeInteger(id)) return;
    conv.sentRead = Math.max(conv.sentRead || 0, id);
    if (id <= conv.readId) return;
    conv.readId = id;
    if (conv.kind === 'dm' && !conv.dmLoaded) conv.unread = Math.max(0, (conv.serverLast || 0) - id);
    else recount(conv);
    if (!conv.unread) conv.markerId = conv.key === state.active ? conv.markerId : null;
    renderSidebar();
    updateTitle();
    if (conv.key === state.active) updateJump();
  }
  function onReadPos(m) {
    settle(m.ref);
    const conv = typeof m.room === 'string' ? roomConv(m.room, false) : (typeof m.with === 'string' ? dmConv(m.with, false) : null);
    applyRead(conv, m.id);
  }

  // After a login: the conversations the server keeps, and positions.
  function onReads(m) {
    for (const r of Array.isArray(m.rooms) ? m.rooms : []) {
      if (r && typeof r.room === 'string') applyRead(roomConv(r.room, false), r.read);
    }
    for (const d of Array.isArray(m.dms) ? m.dms : []) {
      if (!d || typeof d.with !== 'string' || !NICK_RE.test(d.with) || !Number.isSafeInteger(d.last)) continue;
      const conv = dmConv(d.with, true);
      conv.name = d.with;
      conv.stored = true;
      conv.dmLoaded = false; // a new connection: the newest page again
      conv.serverLast = d.last;
      const read = Number.isSafeInteger(d.read) ? d.read : 0;
      conv.readId = Math.max(conv.msgs.size ? conv.readId : 0, read);
      conv.sentRead = read;
      if (conv.msgs.size) recount(conv); else conv.unread = conv.mentions = Math.max(0, d.last - read);
    }
    const want = state.restoreActive;
    state.restoreActive = null;
    if (want && want.startsWith('dm:') && state.convs.has(want) && state.active !== want) switchConv(want);
    else { const c = activeConv(); if (c && c.kind === 'dm') loadDm(c); }
    renderSidebar();
    updateTitle();
  }

  // Tells the server what is read, at most every READ_SYNC_MS per conversation.
  function syncRead(conv) {
    if (!state.account || !conv) return;
    if (conv.kind === 'dm' && !conv.stored) return;
    if (conv.kind === 'room' && !conv.joined) return;
    if (conv.readId <= (conv.sentRead || 0)) return;
    readSync.set(conv.key, conv);
    if (readSync.size === 1) setTimeout(flushReads, READ_SYNC_MS);
  }
  function flushReads() {
    for (const conv of readSync.values()) {
      if (!state.account || state.conn !== 'online' || conv.readId <= (conv.sentRead || 0)) continue;
      const frame = conv.kind === 'dm' ? { type: 'read', with: conv.name, id: conv.readId } : { type: 'read', room: conv.name, id: conv.readId };
      if (send(frame, { droppable: true })) conv.sentRead = conv.readId;
    }
    const left = [...readSync.values()].filter((c) => state.account && c.readId > (c.sentRead || 0));
    readSync.clear();
    // Dropped for the rate limit or a reconnect: tried again later.
    for (const c of left) syncRead(c);
  }

  // ---------------------------------------------------------------- start
  for (const r of state.roomOrder) roomConv(r, true);
  state.restoreActive = state.active; // a DM conversation comes back with `reads`
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
