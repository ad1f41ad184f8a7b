// The duilian page: sends the form to the JSON API and shows the answers.
// Every piece of text from the server or the user goes in with textContent, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);

// FormChecks fields -> what the page shows. ends_level is null when the rule does not apply.
const CHECKS = [
  ["same_length", "字数", "same length as the 上联"],
  ["punctuation_aligned", "标点", "punctuation in the same places"],
  ["repeats_mirrored", "重字", "repeated characters mirror the 上联"],
  ["no_copy", "避重", "no characters copied from the 上联"],
];

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function badge(label, ok, title) {
  const node = el("li", "check " + (ok ? "ok" : "bad"), label + (ok ? " ✓" : " ✗"));
  node.title = title;
  node.dataset.ok = ok ? "1" : "0";
  return node;
}

function checkList(checks) {
  const list = el("ul", "checks");
  for (const [field, label, title] of CHECKS) list.append(badge(label, checks[field] === true, title));
  // The final character's tone: a 仄-ending 上联 wants a 平-ending 下联.
  const tone = checks.final_tone || "?";
  const endsOk = checks.ends_level !== false;
  const end = badge("尾字" + tone, endsOk, "tone of the final character" +
    (checks.ends_level === null ? " (the 上联 does not end 仄, so any tone is fine)" : ""));
  end.classList.add("tone");
  list.append(end);
  if (typeof checks.rhythm_opposition === "number") {
    const pct = Math.round(checks.rhythm_opposition * 100);
    const rhythm = el("li", "check info", "平仄相对 " + pct + "%");
    rhythm.title = "rhythm positions whose tones oppose";
    list.append(rhythm);
  }
  return list;
}

function scoreText(item) {
  return typeof item.score === "number" ? "score " + item.score.toFixed(2) : "";
}

// One card per item: its lines of text, its score and its form checks (all set as textContent).
function showCards(items, cls, linesOf, status) {
  const results = $("results");
  results.replaceChildren();
  for (const item of items) {
    const li = el("li", cls);
    for (const [lineClass, text] of linesOf(item)) li.append(el("div", lineClass, text));
    li.append(el("div", "score", scoreText(item)));
    li.append(checkList(item.checks));
    results.append(li);
  }
  $("status").textContent = status;
}

function showCandidates(data) {
  showCards(data.candidates, "candidate", (c) => [["upper-line", data.upper], ["text", c.text]],
            data.candidates.length + " 条下联");
}

function showAcrostic(data) {
  showCards(data.couplets, "candidate acrostic", (p) => [["text", p.upper], ["text", p.lower]],
            data.couplets.length + " 副藏头联");
}

function options() {
  const opts = { method: $("method").value };
  const n = parseInt($("n").value, 10);
  if (!Number.isNaN(n)) opts.n = n;
  const t = parseFloat($("temperature").value);
  if (!Number.isNaN(t)) opts.temperature = t;
  const seed = parseInt($("seed").value, 10);
  if (!Number.isNaN(seed)) opts.seed = seed;
  return opts;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

async function post(path, body, show, button) {
  $("error").hidden = true;
  $("results").replaceChildren();
  $("status").textContent = "正在对……";
  button.disabled = true;
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON: reported below */ }
    if (!response.ok) {
      const reason = data && data.error ? data.error : "HTTP " + response.status;
      throw new Error(reason);
    }
    show(data);
  } catch (err) {
    $("status").textContent = "";
    showError("出错了: " + err.message);
  } finally {
    button.disabled = false;
  }
}

function selectMode(mode) {
  const acrostic = mode === "acrostic";
  $("tab-couplet").setAttribute("aria-selected", String(!acrostic));
  $("tab-acrostic").setAttribute("aria-selected", String(acrostic));
  $("form-couplet").hidden = acrostic;
  $("form-acrostic").hidden = !acrostic;
  $("error").hidden = true;
  $("results").replaceChildren();
  $("status").textContent = "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("tab-couplet").addEventListener("click", () => selectMode("couplet"));
  $("tab-acrostic").addEventListener("click", () => selectMode("acrostic"));
  $("form-couplet").addEventListener("submit", (event) => {
    event.preventDefault();
    post("/v1/couplets", { upper: $("upper").value, ...options() }, showCandidates, $("go"));
  });
  $("form-acrostic").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { heads: $("heads").value, length: parseInt($("length").value, 10), ...options() };
    post("/v1/acrostic", body, showAcrostic, $("go-acrostic"));
  });
});
