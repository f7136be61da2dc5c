// The clinician page: paste findings, stream the impression from /v1/impressions (SSE over fetch),
// show similar prior cases and consistency flags, copy the result. No external assets, no storage of
// report text (the API key, when the server needs one, lives in sessionStorage for this tab only).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("form"), findings = $("findings"), go = $("go"), stop = $("stop"), copy = $("copy");
  const out = $("impression"), meta = $("meta"), similar = $("similar"), status = $("status");
  const modelSel = $("model"), keyRow = $("key-row"), keyInput = $("apikey");
  const flagsBox = $("flags-box"), flags = $("flags"), copied = $("copied");
  let highFlag = null, copyArmed = false;
  let controller = null;

  keyInput.value = sessionStorage.getItem("radgpt_key") || "";
  keyInput.addEventListener("change", () => { sessionStorage.setItem("radgpt_key", keyInput.value); loadModels(); });

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
    return h;
  }
  function needKey() {
    keyRow.hidden = false;
    status.textContent = "This server needs an API key.";
    status.className = "error";
    keyInput.focus();
  }

  async function waitHealthy() {
    for (;;) {
      try {
        const r = await fetch("/health");
        if (r.ok) return true;
        const j = await r.json().catch(() => ({}));
        if (j.status === "error") { status.textContent = "The model failed to load: " + j.error; return false; }
        status.textContent = "Loading the model…";
      } catch (e) { status.textContent = "Server not reachable; retrying…"; }
      await new Promise((res) => setTimeout(res, 1000));
    }
  }

  async function loadModels() {
    const r = await fetch("/v1/models", { headers: headers() });
    if (r.status === 401) { needKey(); return; }
    const j = await r.json();
    modelSel.replaceChildren(...j.data.map((m) => {
      const o = document.createElement("option");
      o.value = m.id;
      o.textContent = m.id + (m.radgpt && m.radgpt.backend ? " (" + m.radgpt.backend + ")" : "");
      return o;
    }));
    status.className = "";
    status.textContent = "Ready.";
  }

  function showSimilar(cases) {
    similar.replaceChildren(...cases.map((c) => {
      const li = document.createElement("li");
      const imp = document.createElement("div");
      imp.className = "imp";
      imp.textContent = c.impression;
      const d = document.createElement("details");
      const s = document.createElement("summary");
      s.textContent = "Case " + c.id + " · similarity " + c.score.toFixed(2) + " · findings";
      const p = document.createElement("p");
      p.textContent = c.findings;
      d.append(s, p);
      li.append(imp, d);
      return li;
    }));
    if (!cases.length) similar.innerHTML = "<li>No prior cases available.</li>";
  }

  // Text with the flagged character spans wrapped in <mark> (built as DOM nodes: report text is never HTML).
  function marked(text, spans) {
    const frag = document.createDocumentFragment();
    const sorted = spans.slice().sort((a, b) => a[0] - b[0]);
    let at = 0;
    for (const [start, end, severity] of sorted) {
      if (start < at || end <= start) continue;
      frag.append(text.slice(at, start));
      const m = document.createElement("mark");
      m.className = "flag-" + severity;
      m.textContent = text.slice(start, end);
      frag.append(m);
      at = end;
    }
    frag.append(text.slice(at));
    return frag;
  }

  function showFlags(list, impression, findingsText) {
    flags.replaceChildren();
    highFlag = null;
    if (!list || !list.length) { flagsBox.hidden = true; return; }
    const spans = [];
    for (const f of list) {
      const li = document.createElement("li");
      li.className = "flag-" + f.severity;
      const sev = document.createElement("strong");
      sev.textContent = f.severity;
      li.append(sev, ": " + f.message);
      const words = (f.findings_spans || []).map(([a, b]) => findingsText.slice(a, b));
      if (words.length) {
        li.append(" — findings: ");
        words.forEach((w, i) => {
          const m = document.createElement("mark"); m.className = "flag-" + f.severity; m.textContent = w;
          li.append(i ? ", " : "", m);
        });
      }
      flags.append(li);
      for (const [a, b] of f.impression_spans || []) spans.push([a, b, f.severity]);
      if (f.severity === "high" && !highFlag) highFlag = f;
    }
    if (impression !== undefined) out.replaceChildren(marked(impression, spans));
    flagsBox.hidden = false;
  }

  function setBusy(busy) {
    go.disabled = busy; stop.disabled = !busy;
    out.setAttribute("aria-busy", busy ? "true" : "false");
    copy.disabled = busy || !out.textContent.trim();
  }

  async function run() {
    const text = findings.value;
    if (!text.trim()) { status.textContent = "Paste the findings first."; status.className = "error"; findings.focus(); return; }
    if (controller) controller.abort();
    controller = new AbortController();
    out.textContent = ""; meta.textContent = ""; copied.textContent = ""; showFlags([]); resetCopy();
    similar.replaceChildren();
    status.className = ""; status.textContent = "Writing the impression…";
    setBusy(true);
    const t0 = performance.now();
    try {
      const r = await fetch("/v1/impressions", {
        method: "POST", headers: headers(), signal: controller.signal,
        body: JSON.stringify({ findings: text, stream: true, similar: 3, model: modelSel.value || undefined }),
      });
      if (r.status === 401) { needKey(); return; }
      if (!r.ok) {
        const j = await r.json().catch(() => ({}));
        throw new Error((j.error && j.error.message) || ("HTTP " + r.status));
      }
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            const ev = JSON.parse(data);
            if (ev.type === "similar_cases") showSimilar(ev.similar_cases);
            else if (ev.type === "delta") out.textContent += ev.text;
            else if (ev.type === "done") {
              out.textContent = ev.impression;
              showFlags(ev.consistency_flags, ev.impression, text);
              meta.textContent = ev.model + " · " + Math.round(performance.now() - t0) + " ms" +
                (ev.finish_reason === "length" ? " · cut at the token limit" : "");
            } else if (ev.type === "error") throw new Error(ev.error.message);
          }
        }
      }
      status.textContent = "Done. Check the impression before use.";
    } catch (e) {
      if (e.name === "AbortError") status.textContent = "Stopped.";
      else { status.textContent = "Error: " + e.message; status.className = "error"; }
    } finally {
      controller = null;
      setBusy(false);
    }
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); run(); });
  findings.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && controller) controller.abort(); });
  stop.addEventListener("click", () => { if (controller) controller.abort(); });
  // An impression with a high flag (a missed pneumothorax, an invented nodule, ...) is copied only after
  // a second, deliberate press: the first one says why.
  function resetCopy() { copyArmed = false; copy.textContent = "Copy impression"; }
  copy.addEventListener("click", async () => {
    if (highFlag && !copyArmed) {
      copyArmed = true;
      copy.textContent = "Copy anyway";
      copied.textContent = "High-severity check: " + highFlag.message + ". Review it, then press Copy anyway.";
      copied.className = "error";
      return;
    }
    copied.className = "";
    resetCopy();
    const text = out.textContent.trim();
    try { await navigator.clipboard.writeText(text); }
    catch (e) {  // clipboard API unavailable (e.g. not a secure context): select the text instead
      const range = document.createRange(); range.selectNodeContents(out);
      const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
      document.execCommand && document.execCommand("copy");
    }
    copied.textContent = "Copied.";
  });

  waitHealthy().then((ok) => ok && loadModels()).catch((e) => { status.textContent = "Error: " + e.message; });
})();
