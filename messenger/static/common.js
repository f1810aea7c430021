// What the chat page (app.js) and the moderation console (moderation.js) share: building DOM
// nodes, the REST client, errors, the token and the socket.io loader.
//
// Security rule for every script here: text that came from a user or the service (messages, file
// names, ids, error messages) reaches the DOM through textContent / createTextNode or an
// attribute, never through innerHTML, so "<img src=x onerror=alert(1)>" is shown, not run.
'use strict';

window.Messenger = (() => {
  const API = '/api/v1';
  const TOKEN_KEY = 'messenger.token';
  const SOCKETIO_CLIENT = '/static/socket.io.min.js';

  const $ = (id) => document.getElementById(id);

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

  function formatDay(iso) {
    const when = new Date(iso);
    const today = new Date();
    const yesterday = new Date(today.getTime() - 86400000);
    if (when.toDateString() === today.toDateString()) return 'Today';
    if (when.toDateString() === yesterday.toDateString()) return 'Yesterday';
    return when.toLocaleDateString([], {weekday: 'long', year: 'numeric', month: 'long', day: 'numeric'});
  }

  /** Only http(s) addresses become links or images (never javascript: or data: from a response). */
  function isWebUrl(value) {
    return typeof value === 'string' && /^https?:\/\//i.test(value);
  }

  class ApiError extends Error {
    constructor(code, message, details, status) {
      super(message);
      this.code = code;
      this.details = details || {};
      this.status = status || 0;
    }
  }

  function toApiError(error) {
    if (error instanceof ApiError) return error;
    if (error && error.error) return new ApiError(error.error.code, error.error.message, error.error);
    return new ApiError('client_error', (error && error.message) || String(error));
  }

  // A send refused with a hint of when to come back is sent again by itself, within these bounds.
  const RESEND = {
    codes: new Set(['overloaded', 'rate_limited']),
    attempts: 5,        // automatic resends of one message, at most
    windowMs: 60000,    // from its first refusal: past this, a person decides
    waitMaxMs: 30000,   // the longest hint honoured; a longer one means give up now
    jitter: 0.25,       // up to this share of the hint is added at random
  };

  /**
   * How long to wait before sending again after `problem`, or null to give up (and offer Retry).
   * `refusals`: how often this send has been refused, this time included; `since`: when the first
   * was (performance.now()). The hint is never cut short: coming back before the server's time
   * only earns another refusal, so a hint beyond the longest wait means giving up at once. The
   * random extra spreads out a crowd of clients refused at the same moment.
   */
  function resendWait(problem, {refusals, since, now = performance.now(), random = Math.random}) {
    const hint = Number(problem && problem.details && problem.details.retry_after_ms);
    if (!problem || !RESEND.codes.has(problem.code) || !Number.isFinite(hint) || hint < 0) return null;
    if (refusals > RESEND.attempts || hint > RESEND.waitMaxMs) return null;
    const wait = Math.min(RESEND.waitMaxMs, Math.ceil(hint * (1 + RESEND.jitter * random())));
    return now + wait - since > RESEND.windowMs ? null : wait;
  }

  /** A route this server does not have yet (a newer contract version): the page hides the feature. */
  function isMissingRoute(error) {
    return error instanceof ApiError && (error.status === 404 || error.status === 405) &&
      !/_not_found$/.test(error.code || '');
  }

  /** Show an error in the page's toast, and in the open dialog if there is one (it sits above the toast). */
  function showError(error) {
    const problem = toApiError(error);
    const text = `${problem.code}: ${problem.message}`;
    $('error-text').textContent = text;
    $('error').hidden = false;
    const dialog = document.querySelector('dialog[open] .error.inline');
    if (dialog) {
      dialog.textContent = text;
      dialog.hidden = false;
    }
  }

  function clearError() {
    $('error').hidden = true;
    $('error-text').textContent = '';
    for (const node of document.querySelectorAll('.error.inline')) node.hidden = true;
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

  /** The REST client: a function of the current token (which may be replaced at any time). */
  function restClient(getToken) {
    return async function api(method, path, body) {
      const headers = {Authorization: `Bearer ${getToken()}`};
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
        if (payload && payload.error) throw new ApiError(payload.error.code, payload.error.message, payload.error, response.status);
        throw new ApiError('http_error', `HTTP ${response.status}`, {}, response.status);
      }
      return payload;
    };
  }

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

  /** Claims of a usable token, or an ApiError saying why it is not one. */
  function checkedClaims(token) {
    const claims = claimsOf(token);
    if (typeof claims.sub !== 'string' || !claims.sub) throw new ApiError('token_invalid', 'the token has no subject (sub)');
    if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
      throw new ApiError('token_expired', 'this token has expired; make a new one with messenger token');
    }
    return claims;
  }

  /**
   * A token handed over in the address (`/?token=…` or `/#token=…`) is taken and removed from the
   * address bar at once, so it does not stay in the history, a bookmark or a shared link.
   */
  function tokenFromAddress() {
    const url = new URL(window.location.href);
    const hash = new URLSearchParams(url.hash.replace(/^#/, ''));
    const token = url.searchParams.get('token') || hash.get('token');
    if (!token) return null;
    url.searchParams.delete('token');
    hash.delete('token');
    url.hash = hash.toString();
    window.history.replaceState(null, '', url.pathname + url.search + url.hash);
    return token;
  }

  const storedToken = {
    get: () => sessionStorage.getItem(TOKEN_KEY) || '',
    set: (token) => sessionStorage.setItem(TOKEN_KEY, token),
    clear: () => sessionStorage.removeItem(TOKEN_KEY),
  };

  /** The socket.io client is loaded at run time from the service; it may not be installed there. */
  /**
   * The page's Socket.IO session (the web app's and the console's alike). Every (re)connection
   * presents the token in use at that moment and records it as the session's (`state.sessionToken`).
   * When the server ends the session because its token expired (`session:expired`, then "io server
   * disconnect"), it goes on only with a newer, unexpired token, never the one just ended, so it
   * cannot loop; otherwise the badge says so and `hooks.expired()` tells the person. A refused token
   * is final (the client does not retry it): the badge says so, the error is shown, then
   * `hooks.refused()`; a network error is retried by the client itself.
   */
  function sessionSocket(state, hooks) {
    const socket = window.io({auth: (cb) => {
      state.sessionToken = state.token;
      cb({token: state.token});
    }, transports: ['websocket', 'polling']});
    socket.on('connect', hooks.connected);
    socket.on('disconnect', (reason) => {
      if (reason === 'io server disconnect') {
        sessionEnded();
        return;
      }
      setConnection('connecting', reason === 'io client disconnect' ? 'offline' : 'reconnecting…');
    });
    // The session's token, which is not the page's newest one when a refresh was refused or came too late.
    socket.on('session:expired', () => { state.endedToken = state.sessionToken || state.token; });
    socket.on('connect_error', (error) => {
      if (error && error.data && error.data.code) {
        setConnection('refused', 'token refused');
        showError(new ApiError(error.data.code, error.data.message || error.message));
        if (hooks.refused) hooks.refused();
      } else {
        setConnection('connecting', 'reconnecting…');
      }
    });

    function sessionEnded() {
      const ended = state.endedToken || state.token;
      state.endedToken = '';
      if (state.token && state.token !== ended && unexpired(state.token)) {
        setConnection('connecting', 'reconnecting…');
        socket.connect();
        return;
      }
      setConnection('refused', 'token expired');
      hooks.expired();
    }

    return socket;
  }

  function unexpired(token) {
    try {
      checkedClaims(token);
      return true;
    } catch (_) {
      return false;
    }
  }

  function loadSocketClient() {
    return new Promise((resolve) => {
      const script = document.createElement('script');
      script.src = SOCKETIO_CLIENT;
      script.onload = () => resolve(typeof window.io === 'function');
      script.onerror = () => resolve(false);
      document.head.append(script);
    });
  }

  return {
    $, el, formatSize, formatTime, formatDay, isWebUrl, ApiError, toApiError, resendWait, isMissingRoute,
    showError, clearError, showNotice, setConnection, restClient, claimsOf, checkedClaims,
    tokenFromAddress, storedToken, loadSocketClient, sessionSocket,
  };
})();
