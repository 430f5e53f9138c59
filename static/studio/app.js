// Portrait Studio's small client-side behaviours. No inline scripts anywhere:
// everything is wired here from data-* attributes, and re-wired after every
// htmx swap so fragments behave like full pages.
(function () {
  "use strict";

  function each(root, selector, fn) {
    root.querySelectorAll(selector).forEach(fn);
  }

  // Show the picked photo at once, before the upload finishes.
  function showLocalPreview(form, file) {
    var img = form.querySelector("[data-local-preview]");
    if (!img || !file || !file.type.startsWith("image/")) return;
    img.src = URL.createObjectURL(file);
    img.hidden = false;
    var empty = form.querySelector("[data-dropzone-empty]");
    if (empty) empty.hidden = true;
  }

  function wirePhotoInputs(root) {
    each(root, "[data-photo-input]", function (input) {
      if (input.dataset.wired) return;
      input.dataset.wired = "1";
      input.addEventListener("change", function () {
        // Only the input that was used is sent; the other stays empty.
        each(input.form, "[data-photo-input]", function (other) {
          other.disabled = other !== input;
        });
        showLocalPreview(input.form, input.files[0]);
      });
    });
  }

  function wireDropzones(root) {
    each(root, "[data-dropzone]", function (zone) {
      if (zone.dataset.wired) return;
      zone.dataset.wired = "1";
      ["dragenter", "dragover"].forEach(function (type) {
        zone.addEventListener(type, function (event) {
          event.preventDefault();
          zone.classList.add("dropzone-active");
        });
      });
      ["dragleave", "drop"].forEach(function (type) {
        zone.addEventListener(type, function () {
          zone.classList.remove("dropzone-active");
        });
      });
      zone.addEventListener("drop", function (event) {
        event.preventDefault();
        var files = event.dataTransfer && event.dataTransfer.files;
        if (!files || !files.length) return;
        var input = zone.querySelector("[data-photo-input]");
        input.files = files;
        input.dispatchEvent(new Event("change", { bubbles: true }));
      });
    });
  }

  // Sliders show their current value next to the label.
  function wireRanges(root) {
    each(root, "[data-range]", function (range) {
      if (range.dataset.wired) return;
      range.dataset.wired = "1";
      var output = range.form && range.form.querySelector('[data-output-for="' + range.id + '"]');
      range.addEventListener("input", function () {
        if (output) output.value = range.value;
      });
    });
  }

  // Before/after comparison: the range input spans the image, so it can be
  // dragged anywhere with a mouse or finger and moved with arrow keys.
  function wireCompare(root) {
    each(root, "[data-compare]", function (box) {
      var range = box.querySelector("[data-compare-range]");
      if (!range || range.dataset.wired) return;
      range.dataset.wired = "1";
      function update() {
        box.style.setProperty("--pos", range.value + "%");
      }
      range.addEventListener("input", update);
      update();
    });
  }

  function wireCopyButtons(root) {
    each(root, "[data-copy]", function (button) {
      if (button.dataset.wired) return;
      button.dataset.wired = "1";
      button.addEventListener("click", function () {
        var done = function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 1500);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(button.dataset.copy).then(done, function () {});
        } else {
          var field = button.parentElement.querySelector("input");
          field.select();
          done();
        }
      });
    });
    each(root, "[data-select-on-focus]", function (field) {
      field.addEventListener("focus", function () { field.select(); });
    });
  }

  // Plain (non-htmx) forms that destroy something ask first.
  function wireConfirms(root) {
    each(root, "form[data-confirm]", function (form) {
      if (form.dataset.wired) return;
      form.dataset.wired = "1";
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }


  // --- Generic form inputs: style picker, reference photo, mask painting ----------
  // (templates/studio/partials/style_picker.html and form_inputs.html)

  // Style picker: a live count of the picked styles and a filter by style group.
  // Ids stay strings: they exceed 2^53 and a JS number would corrupt them.
  function wireStylePickers(root) {
    each(root, "[data-style-picker]", function (picker) {
      if (picker.dataset.wired) return;
      picker.dataset.wired = "1";
      var count = picker.querySelector("[data-style-count]");
      var inputs = picker.querySelectorAll("[data-style-input]");
      function updateCount() {
        var picked = {};
        inputs.forEach(function (input) { if (input.checked) picked[input.value] = true; });
        var n = Object.keys(picked).length;
        if (count) count.textContent = n ? n + " selected" : "None selected";
        updateCostTotal(picker, n);
      }
      inputs.forEach(function (input) {
        input.addEventListener("change", function () {
          // The same style listed in two groups is one pick: keep its copies in step.
          inputs.forEach(function (other) {
            if (other !== input && other.value === input.value && other.type === "checkbox") other.checked = input.checked;
          });
          updateCount();
        });
      });
      var filters = picker.querySelector("[data-style-filters]");
      if (filters && picker.querySelectorAll("[data-style-group]").length > 1) {
        filters.hidden = false;
        filters.addEventListener("click", function (event) {
          var button = event.target.closest("[data-style-filter]");
          if (!button) return;
          var wanted = button.dataset.styleFilter;
          filters.querySelectorAll("[data-style-filter]").forEach(function (b) {
            b.setAttribute("aria-pressed", b === button ? "true" : "false");
          });
          picker.querySelectorAll("[data-style-group]").forEach(function (group) {
            group.hidden = wanted !== "" && group.dataset.styleGroup !== wanted;
          });
        });
      }
      updateCount();
    });
  }

  // The batch total beside the unit cost (partials/cost_note.html): one run per picked style.
  function updateCostTotal(picker, picked) {
    var form = picker.closest("form");
    var note = form && form.querySelector("[data-cost-multiple]");
    var total = note && note.querySelector("[data-cost-total]");
    if (!total) return;
    var runs = Math.max(1, picked);
    var units = parseFloat(note.dataset.costUnits) * runs;
    var shown = String(Math.round(units * 100) / 100);
    total.textContent = runs + (runs === 1 ? " run" : " runs") + " (one per style you pick): " +
      shown + (shown === "1" ? " unit" : " units") + " in all.";
  }

  function wireReferenceInputs(root) {
    each(root, "[data-reference-input]", function (input) {
      if (input.dataset.wired) return;
      input.dataset.wired = "1";
      var preview = input.parentElement.querySelector("[data-reference-preview]");
      input.addEventListener("change", function () {
        var file = input.files[0];
        if (!preview || !file || !file.type.startsWith("image/")) return;
        preview.src = URL.createObjectURL(file);
        preview.hidden = false;
      });
    });
  }

  // Mask painting: strokes are kept as data (for undo) and drawn twice, as a
  // see-through overlay and, at the photo's exact pixel size, as the mask that
  // is posted (white = remove, black = keep). Pointer events cover mouse,
  // touch and pen alike.
  function wireMaskEditors(root) {
    each(root, "[data-mask-editor]", function (editor) {
      if (editor.dataset.wired) return;
      editor.dataset.wired = "1";
      var canvas = editor.querySelector("[data-mask-canvas]");
      var fileInput = editor.querySelector("[data-mask-file]");
      var brush = editor.querySelector("[data-mask-brush]");
      var brushOutput = editor.querySelector("[data-mask-brush-output]");
      var undo = editor.querySelector("[data-mask-undo]");
      var clear = editor.querySelector("[data-mask-clear]");
      var state = editor.querySelector("[data-mask-state]");
      var width = parseInt(editor.dataset.width, 10);
      var height = parseInt(editor.dataset.height, 10);
      var ctx = canvas.getContext("2d");
      var strokes = [];
      var current = null;

      // The brush slider is in screen pixels; strokes are stored in photo pixels.
      function scale() {
        var rect = canvas.getBoundingClientRect();
        return rect.width ? width / rect.width : 1;
      }
      function point(event) {
        var rect = canvas.getBoundingClientRect();
        return [(event.clientX - rect.left) * (width / rect.width), (event.clientY - rect.top) * (height / rect.height)];
      }
      function drawStroke(context, stroke, colour) {
        context.strokeStyle = colour;
        context.fillStyle = colour;
        context.lineWidth = stroke.size;
        context.lineCap = "round";
        context.lineJoin = "round";
        var pts = stroke.points;
        if (pts.length === 1) {
          context.beginPath();
          context.arc(pts[0][0], pts[0][1], stroke.size / 2, 0, Math.PI * 2);
          context.fill();
          return;
        }
        context.beginPath();
        context.moveTo(pts[0][0], pts[0][1]);
        for (var i = 1; i < pts.length; i++) context.lineTo(pts[i][0], pts[i][1]);
        context.stroke();
      }
      function redraw() {
        ctx.clearRect(0, 0, width, height);
        strokes.forEach(function (stroke) { drawStroke(ctx, stroke, "#ff2d55"); });
        if (current) drawStroke(ctx, current, "#ff2d55");
      }
      function updateControls() {
        undo.disabled = clear.disabled = strokes.length === 0;
        state.textContent = strokes.length ? strokes.length + " stroke" + (strokes.length > 1 ? "s" : "") + " painted" : "Nothing painted yet";
      }
      // The posted mask, made after every change so submitting never waits for it.
      function exportMask() {
        updateControls();
        editor.dataset.maskReady = ""; // set again once the new mask is in the form
        var transfer = new DataTransfer();
        if (!strokes.length) {
          fileInput.files = transfer.files;
          return;
        }
        var out = document.createElement("canvas");
        out.width = width;
        out.height = height;
        var octx = out.getContext("2d");
        octx.fillStyle = "#000";
        octx.fillRect(0, 0, width, height);
        strokes.forEach(function (stroke) { drawStroke(octx, stroke, "#fff"); });
        // Encoded synchronously: Chromium runs toBlob() in idle time, which a
        // busy page can postpone for seconds, leaving a stale mask in the form.
        var version = strokes.length + ":" + Date.now();
        editor.dataset.maskVersion = version;
        transfer.items.add(new File([dataUrlBytes(out.toDataURL("image/png"))], "mask.png", { type: "image/png" }));
        fileInput.files = transfer.files;
        editor.dataset.maskReady = version;
      }
      function dataUrlBytes(url) {
        var binary = atob(url.slice(url.indexOf(",") + 1));
        var bytes = new Uint8Array(binary.length);
        for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
        return bytes;
      }

      canvas.addEventListener("pointerdown", function (event) {
        if (event.button !== undefined && event.button > 0) return;
        event.preventDefault();
        canvas.setPointerCapture(event.pointerId);
        current = { size: Math.max(1, parseFloat(brush.value) * scale()), points: [point(event)] };
        redraw();
      });
      canvas.addEventListener("pointermove", function (event) {
        if (!current) return;
        event.preventDefault();
        current.points.push(point(event));
        redraw();
      });
      function finish() {
        if (!current) return;
        strokes.push(current);
        current = null;
        redraw();
        exportMask();
      }
      canvas.addEventListener("pointerup", finish);
      canvas.addEventListener("pointercancel", finish);
      brush.addEventListener("input", function () { brushOutput.value = brush.value; });
      undo.addEventListener("click", function () {
        strokes.pop();
        redraw();
        exportMask();
      });
      clear.addEventListener("click", function () {
        strokes = [];
        redraw();
        exportMask();
      });
      updateControls();
    });
  }

  function wire(root) {
    wirePhotoInputs(root);
    wireDropzones(root);
    wireRanges(root);
    wireCompare(root);
    wireCopyButtons(root);
    wireConfirms(root);
    wireStylePickers(root);
    wireReferenceInputs(root);
    wireMaskEditors(root);
  }

  document.addEventListener("DOMContentLoaded", function () { wire(document); });
  document.addEventListener("htmx:load", function (event) { wire(event.detail.elt); });
  // A new job card replaces the "nothing yet" note.
  document.addEventListener("htmx:oobAfterSwap", function () {
    each(document, "[data-empty-jobs]", function (note) { note.remove(); });
  });
})();

