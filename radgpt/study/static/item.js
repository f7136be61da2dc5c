// Rating page: keyboard scoring, autosave of each candidate's full rating, drafts kept in localStorage
// until the server confirms them (so an expired session or a dropped connection loses nothing).
(function () {
  "use strict";
  const root = document.getElementById("item");
  if (!root) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const statusEl = document.getElementById("status");
  const fieldsets = Array.from(document.querySelectorAll("fieldset.criterion"));
  const articles = Array.from(document.querySelectorAll("article.candidate"));
  const DRAFT = "radgpt-study-draft:";
  const doneElsewhere = parseInt(root.dataset.done, 10) - parseInt(root.dataset.complete, 10);
  const debounce = new Map();  // article -> timer (comment typing)
  const running = new Map();   // slot -> promise of the save loop in flight
  const dirty = new Set();     // slots changed while their save was in flight
  let current = 0;

  // Time on this case: visible time since the page showed it (a hidden tab does not count), added to what
  // each candidate's earlier visits recorded; sent with every save, stored per rating.
  let visibleSince = document.visibilityState === "hidden" ? null : performance.now();
  let visibleMs = 0;
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden" && visibleSince !== null) {
      visibleMs += performance.now() - visibleSince;
      visibleSince = null;
    } else if (document.visibilityState !== "hidden" && visibleSince === null) {
      visibleSince = performance.now();
    }
  });
  function secondsOn(article) {
    const ms = visibleMs + (visibleSince === null ? 0 : performance.now() - visibleSince);
    const before = parseFloat(article.dataset.seconds) || 0;
    return Math.min(86400, Math.round((before + ms / 1000) * 10) / 10);
  }

  function setStatus(text, cls) { statusEl.textContent = text; statusEl.className = "status " + (cls || ""); }

  function stateOf(article) {
    const state = { comment: article.querySelector("textarea").value, seconds: secondsOn(article) };
    article.querySelectorAll("fieldset.criterion").forEach(function (fs) {
      const checked = fs.querySelector("input:checked");
      if (fs.dataset.criterion === "preference") state.preference = checked ? checked.value : null;
      else state[fs.dataset.criterion] = checked ? parseInt(checked.value, 10) : null;
    });
    return state;
  }

  function apply(article, state) {
    Object.keys(state).forEach(function (key) {
      if (key === "comment") { article.querySelector("textarea").value = state.comment || ""; return; }
      if (key === "seconds") {  // a restored draft carries the time of the visit that made it
        if (state.seconds > (parseFloat(article.dataset.seconds) || 0)) article.dataset.seconds = state.seconds;
        return;
      }
      const fs = article.querySelector('fieldset[data-criterion="' + key + '"]');
      if (!fs) return;
      fs.querySelectorAll("input").forEach(function (inp) { inp.checked = state[key] !== null && inp.value === String(state[key]); });
    });
  }

  function showProgress() {
    // This case counts once every choice on the page is made and nothing is waiting to be saved.
    const complete = fieldsets.every(function (fs) { return fs.querySelector("input:checked"); }) && running.size === 0;
    const done = doneElsewhere + (complete ? 1 : 0);
    document.getElementById("progress").value = done;
    document.getElementById("progress-text").textContent = done + " / " + root.dataset.total + " cases rated";
  }

  // Send one slot's state; true when the server has it. The draft is removed only on confirmation.
  async function send(slot, state) {
    const key = DRAFT + slot;
    localStorage.setItem(key, JSON.stringify({ state: state, t: Date.now() }));
    setStatus("Saving…", "saving");
    let resp;
    try {
      resp = await fetch("/api/ratings/" + encodeURIComponent(slot), {
        method: "PUT", credentials: "same-origin", keepalive: true,
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, "X-Page": location.pathname },
        body: JSON.stringify(state),
      });
    } catch (e) {
      setStatus("Offline — kept in this browser, will retry", "error");
      return false;
    }
    if (resp.status === 401) {
      // Session expired: the draft stays in localStorage and is restored after signing in again.
      const body = await resp.json().catch(function () { return {}; });
      setStatus("Session expired — draft kept, please sign in", "error");
      location.href = (body.error && body.error.login) || ("/login?next=" + encodeURIComponent(location.pathname));
      return false;
    }
    if (!resp.ok) {
      const body = await resp.json().catch(function () { return {}; });
      setStatus("Not saved: " + ((body.error && body.error.message) || resp.status), "error");
      if (resp.status === 403 || resp.status === 404) localStorage.removeItem(key);
      return false;
    }
    const stored = JSON.parse(localStorage.getItem(key) || "null");
    if (stored && JSON.stringify(stored.state) === JSON.stringify(state)) localStorage.removeItem(key);
    setStatus("Saved", "saved");
    return true;
  }

  // One save loop per slot: a slot's requests never overlap, so the server always ends with the latest
  // state (parallel requests could commit out of order and leave an older state behind).
  function save(article) {
    const slot = article.dataset.slot;
    if (running.has(slot)) { dirty.add(slot); return running.get(slot); }
    const loop = (async function () {
      let ok = true;
      do { dirty.delete(slot); ok = await send(slot, stateOf(article)); } while (ok && dirty.has(slot));
      if (!ok && statusEl.textContent.startsWith("Offline")) setTimeout(function () { save(article); }, 3000);
    })();
    running.set(slot, loop);
    loop.finally(function () { running.delete(slot); showProgress(); });
    return loop;
  }

  // Leave the page only once its saves are acknowledged (keepalive covers a closed tab).
  async function go(href) {
    debounce.forEach(function (timer, article) { clearTimeout(timer); save(article); });
    debounce.clear();
    await Promise.allSettled(Array.from(running.values()));
    location.href = href;
  }

  function focus(i) {
    if (!fieldsets.length) return;
    current = Math.max(0, Math.min(fieldsets.length - 1, i));
    fieldsets.forEach(function (fs, j) { fs.classList.toggle("current", j === current); });
    const r = fieldsets[current].getBoundingClientRect();
    if (r.top < 0 || r.bottom > window.innerHeight) fieldsets[current].scrollIntoView({ block: "center" });
  }

  articles.forEach(function (article) {
    article.addEventListener("change", function (ev) {
      if (ev.target.type !== "radio") return;
      const i = fieldsets.indexOf(ev.target.closest("fieldset"));
      if (i >= 0) focus(i);
      save(article);
    });
    const ta = article.querySelector("textarea");
    ta.addEventListener("input", function () {
      clearTimeout(debounce.get(article));
      debounce.set(article, setTimeout(function () { debounce.delete(article); save(article); }, 600));
    });
    // Restore a draft the server never confirmed (expired session, network loss) and send it now.
    const raw = localStorage.getItem(DRAFT + article.dataset.slot);
    if (raw) {
      try { apply(article, JSON.parse(raw).state); save(article); } catch (e) { localStorage.removeItem(DRAFT + article.dataset.slot); }
    }
  });

  // Drafts left behind by another case's page are sent from here too.
  Object.keys(localStorage).forEach(function (key) {
    if (!key.startsWith(DRAFT)) return;
    const slot = key.slice(DRAFT.length);
    if (document.querySelector('article[data-slot="' + slot + '"]')) return;
    try { send(slot, JSON.parse(localStorage.getItem(key)).state); } catch (e) { localStorage.removeItem(key); }
  });

  document.querySelectorAll(".pager a").forEach(function (a) {
    a.addEventListener("click", function (ev) { ev.preventDefault(); go(a.href); });
  });

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "textarea" || tag === "select" || (tag === "input" && ev.target.type !== "radio")) return;
    const fs = fieldsets[current];
    if (/^[1-5]$/.test(ev.key) && fs) {
      const inputs = fs.querySelectorAll("input");
      const n = parseInt(ev.key, 10);
      if (n > inputs.length) return;  // the preference row has three choices
      ev.preventDefault();
      inputs[n - 1].checked = true;
      save(fs.closest("article"));
      focus(current + 1);
    } else if (ev.key === "ArrowDown" || ev.key === "j") { ev.preventDefault(); focus(current + 1); }
    else if (ev.key === "ArrowUp" || ev.key === "k") { ev.preventDefault(); focus(current - 1); }
    else if (ev.key === "n") { const a = document.getElementById("next"); if (a) go(a.href); }
    else if (ev.key === "p") { const a = document.getElementById("prev"); if (a) go(a.href); }
  });

  fieldsets.forEach(function (fs, i) { fs.addEventListener("click", function () { focus(i); }); });
  const firstOpen = fieldsets.findIndex(function (fs) { return !fs.querySelector("input:checked"); });
  focus(firstOpen < 0 ? 0 : firstOpen);
})();
