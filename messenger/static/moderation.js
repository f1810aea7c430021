// The moderators' console at /moderation: the queue of flagged messages and files, Release and
// Reject with a required note, and the audit log. Uses only the public REST API with a token that
// carries the moderator role; text from users reaches the DOM only through textContent.
//
// Live: the socket (moderator sessions join the moderators' room) pushes `moderation:queue_changed`
// with ids only, and the console re-reads the queue through REST. Pushes are hints: the queue is
// also re-read on every (re)connection and every SAFETY_MS, so a lost push never loses an item.
'use strict';

(() => {
  const M = window.Messenger;
  const {$, el, formatSize, formatTime, ApiError, showError, clearError} = M;
  const SAFETY_MS = 60000;  // live: a slow re-read in case a push was lost
  const POLL_MS = 5000;     // no socket.io client on this server: the queue is re-read this often
  const PAGE = 50;
  const MAX_PAGE = 200;  // the queue's largest page: a re-read keeps up to this many items loaded

  // endedToken: the token whose session the server ended (expired), never reconnected with;
  // sessionToken: the token the server's session holds (presented at connect, or refreshed).
  const state = {
    token: M.storedToken.get(), me: null, cursor: null, items: [], timer: null, socket: null, live: false,
    endedToken: '', sessionToken: '',
  };
  const api = M.restClient(() => state.token);
  // At most one re-read in flight and one more queued, however many pushes arrive meanwhile.
  const reread = {running: null, again: false, loud: false};

  function signIn(token) {
    clearError();
    let claims;
    try {
      claims = M.checkedClaims(token);
    } catch (error) {
      showError(error);
      return;
    }
    const sameUser = state.me === claims.sub;
    state.token = token;
    state.me = claims.sub;
    M.storedToken.set(token);
    $('me').textContent = `signed in as ${claims.name ? `${claims.name} (${claims.sub})` : claims.sub}`;
    $('token-clear').hidden = false;
    const roles = Array.isArray(claims.roles) ? claims.roles : [];
    if (!roles.includes('moderator')) {
      showError(new ApiError('moderator_only', 'this console is for moderators; this token has no moderator role'));
      return;
    }
    $('signin').hidden = true;
    $('queue-section').hidden = false;
    $('audit-section').hidden = false;
    if (sameUser && state.socket && state.socket.connected) {
      refreshSession(token);  // the live session takes it; no reconnect, the queue on screen stays
      return;
    }
    connect();
    requestRefresh({quiet: false});
  }

  /**
   * Hand a newer token of the same moderator to the live session (session:refresh). Refused or
   * unanswered, the console does what it did before there was a refresh: it connects again with it.
   */
  function refreshSession(token) {
    const socket = state.socket;
    socket.timeout(20000).emit('session:refresh', {token}, (timeoutError, ack) => {
      if (state.socket !== socket || state.token !== token) return;  // signed out or newer meanwhile
      if (!timeoutError && ack && ack.ok === true) {
        state.sessionToken = token;
        return;
      }
      connect();
      requestRefresh({quiet: false});
    });
  }

  function signOut() {
    M.storedToken.clear();
    disconnect();
    state.token = '';
    $('me').textContent = '';
    $('token-clear').hidden = true;
    $('signin').hidden = false;
    $('queue-section').hidden = true;
    $('audit-section').hidden = true;
    M.setConnection('offline', 'offline');
  }

  // --- transport: pushes over Socket.IO when its client is installed, a re-read every 5 s otherwise

  function connect() {
    disconnect();
    if (!state.live) {
      M.setConnection('polling', `refreshes every ${POLL_MS / 1000} s`);
      state.timer = setInterval(requestRefresh, POLL_MS);
      return;
    }
    M.setConnection('connecting', 'connecting…');
    const socket = M.sessionSocket(state, {
      connected: () => {
        M.setConnection('live', 'live');
        requestRefresh();  // pushes sent while we were away are lost: read what changed
      },
      expired: () => showError(new ApiError('token_expired', 'the token has expired; sign out and sign in with a new one')),
    });
    state.socket = socket;
    // The payload names the item only; what it is, and whether it is still open, is the queue's to say.
    socket.on('moderation:queue_changed', () => requestRefresh());
    state.timer = setInterval(requestRefresh, SAFETY_MS);
  }

  /**
   * The server ended the session (its token expired; the client does not reconnect by itself):
   * go on with a newer token if there is one, never with the ended one; else show it expired.
   */
  function disconnect() {
    if (state.socket) {
      state.socket.removeAllListeners();
      state.socket.disconnect();
      state.socket = null;
    }
    state.sessionToken = '';
    clearInterval(state.timer);
    state.timer = null;
  }

  /** Re-read the queue: joins the re-read in flight, or queues one more after it (bursts coalesce). */
  function requestRefresh({quiet = true} = {}) {
    reread.loud = reread.loud || !quiet;
    if (reread.running) {
      reread.again = true;
      return reread.running;
    }
    reread.running = (async () => {
      try {
        do {
          reread.again = false;
          const loud = reread.loud;
          reread.loud = false;
          await refresh({quiet: !loud});
        } while (reread.again && state.token);
      } finally {
        reread.running = null;
      }
    })();
    return reread.running;
  }

  async function refresh({quiet = false} = {}) {
    try {
      const kind = $('queue-kind').value;
      // As many as are shown (pages added with More items stay), so a re-read drops nothing on screen.
      const limit = Math.min(MAX_PAGE, Math.max(PAGE, state.items.length));
      const page = await api('GET', `/moderation/queue?limit=${limit}${kind ? `&kind=${kind}` : ''}`);
      state.items = page.items;
      state.cursor = page.next_cursor;
      renderQueue();
      await refreshAudit();
      $('queue-updated').textContent = `${state.items.length} open item(s) · updated ${formatTime(new Date().toISOString())}`;
    } catch (error) {
      if (!quiet) showError(error);
    }
  }

  async function more() {
    try {
      const kind = $('queue-kind').value;
      const page = await api('GET', `/moderation/queue?limit=${PAGE}${kind ? `&kind=${kind}` : ''}&cursor=${encodeURIComponent(state.cursor)}`);
      state.items.push(...page.items);
      state.cursor = page.next_cursor;
      renderQueue();
    } catch (error) {
      showError(error);
    }
  }

  function facts(pairs) {
    const list = el('dl', {className: 'facts'});
    for (const [name, value] of pairs) {
      if (value === undefined || value === null || value === '') continue;
      list.append(el('dt', {text: name}), el('dd', {text: value}));
    }
    return list;
  }

  /**
   * Render the queue without disturbing the moderator: an item with a note being typed, or holding
   * the focus, keeps its node (never detached, so the focus, the caret and the note stay); every
   * other item is built afresh. An item decided elsewhere while its note is open stays, marked.
   */
  function renderQueue() {
    const list = $('queue');
    const kept = new Map();
    for (const node of list.querySelectorAll(':scope > li.item')) {
      if (node.querySelector('.decision-form') || node.contains(document.activeElement)) kept.set(node.dataset.id, node);
    }
    const wanted = state.items.map((item) => {
      const node = kept.get(item.id);
      kept.delete(item.id);
      return node || buildItem(item);
    });
    // What is left in `kept` was not in this read: kept in place only if a note is open on it.
    const stays = new Set();
    for (const node of kept.values()) {
      if (!node.querySelector('.decision-form')) continue;
      stays.add(node);
      if (leftTheQueue(node)) markDecidedElsewhere(node);
    }
    const keep = new Set([...wanted, ...stays]);
    for (const child of [...list.children]) if (!keep.has(child)) child.remove();
    let cursor = list.firstChild;
    for (const node of wanted) {
      while (cursor && cursor !== node && stays.has(cursor)) cursor = cursor.nextSibling;
      if (node === cursor) cursor = node.nextSibling;
      else list.insertBefore(node, cursor);
    }
    if (!list.children.length) list.append(el('li', {className: 'muted', text: 'Nothing to review.'}));
    $('queue-more').hidden = !state.cursor;
  }

  /** Whether an item missing from the read has really left the queue (not filtered out, not on a later page). */
  function leftTheQueue(node) {
    const kind = $('queue-kind').value;
    if (kind && node.dataset.kind !== kind) return false;
    if (!state.cursor) return true;  // the read reached the end of the queue
    const last = state.items[state.items.length - 1];
    return Boolean(last) && node.dataset.opened <= last.opened_at;  // oldest first: it would have been read
  }

  function markDecidedElsewhere(node) {
    if (node.classList.contains('decided-elsewhere')) return;
    node.classList.add('decided-elsewhere');
    // Nothing more to decide on it; Cancel (secondary) stays, to let the item go.
    for (const button of node.querySelectorAll('button:not(.secondary)')) button.disabled = true;
    const form = node.querySelector('.decision-form');
    form.prepend(el('p', {className: 'notice inline', text: 'Another moderator has decided this meanwhile; it has left the queue.', attrs: {role: 'status'}}));
  }

  function buildItem(item) {
    const node = el('li', {
      className: `item kind-${item.kind}`,
      attrs: {'data-id': item.id, 'data-target': item.target_id, 'data-kind': item.kind, 'data-opened': item.opened_at},
    });
    const reasons = el('ul', {className: 'reasons', attrs: {'aria-label': 'Reasons'}});
    for (const reason of item.reasons || []) reasons.append(el('li', {text: reason}));
    let releasable = true;
    if (item.kind === 'message') {
      const message = item.message || {};
      node.append(el('h3', {text: `Message from ${message.sender_id || 'unknown'}`}), reasons);
      // The moderator sees the text as its sender wrote it, to judge it.
      node.append(el('div', {className: 'quoted', text: message.deleted ? '(deleted)' : message.text || '(no text)'}));
      node.append(facts([
        ['conversation', item.conversation_id],
        ['sent', formatTime(message.created_at)],
        ['held', message.held ? 'yes: the recipient has not seen it' : 'no'],
        ['found', (message.flag_reasons || []).join(', ')],
        ['files', (message.attachments || []).map((a) => `${a.filename} (${a.status})`).join(', ')],
        ['flagged', formatTime(item.opened_at)],
      ]));
    } else {
      const attachment = item.attachment || {};
      const scan = attachment.scan || {};
      releasable = attachment.status !== 'infected';
      node.append(el('h3', {text: `File ${attachment.filename || item.target_id}`}), reasons);
      if (attachment.status === 'infected') {
        node.append(el('p', {className: 'infected', text: `Infected: ${scan.signature || 'malware found'}. It is quarantined and can only be rejected.`}));
      }
      // Metadata only: the console never offers a download of a file under review.
      node.append(facts([
        ['status', attachment.status],
        ['scan verdict', scan.verdict],
        ['signature', scan.signature],
        ['scanned', formatTime(scan.scanned_at)],
        ['type', attachment.content_type],
        ['size', typeof attachment.size === 'number' ? formatSize(attachment.size) : null],
        ['uploaded by', attachment.uploader_id],
        ['conversation', item.conversation_id || attachment.conversation_id],
        ['flagged', formatTime(item.opened_at)],
      ]));
    }
    const actions = el('div', {className: 'row'});
    if (releasable) actions.append(decisionButton(item, node, 'release', 'Release'));
    actions.append(decisionButton(item, node, 'reject', 'Reject'));
    node.append(actions);
    return node;
  }

  /** Release or Reject: each asks for a note, which the audit log keeps. */
  function decisionButton(item, node, action, label) {
    const button = el('button', {className: action === 'reject' ? 'danger' : '', text: label, attrs: {type: 'button'}});
    button.addEventListener('click', () => {
      node.querySelector('.decision-form')?.remove();
      const id = `note-${item.id}-${action}`.replace(/[^A-Za-z0-9_-]/g, '-');
      const note = el('textarea', {attrs: {id, rows: 2, maxlength: 5000, 'aria-required': 'true'}});
      const confirm = el('button', {text: `Confirm ${action}`, attrs: {type: 'submit'}});
      const cancel = el('button', {className: 'secondary', text: 'Cancel', attrs: {type: 'button'}});
      const problem = el('div', {className: 'error inline', attrs: {role: 'alert'}});
      problem.hidden = true;
      const form = el('form', {className: 'decision-form'}, [
        el('label', {text: `Note for the audit log (required to ${action})`, attrs: {for: id}}), note, problem,
        el('div', {className: 'row end'}, [cancel, confirm]),
      ]);
      cancel.addEventListener('click', () => {
        form.remove();
        if (node.classList.contains('decided-elsewhere')) requestRefresh();  // now it can go
      });
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        if (!note.value.trim()) {
          problem.textContent = 'A note is required.';
          problem.hidden = false;
          note.focus();
          return;
        }
        confirm.disabled = true;
        const path = item.kind === 'message' ? 'messages' : 'attachments';
        try {
          await api('POST', `/moderation/${path}/${encodeURIComponent(item.target_id)}/decision`, {action, note: note.value.trim()});
          form.remove();
          await requestRefresh({quiet: false});
        } catch (error) {
          confirm.disabled = false;
          const shown = M.toApiError(error);
          problem.textContent = `${shown.code}: ${shown.message}`;
          problem.hidden = false;
        }
      });
      node.append(form);
      note.focus();
    });
    return button;
  }

  async function refreshAudit() {
    const page = await api('GET', '/moderation/decisions?limit=50');
    const body = $('audit-body');
    body.replaceChildren();
    for (const decision of page.decisions || []) {
      body.append(el('tr', {attrs: {'data-target': decision.target_id}}, [
        el('td', {text: formatTime(decision.at)}),
        el('td', {text: decision.moderator_name || decision.moderator_id}),
        el('td', {text: `${decision.kind} ${decision.target_id}`}),
        el('td', {text: decision.action}),
        el('td', {text: decision.note}),
        el('td', {text: `${decision.status_before || '?'} → ${decision.status_after || '?'}`}),
      ]));
    }
    if (!body.children.length) body.append(el('tr', {}, [el('td', {text: 'No decisions yet.', attrs: {colspan: 6}})]));
  }

  async function start() {
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token-input').value.trim();
      if (token) signIn(token);
    });
    $('token-clear').addEventListener('click', signOut);
    $('error-close').addEventListener('click', clearError);
    $('queue-refresh').addEventListener('click', () => requestRefresh({quiet: false}));
    $('queue-kind').addEventListener('change', () => requestRefresh({quiet: false}));
    $('queue-more').addEventListener('click', more);
    document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible' && state.me) requestRefresh(); });
    state.live = await M.loadSocketClient();
    document.body.dataset.transport = state.live ? 'socket' : 'polling';
    const handed = M.tokenFromAddress();
    if (handed) state.token = handed;
    if (state.token) signIn(state.token);
    document.body.dataset.ready = 'yes';
  }

  start();
})();
