// Messenger web client: vanilla JavaScript, no build step, no inline code (the page's CSP forbids it).
//
// Security rule for this file: every piece of text that came from a user (messages, file names,
// user and order ids, error messages) reaches the DOM through textContent / createTextNode or an
// attribute, never through innerHTML, so "<img src=x onerror=alert(1)>" is shown, not run.
'use strict';

(() => {
  const API = '/api/v1';
  const TOKEN_KEY = 'messenger.token';
  const SOCKETIO_CLIENT = '/static/socket.io.min.js';
  const POLL_MS = 2000;             // REST polling interval when the socket.io client is not installed
  const ACK_TIMEOUT_MS = 20000;
  const TYPING_RESEND_MS = 2000;    // keep "typing" alive while typing, within the server's rate limit
  const TYPING_IDLE_MS = 3000;      // stop "typing" after this long without a key press
  const TYPING_SHOW_MS = 6000;      // hide someone's indicator if their "stopped" never arrives
  const HISTORY_PAGE = 50;
  const SYNC_PAGE = 500;
  const PART_CONCURRENCY = 3;       // multipart parts uploaded at once
  const DOWNLOAD_IN_PAGE_MAX = 200 * 1024 * 1024;  // larger downloads are left to the browser (see download())
  const DOWNLOADABLE = new Set(['clean', 'ready']);
  const SETTLED = new Set(['clean', 'ready', 'infected', 'rejected', 'failed']);
  const NOT_ATTACHABLE = new Set(['infected', 'rejected']);
  // Where a status lies on the way through the pipeline (unlisted ones, the verdicts, are 3).
  const STATUS_ORDER = {awaiting_upload: 0, uploaded: 1, scanning: 2, ready: 4};
  const STATUS_LABELS = {
    awaiting_upload: 'uploading',
    uploaded: 'waiting for the virus scan',
    scanning: 'scanning for viruses…',
    clean: 'clean',
    ready: 'ready',
    infected: 'blocked: malware found',
    rejected: 'rejected',
    needs_review: 'held for a moderator',
    failed: 'could not be checked',
  };

  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    me: null,                  // the token's `sub`, for display only: the server verifies the token
    socket: null,
    live: false,               // true: Socket.IO; false: REST polling
    conversations: new Map(),  // id -> conversation
    conversationCursor: null,
    current: null,             // the open conversation
    messages: new Map(),       // message id -> message, open conversation only
    syncPoint: 0,              // every change up to this seq is on screen (the `sync` after_seq)
    syncing: false,
    syncSeen: 0,               // highest seq or updated_seq received while a sync runs
    syncAgain: false,
    generation: 0,             // bumped whenever the open conversation changes; stale answers are dropped
    oldestSeq: null,
    lastReadSent: 0,
    attachments: new Map(),    // attachment id -> latest attachment object seen
    pending: new Map(),        // client_id -> {payload, element} of sends not yet acknowledged
    uploads: [],               // files in the composer tray
    pollTimer: null,
    typing: {sentAt: 0, idleTimer: null, hideTimer: null},
    presence: new Map(),
  };

  // --- small DOM helpers -------------------------------------------------------------------

  /** Build an element; `text` always goes through textContent. */
  function el(tag, {className, text, attrs} = {}, children = []) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function formatSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    const units = ['KB', 'MB', 'GB', 'TB'];
    let value = bytes;
    let unit = -1;
    do { value /= 1024; unit += 1; } while (value >= 1024 && unit < units.length - 1);
    return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
  }

  function formatTime(iso) {
    if (!iso) return '';
    const when = new Date(iso);
    const sameDay = when.toDateString() === new Date().toDateString();
    return sameDay ? when.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'}) : when.toLocaleString();
  }

  /** crypto.randomUUID exists only in secure contexts (https, localhost); a LAN http address is not one. */
  function newClientId() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** Only http(s) addresses become links or images (never javascript: or data: from a response). */
  function isWebUrl(value) {
    return typeof value === 'string' && /^https?:\/\//i.test(value);
  }

  // --- errors and notices ------------------------------------------------------------------

  class ApiError extends Error {
    constructor(code, message, details) {
      super(message);
      this.code = code;
      this.details = details || {};
    }
  }

  function toApiError(error) {
    if (error instanceof ApiError) return error;
    if (error && error.error) return new ApiError(error.error.code, error.error.message, error.error);
    return new ApiError('client_error', (error && error.message) || String(error));
  }

  function showError(error) {
    const problem = toApiError(error);
    $('error-text').textContent = `${problem.code}: ${problem.message}`;
    $('error').hidden = false;
  }

  function clearError() {
    $('error').hidden = true;
    $('error-text').textContent = '';
  }

  function showNotice(text) {
    $('notice').textContent = text;
    $('notice').hidden = !text;
  }

  function setConnection(stateName, label) {
    const badge = $('connection');
    badge.dataset.state = stateName;
    badge.textContent = label;
  }

  // --- REST --------------------------------------------------------------------------------

  async function api(method, path, body) {
    const headers = {Authorization: `Bearer ${state.token}`};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(API + path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
    } catch (error) {
      throw new ApiError('network_error', `the service cannot be reached (${error.message})`);
    }
    if (response.status === 204) return null;
    let payload = null;
    try { payload = await response.json(); } catch (_) { /* not JSON: handled below */ }
    if (!response.ok) {
      if (payload && payload.error) throw new ApiError(payload.error.code, payload.error.message, payload.error);
      throw new ApiError('http_error', `HTTP ${response.status}`);
    }
    return payload;
  }

  // --- the token ---------------------------------------------------------------------------

  /** Read the claims without verifying them: only to know who "I" am on screen. */
  function claimsOf(token) {
    const parts = token.split('.');
    if (parts.length !== 3) throw new ApiError('token_invalid', 'that does not look like a token (three dot-separated parts)');
    try {
      const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
      const json = decodeURIComponent(Array.from(atob(base64), (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''));
      return JSON.parse(json);
    } catch (_) {
      throw new ApiError('token_invalid', 'the token payload cannot be read');
    }
  }

  function useToken(token) {
    clearError();
    let claims;
    try {
      claims = claimsOf(token);
    } catch (error) {
      showError(error);
      return;
    }
    if (typeof claims.sub !== 'string' || !claims.sub) {
      showError(new ApiError('token_invalid', 'the token has no subject (sub)'));
      return;
    }
    if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
      showError(new ApiError('token_expired', 'this token has expired; make a new one with messenger token'));
    }
    state.token = token;
    state.me = claims.sub;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('me').textContent = `signed in as ${claims.name ? `${claims.name} (${claims.sub})` : claims.sub}`;
    closeConversation();
    state.conversations.clear();
    connect();
    refreshConversations();
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    disconnect();
    closeConversation();
    state.token = '';
    state.me = null;
    state.conversations.clear();
    renderConversations();
    $('token-input').value = '';
    $('me').textContent = '';
    setConnection('offline', 'offline');
  }

  // --- transport: Socket.IO when its client is installed, REST polling otherwise -----------

  /** The socket.io client is loaded at run time from the service; it may not be installed there. */
  function loadSocketClient() {
    return new Promise((resolve) => {
      const script = document.createElement('script');
      script.src = SOCKETIO_CLIENT;
      script.onload = () => resolve(typeof window.io === 'function');
      script.onerror = () => resolve(false);
      document.head.append(script);
    });
  }

  function connect() {
    disconnect();
    if (!state.token) return;
    if (!state.live) {
      setConnection('polling', 'polling every 2 s');
      state.pollTimer = setInterval(poll, POLL_MS);
      return;
    }
    setConnection('connecting', 'connecting…');
    // auth as a function: every reconnection presents the token in use at that moment.
    const socket = window.io({auth: (cb) => cb({token: state.token})});
    state.socket = socket;
    socket.on('connect', onConnected);
    socket.on('disconnect', (reason) => {
      setConnection('connecting', reason === 'io client disconnect' ? 'offline' : 'reconnecting…');
    });
    socket.on('connect_error', (error) => {
      // A refused token is final (the client does not retry it); a network error is retried.
      if (error && error.data && error.data.code) {
        setConnection('refused', 'token refused');
        showError(new ApiError(error.data.code, error.data.message || error.message));
      } else {
        setConnection('connecting', 'reconnecting…');
      }
    });
    socket.on('message:new', ({message}) => receiveMessage(message, {fresh: false}));
    socket.on('message:updated', ({message}) => receiveMessage(message, {fresh: false}));
    socket.on('attachment:updated', ({attachment}) => receiveAttachment(attachment, {fresh: true}));
    socket.on('receipt', onReceipt);
    socket.on('typing', onTyping);
    socket.on('presence', onPresence);
  }

  function disconnect() {
    if (state.socket) {
      state.socket.removeAllListeners();
      state.socket.disconnect();
      state.socket = null;
    }
    clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  /** Emit with an ack; resolves with the ack's payload, rejects with an ApiError. */
  function call(event, payload) {
    return new Promise((resolve, reject) => {
      if (!state.socket) {
        reject(new ApiError('not_connected', 'not connected'));
        return;
      }
      state.socket.timeout(ACK_TIMEOUT_MS).emit(event, payload, (timeoutError, ack) => {
        if (timeoutError) reject(new ApiError('timeout', `no answer to ${event} in time; try again`));
        else if (!ack || ack.ok !== true) reject(toApiError(ack || {}));
        else resolve(ack);
      });
    });
  }

  async function onConnected() {
    setConnection('live', 'live');
    // Anything may have happened while we were away: catch up on messages and attachment states.
    try {
      if (state.current) await syncCurrent();
      await refreshUnsettledAttachments();
      await refreshConversations();
      if (state.current) queryPresence();
    } catch (error) {
      showError(error);
    }
  }

  let pollRound = 0;
  async function poll() {
    pollRound += 1;
    try {
      if (state.current) await syncCurrent();
      await refreshUnsettledAttachments();
      // New conversations and unread counts elsewhere come from the list, checked less often.
      if (pollRound % 5 === 0) await refreshConversations();
    } catch (error) {
      showError(error);
    }
  }

  /**
   * Everything with seq or updated_seq above what we have, page by page.
   *
   * The sync point only moves once a gap is known to be closed: pages are ordered by seq but
   * selected by seq OR updated_seq, so after a page everything up to its highest *seq* is known,
   * while an edit's higher updated_seq says nothing about the messages in between. Pushes that
   * arrive during a sync are held back the same way until it has finished.
   */
  async function syncCurrent() {
    if (state.syncing) {
      state.syncAgain = true;  // one more round when the running one ends
      return;
    }
    const conversation = state.current;
    const generation = state.generation;
    state.syncing = true;
    state.syncSeen = state.syncPoint;
    let after = state.syncPoint;
    let complete = false;
    try {
      for (let round = 0; round < 100; round += 1) {
        const page = state.live
          ? await call('sync', {conversation_id: conversation.id, after_seq: after, limit: SYNC_PAGE})
          : await api('GET', `/conversations/${encodeURIComponent(conversation.id)}/messages?after_seq=${after}&limit=${SYNC_PAGE}`);
        if (state.generation !== generation) return;
        for (const message of page.messages) receiveMessage(message, {fresh: true});
        const highestSeq = Math.max(after, ...page.messages.map((m) => m.seq));
        if (!page.has_more) {
          complete = true;
          break;
        }
        if (highestSeq === after) break;  // a page of nothing but edits: give up this round, keep the point
        after = highestSeq;
        state.syncPoint = Math.max(state.syncPoint, after);
      }
    } finally {
      // A conversation opened meanwhile has its own state (closeConversation reset it).
      if (state.generation === generation) {
        if (complete) state.syncPoint = Math.max(state.syncPoint, state.syncSeen);
        state.syncing = false;
      }
    }
    if (state.generation !== generation) return;
    markRead();
    if (state.syncAgain) {
      state.syncAgain = false;
      await syncCurrent();
    }
  }

  // --- conversations -----------------------------------------------------------------------

  function counterpartOf(conversation) {
    return conversation.buyer_id === state.me ? conversation.seller_id : conversation.buyer_id;
  }

  function myRoleIn(conversation) {
    return conversation.buyer_id === state.me ? 'buyer' : 'seller';
  }

  async function refreshConversations({more = false} = {}) {
    if (!state.token) return;
    const cursor = more && state.conversationCursor ? `&cursor=${encodeURIComponent(state.conversationCursor)}` : '';
    try {
      const page = await api('GET', `/conversations?limit=20${cursor}`);
      if (!more) state.conversations.clear();
      for (const conversation of page.conversations) state.conversations.set(conversation.id, conversation);
      state.conversationCursor = page.next_cursor;
      renderConversations();
    } catch (error) {
      showError(error);
    }
  }

  let refreshSoonTimer = null;
  function refreshConversationsSoon() {
    clearTimeout(refreshSoonTimer);
    refreshSoonTimer = setTimeout(() => refreshConversations(), 300);
  }

  function previewOf(message) {
    if (!message) return 'no messages yet';
    if (message.deleted) return 'message deleted';
    if (message.text) return message.text.length > 60 ? `${message.text.slice(0, 60)}…` : message.text;
    if (message.attachments && message.attachments.length) return `📎 ${message.attachments.length} file(s)`;
    return '';
  }

  function renderConversations() {
    const list = $('conversations');
    list.replaceChildren();
    for (const conversation of state.conversations.values()) {
      const isOpen = state.current && state.current.id === conversation.id;
      const unread = isOpen ? 0 : conversation.unread_count;
      const item = el('li', {attrs: {'data-id': conversation.id}}, [
        el('button', {className: `conversation${isOpen ? ' open' : ''}`, attrs: {type: 'button'}}, [
          el('span', {className: 'row spread'}, [
            el('span', {className: 'who', text: counterpartOf(conversation)}),
            unread > 0 ? el('span', {className: 'badge', text: unread}) : null,
          ]),
          el('span', {
            className: 'muted small',
            text: `you are the ${myRoleIn(conversation)}${conversation.order_id ? ` · order ${conversation.order_id}` : ''}`,
          }),
          el('span', {className: 'last small', text: previewOf(conversation.last_message)}),
        ]),
      ]);
      item.firstChild.addEventListener('click', () => openConversation(conversation));
      list.append(item);
    }
    if (!state.conversations.size) list.append(el('li', {className: 'muted small', text: 'none yet'}));
    $('more-conversations').hidden = !state.conversationCursor;
  }

  async function openByCounterpart(event) {
    event.preventDefault();
    clearError();
    if (!state.token) {
      showError(new ApiError('token_missing', 'paste a token first'));
      return;
    }
    const counterpart = $('counterpart').value.trim();
    const role = $('role').value;
    const orderId = $('order-id').value.trim();
    const body = role === 'buyer'
      ? {buyer_id: state.me, seller_id: counterpart}
      : {buyer_id: counterpart, seller_id: state.me};
    if (orderId) body.order_id = orderId;
    try {
      const conversation = await api('POST', '/conversations', body);
      state.conversations.set(conversation.id, conversation);
      await openConversation(conversation);
      refreshConversationsSoon();
    } catch (error) {
      showError(error);
    }
  }

  function closeConversation() {
    for (const upload of state.uploads) cancelUpload(upload);
    state.uploads = [];
    renderUploads();
    state.current = null;
    state.messages.clear();
    state.pending.clear();
    state.generation += 1;
    state.syncPoint = 0;
    state.syncing = false;
    state.syncAgain = false;
    state.oldestSeq = null;
    state.lastReadSent = 0;
    for (const node of [...$('messages').querySelectorAll('.message')]) node.remove();
    $('typing').textContent = '';
    $('chat').hidden = true;
    $('empty').hidden = false;
  }

  async function openConversation(conversation) {
    closeConversation();
    clearError();
    state.current = conversation;
    $('chat').hidden = false;
    $('empty').hidden = true;
    $('chat-title').textContent = counterpartOf(conversation);
    $('chat-order').textContent = `you are the ${myRoleIn(conversation)}${conversation.order_id ? ` · order ${conversation.order_id}` : ''}`;
    $('presence').textContent = '';
    renderConversations();
    try {
      const page = await api('GET', `/conversations/${encodeURIComponent(conversation.id)}/messages?limit=${HISTORY_PAGE}`);
      if (state.current !== conversation) return;
      for (const message of page.messages) receiveMessage(message, {fresh: true});
      $('older').hidden = !page.has_more;
      // Live events that raced the history request are covered by one sync from what we now hold.
      if (state.live && state.socket && state.socket.connected) await syncCurrent();
      else markRead();
      queryPresence();
      $('composer-text').focus();
    } catch (error) {
      showError(error);
    }
  }

  async function loadOlder() {
    const conversation = state.current;
    if (!conversation || state.oldestSeq === null) return;
    try {
      const page = await api('GET', `/conversations/${encodeURIComponent(conversation.id)}/messages?before_seq=${state.oldestSeq}&limit=${HISTORY_PAGE}`);
      if (state.current !== conversation) return;
      for (const message of page.messages) receiveMessage(message, {fresh: true, advance: false});
      $('older').hidden = !page.has_more;
    } catch (error) {
      showError(error);
    }
  }

  // --- messages ----------------------------------------------------------------------------

  /**
   * One place for every message, whatever brought it (ack, push, sync, history).
   * `fresh`: read from the database just now, so its attachment states are current; a pushed
   * message carries the states of when it was sent and must not undo a newer attachment:updated.
   * `advance`: false for older history, whose edits say nothing about what came after them.
   */
  function receiveMessage(message, {fresh, advance = true}) {
    for (const attachment of message.attachments || []) receiveAttachment(attachment, {fresh, render: false});
    const conversation = state.conversations.get(message.conversation_id);
    if (conversation) {
      const newer = !conversation.last_message || message.seq >= conversation.last_message.seq;
      if (newer) conversation.last_message = message;
      conversation.last_seq = Math.max(conversation.last_seq || 0, message.seq);
    }
    const isCurrent = state.current && state.current.id === message.conversation_id;
    if (!isCurrent) {
      refreshConversationsSoon();  // unread counts and order come from the server
      return;
    }
    const pending = state.pending.get(message.client_id);
    if (pending && message.sender_id === state.me) {
      pending.element.remove();
      state.pending.delete(message.client_id);
    }
    state.messages.set(message.id, message);
    const changedAt = Math.max(message.seq, message.updated_seq || 0);
    if (!advance) { /* older history: the sync point stays */ }
    else if (state.syncing) state.syncSeen = Math.max(state.syncSeen, changedAt);
    else state.syncPoint = Math.max(state.syncPoint, changedAt);
    state.oldestSeq = state.oldestSeq === null ? message.seq : Math.min(state.oldestSeq, message.seq);
    renderMessage(message);
    if (message.sender_id !== state.me) {
      hideTyping();
      markRead();
    }
    renderConversations();
  }

  function renderMessage(message) {
    const container = $('messages');
    const node = buildMessage(message);
    const existing = container.querySelector(`.message[data-id="${CSS.escape(message.id)}"]`);
    if (existing) {
      existing.replaceWith(node);
      return;
    }
    // Keep seq order: insert before the first message with a higher seq (pending sends stay last).
    const stick = container.scrollHeight - container.scrollTop - container.clientHeight < 40;
    const later = [...container.querySelectorAll('.message[data-seq]')].find((m) => Number(m.dataset.seq) > message.seq);
    container.insertBefore(node, later || container.querySelector('.message.pending') || null);
    if (stick || message.sender_id === state.me) container.scrollTop = container.scrollHeight;
  }

  function buildMessage(message) {
    const mine = message.sender_id === state.me;
    const classes = ['message', mine ? 'mine' : 'theirs', `kind-${message.kind}`];
    if (message.deleted) classes.push('deleted');
    const meta = el('div', {className: 'meta'}, [
      el('span', {className: 'sender', text: mine ? 'you' : message.sender_id}),
      el('span', {text: ` · ${formatTime(message.created_at)}`}),
      message.edited_at && !message.deleted ? el('span', {className: 'edited', text: ' · edited'}) : null,
      message.kind !== 'text' ? el('span', {className: 'kind', text: ` · ${message.kind}`}) : null,
    ]);
    // A file-only message has no text line; a deleted one says so instead of its (now empty) text.
    let body = null;
    if (message.deleted) body = el('div', {className: 'text', text: 'message deleted'});
    else if (message.text || !(message.attachments || []).length) body = el('div', {className: 'text', text: message.text});
    const notes = [];
    if (message.held) notes.push(mine ? 'held for a moderator: not delivered yet' : 'held for a moderator');
    if (message.contacts_masked) notes.push('contact details were hidden');
    const node = el('div', {className: classes.join(' '), attrs: {'data-id': message.id, 'data-seq': message.seq}}, [
      meta,
      body,
      notes.length ? el('div', {className: 'notes small', text: notes.join(' · ')}) : null,
    ]);
    if (!message.deleted && message.attachments && message.attachments.length) {
      const list = el('ul', {className: 'attachments'});
      for (const attachment of message.attachments) list.append(buildAttachment(state.attachments.get(attachment.id) || attachment));
      node.append(list);
    }
    if (mine && !message.deleted) {
      const footer = el('div', {className: 'footer small'});
      if (state.live) {
        const edit = el('button', {className: 'link', text: 'edit', attrs: {type: 'button'}});
        edit.addEventListener('click', () => startEdit(node, message));
        const remove = el('button', {className: 'link', text: 'delete', attrs: {type: 'button'}});
        remove.addEventListener('click', () => confirmDelete(remove, message));
        footer.append(edit, remove);
      }
      footer.append(el('span', {className: 'receipt', attrs: {'data-seq': message.seq}}));
      node.append(footer);
      updateReceipt(node.querySelector('.receipt'));
    }
    return node;
  }

  function startEdit(node, message) {
    const text = node.querySelector('.text');
    const editor = el('textarea', {className: 'editor', attrs: {rows: 2, maxlength: 100000}});
    editor.value = message.text;
    const save = el('button', {text: 'save', attrs: {type: 'button'}});
    const cancel = el('button', {className: 'secondary', text: 'cancel', attrs: {type: 'button'}});
    const form = el('div', {className: 'edit'}, [editor, el('div', {className: 'row'}, [save, cancel])]);
    if (text) text.replaceWith(form); else node.querySelector('.meta').after(form);
    editor.focus();
    cancel.addEventListener('click', () => renderMessage(state.messages.get(message.id) || message));
    save.addEventListener('click', async () => {
      save.disabled = true;
      try {
        const ack = await call('message:edit', {message_id: message.id, text: editor.value});
        receiveMessage(ack.message, {fresh: false});
      } catch (error) {
        save.disabled = false;
        showError(error);
      }
    });
  }

  /** Two clicks instead of confirm(): a native dialog would block the page (and tests). */
  function confirmDelete(button, message) {
    if (button.dataset.armed !== 'yes') {
      button.dataset.armed = 'yes';
      button.textContent = 'really delete?';
      setTimeout(() => {
        button.dataset.armed = '';
        button.textContent = 'delete';
      }, 4000);
      return;
    }
    call('message:delete', {message_id: message.id})
      .then((ack) => receiveMessage(ack.message, {fresh: false}))
      .catch(showError);
  }

  async function sendComposed(event) {
    event.preventDefault();
    clearError();
    const conversation = state.current;
    if (!conversation) return;
    if (state.uploads.some((u) => u.state === 'uploading')) return;  // the button is disabled meanwhile
    const text = $('composer-text').value;
    const ready = state.uploads.filter((u) => u.state === 'done');
    if (!text.trim() && !ready.length) return;
    const payload = {conversation_id: conversation.id, client_id: newClientId(), text};
    if (ready.length) payload.attachment_ids = ready.map((u) => u.attachment.id);
    $('composer-text').value = '';
    state.uploads = state.uploads.filter((u) => u.state !== 'done');
    renderUploads();
    stopTyping();
    const element = el('div', {className: 'message mine pending'}, [
      el('div', {className: 'meta', text: 'sending…'}),
      el('div', {className: 'text', text}),
    ]);
    $('messages').append(element);
    $('messages').scrollTop = $('messages').scrollHeight;
    state.pending.set(payload.client_id, {payload, element});
    await deliver(payload);
  }

  /** Send (or re-send: the same client_id never makes a second message) and settle the pending bubble. */
  async function deliver(payload) {
    const pending = state.pending.get(payload.client_id);
    try {
      const message = state.live
        ? (await call('message:send', payload)).message
        : await api('POST', `/conversations/${encodeURIComponent(payload.conversation_id)}/messages`, payload);
      receiveMessage(message, {fresh: false});
    } catch (error) {
      showError(error);
      if (!pending || !state.pending.has(payload.client_id)) return;
      const problem = toApiError(error);
      const retry = el('button', {className: 'link', text: 'retry', attrs: {type: 'button'}});
      retry.addEventListener('click', () => {
        pending.element.querySelector('.meta').textContent = 'sending…';
        deliver(payload);
      });
      const meta = pending.element.querySelector('.meta');
      meta.replaceChildren(el('span', {className: 'failed', text: `not sent (${problem.code}) `}), retry);
    }
  }

  // --- read receipts, typing, presence -----------------------------------------------------

  function markRead() {
    const conversation = state.current;
    if (!conversation || document.visibilityState !== 'visible') return;
    let highest = 0;
    for (const message of state.messages.values()) {
      if (message.sender_id !== state.me) highest = Math.max(highest, message.seq);
    }
    if (highest <= state.lastReadSent) return;
    state.lastReadSent = highest;
    const request = state.live
      ? call('read', {conversation_id: conversation.id, seq: highest})
      : api('POST', `/conversations/${encodeURIComponent(conversation.id)}/read`, {seq: highest});
    request.catch(() => { state.lastReadSent = 0; });  // try again with the next message
  }

  function onReceipt({conversation_id: conversationId, user_id: userId, seq}) {
    const conversation = state.conversations.get(conversationId) || (state.current && state.current.id === conversationId ? state.current : null);
    if (!conversation) return;
    conversation.read_seq = conversation.read_seq || {};
    conversation.read_seq[userId] = Math.max(conversation.read_seq[userId] || 0, seq);
    if (state.current && state.current.id === conversationId) {
      state.current.read_seq = conversation.read_seq;
      for (const receipt of $('messages').querySelectorAll('.receipt')) updateReceipt(receipt);
    }
  }

  function updateReceipt(node) {
    const conversation = state.current;
    if (!node || !conversation) return;
    const theirs = (conversation.read_seq || {})[counterpartOf(conversation)] || 0;
    const read = theirs >= Number(node.dataset.seq);
    node.textContent = read ? '✓✓ read' : '✓ sent';
    node.classList.toggle('read', read);
  }

  function onComposerInput() {
    if (!state.live || !state.current) return;
    const now = Date.now();
    if (now - state.typing.sentAt > TYPING_RESEND_MS) {
      state.typing.sentAt = now;
      call('typing', {conversation_id: state.current.id, typing: true}).catch(() => { /* rate limited: harmless */ });
    }
    clearTimeout(state.typing.idleTimer);
    state.typing.idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(state.typing.idleTimer);
    if (!state.typing.sentAt || !state.current || !state.live) return;
    state.typing.sentAt = 0;
    call('typing', {conversation_id: state.current.id, typing: false}).catch(() => {});
  }

  function onTyping({conversation_id: conversationId, user_id: userId, typing}) {
    if (!state.current || state.current.id !== conversationId || userId === state.me) return;
    clearTimeout(state.typing.hideTimer);
    if (!typing) {
      hideTyping();
      return;
    }
    $('typing').textContent = `${userId} is typing…`;
    state.typing.hideTimer = setTimeout(hideTyping, TYPING_SHOW_MS);
  }

  function hideTyping() {
    clearTimeout(state.typing.hideTimer);
    $('typing').textContent = '';
  }

  function queryPresence() {
    if (!state.live || !state.current) return;
    const other = counterpartOf(state.current);
    call('presence:query', {user_ids: [other]})
      .then((ack) => (ack.presence || []).forEach(onPresence))
      .catch(() => { /* presence is a nicety */ });
  }

  function onPresence(status) {
    state.presence.set(status.user_id, status);
    if (!state.current || counterpartOf(state.current) !== status.user_id) return;
    const node = $('presence');
    node.classList.toggle('online', Boolean(status.online));
    node.textContent = status.online ? 'online' : status.last_seen ? `last seen ${formatTime(status.last_seen)}` : 'offline';
  }

  // --- attachments: status, preview, download ----------------------------------------------

  function receiveAttachment(attachment, {fresh, render = true}) {
    if (!fresh && state.attachments.has(attachment.id)) return;
    state.attachments.set(attachment.id, attachment);
    if (!render) return;
    for (const node of document.querySelectorAll(`.attachment[data-id="${CSS.escape(attachment.id)}"]`)) {
      node.replaceWith(buildAttachment(attachment));
    }
    // A file waiting in the composer is scanned before it is sent, so the tray follows it too.
    const waiting = state.uploads.filter((u) => u.attachment && u.attachment.id === attachment.id);
    for (const upload of waiting) settleUpload(upload, attachment);
    if (waiting.length) renderUploads();
  }

  /** The later of two views of one attachment (a REST answer and a push can cross). */
  function laterOf(a, b) {
    if (!a) return b;
    if (!b) return a;
    return (STATUS_ORDER[b.status] ?? 3) >= (STATUS_ORDER[a.status] ?? 3) ? b : a;
  }

  /** Record the tray file's latest status; one found infected or rejected can no longer be sent. */
  function settleUpload(upload, attachment) {
    upload.attachment = laterOf(upload.attachment, attachment);
    if (upload.state === 'done' && NOT_ATTACHABLE.has(upload.attachment.status)) upload.state = 'blocked';
  }

  /** After a disconnection, or while polling, ask for every attachment on screen that is still moving. */
  async function refreshUnsettledAttachments() {
    const ids = new Set();
    for (const node of document.querySelectorAll('.attachment[data-id]')) {
      if (!SETTLED.has(node.dataset.status)) ids.add(node.dataset.id);
    }
    for (const id of ids) {
      try {
        receiveAttachment(await api('GET', `/attachments/${encodeURIComponent(id)}`), {fresh: true});
      } catch (_) { /* shown on the next round */ }
    }
  }

  function buildAttachment(attachment) {
    const status = attachment.status;
    const node = el('li', {className: `attachment status-${status}`, attrs: {'data-id': attachment.id, 'data-status': status}});
    if (attachment.preview_url && isWebUrl(attachment.preview_url) && DOWNLOADABLE.has(status)) {
      node.append(el('img', {className: 'preview', attrs: {src: attachment.preview_url, alt: attachment.filename, loading: 'lazy'}}));
    }
    const details = el('div', {className: 'details'}, [
      el('span', {className: 'filename', text: attachment.filename}),
      el('span', {className: 'muted small', text: ` ${formatSize(attachment.size)}`}),
      el('div', {className: 'status small', text: STATUS_LABELS[status] || status}),
    ]);
    if (attachment.scan && attachment.scan.signature) {
      details.append(el('div', {className: 'small', text: `signature: ${attachment.scan.signature}`}));
    }
    if (DOWNLOADABLE.has(status)) {
      // The presigned URL lives for minutes, so it is asked for on each click, not stored in the page.
      const link = el('a', {className: 'download', text: 'download', attrs: {href: '#', role: 'button'}});
      link.addEventListener('click', (event) => {
        event.preventDefault();
        if (link.dataset.busy === 'yes') return;
        link.dataset.busy = 'yes';
        download(attachment, link).finally(() => { link.dataset.busy = ''; });
      });
      details.append(link);
    }
    node.append(details);
    return node;
  }

  /**
   * Files up to DOWNLOAD_IN_PAGE_MAX are fetched by the page (with progress) and saved through a
   * same-origin blob link whose `download` attribute sets the file name, so saving never depends on
   * the S3 endpoint honouring response-content-disposition (old moto, the embedded default's S3,
   * ignores it and would show the file instead). Larger files are not held in memory: the browser
   * goes to the presigned URL, and S3's Content-Disposition: attachment saves it and keeps the page.
   */
  async function download(attachment, link) {
    try {
      const {url} = await api('GET', `/attachments/${encodeURIComponent(attachment.id)}/download?redirect=0`);
      if (!isWebUrl(url)) throw new ApiError('download_failed', 'the service returned an unexpected download address');
      if (attachment.size > DOWNLOAD_IN_PAGE_MAX) {
        const away = el('a', {attrs: {href: url, rel: 'noopener noreferrer'}});
        document.body.append(away);
        away.click();
        away.remove();
        return;
      }
      const blob = await fetchWithProgress(url, (loaded) => {
        link.textContent = `downloading ${Math.floor((loaded / attachment.size) * 100)}%`;
      });
      // octet-stream: a blob URL is same-origin with this page, so it must never render as a document.
      const objectUrl = URL.createObjectURL(new Blob([blob], {type: 'application/octet-stream'}));
      const save = el('a', {attrs: {href: objectUrl, download: attachment.filename}});
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(objectUrl), 60000);
    } catch (error) {
      showError(error);
    } finally {
      link.textContent = 'download';
    }
  }

  function fetchWithProgress(url, onProgress) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open('GET', url);
      request.responseType = 'blob';
      request.onprogress = (event) => onProgress(event.loaded);
      request.onload = () => {
        if (request.status === 200) resolve(request.response);
        else reject(new ApiError('download_failed', `S3 refused the download (HTTP ${request.status})`));
      };
      request.onerror = () => reject(new ApiError('download_failed', 'the download from S3 failed (network or CORS)'));
      request.send();
    });
  }

  // --- uploads: straight to S3, with a progress bar ----------------------------------------

  function addFiles() {
    const input = $('file-input');
    const files = [...input.files];
    input.value = '';  // picking the same file again must fire `change` again
    if (!state.current) return;
    for (const file of files) {
      const upload = {file, state: 'uploading', loaded: 0, attachment: null, requests: new Set(), error: null};
      state.uploads.push(upload);
      runUpload(upload, state.current);
    }
    renderUploads();
  }

  async function runUpload(upload, conversation) {
    try {
      const {attachment, upload: grant} = await api('POST', '/attachments', {
        conversation_id: conversation.id,
        filename: upload.file.name,
        size: upload.file.size,
        content_type: upload.file.type || 'application/octet-stream',
      });
      upload.attachment = attachment;
      let body = {};
      if (grant.method === 'POST') {
        await uploadByPost(upload, grant);
      } else if (grant.method === 'PUT') {
        await uploadByPut(upload, grant);
      } else {
        const parts = await uploadByParts(upload, grant);
        // Without CORS exposing ETag the browser cannot read it; the service then takes S3's own list.
        if (parts.every((p) => p.etag)) body = {parts};
      }
      if (upload.state === 'cancelled') return;
      const completed = await api('POST', `/attachments/${encodeURIComponent(attachment.id)}/complete`, body);
      upload.loaded = upload.file.size;
      upload.state = 'done';
      // The scan may already have reported (attachment:updated) before this answer arrived.
      settleUpload(upload, laterOf(completed, state.attachments.get(attachment.id)));
    } catch (error) {
      if (upload.state === 'cancelled') return;
      upload.state = 'failed';
      upload.error = toApiError(error);
      showError(error);
    }
    renderUploads();
  }

  /** One XMLHttpRequest (fetch cannot report upload progress); resolves with the finished request. */
  function xhr(upload, method, url, body, onProgress, headers = {}) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      upload.requests.add(request);
      request.open(method, url);
      for (const [name, value] of Object.entries(headers)) request.setRequestHeader(name, value);
      request.upload.onprogress = (event) => onProgress(event.loaded);
      request.onload = () => {
        upload.requests.delete(request);
        if (request.status >= 200 && request.status < 300) resolve(request);
        else reject(new ApiError('upload_failed', `S3 refused the upload (HTTP ${request.status})`));
      };
      request.onerror = () => {
        upload.requests.delete(request);
        reject(new ApiError('upload_failed', 'the upload to S3 failed (network or CORS)'));
      };
      request.onabort = () => {
        upload.requests.delete(request);
        reject(new ApiError('upload_cancelled', 'the upload was cancelled'));
      };
      request.send(body);
    });
  }

  async function uploadByPost(upload, grant) {
    const form = new FormData();
    // S3 reads the policy fields first and ignores anything after the file.
    for (const [name, value] of Object.entries(grant.fields)) form.append(name, value);
    form.append('file', upload.file);
    await xhr(upload, 'POST', grant.url, form, (loaded) => {
      // The multipart envelope is a little larger than the file; never show more than 99% before S3 answers.
      upload.loaded = Math.min(loaded, upload.file.size * 0.99);
      renderProgress(upload);
    });
    upload.loaded = upload.file.size;
    renderProgress(upload);
  }

  /** One PUT whose Content-Type and length are signed into the URL (S3 servers without POST policies). */
  async function uploadByPut(upload, grant) {
    await xhr(upload, 'PUT', grant.url, upload.file, (loaded) => {
      upload.loaded = Math.min(loaded, upload.file.size * 0.99);
      renderProgress(upload);
    }, grant.headers);
    upload.loaded = upload.file.size;
    renderProgress(upload);
  }

  async function uploadByParts(upload, grant) {
    const size = upload.file.size;
    const loadedByPart = new Map();
    const queue = [...grant.parts];
    const done = [];
    const worker = async () => {
      while (queue.length) {
        const part = queue.shift();
        const start = (part.part_number - 1) * grant.part_size;
        const blob = upload.file.slice(start, Math.min(start + grant.part_size, size));
        let request;
        for (let attempt = 1; ; attempt += 1) {
          try {
            request = await xhr(upload, 'PUT', part.url, blob, (loaded) => {
              loadedByPart.set(part.part_number, loaded);
              upload.loaded = [...loadedByPart.values()].reduce((a, b) => a + b, 0);
              renderProgress(upload);
            });
            break;
          } catch (error) {
            loadedByPart.set(part.part_number, 0);
            if (attempt >= 2 || upload.state === 'cancelled') throw error;
          }
        }
        loadedByPart.set(part.part_number, blob.size);
        done.push({part_number: part.part_number, etag: request.getResponseHeader('ETag')});
      }
    };
    await Promise.all(Array.from({length: Math.min(PART_CONCURRENCY, queue.length)}, worker));
    return done.sort((a, b) => a.part_number - b.part_number);
  }

  function cancelUpload(upload) {
    if (upload.state !== 'uploading') return;
    upload.state = 'cancelled';
    for (const request of upload.requests) request.abort();
    if (upload.attachment) {
      // Tell the service now rather than leaving the record to expire.
      api('POST', `/attachments/${encodeURIComponent(upload.attachment.id)}/abort`).catch(() => {});
    }
  }

  function percentOf(upload) {
    if (upload.state === 'done') return 100;
    return upload.file.size ? Math.floor((upload.loaded / upload.file.size) * 100) : 0;
  }

  function renderProgress(upload) {
    if (!upload.node) return;
    const percent = percentOf(upload);
    const bar = upload.node.querySelector('progress');
    bar.value = percent;
    bar.dataset.percent = String(percent);
    upload.node.querySelector('.percent').textContent = `${percent}%`;
  }

  function renderUploads() {
    const list = $('uploads');
    list.replaceChildren();
    for (const upload of state.uploads) {
      const percent = percentOf(upload);
      const status = upload.attachment ? upload.attachment.status : null;
      let label = {uploading: 'uploading', failed: 'failed', cancelled: 'cancelled'}[upload.state];
      if (upload.state === 'done') label = status === 'uploaded' ? 'uploaded, ready to send' : `ready to send · ${STATUS_LABELS[status] || status}`;
      if (upload.state === 'blocked') label = `${STATUS_LABELS[status] || status}, will not be sent`;
      const remove = el('button', {className: 'link', text: '×', attrs: {type: 'button', 'aria-label': 'Remove'}});
      remove.addEventListener('click', () => {
        cancelUpload(upload);
        state.uploads = state.uploads.filter((u) => u !== upload);
        renderUploads();
      });
      upload.node = el('li', {className: `upload upload-${upload.state}`, attrs: {'data-state': upload.state}}, [
        el('span', {className: 'filename', text: upload.file.name}),
        el('span', {className: 'muted small', text: ` ${formatSize(upload.file.size)}`}),
        el('progress', {attrs: {max: 100, value: percent, 'data-percent': percent}}),
        el('span', {className: 'percent small', text: `${percent}%`}),
        el('span', {className: 'small', text: upload.error ? `${label}: ${upload.error.message}` : label}),
        remove,
      ]);
      list.append(upload.node);
    }
    $('send').disabled = state.uploads.some((u) => u.state === 'uploading');
  }

  // --- start -------------------------------------------------------------------------------

  async function start() {
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token-input').value.trim();
      if (token) useToken(token);
    });
    $('token-clear').addEventListener('click', forgetToken);
    $('open-form').addEventListener('submit', openByCounterpart);
    $('refresh-conversations').addEventListener('click', () => refreshConversations());
    $('more-conversations').addEventListener('click', () => refreshConversations({more: true}));
    $('older').addEventListener('click', loadOlder);
    $('composer').addEventListener('submit', sendComposed);
    $('composer-text').addEventListener('input', onComposerInput);
    $('composer-text').addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $('composer').requestSubmit();
      }
    });
    $('file-input').addEventListener('change', addFiles);
    $('error-close').addEventListener('click', clearError);
    document.addEventListener('visibilitychange', markRead);

    state.live = await loadSocketClient();
    if (!state.live) {
      showNotice('Live updates are off: this server has no socket.io client installed, so the page checks for new messages every 2 s (no typing indicator, no editing).');
    }
    document.body.dataset.transport = state.live ? 'socket' : 'polling';
    if (state.token) {
      $('token-input').value = state.token;
      useToken(state.token);
    }
    document.body.dataset.ready = 'yes';
  }

  start();
})();
