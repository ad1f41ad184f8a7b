// The duilian page: sends the form to the JSON API, shows the answers, and hangs the chosen couplet
// (drawn by static/hanging.js, which loads first). Every piece of text from the server or the user goes in
// with textContent, never innerHTML.
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

// 词性对仗: the share of positions whose parts of speech agree (the API's "pos"), a soft score like the tones.
function posBadge(item) {
  if (typeof item.pos !== "number") return null;
  const node = el("li", "check info pos", "词性相对 " + Math.round(item.pos * 100) + "%");
  node.title = "part-of-speech parallelism: positions whose word classes agree (noun/noun, verb/verb …)";
  return node;
}

function scoreText(item) {
  return typeof item.score === "number" ? "score " + item.score.toFixed(2) : "";
}

// One card per item: its lines of text, its score and its form checks (all set as textContent). A line is
// [class, text or node]. Each card is an option of the #results listbox: choosing one hangs it.
function showCards(items, cls, linesOf, status, coupletOf) {
  const results = $("results");
  results.replaceChildren();
  items.forEach((item, i) => {
    const li = el("li", cls);
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", String(i === 0));
    li.tabIndex = 0;
    for (const [lineClass, content] of linesOf(item)) {
      const line = el("div", lineClass);
      line.append(content);
      li.append(line);
    }
    li.append(el("div", "score", scoreText(item)));
    const checks = checkList(item.checks);
    const pos = posBadge(item);
    if (pos) checks.append(pos);
    li.append(checks);
    li.addEventListener("click", () => choose(i));
    li.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        choose(i);
      }
    });
    results.append(li);
  });
  $("status").textContent = status;
  hanging.couplets = items.map(coupletOf);
  if (items.length) choose(0, false);
}

// The 上联 with the characters the model does not know (the API's "unknown") underlined, each with a title.
function markUnknown(text, unknown) {
  const line = document.createDocumentFragment();
  for (const ch of text) {
    if (unknown.has(ch)) {
      const mark = el("span", "unknown", ch);
      mark.title = "模型不认识“" + ch + "” (the model does not know this character)";
      line.append(mark);
    } else {
      line.append(ch);
    }
  }
  return line;
}

function showCandidates(data) {
  const unknown = new Set(Array.isArray(data.unknown) ? data.unknown.filter((ch) => typeof ch === "string") : []);
  const note = unknown.size ? " · 模型不认识：" + [...unknown].join("") : "";
  showCards(data.candidates, "candidate", (c) => [["upper-line", markUnknown(data.upper, unknown)], ["text", c.text]],
            data.candidates.length + " 条下联" + note, (c) => ({ upper: data.upper, lower: c.text, hengpi: c.hengpi }));
}

function showAcrostic(data) {
  showCards(data.couplets, "candidate acrostic", (p) => [["text", p.upper], ["text", p.lower]],
            data.couplets.length + " 副嵌字联", (p) => ({ upper: p.upper, lower: p.lower, hengpi: p.hengpi }));
}

// Composed couplets: both lines, and the themes each carries (the API's "themes" / "carried").
function showComposed(data) {
  showCards(data.couplets, "candidate composed", (p) => [
    ["text", p.upper], ["text", p.lower],
    ["themes", "主题 " + (Array.isArray(p.themes) ? p.themes.join(" ") : "") +
      (Array.isArray(p.carried) && p.carried.length ? " · 含 " + p.carried.join(" ") : "")],
  ], data.couplets.length + " 副对联", (p) => ({ upper: p.upper, lower: p.lower, hengpi: p.hengpi }));
}

// --- the couplet as it hangs (static/hanging.js draws it) --------------------------------------------
// couplets: {upper, lower, hengpi: [{text, score}] or absent}, one per card; index: the chosen card;
// hengpiIndex: the chosen 横批 of that card; svg: the markup drawn now (what the downloads save).
const hanging = { couplets: [], index: 0, hengpiIndex: 0, svg: "" };

function offeredHengpi(couplet) {
  return Array.isArray(couplet.hengpi) ? couplet.hengpi.filter((h) => h && typeof h.text === "string" && h.text) : [];
}

function choose(index, scroll = true) {
  hanging.index = index;
  hanging.hengpiIndex = 0;
  [...$("results").children].forEach((li, i) => li.setAttribute("aria-selected", String(i === index)));
  drawHanging();
  const figure = $("hanging");
  if (scroll && figure.getBoundingClientRect().top < 0) figure.scrollIntoView({ block: "nearest" });
}

