// evidock kiosk: live updates of the dock screen from /events (server-sent events).
// Text goes in with textContent only; nothing from the server is parsed as HTML.
// Without this script the page refreshes itself (<noscript> meta refresh).
(function () {
  "use strict";
  var grid = document.getElementById("tiles");
  var template = document.getElementById("tile-template");
  if (!grid || !template || !window.EventSource) { return; }
  var empty = document.getElementById("empty");
  var liveOff = document.getElementById("live-off");
  var uplink = document.getElementById("uplink");
  var TEXT = ["device", "state_text", "officer", "files", "bytes", "speed", "eta",
              "current", "hint", "wiped", "unplug", "slot"];
  var UPLINK_STATES = ["connected", "disconnected", "unconfigured", "unknown"];
  var lostTimer = null;

  function setText(el, value) {
    if (!el) { return; }
    var text = value === undefined || value === null ? "" : String(value);
    if (el.textContent !== text) { el.textContent = text; }
    el.hidden = text === "";
  }

  function setList(el, items) {
    if (!el) { return; }
    items = items || [];
    while (el.firstChild) { el.removeChild(el.firstChild); }
    items.forEach(function (item) {
      var li = document.createElement("li");
      li.textContent = String(item);
      el.appendChild(li);
    });
    el.hidden = items.length === 0;
  }

  function field(root, name) { return root.querySelector('[data-f="' + name + '"]'); }

  function fill(el, v) {
    el.id = v.id;
    el.className = "tile state-" + String(v.state).replace(/[^a-z-]/g, "") + (v.safe ? " safe" : " unsafe");
    TEXT.forEach(function (name) { setText(field(el, name), v[name]); });
    field(el, "unplug").hidden = false;
    var slot = field(el, "slot");
    if (slot) { slot.title = String(v.slot_full || ""); }
    var bar = field(el, "pct");
    if (bar) { bar.value = Number(v.pct) || 0; bar.textContent = (Number(v.pct) || 0) + "%"; }
    setList(field(el, "anomalies"), v.anomalies);
  }

  function newTile() {
    return template.content.firstElementChild.cloneNode(true);
  }

  function renderTiles(tiles) {
    var keep = {};
    tiles.forEach(function (v, i) {
      var el = document.getElementById(v.id);
      if (!el || !el.hasAttribute("data-tile")) { el = newTile(); }
      fill(el, v);
      keep[v.id] = true;
      var at = grid.children[i];
      if (at !== el) { grid.insertBefore(el, at || null); }  // new tiles in, others in slot order
    });
    Array.prototype.slice.call(grid.querySelectorAll("[data-tile]")).forEach(function (el) {
      if (!keep[el.id]) { grid.removeChild(el); }
    });
    if (empty) { empty.hidden = tiles.length > 0; }
  }

  function renderUplink(u) {
    if (!uplink || !u) { return; }
    UPLINK_STATES.forEach(function (s) { uplink.classList.remove("uplink-" + s); });
    if (UPLINK_STATES.indexOf(u.state) >= 0) { uplink.classList.add("uplink-" + u.state); }
    setText(uplink.querySelector('[data-u="link"]'), u.link);
    setText(uplink.querySelector('[data-u="broker"]'), u.broker);
    setText(uplink.querySelector('[data-u="error"]'), u.error);
    setText(uplink.querySelector('[data-u="note"]'), u.note);
    setList(uplink.querySelector('[data-u="lines"]'), u.lines);
  }

  var source = new EventSource(grid.getAttribute("data-events"));
  source.onmessage = function (event) {
    var view;
    try { view = JSON.parse(event.data); } catch (e) { return; }
    if (lostTimer) { clearTimeout(lostTimer); lostTimer = null; }
    if (liveOff) { liveOff.hidden = true; }
    renderTiles(view.tiles || []);
    renderUplink(view.uplink);
    document.body.setAttribute("data-live", "1");
  };
  source.onerror = function () {
    // EventSource reconnects by itself; if it stays down, reload the page.
    if (liveOff) { liveOff.hidden = false; }
    if (!lostTimer) { lostTimer = setTimeout(function () { window.location.reload(); }, 15000); }
  };
})();
