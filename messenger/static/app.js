// Messenger web app for buyers and sellers: vanilla JavaScript, no build step, no inline code
// (the page's CSP forbids it). Shared helpers are in common.js; the moderation console is
// moderation.js. Text from users reaches the DOM only through textContent (see common.js).
'use strict';

(() => {
  const M = window.Messenger;
  const {$, el, formatSize, formatTime, formatDay, isWebUrl, ApiError, toApiError, showError, clearError} = M;

  const OPEN_KEY = 'messenger.open';
  const POLL_MS = 2000;             // REST polling interval when the socket.io client is not installed
  const ACK_TIMEOUT_MS = 20000;
  // An embedded page asks its host for a fresh token this long before the current one expires at the
  // latest (or at 90 % of its remaining life, whichever is sooner), but never before half of it.
  const REFRESH_LEAD_MS = 60000;
  const TYPING_RESEND_MS = 2000;    // keep "typing" alive while typing, within the server's rate limit
  const TYPING_IDLE_MS = 3000;      // stop "typing" after this long without a key press
  const TYPING_SHOW_MS = 6000;      // hide someone's indicator if their "stopped" never arrives
  const GROUP_MS = 5 * 60 * 1000;   // messages of one sender this close together share one header
  const ANNOUNCE_MS = 1500;         // a screen reader gets each new message on its own
  const HISTORY_PAGE = 50;
  const SYNC_PAGE = 500;
  const PART_CONCURRENCY = 3;       // multipart parts uploaded at once
  const DOWNLOAD_IN_PAGE_MAX = 200 * 1024 * 1024;  // larger downloads are left to the browser (see download())
  const DOWNLOADABLE = new Set(['clean', 'ready']);
  const SETTLED = new Set(['clean', 'ready', 'infected', 'rejected', 'failed']);
  const NOT_ATTACHABLE = new Set(['infected', 'rejected']);
  const DELIVERY_SETTLED = new Set(['blocked', 'accepted', 'revision_requested']);
  // Headers a page may not set on a request; a PUT grant's other headers are sent as given.
  const FORBIDDEN_HEADERS = new Set(['host', 'content-length', 'connection', 'origin', 'referer']);
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
  const DELIVERY_LABELS = {
    pending: 'Pending: the files are being checked',
    ready: 'Ready for the buyer',
    blocked: 'Blocked: a file did not pass the virus scan',
    accepted: 'Accepted',
    revision_requested: 'Revision requested',
  };
  const REASON_LABELS = {email: 'an e-mail address', phone: 'a phone number', url: 'a link', link: 'a link', handle: 'a messenger handle'};

  const embed = window.location.pathname === '/embed';
  const params = new URLSearchParams(window.location.search);

  const state = {
    token: embed ? '' : M.storedToken.get(),
    me: null,                  // the token's `sub`, for display only: the server verifies the token
    myName: null,
    socket: null,
    endedToken: '',            // the token whose session the server ended (expired): never reconnected with
    sessionToken: '',          // the token the server's session holds (presented at connect, or refreshed)
    refreshTimer: null,        // embedded: asks the host for a fresh token before sessionToken expires
    live: false,               // true: Socket.IO; false: REST polling
    conversations: new Map(),  // id -> conversation
    conversationCursor: null,
    filter: 'all',
    inbox: false,              // the server has the contract 1.1 inbox (starred, archived, filters, search)
    blocks: null,              // the user ids I block (GET /blocks), or null until known
    searchWorks: null,         // false once /search answered 404/405
    current: null,             // the open conversation
    messages: new Map(),       // message id -> message, open conversation only
    syncPoint: 0,              // every change up to this seq is on screen (the `sync` after_seq)
    syncing: false,
    syncSeen: 0,               // highest seq or updated_seq received while a sync runs
    syncAgain: false,
    generation: 0,             // bumped whenever the open conversation changes; stale answers are dropped
    oldestSeq: null,
    lastReadSent: 0,
    localRead: new Map(),      // conversation id -> highest seq this page marked read
    attachments: new Map(),    // attachment id -> latest attachment object seen
    deliveries: new Map(),     // delivery id -> delivery
    deliveryFetches: new Map(),
    pending: new Map(),        // client_id -> send (see sendComposed) of sends not yet acknowledged
    typed: 0,                  // sends composed in this tab so far: each send's place in the order typed
    retryAt: 0,                // performance.now() before which this tab sends no message (a refusal's hint)
    held: [],                  // sends waiting for retryAt or for those before them, in the order typed
    draining: false,
    pollTimer: null,
    typing: {sentAt: 0, idleTimer: null, hideTimer: null},
    presence: new Map(),
    announcements: [],
    announcing: false,
  };

  const api = M.restClient(() => state.token);

  // --- upload trays: the composer's and the delivery dialog's ---------------------------------

  const trays = {
    composer: {uploads: [], list: () => $('uploads'), onChange: () => { $('send').disabled = busy(trays.composer); }},
    delivery: {uploads: [], sendWhenReady: false, list: () => $('delivery-uploads'), onChange: () => updateDeliverySend()},
  };
  const busy = (tray) => tray.uploads.some((u) => u.state === 'uploading');
  const readyUploads = (tray) => tray.uploads.filter((u) => u.state === 'done');

  /** crypto.randomUUID exists only in secure contexts (https, localhost); a LAN http address is not one. */
  function newClientId() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // --- who is who --------------------------------------------------------------------------

  function counterpartOf(conversation) {
    return conversation.buyer_id === state.me ? conversation.seller_id : conversation.buyer_id;
  }

  /** Contract 1.1: `counterpart.name` when the service knows it, else the user id. */
  function counterpartName(conversation) {
    const counterpart = conversation.counterpart;
    return (counterpart && counterpart.name) || counterpartOf(conversation);
  }

  function nameOf(userId, conversation) {
    if (userId === state.me) return 'you';
    if (conversation && userId === counterpartOf(conversation)) return counterpartName(conversation);
    return userId;
  }

  function myRoleIn(conversation) {
    return conversation.buyer_id === state.me ? 'buyer' : 'seller';
  }

  function contextOf(conversation) {
    return `you are the ${myRoleIn(conversation)}${conversation.order_id ? ` · order ${conversation.order_id}` : ''}`;
  }

  // --- the token ---------------------------------------------------------------------------

  function useToken(token, {keepOpen = true} = {}) {
    clearError();
    let claims;
    try {
      claims = M.checkedClaims(token);
    } catch (error) {
      showError(error);
      if (embed) askHostForToken();
      return;
    }
    const sameUser = state.me === claims.sub;
    state.token = token;
    state.me = claims.sub;
    state.myName = claims.name || null;
    if (!embed) M.storedToken.set(token);  // an embedded page keeps it in memory only
    $('me').textContent = `signed in as ${claims.name ? `${claims.name} (${claims.sub})` : claims.sub}`;
    $('token-clear').hidden = embed;
    $('signin').hidden = true;
    $('inbox').hidden = false;
    if (sameUser && state.socket) {
      // A refreshed token for the same person. A live session takes it as it is (session:refresh);
      // otherwise the socket's auth() reads it at the next connection. A socket the server ended
      // (its token expired) or refused does not come back by itself: it goes on with this one.
      if (state.socket.connected) {
        if (token !== state.sessionToken) refreshSession(token);
      } else if (!state.socket.active) {
        M.setConnection('connecting', 'connecting…');
        state.socket.connect();
      }
      return;
    }
    forgetHeldSends();
    closeConversation();
    state.conversations.clear();
    connect();
    state.blocks = null;
    loadBlocks();
    refreshConversations().then(() => (keepOpen ? reopen() : null));
  }

  function forgetToken() {
    M.storedToken.clear();
    sessionStorage.removeItem(OPEN_KEY);
    disconnect();
    forgetHeldSends();
    closeConversation();
    state.token = '';
    state.me = null;
    state.conversations.clear();
    renderConversations();
    $('token-input').value = '';
    $('me').textContent = '';
    $('token-clear').hidden = true;
    $('signin').hidden = false;
    $('inbox').hidden = true;
    $('empty').hidden = true;
    M.setConnection('offline', 'offline');
  }

  // --- embedding: the host page hands the token over by postMessage ---------------------------

  function embedOrigins() {
    const meta = document.querySelector('meta[name="messenger-embed-origins"]');
    return (meta ? meta.content : '').split(/\s+/).filter(Boolean);
  }

  function askHostForToken() {
    // Nothing secret in this message, so any parent may read it; the token only comes back from an allowed one.
    if (window.parent !== window) window.parent.postMessage({type: 'messenger:ready'}, '*');
  }

  function listenToHost() {
    const allowed = new Set(embedOrigins());
    window.addEventListener('message', (event) => {
      if (event.source !== window.parent || !allowed.has(event.origin)) return;
      const data = event.data || {};
      if (data.type === 'messenger:auth' && typeof data.token === 'string') useToken(data.token);
    });
    $('token-form').hidden = true;
    $('embed-waiting').hidden = false;
    document.body.classList.add('embedded');
    askHostForToken();
  }

  /** `?conversation=ID`, or `?with=USER&role=buyer|seller&order=ORDER`: one conversation, no inbox. */
  async function openFromAddress() {
    const id = params.get('conversation');
    if (id) {
      await openConversation(await api('GET', `/conversations/${encodeURIComponent(id)}`));
      return true;
    }
    const other = params.get('with');
    if (!other) return false;
    const body = params.get('role') === 'seller' ? {buyer_id: other, seller_id: state.me} : {buyer_id: state.me, seller_id: other};
    if (params.get('order')) body.order_id = params.get('order');
    await openConversation(await api('POST', '/conversations', body));
    return true;
  }

  /** After a reload, the conversation that was open is open again. */
  async function reopen() {
    try {
      if (embed) {
        if (await openFromAddress()) document.body.classList.add('single');
        return;
      }
      const id = sessionStorage.getItem(OPEN_KEY);
      if (!id) return;
      const conversation = state.conversations.get(id) || await api('GET', `/conversations/${encodeURIComponent(id)}`);
      await openConversation(conversation);
    } catch (error) {
      sessionStorage.removeItem(OPEN_KEY);
      showError(error);
    }
  }

  // --- transport: Socket.IO when its client is installed, REST polling otherwise -----------

  function connect() {
    disconnect();
    if (!state.token) return;
    if (!state.live) {
      M.setConnection('polling', 'polling every 2 s');
      state.pollTimer = setInterval(poll, POLL_MS);
      return;
    }
    M.setConnection('connecting', 'connecting…');
    const socket = M.sessionSocket(state, {
      connected: () => {
        scheduleTokenRefresh();
        onConnected();
      },
      refused: () => { if (embed) askHostForToken(); },
      expired: () => {
        showError(new ApiError('token_expired', embed
          ? 'the session has expired; waiting for a new token from the page'
          : 'the token has expired; sign out and sign in with a new one'));
        if (embed) askHostForToken();
      },
    });
    state.socket = socket;
    socket.on('message:new', ({message}) => receiveMessage(message, {fresh: false, live: true}));
    socket.on('message:updated', ({message}) => receiveMessage(message, {fresh: false}));
    socket.on('attachment:updated', ({attachment}) => receiveAttachment(attachment, {fresh: true}));
    socket.on('delivery:updated', ({delivery}) => receiveDelivery(delivery));
    socket.on('receipt', onReceipt);
    socket.on('typing', onTyping);
    socket.on('presence', onPresence);
  }

  /**
   * The server ended the session (its token expired; the client does not reconnect by itself).
   * Go on at once with a newer token if the page has one (the socket's auth() presents it); never
   * again with the token that was ended, so an expired token cannot loop. Otherwise the token is
   * shown as expired, as a refused one is, and an embedded page asks its host for a fresh one.
   */
  /**
   * Hand a newer token of the same user to the live session, so it outlasts the old one without a
   * reconnect (no blip, no re-sync). Refused (or unanswered), nothing changes here: the session ends
   * at the old token's exp and goes on with this one, as without a refresh.
   */
  function refreshSession(token) {
    const socket = state.socket;
    call('session:refresh', {token}).then(() => {
      if (state.socket !== socket || state.token !== token) return;  // signed out or newer meanwhile
      state.sessionToken = token;
      scheduleTokenRefresh();
    }, () => { /* see above: the expiry path takes over */ });
  }

  /** Embedded: ask the host for a fresh token a little before the session's token expires. */
  function scheduleTokenRefresh() {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = null;
    if (!embed || !state.sessionToken) return;
    let exp;
    try {
      exp = M.claimsOf(state.sessionToken).exp;
    } catch (_) {
      return;
    }
    if (typeof exp !== 'number') return;
    const left = exp * 1000 - Date.now();
    if (left <= 0) return;  // already expired: the server ends the session and the page asks then
    // Never before half the remaining life, so a host handing out short tokens is not asked in a loop.
    const wait = Math.max(left / 2, Math.min(left - REFRESH_LEAD_MS, left * 0.9));
    state.refreshTimer = setTimeout(askHostForToken, Math.min(wait, 2 ** 31 - 1));
  }

  function disconnect() {
    if (state.socket) {
      state.socket.removeAllListeners();
      state.socket.disconnect();
      state.socket = null;
    }
    state.sessionToken = '';
    clearTimeout(state.refreshTimer);
    state.refreshTimer = null;
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
    M.setConnection('live', 'live');
    // Anything may have happened while we were away: catch up on messages, files and deliveries.
    try {
      if (state.current) await syncCurrent();
      await refreshUnsettled();
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
      await refreshUnsettled();
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
        for (const message of page.messages) receiveMessage(message, {fresh: true, live: round === 0 && after > 0});
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

  // --- the inbox -----------------------------------------------------------------------------

  /** Unread as this page knows it: the server's count, minus what this page has just marked read. */
  function unreadOf(conversation) {
    const isOpen = state.current && state.current.id === conversation.id && document.visibilityState === 'visible';
    if (isOpen) return 0;
    const readHere = state.localRead.get(conversation.id) || 0;
    const left = (conversation.last_seq || 0) - readHere;
    return Math.max(0, Math.min(conversation.unread_count || 0, left));
  }

  function updateTitle() {
    let total = 0;
    for (const conversation of state.conversations.values()) total += unreadOf(conversation);
    document.title = total > 0 ? `(${total}) Messenger` : 'Messenger';
  }

  async function refreshConversations({more = false} = {}) {
    if (!state.token) return;
    const cursor = more && state.conversationCursor ? `&cursor=${encodeURIComponent(state.conversationCursor)}` : '';
    const filter = state.inbox && state.filter !== 'all' ? `&filter=${state.filter}` : '';
    try {
      const page = await api('GET', `/conversations?limit=20${filter}${cursor}`);
      if (!more) state.conversations.clear();
      for (const conversation of page.conversations) state.conversations.set(conversation.id, conversation);
      state.conversationCursor = page.next_cursor;
      // Contract 1.1 conversations carry `starred` and `archived`; an older server has no inbox tools.
      const first = page.conversations[0];
      if (first) setInboxSupport('starred' in first && 'archived' in first);
      renderConversations();
    } catch (error) {
      showError(error);
    }
  }

  /** Filters, search, Star, Archive and Mark unread come with contract 1.1; an older server shows none of them. */
  function setInboxSupport(supported) {
    state.inbox = supported;
    $('filters').hidden = !supported;
    if (!supported) $('search-form').hidden = true;
    else if (state.searchWorks !== false) $('search-form').hidden = false;
    renderChatActions();
  }

  let refreshSoonTimer = null;
  function refreshConversationsSoon() {
    clearTimeout(refreshSoonTimer);
    refreshSoonTimer = setTimeout(() => refreshConversations(), 300);
  }

  function previewOf(message) {
    if (!message) return 'no messages yet';
    if (message.deleted) return 'message deleted';
    if (message.held && message.sender_id !== state.me) return 'waiting for a moderator';
    if (message.kind === 'delivery') return `Delivery${message.text ? `: ${message.text.slice(0, 50)}` : ''}`;
    if (message.text) return message.text.length > 60 ? `${message.text.slice(0, 60)}…` : message.text;
    if (message.attachments && message.attachments.length) return `${message.attachments.length} file(s)`;
    return '';
  }

  function renderConversations() {
    const list = $('conversations');
    list.replaceChildren();
    for (const conversation of state.conversations.values()) {
      const isOpen = state.current && state.current.id === conversation.id;
      const unread = unreadOf(conversation);
      const name = counterpartName(conversation);
      const button = el('button', {
        className: `conversation${isOpen ? ' open' : ''}`,
        attrs: {type: 'button', 'aria-current': isOpen ? 'true' : null},
      }, [
        el('span', {className: 'row spread'}, [
          el('span', {className: 'who', text: `${conversation.starred ? '★ ' : ''}${name}`}),
          unread > 0 ? el('span', {className: 'badge'}, [document.createTextNode(String(unread)), el('span', {className: 'sr-only', text: ' unread'})]) : null,
        ]),
        el('span', {className: 'muted small', text: contextOf(conversation)}),
        el('span', {className: 'last small', text: previewOf(conversation.last_message)}),
        (conversation.labels || []).length
          ? el('span', {className: 'labels small'}, conversation.labels.map((label) => el('span', {className: 'label', text: label})))
          : null,
      ]);
      button.addEventListener('click', () => openConversation(conversation));
      list.append(el('li', {attrs: {'data-id': conversation.id, 'data-unread': unread}}, [button]));
    }
    if (!state.conversations.size) list.append(el('li', {className: 'muted small', text: 'No conversations yet'}));
    $('more-conversations').hidden = !state.conversationCursor;
    updateTitle();
  }

  function setFilter(filter) {
    state.filter = filter;
    for (const button of document.querySelectorAll('#filters .filter')) {
      button.setAttribute('aria-pressed', String(button.dataset.filter === filter));
    }
    refreshConversations();
  }

  /** Star / Archive (contract 1.1). An older server answers 404/405: the buttons go away quietly. */
  async function patchCurrent(change) {
    const conversation = state.current;
    if (!conversation) return;
    try {
      const updated = await api('PATCH', `/conversations/${encodeURIComponent(conversation.id)}`, change);
      Object.assign(conversation, updated);
      state.conversations.set(conversation.id, conversation);
      renderChatActions();
      refreshConversationsSoon();
    } catch (error) {
      if (M.isMissingRoute(error)) setInboxSupport(false);
      else showError(error);
    }
  }

  async function search(event) {
    event.preventDefault();
    const q = $('search-input').value.trim();
    if (!q) return;
    try {
      const page = await api('GET', `/search?q=${encodeURIComponent(q)}&limit=20`);
      const list = $('search-list');
      list.replaceChildren();
      for (const result of page.results || []) {
        const conversation = state.conversations.get(result.conversation_id);
        const button = el('button', {className: 'conversation', attrs: {type: 'button'}}, [
          el('span', {className: 'who', text: conversation ? counterpartName(conversation) : result.conversation_id}),
          el('span', {className: 'last small', text: previewOf(result.message)}),
        ]);
        button.addEventListener('click', async () => {
          try {
            await openConversation(conversation || await api('GET', `/conversations/${encodeURIComponent(result.conversation_id)}`));
          } catch (error) { showError(error); }
        });
        list.append(el('li', {}, [button]));
      }
      if (!list.children.length) list.append(el('li', {className: 'muted small', text: 'Nothing found'}));
      $('search-results').hidden = false;
    } catch (error) {
      // Search comes with contract 1.1; on an older server the box goes away quietly.
      if (M.isMissingRoute(error)) {
        state.searchWorks = false;
        $('search-form').hidden = true;
      }
      else showError(error);
    }
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
      $('new-conversation').open = false;
      refreshConversationsSoon();
    } catch (error) {
      showError(error);
    }
  }

  // --- the open conversation ---------------------------------------------------------------------

  function showScreen(screen) {
    $('layout').dataset.screen = screen;
  }

  function closeConversation() {
    for (const tray of Object.values(trays)) {
      for (const upload of tray.uploads) cancelUpload(upload);
      tray.uploads = [];
      renderUploads(tray);
    }
    state.current = null;
    state.messages.clear();
    state.pending.clear();
    state.generation += 1;
    state.syncPoint = 0;
    state.syncing = false;
    state.syncAgain = false;
    state.oldestSeq = null;
    state.lastReadSent = 0;
    $('messages').replaceChildren();
    $('typing').textContent = '';
    $('chat').hidden = true;
    $('empty').hidden = !state.token;
    showScreen('list');
  }

  function renderChatActions() {
    const conversation = state.current;
    const inbox = Boolean(conversation && state.inbox);
    $('star').hidden = !inbox;
    $('archive').hidden = !inbox;
    $('mark-unread').hidden = !inbox;
    if (conversation) {
      $('star').setAttribute('aria-pressed', String(Boolean(conversation.starred)));
      $('archive').setAttribute('aria-pressed', String(Boolean(conversation.archived)));
    }
    $('deliver').hidden = !(conversation && conversation.order_id && myRoleIn(conversation) === 'seller');
    renderBlock();
  }

  /** Block (contract 1.1): my own block of this conversation's other side, and what it means here. */
  function renderBlock() {
    const conversation = state.current;
    const known = Boolean(conversation && state.inbox && state.blocks);
    const blocking = known && state.blocks.has(counterpartOf(conversation));
    $('block').hidden = !known;
    $('block').setAttribute('aria-pressed', String(blocking));
    const notice = $('block-notice');
    notice.hidden = !blocking;
    notice.textContent = blocking
      ? `You block ${counterpartName(conversation)}: neither of you can send messages here until you unblock.`
      : '';
    for (const id of ['composer-text', 'send', 'attach']) $(id).disabled = blocking;
  }

  async function loadBlocks() {
    try {
      const answer = await api('GET', '/blocks');
      state.blocks = new Set((answer.blocks || []).map((block) => block.user_id));
    } catch (error) {
      state.blocks = null;  // an older server has no blocks: the button stays hidden
      if (!M.isMissingRoute(error)) showError(error);
    }
    renderBlock();
  }

  async function toggleBlock() {
    const conversation = state.current;
    if (!conversation || !state.blocks) return;
    const other = counterpartOf(conversation);
    try {
      if (state.blocks.has(other)) {
        await api('DELETE', `/blocks/${encodeURIComponent(other)}`);
        state.blocks.delete(other);
      } else {
        await api('POST', '/blocks', {user_id: other});
        state.blocks.add(other);
      }
      renderBlock();
    } catch (error) {
      showError(error);
    }
  }

  async function openConversation(conversation) {
    closeConversation();
    clearError();
    state.current = conversation;
    if (!embed) sessionStorage.setItem(OPEN_KEY, conversation.id);
    $('chat').hidden = false;
    $('empty').hidden = true;
    $('search-results').hidden = true;
    showScreen('conversation');
    $('chat-title').textContent = counterpartName(conversation);
    $('chat-order').textContent = contextOf(conversation);
    $('presence').textContent = '';
    renderChatActions();
    renderConversations();
    // Sends of this conversation still waiting out a busy hint come back with their countdown.
    for (const send of state.held) {
      if (send.payload.conversation_id !== conversation.id) continue;
      state.pending.set(send.payload.client_id, send);
      $('messages').append(send.element);
    }
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

  // --- announcing new messages, one at a time ------------------------------------------------

  function announce(text) {
    state.announcements.push(text);
    if (!state.announcing) nextAnnouncement();
  }

  function nextAnnouncement() {
    const text = state.announcements.shift();
    state.announcing = text !== undefined;
    if (!state.announcing) return;
    $('announcer').textContent = text;
    setTimeout(nextAnnouncement, ANNOUNCE_MS);
  }

  // --- messages ----------------------------------------------------------------------------

  /**
   * One place for every message, whatever brought it (ack, push, sync, history).
   * `fresh`: read from the database just now, so its attachment states are current; a pushed
   * message carries the states of when it was sent and must not undo a newer attachment:updated.
   * `advance`: false for older history, whose edits say nothing about what came after them.
   * `live`: it arrived while the page was open, so it is announced.
   */
  function receiveMessage(message, {fresh, advance = true, live = false}) {
    for (const attachment of message.attachments || []) receiveAttachment(attachment, {fresh, render: false});
    const conversation = state.conversations.get(message.conversation_id);
    const known = state.messages.has(message.id);
    const fromOther = message.sender_id !== state.me;
    if (conversation) {
      const isNew = message.seq > (conversation.last_seq || 0);
      const newer = !conversation.last_message || message.seq >= conversation.last_message.seq;
      if (newer) conversation.last_message = message;
      if (isNew && fromOther) conversation.unread_count = (conversation.unread_count || 0) + 1;
      if (isNew && !fromOther) {
        conversation.unread_count = 0;  // sending marks everything up to it read for the sender
        state.localRead.set(conversation.id, message.seq);
      }
      conversation.last_seq = Math.max(conversation.last_seq || 0, message.seq);
    }
    if (live && fromOther && !known && message.seq > (state.current && state.current.id === message.conversation_id ? state.syncPoint : 0)) {
      const who = conversation ? counterpartName(conversation) : message.sender_id;
      announce(`New message from ${who}: ${message.deleted ? '' : previewOf(message)}`);
    }
    const isCurrent = state.current && state.current.id === message.conversation_id;
    if (!isCurrent) {
      renderConversations();
      refreshConversationsSoon();  // unread counts and order come from the server
      return;
    }
    const pending = state.pending.get(message.client_id);
    if (pending && !fromOther) {
      pending.element.remove();
      state.pending.delete(message.client_id);
    }
    state.messages.set(message.id, message);
    // The sync point follows seq only: today's server gives an edit `updated_seq = last_seq + 1`
    // without taking that number, so the next new message gets the same seq (docs/api.md,
    // "Differences from the contract" 1). Syncing after the highest seq misses nothing either way.
    const changedAt = message.seq;
    if (!advance) { /* older history: the sync point stays */ }
    else if (state.syncing) state.syncSeen = Math.max(state.syncSeen, changedAt);
    else state.syncPoint = Math.max(state.syncPoint, changedAt);
    state.oldestSeq = state.oldestSeq === null ? message.seq : Math.min(state.oldestSeq, message.seq);
    renderMessage(message);
    if (fromOther) {
      hideTyping();
      markRead();
    }
    renderConversations();
  }

  function renderMessage(message) {
    const list = $('messages');
    const scroller = $('scroller');
    const node = buildMessage(message);
    const existing = list.querySelector(`.message[data-id="${CSS.escape(message.id)}"]`);
    if (existing) {
      existing.replaceWith(node);
    } else {
      // Keep seq order: insert before the first message with a higher seq (pending sends stay last).
      const stick = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
      const later = [...list.querySelectorAll('.message[data-seq]')].find((m) => Number(m.dataset.seq) > message.seq);
      list.insertBefore(node, later || list.querySelector('.message.pending') || null);
      if (stick || message.sender_id === state.me) scroller.scrollTop = scroller.scrollHeight;
    }
    arrangeMessages();
  }

  /** Date separators and grouping follow the order on screen, so they are recomputed after each change. */
  function arrangeMessages() {
    let previous = null;
    for (const node of $('messages').querySelectorAll('.message[data-seq]')) {
      const message = state.messages.get(node.dataset.id);
      if (!message) continue;
      const day = new Date(message.created_at).toDateString();
      const newDay = !previous || new Date(previous.created_at).toDateString() !== day;
      let separator = node.querySelector(':scope > .day');
      if (newDay && !separator) {
        separator = el('div', {className: 'day', text: formatDay(message.created_at)});
        node.prepend(separator);
      } else if (!newDay && separator) {
        separator.remove();
      }
      const continued = !newDay && previous.sender_id === message.sender_id && previous.kind === 'text' && message.kind === 'text' &&
        new Date(message.created_at) - new Date(previous.created_at) < GROUP_MS;
      node.classList.toggle('continued', continued);
      previous = message;
    }
  }

  /** What the sender is told about their own flagged message, and the recipient about theirs. */
  function notesFor(message, mine) {
    const reasons = [...new Set((message.flag_reasons || []).map((r) => REASON_LABELS[r] || r))];
    const what = reasons.length > 1 ? `${reasons.slice(0, -1).join(', ')} and ${reasons[reasons.length - 1]}` : reasons[0] || 'contact details';
    if (mine && message.held) return `Held for a moderator because it contains ${what}: not delivered yet.`;
    if (mine && reasons.length) return `Contact details (${what}) are hidden from the other side.`;
    if (!mine && message.held) return 'This message is waiting for a moderator\'s review.';
    if (!mine && message.contacts_masked) return 'Contact details in this message were hidden.';
    return null;
  }

  function buildMessage(message) {
    const mine = message.sender_id === state.me;
    const conversation = state.current;
    const classes = ['message', mine ? 'mine' : 'theirs', `kind-${message.kind}`];
    if (message.deleted) classes.push('deleted');
    if (message.held) classes.push('held');
    const who = nameOf(message.sender_id, conversation);
    const meta = el('div', {className: 'meta'}, [
      el('span', {className: 'sender', text: who}),
      el('span', {text: ` · ${formatTime(message.created_at)}`}),
      message.edited_at && !message.deleted ? el('span', {className: 'edited', text: ' · edited'}) : null,
    ]);
    // A file-only message has no text line; a deleted one says so instead of its (now empty) text.
    let body = null;
    if (message.deleted) body = el('div', {className: 'text', text: 'message deleted'});
    else if (message.text || !(message.attachments || []).length) body = el('div', {className: 'text', text: message.text});
    if (!mine && message.held && !message.deleted) body = null;
    const note = message.deleted ? null : notesFor(message, mine);
    const bubble = el('div', {className: 'bubble'}, [
      meta,
      message.kind === 'delivery' ? buildDelivery(message) : null,
      body,
      note ? el('div', {className: 'notes small', text: note, attrs: {role: 'note'}}) : null,
    ]);
    const node = el('li', {className: classes.join(' '), attrs: {'data-id': message.id, 'data-seq': message.seq, 'aria-label': `${who}, ${formatTime(message.created_at)}`}}, [bubble]);
    if (!message.deleted && message.attachments && message.attachments.length) {
      const list = el('ul', {className: 'attachments', attrs: {'aria-label': 'Files'}});
      for (const attachment of message.attachments) list.append(buildAttachment(state.attachments.get(attachment.id) || attachment));
      bubble.append(list);
    }
    const footer = el('div', {className: 'footer small'});
    if (mine && !message.deleted && message.kind === 'text' && state.live) {
      const edit = el('button', {className: 'link', text: 'Edit', attrs: {type: 'button'}});
      edit.addEventListener('click', () => startEdit(node, message));
      const remove = el('button', {className: 'link', text: 'Delete', attrs: {type: 'button'}});
      remove.addEventListener('click', () => confirmDelete(remove, message));
      footer.append(edit, remove);
    }
    if (!mine && !message.deleted) footer.append(reportButton({message_id: message.id}, bubble));
    if (mine && !message.deleted) {
      footer.append(el('span', {className: 'receipt', attrs: {'data-seq': message.seq}}));
    }
    if (footer.children.length) bubble.append(footer);
    updateReceipt(node.querySelector('.receipt'));
    return node;
  }

  /** `Report` on a message or a file: a reason, then POST /reports. */
  function reportButton(target, container) {
    const button = el('button', {className: 'link report', text: 'Report', attrs: {type: 'button'}});
    button.addEventListener('click', () => {
      if (container.querySelector(':scope > .report-form')) return;
      const id = `report-${newClientId()}`;
      const reason = el('textarea', {attrs: {id, rows: 2, maxlength: 2000, 'aria-required': 'true'}});
      const send = el('button', {text: 'Send report', attrs: {type: 'submit'}});
      const cancel = el('button', {className: 'secondary', text: 'Cancel', attrs: {type: 'button'}});
      const form = el('form', {className: 'report-form'}, [
        el('label', {text: 'Why are you reporting this?', attrs: {for: id}}), reason,
        el('div', {className: 'row end'}, [cancel, send]),
      ]);
      cancel.addEventListener('click', () => form.remove());
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        if (!reason.value.trim()) return;
        send.disabled = true;
        try {
          await api('POST', '/reports', {...target, reason: reason.value.trim()});
          form.replaceWith(el('div', {className: 'reported small', text: 'Reported to the moderators. Thank you.', attrs: {role: 'status'}}));
          button.remove();
        } catch (error) {
          send.disabled = false;
          showError(error);
        }
      });
      container.append(form);
      reason.focus();
    });
    return button;
  }

  function startEdit(node, message) {
    const text = node.querySelector('.text');
    const id = `edit-${message.id}`;
    const editor = el('textarea', {className: 'editor', attrs: {id, rows: 2, maxlength: 100000, 'aria-label': 'Edit message'}});
    editor.value = message.text;
    const save = el('button', {text: 'Save', attrs: {type: 'button'}});
    const cancel = el('button', {className: 'secondary', text: 'Cancel', attrs: {type: 'button'}});
    const form = el('div', {className: 'edit'}, [editor, el('div', {className: 'row end'}, [cancel, save])]);
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
      button.textContent = 'Really delete?';
      setTimeout(() => {
        button.dataset.armed = '';
        button.textContent = 'Delete';
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
    const tray = trays.composer;
    if (!conversation) return;
    if (busy(tray)) return;  // the button is disabled meanwhile
    const text = $('composer-text').value;
    const ready = readyUploads(tray);
    if (!text.trim() && !ready.length) return;
    const payload = {conversation_id: conversation.id, client_id: newClientId(), text};
    if (ready.length) payload.attachment_ids = ready.map((u) => u.attachment.id);
    $('composer-text').value = '';
    tray.uploads = tray.uploads.filter((u) => u.state !== 'done');
    renderUploads(tray);
    stopTyping();
    const element = el('li', {className: 'message mine pending'}, [
      el('div', {className: 'bubble'}, [el('div', {className: 'meta', text: 'sending…'}), el('div', {className: 'text', text})]),
    ]);
    $('messages').append(element);
    $('scroller').scrollTop = $('scroller').scrollHeight;
    // `user`: a send outlives its conversation on screen, but never its sender's sign-in.
    state.typed += 1;
    const send = {payload, element, user: state.me, order: state.typed, refusals: 0, since: 0};
    state.pending.set(payload.client_id, send);
    submit(send);
  }

  /**
   * Out at once, unless this tab was told to wait: then it waits for the same moment, behind the
   * sends held before it, so the tab honours the hint for all its traffic and keeps the typed order.
   */
  function submit(send) {
    if (state.held.length || state.draining || performance.now() < state.retryAt) hold(send);
    else deliver(send);
  }

  /** Send (or re-send: the same client_id never makes a second message) and settle the pending bubble. */
  async function deliver(send) {
    const {payload} = send;
    try {
      const message = state.live
        ? (await call('message:send', payload)).message
        : await api('POST', `/conversations/${encodeURIComponent(payload.conversation_id)}/messages`, payload);
      receiveMessage(message, {fresh: false});
    } catch (error) {
      if (send.user !== state.me) return;  // signed out or someone else meanwhile
      const problem = toApiError(error);
      const now = performance.now();
      const wait = M.resendWait(problem, {refusals: send.refusals + 1, since: send.since || now, now});
      if (wait !== null) {
        send.refusals += 1;
        send.since = send.since || now;
        state.retryAt = Math.max(state.retryAt, now + wait);
        hold(send);
        return;
      }
      showError(error);
      if (!state.pending.has(payload.client_id)) return;
      const retry = el('button', {className: 'link', text: 'Retry', attrs: {type: 'button'}});
      retry.addEventListener('click', () => {
        send.element.querySelector('.meta').textContent = 'sending…';
        send.refusals = 0;  // a person asked: the automatic resends start over
        send.since = 0;
        submit(send);
      });
      const meta = send.element.querySelector('.meta');
      meta.replaceChildren(el('span', {className: 'failed', text: `not sent (${problem.code}) `}), retry);
    }
  }

  /** Keep a send for later, in the order typed (a refused one goes back before those typed after it). */
  function hold(send) {
    const first = !state.held.length && !state.draining;
    const later = state.held.findIndex((other) => other.order > send.order);
    state.held.splice(later < 0 ? state.held.length : later, 0, send);
    showHeld();
    // Once per busy spell, not per message or second: the bubbles' countdown is not a live region.
    if (first && performance.now() < state.retryAt) announce(`The service is busy: your message goes out in ${secondsToRetry()} s.`);
    drainHeld();
  }

  function secondsToRetry() {
    return Math.max(1, Math.ceil((state.retryAt - performance.now()) / 1000));
  }

  function showHeld() {
    const waiting = performance.now() < state.retryAt;
    for (const send of state.held) {
      send.element.querySelector('.meta').textContent = waiting ? `busy, sending again in ${secondsToRetry()} s…` : 'sending…';
    }
  }

  /** One send at a time once the moment has come, so the first held goes first and a new hint holds the rest. */
  async function drainHeld() {
    if (state.draining) return;
    state.draining = true;
    try {
      while (state.held.length) {
        const wait = state.retryAt - performance.now();
        if (wait > 0) {
          showHeld();
          await new Promise((resolve) => setTimeout(resolve, Math.min(wait, 1000)));  // the countdown ticks
          continue;
        }
        showHeld();
        const send = state.held.shift();
        if (send.user === state.me) await deliver(send);
      }
    } finally {
      state.draining = false;
    }
  }

  function forgetHeldSends() {
    state.held = [];
    state.retryAt = 0;
  }

  // --- order deliveries ----------------------------------------------------------------------

  function buildDelivery(message) {
    const delivery = state.deliveries.get(message.delivery_id);
    const card = el('div', {className: 'delivery-card', attrs: {'data-delivery-id': message.delivery_id || '', 'data-status': delivery ? delivery.status : 'loading'}});
    const conversation = state.current;
    const order = conversation && conversation.order_id ? ` for order ${conversation.order_id}` : '';
    card.append(el('div', {className: 'delivery-title', text: `Delivery${order}`}));
    if (!delivery) {
      if (message.delivery_id) fetchDelivery(message.delivery_id);
      card.append(el('div', {className: 'small muted', text: 'loading the delivery…'}));
      return card;
    }
    card.append(el('div', {className: 'delivery-revision small muted', text: delivery.revision ? `Revision ${delivery.revision}` : 'First delivery'}));
    card.append(el('div', {className: `delivery-status status-${delivery.status}`, text: DELIVERY_LABELS[delivery.status] || delivery.status, attrs: {role: 'status'}}));
    if (delivery.status === 'revision_requested' && delivery.revision_reason) {
      card.append(el('div', {className: 'delivery-reason', text: `Reason: ${delivery.revision_reason}`}));
    }
    const isBuyer = delivery.buyer_id === state.me;
    if (isBuyer && delivery.status === 'ready') {
      const accept = el('button', {text: 'Accept delivery', attrs: {type: 'button'}});
      const revise = el('button', {className: 'secondary', text: 'Request revision', attrs: {type: 'button'}});
      accept.addEventListener('click', () => decideDelivery(delivery, accept, 'accept'));
      revise.addEventListener('click', () => revisionForm(delivery, card));
      card.append(el('div', {className: 'row'}, [accept, revise]));
    } else if (!isBuyer && delivery.status === 'ready') {
      card.append(el('div', {className: 'small muted', text: 'Waiting for the buyer to accept it or ask for a revision.'}));
    } else if (!isBuyer && delivery.status === 'revision_requested') {
      card.append(el('div', {className: 'small muted', text: 'Deliver again with new files when the changes are done.'}));
    }
    return card;
  }

  function fetchDelivery(id) {
    if (state.deliveryFetches.has(id)) return state.deliveryFetches.get(id);
    const request = api('GET', `/deliveries/${encodeURIComponent(id)}`)
      .then(receiveDelivery)
      .catch(() => { /* the card says loading; the next sync or poll asks again */ })
      .finally(() => state.deliveryFetches.delete(id));
    state.deliveryFetches.set(id, request);
    return request;
  }

  /** A REST answer can cross a push: a delivery's status never goes back (pending, then settled, then decided). */
  const DELIVERY_RANK = {pending: 0, ready: 1, blocked: 1, accepted: 2, revision_requested: 2};

  function receiveDelivery(delivery) {
    if (!delivery || !delivery.id) return;
    const known = state.deliveries.get(delivery.id);
    if (known && (DELIVERY_RANK[known.status] ?? 0) > (DELIVERY_RANK[delivery.status] ?? 0)) return;
    state.deliveries.set(delivery.id, delivery);
    for (const message of state.messages.values()) {
      if (message.delivery_id === delivery.id) renderMessage(message);
    }
  }

  async function decideDelivery(delivery, button, action, body) {
    button.disabled = true;
    try {
      receiveDelivery(await api('POST', `/deliveries/${encodeURIComponent(delivery.id)}/${action}`, body));
    } catch (error) {
      button.disabled = false;
      showError(error);
    }
  }

  function revisionForm(delivery, card) {
    if (card.querySelector('.revision-form')) return;
    const id = `revision-${delivery.id}`;
    const reason = el('textarea', {attrs: {id, rows: 2, maxlength: 5000, 'aria-required': 'true'}});
    const send = el('button', {text: 'Send revision request', attrs: {type: 'submit'}});
    const cancel = el('button', {className: 'secondary', text: 'Cancel', attrs: {type: 'button'}});
    const form = el('form', {className: 'revision-form'}, [
      el('label', {text: 'What should change?', attrs: {for: id}}), reason, el('div', {className: 'row end'}, [cancel, send]),
    ]);
    cancel.addEventListener('click', () => form.remove());
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      if (!reason.value.trim()) return;
      decideDelivery(delivery, send, 'request-revision', {reason: reason.value.trim()});
    });
    card.append(form);
    reason.focus();
  }

  function openDeliveryDialog() {
    clearError();
    $('delivery-title').textContent = `Deliver order ${state.current.order_id}`;
    $('delivery-dialog').showModal();
    updateDeliverySend();
  }

  /**
   * Send delivery can be pressed while files are still going up: the delivery is then sent the
   * moment the last one is complete. A file that failed or was found infected stops it.
   */
  function updateDeliverySend() {
    const tray = trays.delivery;
    const broken = tray.uploads.some((u) => u.state === 'failed' || u.state === 'blocked');
    if (broken && tray.sendWhenReady) {
      tray.sendWhenReady = false;
      showError(new ApiError('delivery_not_sent', 'a file could not be used; remove it and send the delivery again'));
    }
    $('delivery-send').disabled = broken || tray.sendWhenReady || !tray.uploads.some((u) => u.state === 'uploading' || u.state === 'done');
    $('delivery-send').textContent = tray.sendWhenReady ? 'Sending when uploaded…' : 'Send delivery';
    if (tray.sendWhenReady && !busy(tray) && readyUploads(tray).length) {
      tray.sendWhenReady = false;
      sendDelivery();
    }
  }

  async function sendDelivery(event) {
    if (event) event.preventDefault();
    const conversation = state.current;
    const tray = trays.delivery;
    const ready = readyUploads(tray);
    if (!conversation || !tray.uploads.length) return;
    if (busy(tray)) {
      tray.sendWhenReady = true;
      updateDeliverySend();
      return;
    }
    if (!ready.length) return;
    $('delivery-send').disabled = true;
    try {
      const delivery = await api('POST', `/orders/${encodeURIComponent(conversation.order_id)}/deliveries`, {
        conversation_id: conversation.id,
        text: $('delivery-note').value,
        attachment_ids: ready.map((u) => u.attachment.id),
        client_id: `delivery:${newClientId()}`,
      });
      receiveDelivery(delivery);
      tray.uploads = [];
      renderUploads(tray);
      $('delivery-note').value = '';
      $('delivery-dialog').close();
      if (!state.live) await syncCurrent();
    } catch (error) {
      showError(error);
      updateDeliverySend();
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
    // Remembered here, so a conversation list fetched before the server stored it shows no stale badge.
    state.localRead.set(conversation.id, Math.max(state.localRead.get(conversation.id) || 0, highest));
    const listed = state.conversations.get(conversation.id);
    if (listed) listed.unread_count = 0;
    renderConversations();
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
    $('typing').textContent = `${nameOf(userId, state.current)} is typing…`;
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

  // --- attachments: status, preview, lightbox, download ----------------------------------------

  function receiveAttachment(attachment, {fresh, render = true}) {
    if (!fresh && state.attachments.has(attachment.id)) return;
    state.attachments.set(attachment.id, attachment);
    if (!render) return;
    for (const node of document.querySelectorAll(`.attachment[data-id="${CSS.escape(attachment.id)}"]`)) {
      node.replaceWith(buildAttachment(attachment));
    }
    // A file waiting in a tray is scanned before it is sent, so the tray follows it too.
    for (const tray of Object.values(trays)) {
      const waiting = tray.uploads.filter((u) => u.attachment && u.attachment.id === attachment.id);
      for (const upload of waiting) settleUpload(upload, attachment);
      if (waiting.length) renderUploads(tray);
    }
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

  /** After a disconnection, or while polling: every file and delivery on screen that is still moving. */
  async function refreshUnsettled() {
    const ids = new Set();
    for (const node of document.querySelectorAll('.attachment[data-id]')) {
      if (!SETTLED.has(node.dataset.status)) ids.add(node.dataset.id);
    }
    for (const tray of Object.values(trays)) {
      for (const upload of tray.uploads) {
        if (upload.state === 'done' && upload.attachment && !SETTLED.has(upload.attachment.status)) ids.add(upload.attachment.id);
      }
    }
    for (const id of ids) {
      try {
        receiveAttachment(await api('GET', `/attachments/${encodeURIComponent(id)}`), {fresh: true});
      } catch (_) { /* shown on the next round */ }
    }
    for (const node of document.querySelectorAll('.delivery-card[data-delivery-id]')) {
      if (node.dataset.deliveryId && !DELIVERY_SETTLED.has(node.dataset.status)) await fetchDelivery(node.dataset.deliveryId);
    }
  }

  function buildAttachment(attachment) {
    const status = attachment.status;
    const node = el('li', {className: `attachment status-${status}`, attrs: {'data-id': attachment.id, 'data-status': status}});
    if (attachment.preview_url && isWebUrl(attachment.preview_url) && DOWNLOADABLE.has(status)) {
      const open = el('button', {className: 'preview-button', attrs: {type: 'button', 'aria-label': `Open the preview of ${attachment.filename}`}}, [
        el('img', {className: 'preview', attrs: {src: attachment.preview_url, alt: '', loading: 'lazy'}}),
      ]);
      open.addEventListener('click', () => openLightbox(attachment));
      node.append(open);
    }
    const details = el('div', {className: 'details'}, [
      el('span', {className: 'filename', text: attachment.filename}),
      el('span', {className: 'muted small', text: ` ${formatSize(attachment.size)}`}),
      el('div', {className: 'status small', text: STATUS_LABELS[status] || status}),
    ]);
    if (attachment.scan && attachment.scan.signature) {
      details.append(el('div', {className: 'small', text: `signature: ${attachment.scan.signature}`}));
    }
    const actions = el('div', {className: 'row small'});
    if (DOWNLOADABLE.has(status)) {
      // The presigned URL lives for minutes, so it is asked for on each click, not stored in the page.
      const link = el('a', {className: 'download', text: 'Download', attrs: {href: '#', role: 'button'}});
      link.addEventListener('click', (event) => {
        event.preventDefault();
        if (link.dataset.busy === 'yes') return;
        link.dataset.busy = 'yes';
        download(attachment, link).finally(() => { link.dataset.busy = ''; });
      });
      actions.append(link);
    }
    if (attachment.uploader_id && attachment.uploader_id !== state.me && !NOT_ATTACHABLE.has(status)) {
      actions.append(reportButton({attachment_id: attachment.id}, details));
    }
    if (actions.children.length) details.append(actions);
    node.append(details);
    return node;
  }

  /** The preview, large, in a modal dialog (images and the first page of a PDF alike). */
  function openLightbox(attachment) {
    $('lightbox-title').textContent = attachment.filename;
    $('lightbox-image').src = attachment.preview_url;
    $('lightbox-image').alt = `Preview of ${attachment.filename}`;
    const kind = attachment.content_type === 'application/pdf' ? 'PDF, first page' : attachment.content_type;
    $('lightbox-meta').textContent = `${kind} · ${formatSize(attachment.size)}`;
    $('lightbox').showModal();
    $('lightbox-close').focus();
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
        link.textContent = `Downloading ${Math.floor((loaded / attachment.size) * 100)}%`;
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
      link.textContent = 'Download';
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

  function addFiles(input, tray) {
    const files = [...input.files];
    input.value = '';  // picking the same file again must fire `change` again
    if (!state.current) return;
    for (const file of files) {
      const upload = {file, state: 'uploading', loaded: 0, attachment: null, requests: new Set(), error: null};
      tray.uploads.push(upload);
      runUpload(upload, state.current, tray);
    }
    renderUploads(tray);
  }

  async function runUpload(upload, conversation, tray) {
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
      } else if (grant.method === 'MULTIPART') {
        const parts = await uploadByParts(upload, grant);
        // Without CORS exposing ETag the browser cannot read it; the service then takes S3's own list.
        if (parts.every((p) => p.etag)) body = {parts};
      } else {
        throw new ApiError('upload_failed', `this page does not know the upload method ${grant.method}`);
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
    renderUploads(tray);
  }

  /** One XMLHttpRequest (fetch cannot report upload progress); resolves with the finished request. */
  function xhr(upload, method, url, body, onProgress, headers = {}) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      upload.requests.add(request);
      request.open(method, url);
      for (const [name, value] of Object.entries(headers)) {
        if (!FORBIDDEN_HEADERS.has(name.toLowerCase())) request.setRequestHeader(name, String(value));
      }
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

  /** A presigned single PUT: the body is the file, with exactly the headers that were signed. */
  async function uploadByPut(upload, grant) {
    await xhr(upload, 'PUT', grant.url, upload.file, (loaded) => {
      upload.loaded = Math.min(loaded, upload.file.size * 0.99);
      renderProgress(upload);
    }, grant.headers || {});
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
        const end = part.size ? start + part.size : Math.min(start + grant.part_size, size);
        const blob = upload.file.slice(start, end);
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
    if (upload.state === 'done' || upload.state === 'blocked') return 100;
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

  function renderUploads(tray) {
    const list = tray.list();
    list.replaceChildren();
    for (const upload of tray.uploads) {
      const percent = percentOf(upload);
      const status = upload.attachment ? upload.attachment.status : null;
      let label = {uploading: 'uploading', failed: 'failed', cancelled: 'cancelled'}[upload.state];
      if (upload.state === 'done') label = status === 'uploaded' ? 'uploaded, ready to send' : `ready to send · ${STATUS_LABELS[status] || status}`;
      if (upload.state === 'blocked') label = `${STATUS_LABELS[status] || status}, will not be sent`;
      const remove = el('button', {className: 'link', text: '×', attrs: {type: 'button', 'aria-label': `Remove ${upload.file.name}`}});
      remove.addEventListener('click', () => {
        cancelUpload(upload);
        tray.uploads = tray.uploads.filter((u) => u !== upload);
        renderUploads(tray);
      });
      upload.node = el('li', {className: `upload upload-${upload.state}`, attrs: {'data-state': upload.state}}, [
        el('span', {className: 'filename', text: upload.file.name}),
        el('span', {className: 'muted small', text: ` ${formatSize(upload.file.size)}`}),
        el('progress', {attrs: {max: 100, value: percent, 'data-percent': percent, 'aria-label': `Upload of ${upload.file.name}`}}),
        el('span', {className: 'percent small', text: `${percent}%`}),
        el('span', {className: 'small', text: upload.error ? `${label}: ${upload.error.message}` : label}),
        remove,
      ]);
      list.append(upload.node);
    }
    tray.onChange();
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
    $('search-form').addEventListener('submit', search);
    $('search-close').addEventListener('click', () => { $('search-results').hidden = true; });
    for (const button of document.querySelectorAll('#filters .filter')) {
      button.addEventListener('click', () => setFilter(button.dataset.filter));
    }
    $('star').addEventListener('click', () => patchCurrent({starred: !(state.current && state.current.starred)}));
    $('archive').addEventListener('click', () => patchCurrent({archived: !(state.current && state.current.archived)}));
    $('block').addEventListener('click', toggleBlock);
    $('mark-unread').addEventListener('click', async () => {
      const conversation = state.current;
      if (!conversation) return;
      await patchCurrent({unread: true});
      if (state.inbox) {
        state.localRead.delete(conversation.id);
        closeConversation();
        sessionStorage.removeItem(OPEN_KEY);
        refreshConversations();
      }
    });
    $('back').addEventListener('click', () => { showScreen('list'); $('conversations').querySelector('button')?.focus(); });
    $('older').addEventListener('click', loadOlder);
    $('composer').addEventListener('submit', sendComposed);
    $('composer-text').addEventListener('input', onComposerInput);
    $('composer-text').addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $('composer').requestSubmit();
      }
    });
    $('attach').addEventListener('click', () => $('file-input').click());
    $('file-input').addEventListener('change', () => addFiles($('file-input'), trays.composer));
    $('deliver').addEventListener('click', openDeliveryDialog);
    $('delivery-add').addEventListener('click', () => $('delivery-files').click());
    $('delivery-files').addEventListener('change', () => addFiles($('delivery-files'), trays.delivery));
    $('delivery-form').addEventListener('submit', sendDelivery);
    $('delivery-cancel').addEventListener('click', () => {
      trays.delivery.sendWhenReady = false;
      $('delivery-dialog').close();
      updateDeliverySend();
    });
    $('lightbox-close').addEventListener('click', () => $('lightbox').close());
    $('error-close').addEventListener('click', clearError);
    document.addEventListener('visibilitychange', () => {
      markRead();
      renderConversations();
    });

    state.live = await M.loadSocketClient();
    if (!state.live) {
      M.showNotice('Live updates are off: this server has no socket.io client installed, so the page checks for new messages every 2 s (no typing indicator, no editing).');
    }
    document.body.dataset.transport = state.live ? 'socket' : 'polling';
    if (embed) {
      listenToHost();
    } else {
      const handed = M.tokenFromAddress();
      if (handed) state.token = handed;
      if (state.token) useToken(state.token);
    }
    document.body.dataset.ready = 'yes';
  }

  start();
})();
