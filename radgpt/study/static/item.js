// Rating page: keyboard scoring, autosave of each candidate's full rating, drafts kept in localStorage
// until the server confirms them (so an expired session or a dropped connection loses nothing).
(function () {
  "use strict";
  const root = document.getElementById("item");
  if (!root) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const statusEl = document.getElementById("status");
  const fieldsets = Array.from(document.querySelectorAll("fieldset.criterion"));
  const DRAFT = "radgpt-study-draft:";
  const doneElsewhere = parseInt(root.dataset.done, 10) - parseInt(root.dataset.complete, 10);
  let current = 0;
  const pending = new Map();   // slot -> timer (debounced comment saves)
  const inflight = new Map();  // slot -> sequence number of the latest request sent

  function setStatus(text, cls) { statusEl.textContent = text; statusEl.className = "status " + (cls || ""); }

  function stateOf(article) {
    const slot = article.dataset.slot;
    const state = { comment: article.querySelector("textarea").value, preference: null };
    article.querySelectorAll("fieldset.criterion").forEach(function (fs) {
      const checked = fs.querySelector("input:checked");
      const value = checked ? checked.value : null;
      if (fs.dataset.criterion === "preference") state.preference = value;
      else state[fs.dataset.criterion] = value === null ? null : parseInt(value, 10);
    });
    if (!article.querySelector('fieldset[data-criterion="preference"]')) delete state.preference;
    return { slot: slot, state: state };
  }

  function apply(article, state) {
    Object.keys(state).forEach(function (key) {
      if (key === "comment") { article.querySelector("textarea").value = state.comment || ""; return; }
      const fs = article.querySelector('fieldset[data-criterion="' + key + '"]');
      if (!fs) return;
      fs.querySelectorAll("input").forEach(function (inp) { inp.checked = state[key] !== null && inp.value === String(state[key]); });
    });
  }

  async function save(article) {
    const s = stateOf(article);
    const key = DRAFT + s.slot;
    const seq = (inflight.get(s.slot) || 0) + 1;
    inflight.set(s.slot, seq);
    localStorage.setItem(key, JSON.stringify({ state: s.state, seq: seq, t: Date.now() }));
    setStatus("Saving…", "saving");
    let resp;
    try {
      resp = await fetch("/api/ratings/" + encodeURIComponent(s.slot), {
        method: "PUT", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, "X-Page": location.pathname },
        body: JSON.stringify(s.state),
      });
    } catch (e) {
      setStatus("Offline — kept in this browser, retrying", "error");
      setTimeout(function () { save(article); }, 3000);
      return;
    }
    if (resp.status === 401) {
      // Session expired: the draft stays in localStorage and is restored after signing in again.
      const body = await resp.json().catch(function () { return {}; });
      setStatus("Session expired — draft kept, please sign in", "error");
      location.href = (body.error && body.error.login) || ("/login?next=" + encodeURIComponent(location.pathname));
      return;
    }
    if (!resp.ok) {
      const body = await resp.json().catch(function () { return {}; });
      setStatus("Not saved: " + ((body.error && body.error.message) || resp.status), "error");
      return;
    }
    const body = await resp.json();
    const stored = JSON.parse(localStorage.getItem(key) || "null");
    if (stored && stored.seq === seq && inflight.get(s.slot) === seq) localStorage.removeItem(key);
    // The server says whether this case is now complete; the other cases' count is known from page load.
    const done = doneElsewhere + (body.case_complete ? 1 : 0);
    document.getElementById("progress").value = done;
    document.getElementById("progress-text").textContent = done + " / " + root.dataset.total + " cases rated";
    setStatus("Saved", "saved");
  }

  function focus(i) {
    if (!fieldsets.length) return;
    current = Math.max(0, Math.min(fieldsets.length - 1, i));
    fieldsets.forEach(function (fs, j) { fs.classList.toggle("current", j === current); });
    const r = fieldsets[current].getBoundingClientRect();
    if (r.top < 0 || r.bottom > window.innerHeight) fieldsets[current].scrollIntoView({ block: "center" });
  }

  function firstUnrated() {
    const i = fieldsets.findIndex(function (fs) { return !fs.querySelector("input:checked"); });
    return i < 0 ? 0 : i;
  }

  document.querySelectorAll("article.candidate").forEach(function (article) {
    article.addEventListener("change", function (ev) {
      if (ev.target.type === "radio") {
        const i = fieldsets.indexOf(ev.target.closest("fieldset"));
        if (i >= 0) focus(i);
        save(article);
      }
    });
    const ta = article.querySelector("textarea");
    ta.addEventListener("input", function () {
      clearTimeout(pending.get(article.dataset.slot));
      pending.set(article.dataset.slot, setTimeout(function () { save(article); }, 600));
    });
    // Restore a draft the server never confirmed (expired session, network loss) and send it now.
    const raw = localStorage.getItem(DRAFT + article.dataset.slot);
    if (raw) {
      try { apply(article, JSON.parse(raw).state); save(article); } catch (e) { localStorage.removeItem(DRAFT + article.dataset.slot); }
    }
  });

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "textarea" || tag === "input" && ev.target.type !== "radio" || tag === "select") return;
    const fs = fieldsets[current];
    if (/^[1-5]$/.test(ev.key) && fs) {
      const inputs = fs.querySelectorAll("input");
      const n = parseInt(ev.key, 10);
      if (n > inputs.length) return;
      ev.preventDefault();
      inputs[n - 1].checked = true;
      save(fs.closest("article"));
      focus(current + 1);
    } else if (ev.key === "ArrowDown" || ev.key === "j") { ev.preventDefault(); focus(current + 1); }
    else if (ev.key === "ArrowUp" || ev.key === "k") { ev.preventDefault(); focus(current - 1); }
    else if (ev.key === "n") { const a = document.getElementById("next"); if (a) location.href = a.href; }
    else if (ev.key === "p") { const a = document.getElementById("prev"); if (a) location.href = a.href; }
  });

  fieldsets.forEach(function (fs, i) { fs.addEventListener("click", function () { focus(i); }); });
  focus(firstUnrated());
})();
