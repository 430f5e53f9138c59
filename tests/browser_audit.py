"""In-page checks shared by the browser tests: text contrast (WCAG AA) and visible focus.

`CONTRAST_AUDIT` walks every visible element that has its own text, takes its
computed colour and the first opaque background behind it (blending
translucent layers), multiplies in ancestors' opacity, and reports every text
below 4.5:1 (3:1 for large text). Disabled controls are exempt, as in WCAG.
"""

CONTRAST_AUDIT = r"""
() => {
  const parse = (c) => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const blend = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a), g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a), a: 1,
  });
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const ratio = (a, b) => { const [h, l] = [lum(a), lum(b)].sort((x, y) => y - x); return (h + 0.05) / (l + 0.05); };
  const backdrop = (el) => {
    const layers = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const style = getComputedStyle(node);
      if (style.backgroundImage !== "none" && !node.matches("html, body")) return null; // text over a picture/gradient
      const bg = parse(style.backgroundColor);
      if (bg && bg.a > 0) { layers.push(bg); if (bg.a >= 1) break; }
    }
    let color = {r: 255, g: 255, b: 255, a: 1};
    const last = layers[layers.length - 1];
    if (last && last.a >= 1) color = layers.pop();
    while (layers.length) color = blend(layers.pop(), color);
    return color;
  };
  const failures = [];
  let checked = 0;
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest("script, style, svg, [aria-hidden=true], [hidden], .visually-hidden, noscript")) continue;
    if (el.closest("[disabled], .op-disabled input, :disabled") || el.matches(":disabled")) continue;
    const text = Array.from(el.childNodes).filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
    if (!text) continue;
    const rect = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (rect.width === 0 || rect.height === 0 || style.visibility === "hidden" || style.display === "none") continue;
    let opacity = 1;
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      opacity *= Number(getComputedStyle(node).opacity);
    }
    // Dimmed parts of an unavailable operation are an inactive component (exempt in WCAG).
    if (opacity < 1 && el.closest(".op-disabled")) continue;
    const bg = backdrop(el);
    if (!bg) continue;
    let fg = parse(style.color);
    fg = blend({...fg, a: fg.a * opacity}, bg);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    const value = ratio(fg, bg);
    checked += 1;
    if (value < (large ? 3 : 4.5)) {
      const tag = `<${el.tagName.toLowerCase()} class="${el.className}">`;
      failures.push(`${value.toFixed(2)}: "${text.slice(0, 50)}" ${tag}`);
    }
  }
  return {checked, failures};
}
"""

FOCUS_INDICATOR = r"""
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return {ok: false, what: "nothing focused"};
  const candidates = [el, el.closest("label, .op-card, .button, .compare, .chip")].filter(Boolean);
  for (const node of candidates) {
    const style = getComputedStyle(node);
    if (style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2) {
      return {ok: true, what: node.tagName + "." + node.className};
    }
  }
  return {ok: false, what: el.outerHTML.slice(0, 200)};
}
"""


def assert_contrast(page) -> int:
    audit = page.evaluate(CONTRAST_AUDIT)
    assert audit["checked"] > 5, audit
    assert not audit["failures"], f"{page.url}: low contrast text:\n" + "\n".join(audit["failures"])
    return audit["checked"]


def assert_focus_visible(page) -> str:
    found = page.evaluate(FOCUS_INDICATOR)
    assert found["ok"], f"no visible focus indicator on {found['what']}"
    return found["what"]