// --- Style-template cards and the seed control (templates/studio/partials/
// template_cards.html, seed_control.html). Without JavaScript the server applies
// the picked templates itself; this only shows their values in the form.
(function () {
  "use strict";

  function setField(form, name, value) {
    var fields = form.querySelectorAll('[name="' + name + '"]');
    fields.forEach(function (field) {
      if (field.type === "radio") {
        field.checked = String(field.value) === String(value);
      } else if (field.type === "checkbox") {
        field.checked = Boolean(value);
      } else {
        field.value = value === null || value === undefined ? "" : value;
        field.dispatchEvent(new Event("input", { bubbles: true }));
      }
    });
  }

  function wireTemplateCards(root) {
    root.querySelectorAll("[data-template-cards]").forEach(function (box) {
      if (box.dataset.wired) return;
      box.dataset.wired = "1";
      var form = box.closest("form");
      var count = box.querySelector("[data-template-count]");
      var filling = false;
      function picked() {
        return Array.prototype.filter.call(box.querySelectorAll('input[name="template"]'), function (i) { return i.checked; });
      }
      function update(changed) {
        var cards = picked();
        if (count) {
          count.textContent = cards.length > 1
            ? cards.length + " looks picked: one job each, shown side by side when they are done."
            : "";
        }
        var card = cards.length === 1 ? cards[0] : (changed && changed.checked ? changed : null);
        if (!card || cards.length > 1) return;
        filling = true;
        setField(form, "prompt", card.dataset.templatePrompt);
        if (card.dataset.templateSeed !== "") setField(form, "seed", card.dataset.templateSeed);
        var params = {};
        try { params = JSON.parse(card.dataset.templateParams || "{}"); } catch (e) { params = {}; }
        Object.keys(params).forEach(function (name) { setField(form, name, params[name]); });
        filling = false;
      }
      box.addEventListener("change", function (event) {
        if (event.target.name === "template") update(event.target);
      });
      // Typing your own prompt means "my own look": the cards let go.
      var prompt = form.querySelector('[name="prompt"]');
      if (prompt) {
        prompt.addEventListener("input", function () {
          if (filling) return;
          picked().forEach(function (card) { card.checked = false; });
          update(null);
        });
      }
      update(null);
    });
  }

  function wireSeedControls(root) {
    root.querySelectorAll("[data-seed-control]").forEach(function (control) {
      if (control.dataset.wired) return;
      control.dataset.wired = "1";
      var input = control.querySelector("[data-seed-input]");
      var random = control.querySelector("[data-seed-random]");
      if (random && input) {
        random.addEventListener("click", function () {
          input.value = "";  // empty: a fresh random seed, shown on the result
          var lock = control.querySelector("[data-seed-lock]");
          if (lock) lock.checked = false;
          input.focus();
        });
      }
    });
  }

  function wire(root) {
    wireTemplateCards(root);
    wireSeedControls(root);
  }

  document.addEventListener("DOMContentLoaded", function () { wire(document); });
  document.addEventListener("htmx:load", function (event) { wire(event.detail.elt); });
})();

