/*
 * The Clustron dashboard: a live view of the cluster as one node sees it.
 *
 * It polls GET v1/cluster every few seconds and listens to the server-sent
 * events of GET v1/events for instant updates. Actions POST to the admin API
 * with the bearer token; the token's role is learnt from the answers (a 403
 * names it), never asked of the server separately.
 *
 * No framework, no build step, no network access beyond the node itself.
 * Values from the server are only ever set as text, never as HTML.
 */
(function () {
  "use strict";

  var POLL_INTERVAL_MS = 3000;
  var STALE_AFTER_MS = 10000;
  var MAX_EVENTS = 100;
  var TOKEN_KEY = "clustron.token";
  var ROLE_KEY = "clustron.role";
  var SVG_NS = "http://www.w3.org/2000/svg";
  var ROLES = ["viewer", "operator", "admin"];

  // The event types the node emits (see ClusterNode.subscribe).
  var EVENT_TYPES = [
    "joined", "view_changed", "coordinator_changed", "member_joined",
    "member_suspected", "member_alive", "member_died", "member_left",
    "member_removed", "member_draining", "member_reaped", "merged",
    "quorum_lost", "quorum_regained", "left_cluster"
  ];
  var EVENT_TONE = {
    joined: "good", member_joined: "good", member_alive: "good",
    quorum_regained: "good", merged: "good",
    member_suspected: "warn", member_draining: "warn", member_left: "warn",
    member_removed: "warn", member_reaped: "muted", left_cluster: "warn",
    member_died: "bad", quorum_lost: "bad",
    view_changed: "info", coordinator_changed: "info"
  };
  var EVENT_LABEL = {
    joined: "joined", view_changed: "view changed",
    coordinator_changed: "new coordinator", member_joined: "member joined",
    member_suspected: "suspected", member_alive: "alive again",
    member_died: "died", member_left: "left", member_removed: "removed",
    member_draining: "draining", member_reaped: "reaped", merged: "merged",
    quorum_lost: "quorum lost", quorum_regained: "quorum regained",
    left_cluster: "left cluster"
  };
  var MEMBER_VERB = {
    member_joined: "joined", member_suspected: "suspected", member_alive: "is alive again",
    member_died: "died", member_left: "left", member_removed: "removed",
    member_draining: "draining", member_reaped: "reaped", left_cluster: "left the cluster"
  };
  // The least role each action needs (DESIGN section 6).
  var ACTION_ROLE = { elect: "operator", drain: "operator", remove: "admin" };

  var state = {
    token: null,
    role: null,          // learnt from answers: null until known
    status: null,        // the last GET v1/cluster document
    lastOk: 0,           // Date.now() of the last good poll
    polling: null,
    inFlight: false,
    refreshTimer: null,
    source: null,
    events: [],
    busy: false
  };

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    appendAll(node, children);
    return node;
  }

  function svg(tag, attrs, children) {
    var node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    appendAll(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    if (!attrs) { return; }
    Object.keys(attrs).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) { return; }
      if (key === "text") { node.textContent = String(value); }
      else { node.setAttribute(key, value === true ? "" : String(value)); }
    });
  }

  function appendAll(node, children) {
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) { return; }
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
  }

  function clear(node) {
    while (node.firstChild) { node.removeChild(node.firstChild); }
  }

  function text(value) {
    return value === null || value === undefined || value === "" ? "–" : String(value);
  }

  function viewId(view) {
    if (!view) { return null; }
    if (Array.isArray(view)) { return view.join("."); }
    return view.epoch + "." + view.seq;
  }

  function formatTime(seconds) {
    var date = new Date(seconds * 1000);
    if (isNaN(date.getTime())) { return "–"; }
    return date.toLocaleTimeString([], { hour12: false }) + "." +
      String(date.getMilliseconds()).padStart(3, "0");
  }

  // -- token and role ------------------------------------------------------

  function storage() {
    try { return window.sessionStorage; } catch (e) { return null; }
  }

  function loadToken() {
    var params = new URLSearchParams(window.location.search);
    var fromUrl = params.get("token");
    if (fromUrl) {
      // Keep the token out of the address bar, history and bookmarks.
      params.delete("token");
      var rest = params.toString();
      window.history.replaceState(null, "", window.location.pathname +
        (rest ? "?" + rest : "") + window.location.hash);
      saveToken(fromUrl.trim());
      return fromUrl.trim();
    }
    var store = storage();
    return store ? store.getItem(TOKEN_KEY) : null;
  }

  function saveToken(token) {
    var store = storage();
    if (store) {
      store.setItem(TOKEN_KEY, token);
      store.removeItem(ROLE_KEY);
    }
  }

  function forgetToken() {
    var store = storage();
    if (store) {
      store.removeItem(TOKEN_KEY);
      store.removeItem(ROLE_KEY);
    }
    state.token = null;
    state.role = null;
  }

  function learnRole(role) {
    if (ROLES.indexOf(role) < 0) { return; }
    state.role = role;
    var store = storage();
    if (store) { store.setItem(ROLE_KEY, role); }
    renderPermissions();
  }

  function allows(action) {
    if (!state.role) { return true; }   // unknown: let the server decide
    return ROLES.indexOf(state.role) >= ROLES.indexOf(ACTION_ROLE[action]);
  }

  // -- the API ----------------------------------------------------------------

  function api(method, path, body) {
    var init = {
      method: method,
      cache: "no-store",
      headers: { "Authorization": "Bearer " + state.token, "Accept": "application/json" }
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      return response.text().then(function (raw) {
        var data = null;
        try { data = raw ? JSON.parse(raw) : null; } catch (e) { data = null; }
        if (response.ok) { return data; }
        var error = new Error(
          data && data.error && data.error.message ? data.error.message
            : "HTTP " + response.status + " " + response.statusText);
        error.status = response.status;
        error.code = data && data.error ? data.error.code : null;
        throw error;
      });
    });
  }

  // -- polling ----------------------------------------------------------------

  function poll() {
    if (state.inFlight || !state.token) { return; }
    state.inFlight = true;
    api("GET", "v1/cluster").then(function (doc) {
      state.inFlight = false;
      state.status = doc;
      state.lastOk = Date.now();
      renderStatus();
    }, function (error) {
      state.inFlight = false;
      if (error.status === 401) {
        stop();
        showLogin("The node refused the token: " + error.message);
        return;
      }
      if (error.status === 403) {
        // A token without even the viewer role cannot exist, but say so.
        showConnection("The token may not read the cluster: " + error.message);
        return;
      }
      renderStaleness(error.message);
    });
  }

  function scheduleRefresh() {
    if (state.refreshTimer !== null) { return; }
    state.refreshTimer = window.setTimeout(function () {
      state.refreshTimer = null;
      poll();
    }, 150);
  }

  function renderStaleness(reason) {
    var age = Date.now() - state.lastOk;
    if (!state.lastOk || age > STALE_AFTER_MS) {
      var seconds = state.lastOk ? Math.round(age / 1000) + " s ago" : "never";
      showConnection("Cannot reach this node's admin API (" + (reason || "no answer") +
        "); last good status " + seconds + ". What is shown may be out of date.");
    }
  }

  function showConnection(message) {
    var banner = $("connection-banner");
    if (message) {
      banner.textContent = message;
      banner.hidden = false;
      $("dashboard").classList.add("stale");
    } else {
      banner.hidden = true;
      $("dashboard").classList.remove("stale");
    }
  }

  // -- the event stream ---------------------------------------------------------

  function openStream() {
    closeStream();
    if (typeof window.EventSource !== "function") {
      setStreamStatus("idle", "polling only");
      return;
    }
    var source = new EventSource("v1/events?token=" + encodeURIComponent(state.token));
    state.source = source;
    setStreamStatus("wait", "connecting…");
    source.onopen = function () {
      setStreamStatus("live", "live");
      scheduleRefresh();
    };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        setStreamStatus("down", "stream closed; polling");
        // The browser gave up (e.g. the token was refused): retry later.
        window.setTimeout(function () {
          if (state.source === source && state.token) { openStream(); }
        }, POLL_INTERVAL_MS * 2);
      } else {
        setStreamStatus("wait", "reconnecting…");
      }
    };
    var handle = function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      if (!event || typeof event !== "object") { return; }
      addEvent(event);
      scheduleRefresh();
    };
    EVENT_TYPES.forEach(function (type) { source.addEventListener(type, handle); });
    source.onmessage = handle;
  }

  function closeStream() {
    if (state.source) {
      state.source.close();
      state.source = null;
    }
  }

  function setStreamStatus(kind, label) {
    var pill = $("stream-status");
    pill.className = "pill pill-" + kind;
    pill.querySelector(".pill-text").textContent = label;
    pill.title = kind === "live" ? "receiving events from the node as they happen"
      : "updates arrive by polling every " + POLL_INTERVAL_MS / 1000 + " s";
  }

  // -- rendering the status -------------------------------------------------------

  function members() {
    var view = state.status && state.status.view;
    return view && Array.isArray(view.members) ? view.members : [];
  }

  function renderStatus() {
    var doc = state.status;
    if (!doc) { return; }
    showConnection(null);
    var view = doc.view;
    $("context").hidden = false;
    $("cluster-id").textContent = text(doc.cluster_id);
    $("observer-id").textContent = text(doc.node_id);
    $("topology-observer").textContent = text(doc.node_id);
    $("view-id").textContent = view ? viewId(view) : "not joined";
    $("elect-here").textContent = "Elect, preferring " + text(doc.node_id);
    $("elect-here").setAttribute("data-node", doc.node_id || "");
    renderQuorum(doc);
    renderSummary(doc);
    renderTopology(doc);
    renderMembers(doc);
    renderPermissions();
    $("updated").textContent = "updated " + new Date().toLocaleTimeString([], { hour12: false });
  }

  function renderQuorum(doc) {
    var banner = $("quorum-banner");
    var quorum = doc.quorum || {};
    var message;
    var kind;
    if (!doc.view) {
      kind = "unknown";
      message = "Node " + text(doc.node_id) + " has not joined a cluster yet (" +
        text(quorum.present) + " of " + text(quorum.required) + " nodes needed to form one are here).";
    } else if (quorum.mode === "none") {
      kind = "good";
      message = "Quorum is not enforced (mode none): " + text(quorum.present) + " members reachable.";
    } else if (quorum.has_quorum === true) {
      kind = "good";
      message = "Quorum held: " + text(quorum.present) + " members reachable, " +
        text(quorum.required) + " required (" + text(quorum.mode) + ").";
    } else if (quorum.has_quorum === false) {
      kind = "bad";
      message = "No quorum: only " + text(quorum.present) + " members reachable, " +
        text(quorum.required) + " required (" + text(quorum.mode) +
        "). The view will not change and no coordinator acts until quorum returns.";
    } else {
      kind = "unknown";
      message = "Quorum unknown.";
    }
    banner.className = "banner banner-" + kind;
    banner.setAttribute("data-has-quorum", String(quorum.has_quorum));
    banner.querySelector(".banner-text").textContent = message;
  }

  function countStates(list) {
    var counts = {};
    list.forEach(function (member) {
      counts[member.state] = (counts[member.state] || 0) + 1;
    });
    return counts;
  }

  function renderSummary(doc) {
    var view = doc.view;
    var list = members();
    var counts = countStates(list);
    var order = ["alive", "suspect", "joining", "leaving", "dead"];
    var parts = order.filter(function (s) { return counts[s]; })
      .map(function (s) { return counts[s] + " " + s; });
    var draining = list.filter(function (m) { return m.draining; }).length;
    if (draining) { parts.push(draining + " draining"); }
    var coordinator = $("sum-coordinator");
    clear(coordinator);
    if (view && view.coordinator) {
      appendAll(coordinator, [el("span", { "class": "crown", "aria-hidden": "true", text: "♛" }),
        el("strong", { text: view.coordinator })]);
    } else {
      coordinator.textContent = "none";
    }
    $("sum-view").textContent = view ? "epoch " + view.epoch + ", change " + view.seq : "not joined";
    $("sum-members").textContent = list.length ? list.length + " (" + parts.join(", ") + ")" : "–";
    var quorum = doc.quorum || {};
    $("sum-quorum").textContent = (quorum.has_quorum ? "yes" : quorum.has_quorum === false ? "NO" : "unknown") +
      " · " + text(quorum.present) + " present / " + text(quorum.required) + " required";
    $("sum-node").textContent = text(doc.node_id) + " (" + text(doc.state) +
      (doc.is_coordinator ? ", coordinator" : "") + ")";
    var peers = Array.isArray(doc.peers) ? doc.peers : [];
    var up = peers.filter(function (p) { return p.connected; }).length;
    $("sum-peers").textContent = up + " of " + peers.length;
    renderPeers(peers);
    $("members-count").textContent = list.length + (list.length === 1 ? " member" : " members");
  }

  function renderPeers(peers) {
    var body = $("peers-body");
    clear(body);
    $("peers-empty").hidden = peers.length > 0;
    peers.forEach(function (peer) {
      body.appendChild(el("tr", { "data-peer": peer.node_id }, [
        el("th", { scope: "row", text: text(peer.node_id) }),
        el("td", { "class": "mono", text: text(peer.address) }),
        el("td", {}, [el("span", {
          "class": "link " + (peer.connected ? "link-up" : "link-down"),
          text: peer.connected ? "connected" : "disconnected"
        })]),
        el("td", { "class": "mono num", text: text(peer.queued_frames) })
      ]));
    });
  }

  function stateOf(member) {
    return ["alive", "suspect", "dead", "leaving", "joining"].indexOf(member.state) >= 0
      ? member.state : "unknown";
  }

  function crown(y) {
    return svg("path", {
      "class": "crown-shape",
      d: "M-11,5 L-11,-5 L-5.5,0 L0,-9 L5.5,0 L11,-5 L11,5 Z",
      transform: "translate(0," + y + ")"
    });
  }

  function renderTopology(doc) {
    var list = members();
    var edges = $("topology-edges");
    var nodes = $("topology-nodes");
    clear(edges);
    clear(nodes);
    var cx = 210;
    var cy = 196;
    var n = list.length;
    var radius = n <= 6 ? 34 : Math.max(16, 34 - (n - 6) * 2);
    var ring = n <= 1 ? 0 : 130;
    var positions = {};
    var top = Infinity;
    var bottom = -Infinity;
    list.forEach(function (member, index) {
      var angle = -Math.PI / 2 + (2 * Math.PI * index) / Math.max(n, 1);
      var y = cy + ring * Math.sin(angle);
      positions[member.node_id] = { x: cx + ring * Math.cos(angle), y: y };
      top = Math.min(top, y);
      bottom = Math.max(bottom, y);
    });
    // Centre the drawing (crowns above, labels below) vertically.
    var shift = cy - ((top - radius - 26) + (bottom + radius + 36)) / 2;
    Object.keys(positions).forEach(function (id) { positions[id].y += shift; });
    var observer = doc.node_id;
    var from = positions[observer];
    var peers = Array.isArray(doc.peers) ? doc.peers : [];
    if (from) {
      peers.forEach(function (peer) {
        var to = positions[peer.node_id];
        if (!to) { return; }
        // Stop the line short of both circles (and the coordinator's ring).
        var dx = to.x - from.x;
        var dy = to.y - from.y;
        var length = Math.sqrt(dx * dx + dy * dy) || 1;
        var gap = radius + 12;
        if (length <= 2 * gap) { return; }
        var ux = dx / length;
        var uy = dy / length;
        edges.appendChild(svg("line", {
          "class": peer.connected ? "edge edge-up" : "edge edge-down",
          x1: (from.x + ux * gap).toFixed(1), y1: (from.y + uy * gap).toFixed(1),
          x2: (to.x - ux * gap).toFixed(1), y2: (to.y - uy * gap).toFixed(1),
          "data-peer": peer.node_id
        }));
      });
    }
    var coordinator = doc.view ? doc.view.coordinator : null;
    var described = [];
    list.forEach(function (member) {
      var pos = positions[member.node_id];
      var memberState = stateOf(member);
      var isCoordinator = member.node_id === coordinator;
      var classes = ["node", "state-" + memberState];
      if (member.draining) { classes.push("draining"); }
      if (isCoordinator) { classes.push("coordinator"); }
      if (member.node_id === observer) { classes.push("observer"); }
      var summary = member.node_id + ": " + memberState +
        (member.draining ? ", draining" : "") +
        (isCoordinator ? ", coordinator" : "") +
        (member.node_id === observer ? ", this node" : "");
      described.push(summary);
      var group = svg("g", {
        "class": classes.join(" "),
        transform: "translate(" + pos.x.toFixed(1) + "," + pos.y.toFixed(1) + ")",
        "data-node-id": member.node_id,
        "data-state": memberState
      }, [svg("title", { text: summary + (member.reason ? " — " + member.reason : "") })]);
      if (isCoordinator) {
        group.appendChild(svg("circle", { "class": "coord-ring", r: radius + 7 }));
      }
      group.appendChild(svg("circle", { "class": "body", r: radius }));
      if (member.draining) {
        group.appendChild(svg("circle", { "class": "stripes", r: radius }));
      }
      group.appendChild(svg("text", {
        "class": "node-label", "text-anchor": "middle", dy: "0.35em",
        "font-size": radius >= 28 ? 15 : 11, text: member.node_id
      }));
      if (isCoordinator) { group.appendChild(crown(-radius - 17)); }
      group.appendChild(svg("text", {
        "class": "node-sub", "text-anchor": "middle", y: radius + (isCoordinator ? 22 : 17),
        text: memberState + (member.draining ? " · draining" : "")
      }));
      if (member.node_id === observer) {
        group.appendChild(svg("text", {
          "class": "node-observer", "text-anchor": "middle",
          y: radius + (isCoordinator ? 36 : 31), text: "this node"
        }));
      }
      nodes.appendChild(group);
    });
    $("topology-desc").textContent = list.length
      ? "Cluster topology: " + described.join("; ") + "."
      : "No members: node " + text(observer) + " has not joined a view.";
  }

  function stateBadge(member) {
    var memberState = stateOf(member);
    var badges = el("span", { "class": "badges" }, [
      el("span", { "class": "badge state-" + memberState }, [
        el("span", { "class": "dot", "aria-hidden": "true" }), memberState
      ])
    ]);
    if (member.draining) {
      badges.appendChild(el("span", { "class": "badge badge-draining", text: "draining" }));
    }
    return badges;
  }

  function actionButton(action, member, label, extraClass) {
    var button = el("button", {
      type: "button",
      "class": "btn btn-small " + (extraClass || "btn-secondary"),
      "data-action": action,
      "data-node": member.node_id,
      "aria-label": label + " " + member.node_id,
      text: label
    });
    return button;
  }

  function renderMembers(doc) {
    var body = $("members-body");
    var focused = document.activeElement;
    var focusKey = focused && focused.getAttribute && focused.getAttribute("data-action")
      ? focused.getAttribute("data-action") + "/" + focused.getAttribute("data-node") : null;
    clear(body);
    var coordinator = doc.view ? doc.view.coordinator : null;
    var list = members();
    if (!list.length) {
      body.appendChild(el("tr", {}, [el("td", {
        colspan: 6, "class": "empty", text: "No members: this node has not joined a view."
      })]));
      return;
    }
    list.forEach(function (member) {
      var memberState = stateOf(member);
      var nameCell = el("th", { scope: "row" }, [
        member.node_id === coordinator
          ? el("span", { "class": "crown", title: "coordinator", text: "♛ " }) : null,
        el("span", { "class": "node-name", text: member.node_id }),
        member.node_id === coordinator
          ? el("span", { "class": "visually-hidden", text: " (coordinator)" }) : null,
        member.node_id === doc.node_id ? el("span", { "class": "tag", text: "this node" }) : null
      ]);
      var gone = memberState === "dead" || memberState === "leaving";
      var drain = actionButton("drain", member, "Drain");
      drain.setAttribute("data-unavailable", String(gone || !!member.draining));
      drain.setAttribute("data-hint", member.draining ? member.node_id + " is draining already"
        : "mark " + member.node_id + " draining: it is never elected coordinator");
      var prefer = actionButton("prefer", member, "Prefer");
      prefer.setAttribute("data-unavailable", String(memberState !== "alive" || !!member.draining));
      prefer.setAttribute("aria-label", "Elect preferring " + member.node_id);
      prefer.setAttribute("data-hint", "start an election that favours " + member.node_id);
      var remove = actionButton("remove", member, "Remove", "btn-danger-outline");
      remove.setAttribute("data-hint", "remove " + member.node_id + " from the cluster");
      var row = el("tr", {
        "data-node-id": member.node_id,
        "data-state": memberState,
        "data-draining": member.draining ? "true" : "false",
        "class": "row-" + memberState + (member.draining ? " row-draining" : "")
      }, [
        nameCell,
        el("td", { "class": "state-cell" }, [stateBadge(member)]),
        el("td", { "class": "mono", text: text(member.address) }),
        el("td", { "class": "mono", text: text(member.incarnation) }),
        el("td", { "class": "reason", text: text(member.reason) }),
        el("td", { "class": "row-actions" }, [prefer, drain, remove])
      ]);
      body.appendChild(row);
    });
    if (focusKey) {
      var again = body.querySelector('[data-action="' + focusKey.split("/")[0] +
        '"][data-node="' + CSS.escape(focusKey.split("/").slice(1).join("/")) + '"]');
      if (again && !again.disabled) { again.focus(); }
    }
  }

  function renderPermissions() {
    var buttons = document.querySelectorAll("#dashboard button[data-action]");
    var joined = !!(state.status && state.status.view);
    Array.prototype.forEach.call(buttons, function (button) {
      var action = button.getAttribute("data-action");
      var kind = action === "drain" ? "drain" : action === "remove" ? "remove" : "elect";
      var unavailable = button.getAttribute("data-unavailable") === "true" ||
        ((button.id === "elect" || button.id === "elect-here") && !joined);
      if (!allows(kind)) {
        button.disabled = true;
        button.title = "needs role " + ACTION_ROLE[kind] + "; this token has role " + state.role;
      } else {
        button.disabled = unavailable || state.busy;
        if (button.hasAttribute("data-hint")) {
          button.title = button.getAttribute("data-hint");
        } else {
          button.removeAttribute("title");
        }
      }
    });
    var note = $("role-note");
    clear(note);
    if (state.role === "viewer") {
      appendAll(note, ["This token has role ", el("strong", { text: "viewer" }),
        ": it can watch but not act. Actions need ", el("strong", { text: "operator" }),
        " (election, drain) or ", el("strong", { text: "admin" }), " (remove)."]);
      note.className = "role-note role-limited";
    } else if (state.role === "operator") {
      appendAll(note, ["This token has role ", el("strong", { text: "operator" }),
        ": election and drain are allowed; remove needs ", el("strong", { text: "admin" }), "."]);
      note.className = "role-note role-limited";
    } else if (state.role === "admin") {
      appendAll(note, ["This token has role ", el("strong", { text: "admin" }),
        ": every action is allowed."]);
      note.className = "role-note";
    } else {
      appendAll(note, ["Actions need a token with role ", el("strong", { text: "operator" }),
        " (election, drain) or ", el("strong", { text: "admin" }), " (remove)."]);
      note.className = "role-note";
    }
  }

  // -- events list ------------------------------------------------------------------

  function describeEvent(event) {
    var node = event.node_id ? String(event.node_id) : "";
    switch (event.type) {
      case "view_changed":
        return "view " + text(viewId(event.view)) + ": " +
          (Array.isArray(event.members) ? event.members.join(", ") : "–") +
          (event.coordinator ? " (coordinator " + event.coordinator + ")" : "");
      case "coordinator_changed":
        return node + " now coordinates" +
          (event.previous ? " (was " + event.previous + ")" : "") +
          (event.reason ? ": " + event.reason : "");
      case "joined":
        return (node ? node + " joined view " : "joined view ") + text(viewId(event.view));
      default:
        var verb = MEMBER_VERB[event.type];
        var subject = node && verb ? node + " " + verb : node;
        return [subject, event.reason ? String(event.reason) : ""]
          .filter(Boolean).join(": ") || String(event.type || "event");
    }
  }

  function addEvent(event) {
    state.events.unshift(event);
    if (state.events.length > MAX_EVENTS) { state.events.length = MAX_EVENTS; }
    var list = $("events");
    var type = String(event.type || "message");
    var tone = EVENT_TONE[type] || "info";
    var item = el("li", { "class": "event tone-" + tone, "data-type": type }, [
      el("time", {
        "class": "event-time",
        datetime: typeof event.time === "number" ? new Date(event.time * 1000).toISOString() : null,
        text: typeof event.time === "number" ? formatTime(event.time) : "–"
      }),
      el("span", { "class": "event-type", text: EVENT_LABEL[type] || type }),
      el("span", { "class": "event-text", text: describeEvent(event) }),
      event.view ? el("span", { "class": "event-view", text: "view " + viewId(event.view) }) : null
    ]);
    list.insertBefore(item, list.firstChild);
    while (list.children.length > MAX_EVENTS) { list.removeChild(list.lastChild); }
    $("events-empty").hidden = true;
  }

  // -- actions -----------------------------------------------------------------------

  var confirmResolve = null;

  function confirmAction(title, message, danger) {
    var dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = message;
    var ok = $("confirm-ok");
    ok.textContent = title;
    ok.className = "btn " + (danger ? "btn-danger" : "btn-primary");
    return new Promise(function (resolve) {
      confirmResolve = resolve;
      if (typeof dialog.showModal === "function") {
        dialog.returnValue = "";
        dialog.showModal();
        ok.focus();
      } else {
        confirmResolve = null;
        resolve(window.confirm(message));
      }
    });
  }

  function onConfirmClosed() {
    if (confirmResolve) {
      var resolve = confirmResolve;
      confirmResolve = null;
      resolve($("confirm").returnValue === "ok");
    }
  }

  function notify(kind, message) {
    var notice = $("notice");
    notice.className = "notice notice-" + kind;
    notice.querySelector(".notice-text").textContent = message;
    notice.hidden = false;
    window.clearTimeout(notify.timer);
    if (kind === "ok") {
      notify.timer = window.setTimeout(function () { notice.hidden = true; }, 8000);
    }
  }

  function describeFailure(what, error) {
    if (error.status === 403) {
      return "Permission denied — " + what + ": " + error.message;
    }
    if (error.status === 401) {
      return what + " refused: the token is not valid (" + error.message + ")";
    }
    if (error.status) {
      return what + " failed (" + error.status + (error.code ? " " + error.code : "") + "): " +
        error.message;
    }
    return what + " failed: cannot reach the node (" + error.message + ")";
  }

  function perform(action, nodeId) {
    var what;
    var path;
    var body;
    var title;
    var message;
    var danger = false;
    if (action === "drain") {
      what = "Drain " + nodeId;
      path = "v1/members/" + encodeURIComponent(nodeId) + "/drain";
      title = "Drain " + nodeId;
      message = "Mark " + nodeId + " draining: it stays a member but is never elected " +
        "coordinator (and steps down if it coordinates now).";
    } else if (action === "remove") {
      what = "Remove " + nodeId;
      path = "v1/members/" + encodeURIComponent(nodeId) + "/remove";
      title = "Remove " + nodeId;
      message = "Remove " + nodeId + " from the cluster. It stays out until it is restarted.";
      danger = true;
    } else if (action === "prefer") {
      what = "Election preferring " + nodeId;
      path = "v1/election";
      body = { prefer: nodeId };
      title = "Elect " + nodeId;
      message = "Start a new election that favours " + nodeId + " as coordinator.";
    } else {
      what = "Election";
      path = "v1/election";
      body = {};
      title = "Force election";
      message = "Make the coordinator step down so that the cluster elects one again.";
    }
    var kind = action === "prefer" ? "elect" : action;
    if (!allows(kind)) {
      notify("error", "Permission denied — " + what + " needs role " + ACTION_ROLE[kind] +
        "; this token has role " + state.role + ".");
      return;
    }
    confirmAction(title, message, danger).then(function (confirmed) {
      if (!confirmed) { return; }
      state.busy = true;
      renderPermissions();
      api("POST", path, body).then(function (result) {
        // Success proves only "at least this role", so the role stays as known.
        state.busy = false;
        notify("ok", what + ": accepted" + summarize(result));
        renderPermissions();
        scheduleRefresh();
      }, function (error) {
        state.busy = false;
        if (error.status === 403) {
          var match = /has role '([a-z]+)'/.exec(error.message);
          if (match) { learnRole(match[1]); }
          else if (kind === "remove") { learnRole("operator"); }
          else { learnRole("viewer"); }
        }
        if (error.status === 401) {
          stop();
          showLogin("The node refused the token: " + error.message);
          return;
        }
        notify("error", describeFailure(what, error));
        renderPermissions();
        scheduleRefresh();
      });
    });
  }

  function summarize(result) {
    if (!result || typeof result !== "object") { return "."; }
    var parts = Object.keys(result).filter(function (key) { return key !== "action"; })
      .map(function (key) {
        var value = result[key];
        return key + " " + (Array.isArray(value) ? value.join(".") : String(value));
      });
    return parts.length ? " (" + parts.join(", ") + ")." : ".";
  }

  // -- start, stop, log in -----------------------------------------------------------

  function start(token) {
    state.token = token;
    var store = storage();
    state.role = store ? store.getItem(ROLE_KEY) : null;
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("change-token").hidden = false;
    renderPermissions();
    poll();
    openStream();
    window.clearInterval(state.polling);
    state.polling = window.setInterval(poll, POLL_INTERVAL_MS);
  }

  function stop() {
    window.clearInterval(state.polling);
    state.polling = null;
    closeStream();
    setStreamStatus("idle", "not connected");
  }

  function showLogin(error) {
    stop();
    forgetToken();
    $("dashboard").hidden = true;
    $("context").hidden = true;
    $("change-token").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = error || "";
    var input = $("token-input");
    input.value = "";
    input.setAttribute("aria-invalid", error ? "true" : "false");
    input.focus();
  }

  function init() {
    $("login-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var token = $("token-input").value.trim();
      if (!token) {
        $("login-error").textContent = "Enter a token.";
        $("token-input").setAttribute("aria-invalid", "true");
        return;
      }
      saveToken(token);
      $("login-error").textContent = "";
      start(token);
    });
    $("change-token").addEventListener("click", function () { showLogin(""); });
    $("confirm").addEventListener("close", onConfirmClosed);
    $("notice").querySelector(".notice-close").addEventListener("click", function () {
      $("notice").hidden = true;
    });
    $("dashboard").addEventListener("click", function (e) {
      var button = e.target.closest ? e.target.closest("button[data-action]") : null;
      if (!button || button.disabled) { return; }
      var action = button.getAttribute("data-action");
      if (action === "elect-here") {
        perform("prefer", button.getAttribute("data-node"));
      } else {
        perform(action, button.getAttribute("data-node"));
      }
    });
    window.setInterval(function () {
      if (state.token && state.lastOk) { renderStaleness(null); }
    }, 2000);
    var token = loadToken();
    if (token) { start(token); } else { showLogin(""); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
