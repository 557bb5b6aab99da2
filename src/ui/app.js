// cairn web UI: one page that routes in the browser and reads the agent's HTTP API.
// Every list and detail page is kept live by a blocking query (?index=), so a change in the
// catalog shows as soon as it is committed, without a reload. Text from the API is only ever
// set as text (never as HTML).
'use strict';

(() => {
  const ROOT = '/ui/';
  const WAIT = '55s'; // below the usual 60 s proxy timeouts
  const POLL_MS = 2000; // for endpoints without an index (members, Raft)
  const RETRY_MAX_MS = 10000;
  const STATUS_ORDER = { passing: 0, warning: 1, critical: 2 };
  const MEMBER_STATUS = ['none', 'alive', 'leaving', 'left', 'failed'];
  // The ACL token the page presents (set on the Token page), kept in this browser only.
  const TOKEN_KEY = 'cairn.acl-token';

  function savedToken() {
    try { return localStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
  }

  const app = {
    localDc: '',
    dc: '',
    // Aborted on navigation: every request and loop of the page that was shown.
    page: new AbortController(),
  };

  // ---- DOM helpers -------------------------------------------------------------------

  /** Builds an element; attributes starting with "on" are listeners, children are nodes or text. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else if (key === 'value') el.value = value;
      else el.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function replace(container, ...children) {
    container.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  }

  function badge(status, text) {
    const known = status in STATUS_ORDER ? status : 'other';
    return h('span', { class: `badge ${known}` }, text || status);
  }

  function tags(list) {
    return (list || []).map((t) => h('span', { class: 'tag' }, t));
  }

  function worst(statuses) {
    let out = 'passing';
    for (const s of statuses) if ((STATUS_ORDER[s] ?? 0) > STATUS_ORDER[out]) out = s;
    return out;
  }

  /** A table that becomes labelled cards at phone width. `rows` are <tr> elements. */
  function table(headings, rows, caption) {
    return h('div', { class: 'table-wrap' },
      h('table', { class: 'cards' },
        caption ? h('caption', { class: 'muted' }, caption) : null,
        h('thead', null, h('tr', null, headings.map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', null, rows)));
  }

  /** A <td> labelled for the card layout. */
  function cell(label, ...children) {
    return h('td', { 'data-label': label }, ...children);
  }

  function message(kind, text) {
    return h('div', { class: `message ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  }

  function link(path, text, attrs) {
    return h('a', { href: pageUrl(path), ...(attrs || {}) }, text);
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }

  // ---- URLs and routing --------------------------------------------------------------

  const enc = encodeURIComponent;
  /** A KV key or prefix as a URL path: each segment encoded, slashes kept. */
  const encKey = (key) => key.split('/').map(enc).join('/');

  /** The URL of a page of this datacenter, e.g. pageUrl('services/web'). */
  function pageUrl(path) {
    return `${ROOT}${enc(app.dc)}/${path}`;
  }

  function parseRoute(pathname) {
    const rest = pathname.startsWith(ROOT) ? pathname.slice(ROOT.length) : '';
    const parts = rest.split('/');
    const decode = (s) => { try { return decodeURIComponent(s); } catch { return s; } };
    const dc = decode(parts[0] || '');
    const section = parts[1] || 'services';
    const tail = parts.slice(2);
    const name = tail.length && tail[0] !== '' ? decode(tail.join('/')) : null;
    if (section === 'kv') {
      const key = tail.map(decode).join('/');
      return { dc, section, key, folder: key === '' || key.endsWith('/') };
    }
    return { dc, section, name };
  }

  function navigate(url, replaceState) {
    if (replaceState) history.replaceState(null, '', url);
    else history.pushState(null, '', url);
    render(true);
  }

  document.addEventListener('click', (event) => {
    const a = event.target.closest && event.target.closest('a[href]');
    if (!a || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey || a.target) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || !url.pathname.startsWith(ROOT) || url.pathname === ROOT) return;
    if (url.hash && url.pathname === location.pathname) return; // in-page anchors (skip link)
    event.preventDefault();
    navigate(url.pathname + url.search);
  });
  window.addEventListener('popstate', () => render(true));

  // ---- API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, text) {
      super(text || `HTTP ${status}`);
      this.status = status;
    }
  }

  /**
   * One API request. `params` become the query string (true = a flag without value); the
   * datacenter picked in the header is added unless `local` (agent endpoints). Resolves to
   * { status, index, text }, also for 404 when `allow404`.
   */
  async function api(method, path, { params, body, signal, local, allow404 } = {}) {
    const url = new URL(path, location.origin);
    for (const [key, value] of Object.entries(params || {})) {
      if (value === undefined || value === null || value === false) continue;
      url.searchParams.set(key, value === true ? '' : String(value));
    }
    if (!local && app.dc && app.dc !== app.localDc) url.searchParams.set('dc', app.dc);
    let response;
    try {
      const headers = savedToken() ? { 'X-Consul-Token': savedToken() } : {};
      response = await fetch(url, { method, body, headers, signal: signal || app.page.signal, cache: 'no-store' });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, 'cannot reach the agent');
    }
    const text = await response.text();
    if (!response.ok && !(allow404 && response.status === 404)) {
      // ACLs refuse the token (or its absence): say where to set one.
      const hint = response.status === 403 ? ' — set an ACL token on the Token page' : '';
      throw new ApiError(response.status, `${response.status}: ${text.trim() || response.statusText}${hint}`);
    }
    return {
      status: response.status,
      index: Number(response.headers.get('X-Consul-Index') || 0),
      // ACLs left something out of this answer.
      filtered: response.headers.get('X-Consul-Results-Filtered-By-ACLs') === 'true',
      text,
    };
  }

  function setConnection(problem) {
    document.getElementById('connection').textContent = problem || '';
  }

  /**
   * Keeps `onData` fed with the answer of `path`: a blocking query after the first answer,
   * called again only when the index moves. Errors back off (up to 10 s) and show a banner;
   * the loop ends when the page is left.
   */
  function watch(path, options, onData) {
    const signal = app.page.signal;
    let index = 0;
    let backoff = 0;
    (async () => {
      while (!signal.aborted) {
        try {
          const params = { ...(options.params || {}), index: index || undefined, wait: index ? WAIT : undefined };
          const answer = await api('GET', path, { ...options, params, signal });
          if (signal.aborted) return;
          setConnection('');
          backoff = 0;
          const moved = answer.index !== index || index === 0;
          // An index that went back (a restore, another server) starts over, as Consul advises.
          index = answer.index > 0 ? answer.index : 0;
          if (moved) onData(answer);
          if (!index) await sleep(POLL_MS, signal);
        } catch (e) {
          if (signal.aborted || e.name === 'AbortError') return;
          setConnection(`${e.message} — retrying`);
          backoff = Math.min(backoff ? backoff * 2 : 500, RETRY_MAX_MS);
          index = 0;
          await sleep(backoff, signal);
        }
      }
    })();
  }

  /** For endpoints without blocking queries: fetch every POLL_MS while the page is shown. */
  function poll(path, options, onData, onError) {
    const signal = app.page.signal;
    (async () => {
      while (!signal.aborted) {
        try {
          const answer = await api('GET', path, { ...options, signal });
          if (signal.aborted) return;
          setConnection('');
          onData(answer);
        } catch (e) {
          if (signal.aborted || e.name === 'AbortError') return;
          if (e.status === 0) setConnection(`${e.message} — retrying`);
          else onError(e);
        }
        await sleep(POLL_MS, signal);
      }
    })();
  }

  /** A search box that calls `onInput` with its lowercased text. */
  function searchBox(label, onInput) {
    const id = `search-${label.replace(/\W+/g, '-').toLowerCase()}`;
    const input = h('input', { type: 'search', id, placeholder: label, 'aria-label': label, autocomplete: 'off' });
    input.addEventListener('input', () => onInput(input.value.trim().toLowerCase()));
    return input;
  }

  /** A breadcrumb trail: links up to the current page, separated by slashes. */
  function crumbs(...parts) {
    const items = parts.flatMap((part, i) => (i ? [h('span', { class: 'sep', 'aria-hidden': 'true' }, ' / '), part] : [part]));
    return h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, items);
  }

  function heading(text) {
    return h('h1', { tabindex: '-1' }, text);
  }

  // ---- Pages -------------------------------------------------------------------------

  /**
   * A page that lists items in a table under a search box: `matches(item, text)` decides
   * what a search shows, `columns` head the table and `row(item)` makes each <tr>. Returns
   * `show(items)` (null while loading), to call with every new answer, and the list element.
   */
  function searchableList(main, { title, intro, noun, searchLabel, empty, matches, columns, row, tools }) {
    document.title = `${title} - cairn`;
    let items = null;
    let hidden = false;
    let filter = '';
    const count = h('span', { class: 'muted' });
    const list = h('div');
    replace(main, heading(title), intro ? h('p', { class: 'muted' }, intro) : null,
      h('div', { class: 'toolbar' }, searchBox(searchLabel, (text) => { filter = text; draw(); }), count, tools), list);

    function draw() {
      if (!items) {
        count.textContent = '';
        replace(list, h('p', { class: 'muted' }, 'Loading…'));
        return;
      }
      const shown = items.filter((item) => !filter || matches(item, filter));
      count.textContent = `${shown.length} of ${items.length} ${noun}`;
      const note = hidden
        ? h('p', { class: 'message ok', role: 'status', 'data-acl-hidden': '' },
          `Some ${noun} are hidden by ACLs: your token may not read them. `, link('token', 'Set a token'))
        : null;
      if (!shown.length) {
        replace(list, note, h('p', { class: 'muted' }, items.length ? `No ${noun} match the search.` : hidden ? `No ${noun} you may read.` : empty));
        return;
      }
      replace(list, note, table(columns, shown.map(row)));
    }
    draw();
    return { show(next, filtered) { items = next; hidden = !!filtered; draw(); }, list };
  }

  function servicesPage(main) {
    const page = searchableList(main, {
      title: 'Services',
      noun: 'services',
      searchLabel: 'Search services by name or tag',
      empty: 'No services are registered.',
      matches: (s, text) => s.Name.toLowerCase().includes(text) || (s.Tags || []).some((t) => t.toLowerCase().includes(text)),
      columns: ['Service', 'Health', 'Instances', 'Tags'],
      row: (s) => {
        const status = s.InstancesCritical ? 'critical' : s.InstancesWarning ? 'warning' : 'passing';
        return h('tr', { class: `status-${status}`, 'data-service': s.Name, 'data-status': status },
          cell('Service', link(`services/${enc(s.Name)}`, s.Name)),
          cell('Health',
            s.InstancesPassing ? badge('passing', `${s.InstancesPassing} passing`) : null,
            s.InstancesWarning ? badge('warning', `${s.InstancesWarning} warning`) : null,
            s.InstancesCritical ? badge('critical', `${s.InstancesCritical} critical`) : null),
          cell('Instances', `${s.InstanceCount} on ${s.Nodes.length} ${s.Nodes.length === 1 ? 'node' : 'nodes'}`),
          cell('Tags', tags(s.Tags)));
      },
    });
    watch('/v1/internal/ui/services', {}, (answer) => page.show(JSON.parse(answer.text), answer.filtered));
  }

  function checkList(checks) {
    if (!checks.length) return h('p', { class: 'muted' }, 'No checks: counted as passing.');
    return h('ul', { class: 'checks' }, checks.map((c) =>
      h('li', { 'data-check': c.CheckID, 'data-status': c.Status },
        badge(c.Status), ' ', h('strong', null, c.Name || c.CheckID), ' ',
        h('span', { class: 'muted' }, c.ServiceID ? `service check ${c.CheckID}` : `node check ${c.CheckID}`),
        c.Notes ? h('div', { class: 'muted' }, c.Notes) : null,
        c.Output ? h('pre', { class: 'output' }, c.Output) : null)));
  }

  function servicePage(main, name) {
    document.title = `${name} - Services - cairn`;
    const body = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    replace(main, crumbs(link('services', 'Services'), h('span', null, name)), heading(name), body);
    watch(`/v1/health/service/${enc(name)}`, {}, (answer) => {
      const entries = JSON.parse(answer.text);
      if (!entries.length) {
        replace(body, h('p', { class: 'muted' }, `No instance of ${name} is registered now.`));
        return;
      }
      const statuses = entries.map((e) => worst(e.Checks.map((c) => c.Status)));
      const counts = ['passing', 'warning', 'critical'].map((s) => [s, statuses.filter((x) => x === s).length]);
      replace(body,
        h('p', null, counts.filter(([, n]) => n).map(([s, n]) => badge(s, `${n} ${s}`))),
        entries.map((e, i) => {
          const s = e.Service;
          const address = s.Address || e.Node.Address;
          return h('section', { class: `panel status-${statuses[i]}`, 'data-instance': s.ID, 'data-status': statuses[i] },
            h('h2', null, s.ID, ' ', badge(statuses[i])),
            h('dl', { class: 'facts' },
              h('dt', null, 'Node'), h('dd', null, link(`nodes/${enc(e.Node.Node)}`, e.Node.Node)),
              h('dt', null, 'Address'), h('dd', null, s.Port ? `${address}:${s.Port}` : address),
              s.Tags && s.Tags.length ? [h('dt', null, 'Tags'), h('dd', null, tags(s.Tags))] : null,
              Object.keys(s.Meta || {}).length
                ? [h('dt', null, 'Meta'), h('dd', null, Object.entries(s.Meta).map(([k, v]) => h('span', { class: 'tag' }, `${k}=${v}`)))]
                : null),
            checkList(e.Checks));
        }));
    });
  }

  function nodesPage(main) {
    const page = searchableList(main, {
      title: 'Nodes',
      noun: 'nodes',
      searchLabel: 'Search nodes by name, address or service',
      empty: 'No nodes are registered.',
      matches: (n, text) => n.Node.toLowerCase().includes(text) || n.Address.toLowerCase().includes(text)
        || n.Services.some((s) => s.Service.toLowerCase().includes(text)),
      columns: ['Node', 'Health', 'Address', 'Services'],
      row: (n) => {
        const status = worst(n.Checks.filter((c) => !c.ServiceID).map((c) => c.Status));
        const serviceStatus = (s) => worst(n.Checks.filter((c) => !c.ServiceID || c.ServiceID === s.ID).map((c) => c.Status));
        return h('tr', { class: `status-${status}`, 'data-node': n.Node, 'data-status': status },
          cell('Node', link(`nodes/${enc(n.Node)}`, n.Node)),
          cell('Health', badge(status)),
          cell('Address', n.Address),
          cell('Services', n.Services.length
            ? n.Services.map((s) => badge(serviceStatus(s), s.Service))
            : h('span', { class: 'muted' }, 'none')));
      },
    });
    watch('/v1/internal/ui/nodes', {}, (answer) => page.show(JSON.parse(answer.text), answer.filtered));
  }

  function nodePage(main, name) {
    document.title = `${name} - Nodes - cairn`;
    const body = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    replace(main, crumbs(link('nodes', 'Nodes'), h('span', null, name)), heading(name), body);
    watch(`/v1/internal/ui/node/${enc(name)}`, { allow404: true }, (answer) => {
      if (answer.status === 404) {
        replace(body, h('p', { class: 'muted' }, `Node ${name} is not registered now; this page shows it when it is.`));
        return;
      }
      const n = JSON.parse(answer.text);
      const nodeChecks = n.Checks.filter((c) => !c.ServiceID);
      const status = worst(nodeChecks.map((c) => c.Status));
      const pairs = (object) => Object.entries(object || {}).map(([k, v]) => h('span', { class: 'tag' }, `${k}=${v}`));
      replace(body,
        h('section', { class: `panel status-${status}`, 'data-status': status },
          h('dl', { class: 'facts' },
            h('dt', null, 'Health'), h('dd', null, badge(status)),
            h('dt', null, 'Address'), h('dd', null, n.Address),
            h('dt', null, 'Datacenter'), h('dd', null, n.Datacenter),
            h('dt', null, 'ID'), h('dd', null, n.ID || '—'),
            Object.keys(n.TaggedAddresses || {}).length ? [h('dt', null, 'Tagged addresses'), h('dd', null, pairs(n.TaggedAddresses))] : null,
            Object.keys(n.Meta || {}).length ? [h('dt', null, 'Meta'), h('dd', null, pairs(n.Meta))] : null)),
        h('h2', null, 'Services'),
        n.Services.length
          ? table(['Service', 'ID', 'Health', 'Address', 'Tags'], n.Services.map((s) => {
            const st = worst(n.Checks.filter((c) => !c.ServiceID || c.ServiceID === s.ID).map((c) => c.Status));
            return h('tr', { class: `status-${st}`, 'data-status': st },
              cell('Service', link(`services/${enc(s.Service)}`, s.Service)),
              cell('ID', s.ID),
              cell('Health', badge(st)),
              cell('Address', `${s.Address || n.Address}${s.Port ? `:${s.Port}` : ''}`),
              cell('Tags', tags(s.Tags)));
          }))
          : h('p', { class: 'muted' }, 'No services on this node.'),
        h('h2', null, 'Checks'),
        checkList(n.Checks));
    });
  }

  // Key/Value: a folder lists its keys and sub-folders; a key shows its value with an editor.

  function kvCrumbs(key) {
    const names = key.split('/');
    const parts = [link('kv/', 'Key/Value')];
    let prefix = '';
    names.forEach((name, i) => {
      if (name === '' && i === names.length - 1) return;
      prefix += name + (i < names.length - 1 ? '/' : '');
      parts.push(i < names.length - 1 ? link(`kv/${encKey(prefix)}`, name) : h('span', null, name));
    });
    return crumbs(...parts);
  }

  /** Buttons that ask before a destructive action; resolves the click with `onConfirm`. */
  function confirmButton(label, question, onConfirm) {
    const wrap = h('span');
    const start = h('button', { type: 'button', class: 'danger' }, label);
    start.addEventListener('click', () => {
      const yes = h('button', { type: 'button', class: 'danger primary' }, `Yes, ${label.toLowerCase()}`);
      const no = h('button', { type: 'button' }, 'Cancel');
      const box = h('div', { class: 'confirm', role: 'alertdialog', 'aria-label': question }, h('p', null, question), yes, no);
      const close = () => { box.remove(); start.hidden = false; start.focus(); };
      no.addEventListener('click', close);
      box.addEventListener('keydown', (e) => { if (e.key === 'Escape') close(); });
      yes.addEventListener('click', async () => { yes.disabled = true; no.disabled = true; await onConfirm(); close(); });
      start.hidden = true;
      wrap.append(box);
      no.focus();
    });
    wrap.append(start);
    return wrap;
  }

  function kvFolderPage(main, prefix) {
    document.title = `${prefix || 'Key/Value'} - cairn`;
    const feedback = h('div');
    const list = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    const form = kvCreateForm(prefix, feedback);
    form.hidden = true;
    const create = h('button', { type: 'button', class: 'primary' }, 'Create');
    create.addEventListener('click', () => { form.hidden = false; form.querySelector('input').focus(); });
    const actions = [create];
    if (prefix) {
      actions.push(confirmButton('Delete folder', `Delete ${prefix} and every key under it?`, async () => {
        try {
          await api('DELETE', `/v1/kv/${encKey(prefix)}`, { params: { recurse: true } });
          const parent = prefix.slice(0, -1).includes('/') ? prefix.slice(0, prefix.slice(0, -1).lastIndexOf('/') + 1) : '';
          navigate(pageUrl(`kv/${encKey(parent)}`));
        } catch (e) {
          replace(feedback, message('error', `Not deleted: ${e.message}`));
        }
      }));
    }
    replace(main, prefix ? kvCrumbs(prefix) : null, heading(prefix || 'Key/Value'), h('div', { class: 'toolbar' }, actions), feedback, form, list);

    watch(`/v1/kv/${encKey(prefix)}`, { params: { keys: true, separator: '/' }, allow404: true }, (answer) => {
      const keys = answer.status === 404 ? [] : JSON.parse(answer.text).filter((k) => k !== prefix);
      if (!keys.length) {
        replace(list, h('p', { class: 'muted' }, prefix ? 'This folder is empty.' : 'No keys yet.'));
        return;
      }
      replace(list, h('div', { class: 'table-wrap' }, h('ul', { class: 'listing' }, keys.map((k) => {
        const rest = k.slice(prefix.length);
        return h('li', { 'data-key': k }, link(`kv/${encKey(k)}`, rest, { class: k.endsWith('/') ? 'folder' : 'key' }));
      }))));
    });
  }

  function kvCreateForm(prefix, feedback) {
    const name = h('input', { type: 'text', id: 'kv-new-key', required: true, autocomplete: 'off', spellcheck: 'false' });
    const value = h('textarea', { id: 'kv-new-value', spellcheck: 'false' });
    const save = h('button', { type: 'submit', class: 'primary' }, 'Save');
    const cancel = h('button', { type: 'button' }, 'Cancel');
    const form = h('form', { class: 'editor panel', 'aria-label': 'Create a key' },
      h('label', { for: 'kv-new-key' }, `Key or folder (ending in /), under ${prefix || 'the root'}`), name,
      h('label', { for: 'kv-new-value' }, 'Value'), value,
      h('div', { class: 'actions' }, save, cancel));
    cancel.addEventListener('click', () => { form.hidden = true; });
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const key = prefix + name.value;
      if (!name.value) return;
      save.disabled = true;
      try {
        // cas=0: create only; never overwrite a key someone else made meanwhile.
        const answer = await api('PUT', `/v1/kv/${encKey(key)}`, { params: { cas: 0 }, body: key.endsWith('/') ? '' : value.value });
        if (answer.text.trim() === 'true') {
          replace(feedback, message('ok', `Created ${key}`));
          name.value = '';
          value.value = '';
          form.hidden = true;
        } else {
          replace(feedback, message('error', `Not created: ${key} already exists.`));
        }
      } catch (e) {
        replace(feedback, message('error', `Not created: ${e.message}`));
      } finally {
        save.disabled = false;
      }
    });
    return form;
  }

  /** The bytes of a base64 KV value as text, or null when they are not UTF-8. */
  function decodeValue(base64) {
    if (!base64) return '';
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      return null;
    }
  }

  function kvKeyPage(main, key) {
    document.title = `${key} - Key/Value - cairn`;
    const feedback = h('div');
    const facts = h('dl', { class: 'facts' });
    const notice = h('div');
    const value = h('textarea', { id: 'kv-value', spellcheck: 'false', 'aria-describedby': 'kv-notice' });
    notice.id = 'kv-notice';
    const save = h('button', { type: 'submit', class: 'primary' }, 'Save');
    const reload = h('button', { type: 'button', hidden: true }, 'Load the current value');
    let loaded = null; // { index, text } the editor started from; null while the key is absent
    let latest = null; // the newest answer seen
    const parent = key.includes('/') ? key.slice(0, key.lastIndexOf('/') + 1) : '';
    const remove = confirmButton('Delete', `Delete key ${key}?`, async () => {
      try {
        const answer = await api('DELETE', `/v1/kv/${encKey(key)}`, { params: { cas: loaded ? loaded.index : undefined } });
        if (answer.text.trim() === 'true') navigate(pageUrl(`kv/${encKey(parent)}`));
        else replace(feedback, message('error', 'Not deleted: the key changed since you loaded it. Load the current value and try again.'));
      } catch (e) {
        replace(feedback, message('error', `Not deleted: ${e.message}`));
      }
    });
    const form = h('form', { class: 'editor panel', 'aria-label': `Edit ${key}` },
      facts, h('label', { for: 'kv-value' }, 'Value'), value, notice,
      h('div', { class: 'actions' }, save, reload, remove));
    replace(main, kvCrumbs(key), heading(key), feedback, form);

    const dirty = () => loaded !== null && value.value !== loaded.text;
    function take(entry) {
      loaded = entry;
      value.value = entry ? entry.text : '';
      // A value that is not UTF-8 text cannot round-trip through the editor: no saving over it.
      value.disabled = entry !== null && entry.text === null;
      save.disabled = value.disabled;
      reload.hidden = true;
      replace(notice);
    }
    function showFacts(entry) {
      replace(facts,
        h('dt', null, 'Modify index'), h('dd', { 'data-modify-index': entry.index }, String(entry.index)),
        h('dt', null, 'Flags'), h('dd', null, String(entry.flags)),
        entry.session ? [h('dt', null, 'Locked by session'), h('dd', null, entry.session)] : null,
        entry.text === null ? [h('dt', null, 'Value'), h('dd', null, `${entry.size} bytes, not UTF-8 text: edit it over the API`)] : null);
    }
    reload.addEventListener('click', () => { if (latest) take(latest); replace(feedback); });

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      save.disabled = true;
      try {
        // Check-and-set on the index the edit started from: a concurrent change is refused.
        const answer = await api('PUT', `/v1/kv/${encKey(key)}`, { params: { cas: loaded ? loaded.index : 0 }, body: value.value });
        if (answer.text.trim() === 'true') {
          replace(feedback, message('ok', `Saved ${key}`));
          // The watch brings the new index, before or after this reply.
          if (latest && latest.text === value.value) take(latest);
          else loaded = { ...(loaded || {}), text: value.value, index: -1 };
        } else {
          replace(feedback, message('error',
            'Not saved: the key was changed by someone else since you loaded it (check-and-set conflict). Load the current value, then edit again.'));
          reload.hidden = false;
        }
      } catch (e) {
        replace(feedback, message('error', `Not saved: ${e.message}`));
      } finally {
        save.disabled = value.disabled;
      }
    });

    watch(`/v1/kv/${encKey(key)}`, { allow404: true }, (answer) => {
      if (answer.status === 404) {
        latest = null;
        replace(facts, h('dt', null, 'State'), h('dd', null, 'This key does not exist: saving creates it.'));
        if (!dirty()) take(null);
        return;
      }
      const [entry] = JSON.parse(answer.text);
      const text = decodeValue(entry.Value);
      latest = { index: entry.ModifyIndex, text, flags: entry.Flags, session: entry.Session, size: entry.Value ? atob(entry.Value).length : 0 };
      showFacts(latest);
      if (loaded && loaded.index === -1 && loaded.text === text) {
        take(latest); // our own save coming back
      } else if (!dirty()) {
        take(latest);
      } else if (latest.index !== loaded.index) {
        replace(notice, message('note', `This key changed on the server (index ${latest.index}) while you were editing.`));
        reload.hidden = false;
      }
    });
  }

  function membersPage(main) {
    let wan = false;
    const pool = h('select', { id: 'pool', 'aria-label': 'Gossip pool' },
      h('option', { value: 'lan' }, 'LAN pool (this datacenter)'), h('option', { value: 'wan' }, 'WAN pool (servers of every datacenter)'));
    const page = searchableList(main, {
      title: 'Members',
      intro: 'The gossip pool as this agent sees it.',
      noun: 'members',
      searchLabel: 'Search members by name or address',
      empty: 'No members.',
      tools: pool,
      matches: (m, text) => m.Name.toLowerCase().includes(text) || m.Addr.includes(text),
      columns: ['Member', 'Status', 'Address', 'Role', 'Datacenter'],
      row: (m) => {
        const status = MEMBER_STATUS[m.Status] || String(m.Status);
        const health = status === 'alive' ? 'passing' : status === 'failed' ? 'critical' : 'warning';
        return h('tr', { class: `status-${health}`, 'data-member': m.Name, 'data-status': status },
          cell('Member', m.Name),
          cell('Status', badge(health, status)),
          cell('Address', `${m.Addr}:${m.Port}`),
          cell('Role', (m.Tags || {}).role === 'consul' ? 'server' : 'client'),
          cell('Datacenter', (m.Tags || {}).dc || ''));
      },
    });
    pool.addEventListener('change', () => { wan = pool.value === 'wan'; page.show(null); });
    poll('/v1/agent/members', { local: true, get params() { return { wan }; } },
      (answer) => page.show(JSON.parse(answer.text).sort((a, b) => a.Name.localeCompare(b.Name))),
      (e) => replace(page.list, message('error', e.message)));
  }

  function raftPage(main) {
    document.title = 'Raft - cairn';
    const list = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    replace(main, heading('Raft peers'), h('p', { class: 'muted' }, 'The servers that replicate this datacenter\'s state.'), list);
    poll('/v1/operator/raft/configuration', {}, async (answer) => {
      const config = JSON.parse(answer.text);
      let health = {};
      try {
        const h2 = await api('GET', '/v1/operator/autopilot/health');
        for (const s of JSON.parse(h2.text).Servers || []) health[s.ID] = s;
      } catch { health = {}; }
      replace(list, table(['Server', 'Role', 'Healthy', 'Address', 'Last index', 'ID'], config.Servers.map((s) => {
        const hs = health[s.ID];
        const ok = hs ? hs.Healthy : null;
        return h('tr', { class: `status-${ok === false ? 'critical' : 'passing'}`, 'data-peer': s.Node },
          cell('Server', s.Node),
          cell('Role', s.Leader ? badge('passing', 'leader') : s.Voter ? 'voter' : 'non-voter'),
          cell('Healthy', ok === null ? '—' : badge(ok ? 'passing' : 'critical', ok ? 'healthy' : 'unhealthy')),
          cell('Address', s.Address),
          cell('Last index', hs ? String(hs.LastIndex) : '—'),
          cell('ID', h('code', null, s.ID)));
      }), `Configuration at index ${config.Index}`));
    }, (e) => replace(list, message('error', `${e.message}`)));
  }

  /** The ACL token this browser presents: set, checked against the agent, cleared. */
  function tokenPage(main) {
    document.title = 'Token - cairn';
    const status = h('div', null);
    const field = h('input', { type: 'password', id: 'acl-token', autocomplete: 'off', spellcheck: 'false', value: savedToken() });
    const save = h('button', { type: 'submit', class: 'primary' }, 'Save');
    const clear = h('button', { type: 'button' }, 'Clear');
    const form = h('form', { class: 'editor panel', 'aria-label': 'ACL token' },
      h('label', { for: 'acl-token' }, 'SecretID of an ACL token (kept in this browser only)'), field,
      h('div', { class: 'actions' }, save, clear));
    replace(main, heading('ACL token'),
      h('p', { class: 'muted' }, 'Every request of this page presents this token. Without one the agent uses its default token.'),
      form, status);
    const show = async () => {
      if (!savedToken()) {
        replace(status, message('ok', 'No token set: requests use the agent\'s default token.'));
        return;
      }
      try {
        const token = JSON.parse((await api('GET', '/v1/acl/token/self', { local: true })).text);
        const policies = (token.Policies || []).map((p) => p.Name).join(', ') || 'none';
        replace(status, message('ok', `Using token ${token.AccessorID}${token.Description ? ` (${token.Description})` : ''}; policies: ${policies}.`));
      } catch (e) {
        if (e.name === 'AbortError') return;
        const text = e.status === 401 ? 'ACLs are off on this agent: no token is needed.' : `This token is not accepted: ${e.message}`;
        replace(status, message(e.status === 401 ? 'ok' : 'error', text));
      }
    };
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      try { localStorage.setItem(TOKEN_KEY, field.value.trim()); } catch { /* storage off: nothing kept */ }
      show();
    });
    clear.addEventListener('click', () => {
      try { localStorage.removeItem(TOKEN_KEY); } catch { /* nothing kept */ }
      field.value = '';
      show();
    });
    show();
  }

  function notFoundPage(main) {
    document.title = 'Not found - cairn';
    replace(main, heading('No such page'), h('p', null, link('services', 'Go to the services')));
  }

  // ---- Shell -------------------------------------------------------------------------

  async function loadDatacenters() {
    const select = document.getElementById('dc');
    try {
      const answer = await api('GET', '/v1/catalog/datacenters', { local: true, signal: new AbortController().signal });
      const dcs = JSON.parse(answer.text);
      if (!dcs.includes(app.dc)) dcs.push(app.dc);
      replace(select, dcs.map((dc) => h('option', { value: dc, selected: dc === app.dc }, dc)));
    } catch {
      replace(select, h('option', { value: app.dc }, app.dc));
    }
  }

  document.getElementById('dc').addEventListener('change', (event) => {
    const route = parseRoute(location.pathname);
    app.dc = event.target.value;
    navigate(pageUrl(route.section === 'kv' ? 'kv/' : route.section));
  });

  const PAGES = {
    services: (main, r) => (r.name ? servicePage(main, r.name) : servicesPage(main)),
    nodes: (main, r) => (r.name ? nodePage(main, r.name) : nodesPage(main)),
    kv: (main, r) => (r.folder ? kvFolderPage(main, r.key) : kvKeyPage(main, r.key)),
    members: (main) => membersPage(main),
    raft: (main) => raftPage(main),
    token: (main) => tokenPage(main),
  };

  function render(moveFocus) {
    app.page.abort();
    app.page = new AbortController();
    setConnection('');
    const route = parseRoute(location.pathname);
    if (!route.dc) {
      navigate(`${ROOT}${enc(app.localDc)}/services`, true);
      return;
    }
    const dcChanged = route.dc !== app.dc;
    app.dc = route.dc;
    if (dcChanged) loadDatacenters();
    for (const a of document.querySelectorAll('#sections a')) {
      a.href = pageUrl(a.dataset.section === 'kv' ? 'kv/' : a.dataset.section);
      if (a.dataset.section === route.section) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    const main = document.getElementById('main');
    (PAGES[route.section] || notFoundPage)(main, route);
    if (moveFocus) {
      const h1 = main.querySelector('h1');
      if (h1) h1.focus();
    }
  }

  async function start() {
    try {
      const answer = await api('GET', '/v1/agent/self', { local: true });
      app.localDc = JSON.parse(answer.text).Config.Datacenter;
    } catch (e) {
      if (e.status !== 403) {
        setConnection(`${e.message} — reload to retry`);
        return;
      }
      // A token without agent read still gets the pages it may read (and the Token page):
      // the datacenter list needs no token and starts with this agent's.
      try {
        const dcs = JSON.parse((await api('GET', '/v1/catalog/datacenters', { local: true })).text);
        app.localDc = dcs[0];
      } catch (e2) {
        setConnection(`${e2.message} — reload to retry`);
        return;
      }
    }
    render(false);
  }

  start();
})();