// --- Polish: focus kept across htmx swaps, toasts -------------------------------
(function () {
  "use strict";

  // htmx keeps focus on elements with an id; radios and other inputs of a
  // re-rendered form have none, so keyboard users would land on <body>.
  // Remember what had focus inside the swapped target and focus its twin.
  var pendingFocus = null;

  function focusKey(el) {
    if (el.id) return "#" + CSS.escape(el.id);
    if (el.name) {
      var key = el.tagName.toLowerCase() + '[name="' + CSS.escape(el.name) + '"]';
      if (el.type === "radio" || el.type === "checkbox") key += '[value="' + CSS.escape(el.value) + '"]';
      return key;
    }
    if (el.dataset && el.dataset.testid) return '[data-testid="' + CSS.escape(el.dataset.testid) + '"]';
    return null;
  }

  function remember(event) {
    var active = document.activeElement;
    var target = event.detail.target;
    if (active && active !== document.body && target && target.contains(active)) pendingFocus = focusKey(active);
  }
  // Before the request too: hx-disabled-elt disables the form while it runs,
  // which takes the focus away before the swap.
  document.addEventListener("htmx:beforeRequest", function (event) { pendingFocus = null; remember(event); });
  document.addEventListener("htmx:beforeSwap", remember);
  document.addEventListener("htmx:afterSettle", function () {
    var key = pendingFocus;
    pendingFocus = null;
    if (!key || (document.activeElement && document.activeElement !== document.body)) return;
    var twin = document.querySelector(key);
    if (twin && !twin.disabled) twin.focus({ preventScroll: true });
  });

  // Toasts: dismissed by their button, or after a while unless pointed at or focused.
  var TOAST_SECONDS = 10;

  function startTimer(toast) {
    if (toast.dataset.wired) return;
    toast.dataset.wired = "1";
    var left = TOAST_SECONDS * 1000;
    var started = Date.now();
    var timer = setTimeout(dismiss, left);
    function dismiss() { toast.remove(); }
    function pause() { clearTimeout(timer); left -= Date.now() - started; }
    function resume() { started = Date.now(); clearTimeout(timer); timer = setTimeout(dismiss, Math.max(left, 2000)); }
    toast.addEventListener("mouseenter", pause);
    toast.addEventListener("mouseleave", resume);
    toast.addEventListener("focusin", pause);
    toast.addEventListener("focusout", resume);
  }

  function watchToasts() {
    var region = document.getElementById("toasts");
    if (!region || region.dataset.wired) return;
    region.dataset.wired = "1";
    region.addEventListener("click", function (event) {
      var close = event.target.closest("[data-toast-close]");
      if (close) close.closest("[data-toast]").remove();
    });
    region.querySelectorAll("[data-toast]").forEach(startTimer);
    new MutationObserver(function () {
      region.querySelectorAll("[data-toast]").forEach(startTimer);
    }).observe(region, { childList: true });
  }

  document.addEventListener("DOMContentLoaded", watchToasts);
})();