function drawHanging() {
  const couplet = hanging.couplets[hanging.index];
  const offered = offeredHengpi(couplet);
  const chosen = offered.length ? Math.min(hanging.hengpiIndex, offered.length - 1) : -1;
  const choices = $("hengpi-choices");
  choices.replaceChildren();
  choices.hidden = !offered.length;
  if (offered.length) choices.append(el("span", "label", "横批"));
  offered.forEach((h, i) => {
    const button = el("button", "hengpi", h.text);
    button.type = "button";
    button.setAttribute("aria-pressed", String(i === chosen));
    button.title = scoreText(h);
    button.addEventListener("click", () => {
      hanging.hengpiIndex = i;
      drawHanging();
    });
    choices.append(button);
  });
  hanging.svg = Hanging.coupletSvg(couplet.upper, couplet.lower, chosen >= 0 ? offered[chosen].text : null);
  $("picture").replaceChildren(Hanging.svgElement(hanging.svg));
  $("hanging").hidden = false;
}

function hideHanging() {
  $("hanging").hidden = true;
  $("picture").replaceChildren();
  hanging.couplets = [];
  hanging.svg = "";
}

function downloadName(ext) {
  const couplet = hanging.couplets[hanging.index];
  return "duilian-" + couplet.upper.replace(/[，。？！；：、]/g, "") + "." + ext;
}

async function downloadPng() {
  try {
    Hanging.download(await Hanging.pngBlob(hanging.svg), downloadName("png"));
  } catch (err) {
    showError("PNG 没做成: " + err.message);
  }
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

// Servers from before the 横批 answer {"hengpi": true} with 422 "unknown option 'hengpi'": the page then asks
// again without it, and stops asking.
let serverTakesHengpi = true;

async function requestJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { /* not JSON: reported below */ }
  if (!response.ok) {
    const err = new Error(data && data.error ? data.error : "HTTP " + response.status);
    err.status = response.status;
    throw err;
  }
  return data;
}

async function post(path, body, show, button) {
  $("error").hidden = true;
  $("results").replaceChildren();
  hideHanging();
  $("status").textContent = "正在对……";
  button.disabled = true;
  try {
    let data;
    try {
      data = await requestJson(path, body);
    } catch (err) {
      if (!(body.hengpi && err.status === 422 && err.message.includes("'hengpi'"))) throw err;
      serverTakesHengpi = false;
      const { hengpi: _, ...rest } = body;
      data = await requestJson(path, rest);
    }
    show(data);
  } catch (err) {
    $("status").textContent = "";
    showError("出错了: " + err.message);
  } finally {
    button.disabled = false;
  }
}

const MODES = ["couplet", "acrostic", "compose"];

function selectMode(mode) {
  for (const m of MODES) {
    $("tab-" + m).setAttribute("aria-selected", String(m === mode));
    $("form-" + m).hidden = m !== mode;
  }
  $("error").hidden = true;
  $("results").replaceChildren();
  hideHanging();
  $("status").textContent = "";
}

document.addEventListener("DOMContentLoaded", () => {
  for (const m of MODES) $("tab-" + m).addEventListener("click", () => selectMode(m));
  $("form-couplet").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { upper: $("upper").value, ...options() };
    if (serverTakesHengpi) body.hengpi = true;
    post("/v1/couplets", body, showCandidates, $("go"));
  });
  $("form-acrostic").addEventListener("submit", (event) => {
    event.preventDefault();
    const position = $("position").value === "last" ? "last" : parseInt($("position").value, 10);
    const body = { heads: $("heads").value, length: parseInt($("length").value, 10), position, ...options() };
    if (serverTakesHengpi) body.hengpi = true;
    post("/v1/acrostic", body, showAcrostic, $("go-acrostic"));
  });
  $("form-compose").addEventListener("submit", (event) => {
    event.preventDefault();
    const words = $("words").value.split(/[\s,，、]+/).filter((w) => w);
    const body = { words, length: parseInt($("compose-length").value, 10), ...options() };
    if ($("occasion").value) body.occasion = $("occasion").value;
    const year = parseInt($("year").value, 10);
    if (!Number.isNaN(year)) body.year = year;
    post("/v1/compose", body, showComposed, $("go-compose"));
  });
  $("download-svg").addEventListener("click", () => {
    Hanging.download(new Blob([hanging.svg], { type: "image/svg+xml" }), downloadName("svg"));
  });
  $("download-png").addEventListener("click", downloadPng);
});
