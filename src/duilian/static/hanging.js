// The couplet as it hangs: 上联 on the right, 下联 on the left, each read top to bottom on red paper, the
// 横批 above them read right to left. coupletSvg builds the same markup as duilian/hanging.py's
// couplet_svg (tests/test_browser.py checks they agree string for string): change the two together.
// Every coordinate is an integer, so both languages print numbers the same way.
// Punctuation is not drawn (couplets on a door carry none); a mark leaves half a cell of space.
"use strict";

const Hanging = (() => {
  // layout, in SVG pixels (the same names as in hanging.py)
  const CELL = 96;
  const FONT_SIZE = 72;
  const PAD = 20;
  const CLAUSE_GAP = 48;
  const COLUMN_GAP = 160;
  const BANNER_GAP = 24;
  const MARGIN = 32;
  const BORDER_INSET = 8;
  const BORDER_WIDTH = 3;
  const STRIP_WIDTH = CELL + 2 * PAD;
  // colours and fonts
  const WALL = "#f7f1e3";
  const PAPER = "#c8161d";
  const INK = "#1a1a1a";
  const GOLD = "#d9a520";
  const FONT_FAMILY = "'Noto Serif CJK SC', 'Source Han Serif SC', 'Noto Sans CJK SC', 'WenQuanYi Zen Hei', " +
    "'WenQuanYi Micro Hei', serif";
  const MARKS = new Set("，。？！；：、,.?!;:");
  const DROPPED = new Set([...MARKS, " ", "\u3000"]);
  const PNG_SCALE = 2; // PNG pixels per SVG pixel

  function escapeXml(text) {
    // Control characters cannot appear in XML even escaped: dropped, as in hanging.py.
    const kept = Array.from(String(text)).filter((ch) => ch.codePointAt(0) >= 0x20 && ch !== "\ufffe" && ch !== "\uffff");
    return kept.join("").replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  function drawn(ch) {
    return !DROPPED.has(ch) && ch.codePointAt(0) >= 0x20;
  }

  // [[character, y of its cell from the paper's top]] and the paper's height for one line.
  function column(line) {
    const cells = [];
    let y = PAD;
    let afterMark = false;
    for (const ch of String(line)) {
      if (MARKS.has(ch)) afterMark = cells.length > 0;
      if (!drawn(ch)) continue;
      if (afterMark) {
        y += CLAUSE_GAP;
        afterMark = false;
      }
      cells.push([ch, y]);
      y += CELL;
    }
    return [cells, y + PAD];
  }

  // One sheet of red paper, its gold line, one <text> per character ([ch, x, y]: its cell's top left).
  function sheet(name, x, y, w, h, cells) {
    const inset = BORDER_INSET;
    const lines = [
      `<g class="${name}" font-size="${FONT_SIZE}" fill="${INK}" text-anchor="middle" dominant-baseline="central">`,
      `<rect x="${x}" y="${y}" width="${w}" height="${h}" fill="${PAPER}"/>`,
      `<rect x="${x + inset}" y="${y + inset}" width="${w - 2 * inset}" height="${h - 2 * inset}" ` +
        `fill="none" stroke="${GOLD}" stroke-width="${BORDER_WIDTH}"/>`,
    ];
    for (const [ch, cx, cy] of cells) {
      lines.push(`<text x="${cx + Math.floor(CELL / 2)}" y="${cy + Math.floor(CELL / 2)}">${escapeXml(ch)}</text>`);
    }
    lines.push("</g>");
    return lines;
  }

  // The SVG markup of the couplet as it hangs; no 横批 when hengpi is empty or missing.
  function coupletSvg(upper, lower, hengpi) {
    // 1) sizes: two strips of equal height side by side, the banner centred above them
    const [upperCells, upperH] = column(upper);
    const [lowerCells, lowerH] = column(lower);
    const columnH = Math.max(upperH, lowerH);
    const banner = Array.from(hengpi ? String(hengpi) : "").filter(drawn);
    const bannerW = banner.length * CELL + 2 * PAD;
    const bannerH = CELL + 2 * PAD;
    const pairW = 2 * STRIP_WIDTH + COLUMN_GAP;
    const innerW = Math.max(pairW, banner.length ? bannerW : 0);
    const top = MARGIN + (banner.length ? bannerH + BANNER_GAP : 0);
    const width = innerW + 2 * MARGIN;
    const height = top + columnH + MARGIN;
    const pairX = MARGIN + Math.floor((innerW - pairW) / 2);

    // 2) markup: the wall, then the 横批, the 上联 and the 下联 (reading order)
    const title = `上联 ${upper} · 下联 ${lower}` + (banner.length ? ` · 横批 ${hengpi}` : "");
    const out = [
      `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
        `viewBox="0 0 ${width} ${height}" font-family="${FONT_FAMILY}">`,
      `<title>${escapeXml(title)}</title>`,
      `<rect class="wall" width="${width}" height="${height}" fill="${WALL}"/>`,
    ];
    if (banner.length) {
      const x = MARGIN + Math.floor((innerW - bannerW) / 2);
      const y = MARGIN;
      // right to left: the first character's cell is the rightmost
      const cells = banner.map((ch, i) => [ch, x + bannerW - PAD - (i + 1) * CELL, y + PAD]);
      out.push(...sheet("hengpi", x, y, bannerW, bannerH, cells));
    }
    for (const [name, x, col] of [["upper", pairX + STRIP_WIDTH + COLUMN_GAP, upperCells], ["lower", pairX, lowerCells]]) {
      out.push(...sheet(name, x, top, STRIP_WIDTH, columnH, col.map(([ch, cy]) => [ch, x + PAD, top + cy])));
    }
    out.push("</svg>");
    return out.join("\n") + "\n";
  }

  // The markup as a live <svg> element, parsed as XML (never as HTML).
  function svgElement(markup) {
    const doc = new DOMParser().parseFromString(markup, "image/svg+xml");
    return document.importNode(doc.documentElement, true);
  }

  // A PNG of the markup: the SVG drawn on a canvas through a data: URL image (the page's CSP allows
  // img-src data:, not blob:). Resolves to a Blob.
  function pngBlob(markup, scale = PNG_SCALE) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => {
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth * scale;
        canvas.height = img.naturalHeight * scale;
        canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
        canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the canvas gave no PNG"))), "image/png");
      };
      img.onerror = () => reject(new Error("the SVG did not load as an image"));
      img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(markup);
    });
  }

  // Save a Blob through a temporary <a download> (object URLs for downloads are not subject to img-src).
  function download(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = filename;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  return { coupletSvg, svgElement, pngBlob, download };
})();
