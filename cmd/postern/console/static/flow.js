// Postern live flow: reads /api/events (Server-Sent Events) and shows each
// session as a row that opens and closes, with its protocol lines on
// demand, and each message as a timeline. Built with DOM calls only
// (textContent), never from HTML strings.
'use strict';
(function () {
  var MAX_ROWS = 500, MAX_LINES = 2000;
  var sessions = new Map(), messages = new Map();
  var sessList = document.getElementById('sessions');
  var msgList = document.getElementById('messages');
  var status = document.getElementById('status');
  var last = 0;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function attr(ev, k) {
    for (var i = ev.attrs.length - 1; i >= 0; i--) if (ev.attrs[i].k === k) return ev.attrs[i].v;
    return '';
  }
  function time(ev) { return new Date(ev.time).toLocaleTimeString(); }
  function summary(ev) {
    var skip = { session: 1, part: 1, proto: 1, dir: 1, line: 1 };
    return ev.attrs.filter(function (a) { return !skip[a.k]; })
      .map(function (a) { return a.k + '=' + a.v; }).join(' ');
  }
  function trim(list, map) {
    while (list.children.length > MAX_ROWS) {
      var old = list.lastElementChild;
      map.delete(old.dataset.key);
      list.removeChild(old);
    }
  }
  function session(id, f) {
    var s = sessions.get(id);
    if (s) return s;
    var li = el('li', 'open');
    li.dataset.key = id;
    var head = el('button', 'head');
    head.type = 'button';
    head.setAttribute('aria-expanded', 'false');
    var title = el('span', '', (f.proto || 'session') + ' ' + id);
    var state = el('span', 'state', ' open');
    var info = el('span', 'info', '');
    head.append(title, state, info);
    var lines = el('pre');
    lines.hidden = true;
    head.addEventListener('click', function () {
      lines.hidden = !lines.hidden;
      head.setAttribute('aria-expanded', String(!lines.hidden));
    });
    li.append(head, lines);
    sessList.prepend(li);
    s = { li: li, state: state, info: info, lines: lines, n: 0 };
    sessions.set(id, s);
    trim(sessList, sessions);
    return s;
  }
  function addLine(s, cls, text) {
    if (s.n++ >= MAX_LINES) return;
    var span = el('span', cls, text + '\n');
    s.lines.append(span);
  }
  function message(id) {
    var m = messages.get(id);
    if (m) return m;
    var li = el('li');
    li.dataset.key = id;
    li.append(el('strong', '', id));
    var ol = el('ol');
    li.append(ol);
    msgList.prepend(li);
    m = { li: li, ol: ol };
    messages.set(id, m);
    trim(msgList, messages);
    return m;
  }
  function handle(ev) {
    var f = ev.flow;
    if (f.session) {
      var s = session(f.session, f);
      if (f.kind === 'open') {
        var remote = attr(ev, 'remote');
        s.info.textContent = ' ' + time(ev) + (remote ? ' from ' + remote : '');
      } else if (f.kind === 'close') {
        s.li.className = 'closed';
        s.state.textContent = ' closed ' + time(ev);
      } else if (f.kind === 'line') {
        addLine(s, 'dir' + f.dir, f.dir + ': ' + f.line);
      } else {
        addLine(s, 'event', '# ' + ev.msg + ' ' + summary(ev));
        var user = attr(ev, 'user');
        if (user && s.info.textContent.indexOf(user) < 0) s.info.textContent += ' user ' + user;
      }
    }
    if (f.message) {
      var m = message(f.message);
      m.ol.append(el('li', '', time(ev) + ' ' + ev.msg + ' ' + summary(ev)));
    }
  }
  function connect() {
    var src = new EventSource('/api/events?since=' + last);
    src.onopen = function () { status.textContent = 'Live: showing events as they happen.'; };
    src.onmessage = function (e) {
      var ev;
      try { ev = JSON.parse(e.data); } catch (err) { return; }
      if (ev.seq <= last) return;
      last = ev.seq;
      handle(ev);
    };
    src.addEventListener('dropped', function () {
      status.textContent = 'Fell behind; reconnecting…';
      src.close();
      setTimeout(connect, 1000);
    });
    src.onerror = function () { status.textContent = 'Disconnected; retrying…'; };
  }
  connect();
})();
