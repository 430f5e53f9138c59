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

  function wire(root) {
    wirePhotoInputs(root);
    wireDropzones(root);
    wireRanges(root);
    wireCompare(root);
    wireCopyButtons(root);
    wireConfirms(root);
  }

  document.addEventListener("DOMContentLoaded", function () { wire(document); });
  document.addEventListener("htmx:load", function (event) { wire(event.detail.elt); });
  // A new job card replaces the "nothing yet" note.
  document.addEventListener("htmx:oobAfterSwap", function () {
    each(document, "[data-empty-jobs]", function (note) { note.remove(); });
  });
})();
