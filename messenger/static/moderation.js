// The moderators' console at /moderation: the queue of flagged messages and files, Release and
// Reject with a required note, and the audit log. Uses only the public REST API with a token that
// carries the moderator role; text from users reaches the DOM only through textContent.
'use strict';

(() => {
  const M = window.Messenger;
  const {$, el, formatSize, formatTime, ApiError, showError, clearError} = M;
  const REFRESH_MS = 5000;  // moderators get no socket pushes (they are not participants): the queue is re-read
  const PAGE = 50;

  const state = {token: M.storedToken.get(), me: null, cursor: null, items: [], timer: null};
  const api = M.restClient(() => state.token);

  function signIn(token) {
    clearError();
    let claims;
    try {
      claims = M.checkedClaims(token);
    } catch (error) {
      showError(error);
      return;
    }
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
    M.setConnection('polling', `refreshes every ${REFRESH_MS / 1000} s`);
    refresh();
    clearInterval(state.timer);
    state.timer = setInterval(() => refresh({quiet: true}), REFRESH_MS);
  }

  function signOut() {
    M.storedToken.clear();
    clearInterval(state.timer);
    state.token = '';
    $('me').textContent = '';
    $('token-clear').hidden = true;
    $('signin').hidden = false;
    $('queue-section').hidden = true;
    $('audit-section').hidden = true;
    M.setConnection('offline', 'offline');
  }

  async function refresh({quiet = false} = {}) {
    // A note being typed is never wiped by a background refresh.
    if (quiet && document.querySelector('.decision-form')) return;
    try {
      const kind = $('queue-kind').value;
      const page = await api('GET', `/moderation/queue?limit=${PAGE}${kind ? `&kind=${kind}` : ''}`);
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

  function renderQueue() {
    const list = $('queue');
    list.replaceChildren();
    for (const item of state.items) list.append(buildItem(item));
    if (!state.items.length) list.append(el('li', {className: 'muted', text: 'Nothing to review.'}));
    $('queue-more').hidden = !state.cursor;
  }

  function buildItem(item) {
    const node = el('li', {className: `item kind-${item.kind}`, attrs: {'data-id': item.id, 'data-target': item.target_id}});
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
      cancel.addEventListener('click', () => form.remove());
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
          await refresh();
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

  function start() {
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token-input').value.trim();
      if (token) signIn(token);
    });
    $('token-clear').addEventListener('click', signOut);
    $('error-close').addEventListener('click', clearError);
    $('queue-refresh').addEventListener('click', () => refresh());
    $('queue-kind').addEventListener('change', () => refresh());
    $('queue-more').addEventListener('click', more);
    document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible' && state.me) refresh({quiet: true}); });
    const handed = M.tokenFromAddress();
    if (handed) state.token = handed;
    if (state.token) signIn(state.token);
    document.body.dataset.ready = 'yes';
  }

  start();
})();
