/* semtag console: progressive enhancement only. Every action also works as a plain form post. */
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function post(url, data) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf, "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded"},
      body: new URLSearchParams(data || {})
    }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) { throw new Error((body.error && body.error.message) || ("HTTP " + r.status)); }
        return body;
      });
    });
  }

  function say(text) {
    var live = document.getElementById("live");
    if (live) { live.textContent = text; }
  }

  /* ---- review queue: 0-9 label, Enter accepts, u undoes, arrows move ---- */
  var queue = document.getElementById("queue");
  if (queue) {
    var names = JSON.parse(queue.dataset.names);
    var slugs = JSON.parse(queue.dataset.slugs);
    var undo = [];
    var current = 0;
    var loading = false;

    var cards = function () { return Array.prototype.slice.call(queue.querySelectorAll(".card")); };
    var pending = function () { return cards().filter(function (c) { return !c.classList.contains("done"); }); };

    var focus = function (i) {
      var all = cards();
      if (!all.length) { return; }
      current = Math.max(0, Math.min(i, all.length - 1));
      all.forEach(function (c, k) { c.classList.toggle("current", k === current); });
      all[current].focus();
    };
    var nextPending = function (from) {
      var all = cards();
      for (var k = from + 1; k < all.length; k++) { if (!all[k].classList.contains("done")) { return k; } }
      for (k = 0; k < all.length; k++) { if (!all[k].classList.contains("done")) { return k; } }
      return from;
    };
    var more = function () {
      if (loading || queue.dataset.end === "1") { return; }
      var all = cards();
      var last = all[all.length - 1];
      if (!last) { return; }
      loading = true;
      var params = new URLSearchParams(queue.dataset.filters);
      params.set("after", last.dataset.confidence + ":" + last.dataset.id);
      fetch("/ui/review/cards?" + params.toString(), {credentials: "same-origin"})
        .then(function (r) { return r.text(); })
        .then(function (html) {
          var box = document.createElement("div");
          box.innerHTML = html;
          var fresh = box.querySelectorAll(".card");
          if (!fresh.length) { queue.dataset.end = "1"; }
          Array.prototype.forEach.call(fresh, function (c) { queue.appendChild(c); });
          var empty = document.getElementById("empty");
          if (empty) { empty.hidden = pending().length > 0; }
        })
        .finally(function () { loading = false; });
    };
    var label = function (card, slug) {
      var id = card.dataset.id;
      return post("/ui/images/" + id + "/label", {category: slug}).then(function () {
        card.classList.add("done");
        card.querySelector(".result").textContent = "Labelled " + names[slug];
        undo.push(card);
        say("Image " + id + " labelled " + names[slug] + ". Press u to undo.");
        var k = cards().indexOf(card);
        focus(nextPending(k));
        if (pending().length < 10) { more(); }
        if (!pending().length) { var e = document.getElementById("empty"); if (e) { e.hidden = false; } }
      }).catch(function (err) { say("Not saved: " + err.message); });
    };
    var undoLast = function () {
      var card = undo.pop();
      if (!card) { say("Nothing to undo."); return; }
      post("/ui/images/" + card.dataset.id + "/label/undo", {}).then(function () {
        card.classList.remove("done");
        card.querySelector(".result").textContent = "";
        focus(cards().indexOf(card));
        say("Label of image " + card.dataset.id + " undone.");
      }).catch(function (err) { say("Not undone: " + err.message); });
    };

    queue.addEventListener("click", function (ev) {
      var btn = ev.target.closest("button[data-act]");
      if (!btn) { return; }
      ev.preventDefault();
      var card = btn.closest(".card");
      focus(cards().indexOf(card));
      if (btn.dataset.act === "accept") { label(card, card.dataset.category); }
      if (btn.dataset.act === "label") { label(card, card.querySelector("select").value); }
    });
    queue.addEventListener("focusin", function (ev) {
      var card = ev.target.closest(".card");
      if (card) { current = cards().indexOf(card); cards().forEach(function (c) { c.classList.toggle("current", c === card); }); }
    });
    document.addEventListener("keydown", function (ev) {
      var t = ev.target;
      if (ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
      if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) { return; }
      if (t && t !== document.body && !(t.closest && t.closest("#queue"))) { return; }  // keys act on the queue only
      if (t && t.tagName === "BUTTON" && ev.key === "Enter") { return; }
      var all = cards();
      var card = all[current];
      if (/^[0-9]$/.test(ev.key) && card) { ev.preventDefault(); label(card, slugs[Number(ev.key)]); }
      else if (ev.key === "Enter" && card) { ev.preventDefault(); label(card, card.dataset.category); }
      else if (ev.key === "u" || ev.key === "U") { ev.preventDefault(); undoLast(); }
      else if (ev.key === "ArrowRight" || ev.key === "ArrowDown") { ev.preventDefault(); focus(current + 1); if (current >= all.length - 3) { more(); } }
      else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") { ev.preventDefault(); focus(current - 1); }
    });
    queue.querySelectorAll("form").forEach(function (f) { f.addEventListener("submit", function (e) { e.preventDefault(); }); });
    focus(0);
  }

  /* ---- image page: the scale overlay toggle ---- */
  var toggle = document.getElementById("overlay-toggle");
  if (toggle) {
    var img = document.getElementById("preview");
    toggle.addEventListener("change", function () {
      img.src = img.dataset.base + (toggle.checked ? "&overlay=scale" : "");
    });
  }

  /* ---- jobs: live progress (polling) ---- */
  var jobs = document.getElementById("jobs");
  if (jobs) {
    var tick = function () {
      fetch("/ui/admin/jobs.json", {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : []; })
        .then(function (list) {
          list.forEach(function (j) {
            var row = jobs.querySelector('tr[data-id="' + j.id + '"]');
            if (!row) { return; }
            row.dataset.status = j.status;
            row.querySelector(".status").textContent = j.status;
            row.querySelector(".progress > span").style.width = Math.round(j.progress * 100) + "%";
            row.querySelector(".progress").setAttribute("aria-valuenow", Math.round(j.progress * 100));
            row.querySelector(".pct").textContent = Math.round(j.progress * 100) + "%";
            row.querySelector(".message").textContent = j.error || j.message || "";
            var cancel = row.querySelector(".cancel");
            if (cancel && (j.status !== "queued" && j.status !== "running")) { cancel.hidden = true; }
            var rep = row.querySelector(".report");
            if (rep && j.report_url) { rep.hidden = false; rep.href = "/ui/admin/jobs/" + j.id + "/report/"; }
          });
        })
        .catch(function () { /* the next tick tries again */ });
    };
    setInterval(tick, 1500);
  }
})();