// --- Running job cards: the elapsed time ticks between polls ---------------------
(function () {
  "use strict";

  // A poll that finds the job unchanged answers 204 and htmx leaves the card as
  // it is, so the seconds count on here, from the figure the server rendered.
  // Same format as the `seconds` template filter.
  function format(value) {
    if (value < 10) return value.toFixed(1) + " s";
    if (value < 60) return Math.round(value) + " s";
    var whole = Math.floor(value);
    return Math.floor(whole / 60) + " min " + (whole % 60) + " s";
  }

  setInterval(function () {
    document.querySelectorAll("[data-elapsed]").forEach(function (el) {
      if (!el.dataset.elapsedFrom) el.dataset.elapsedFrom = String(Date.now() - parseFloat(el.dataset.elapsed) * 1000);
      el.textContent = format((Date.now() - parseFloat(el.dataset.elapsedFrom)) / 1000);
    });
  }, 1000);
})();

// --- "E-mail me when it's done", and a browser notification when a job ends unseen ---
(function () {
  "use strict";

  // The box starts ticked for slow operations (data-slow); picks that make a
  // batch (two or more templates or styles, or another service to compare
  // with) tick it too, until the user ticks or unticks it by hand.
  function picksMakeBatch(form) {
    var templates = form.querySelectorAll('input[name="template"]:checked').length;
    var compare = form.querySelectorAll('input[name="compare_with"]:checked').length;
    var styles = form.querySelectorAll('.style-picker input[type="checkbox"]:checked').length;
    return templates > 1 || compare > 0 || styles > 1;
  }

  document.addEventListener("change", function (event) {
    var form = event.target.closest && event.target.closest("#operation-form");
    if (!form) return;
    var box = form.querySelector("[data-notify-box]");
    if (!box || box.disabled) return;
    if (event.target === box) { box.dataset.touched = "1"; return; }
    if (!box.dataset.touched) box.checked = box.dataset.slow === "1" || picksMakeBatch(form);
  });

  // Asking for permission needs a user gesture: the submit with the box ticked is one.
  document.addEventListener("submit", function (event) {
    var box = event.target.querySelector && event.target.querySelector("[data-notify-box]");
    if (box && box.checked && "Notification" in window && Notification.permission === "default") {
      Notification.requestPermission();
    }
  }, true);

  // A job card swapped in by its poll with a final status while this tab is
  // hidden (the user is in another tab): tell them through the browser.
  var told = {};
  function maybeNotify(card) {
    if (!card.matches || !card.matches('[data-testid="job-card"]')) return;
    var status = card.dataset.status;
    if (status !== "succeeded" && status !== "failed") return;
    if (document.visibilityState !== "hidden" || told[card.id]) return;
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    told[card.id] = true;
    var title = (card.querySelector("h3") || {}).textContent || "Your job";
    var note = new Notification("Portrait Studio", {
      body: title.trim() + (status === "succeeded" ? " is done." : " failed."),
      tag: card.id,
    });
    note.onclick = function () { window.focus(); note.close(); };
  }
  document.addEventListener("htmx:load", function (event) { maybeNotify(event.detail.elt); });
})();
