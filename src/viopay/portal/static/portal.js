/* Viopay backoffice: progressive enhancement only. Every page works without this file. */
(function () {
  "use strict";

  // Lists marked data-refresh reload themselves every few seconds (the device list, so a
  // terminal that gets claimed or activated shows up without a reload). Paused while the tab
  // is hidden; stops for good when the session ends (the fragment answers 401). Keyboard focus
  // stays on the same link or control across a refresh, and the region's live indicator
  // (data-live-for) says what is true: live, paused, or stopped.
  function focusKey(element, region) {
    if (!element || !region.contains(element) || element === region) { return null; }
    if (element.id) { return "#" + CSS.escape(element.id); }
    var tag = element.tagName.toLowerCase();
    if (element.getAttribute("href")) { return tag + "[href=\"" + CSS.escape(element.getAttribute("href")) + "\"]"; }
    if (element.getAttribute("name")) { return tag + "[name=\"" + CSS.escape(element.getAttribute("name")) + "\"]"; }
    return null;
  }

  function autoRefresh(region) {
    var url = region.getAttribute("data-refresh");
    var every = parseInt(region.getAttribute("data-interval"), 10) || 5000;
    var indicator = region.id ? document.querySelector("[data-live-for=\"" + region.id + "\"]") : null;
    var last = null;

    function show(state, text) {
      if (!indicator) { return; }
      indicator.hidden = false;
      indicator.setAttribute("data-state", state);
      indicator.textContent = text;
    }

    function schedule() { window.setTimeout(tick, every); }

    function tick() {
      if (document.hidden) { show("paused", "Paused"); schedule(); return; }
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "X-Requested-With": "fetch" } })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (html) {
          if (html !== last) {
            last = html;
            var key = focusKey(document.activeElement, region);
            region.innerHTML = html; // server-rendered, escaped HTML of this origin
            var again = key ? region.querySelector(key) : null;
            if (again) { again.focus({ preventScroll: true }); }
            region.setAttribute("data-refreshed", String(Date.now()));
          }
          show("live", "Live");
          schedule();
        })
        .catch(function () {
          region.setAttribute("data-refresh-stopped", "true");
          show("stopped", "Updates stopped: reload the page");
        });
    }

    show("live", "Live");
    schedule();
  }

  // Forms with data-confirm ask first (release a device, …).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form && form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });

  // A colour field's swatch follows what is typed.
  function swatches() {
    document.querySelectorAll("input[data-swatch]").forEach(function (input) {
      var image = document.getElementById(input.getAttribute("data-swatch"));
      if (!image) { return; }
      input.addEventListener("input", function () {
        var value = input.value.trim();
        if (!/^#[0-9A-Fa-f]{6}$/.test(value)) { return; }
        var svg = "<svg xmlns='http://www.w3.org/2000/svg' width='16' height='16'><rect width='16' height='16' rx='3' fill='" + value + "'/></svg>";
        image.src = "data:image/svg+xml," + encodeURIComponent(svg);
      });
    });
  }

  // Flash messages can be dismissed.
  function dismissibles() {
    document.querySelectorAll(".flash[data-dismissible]").forEach(function (flash) {
      var button = document.createElement("button");
      button.type = "button";
      button.setAttribute("aria-label", "Dismiss");
      button.textContent = "\u00d7";
      button.addEventListener("click", function () { flash.remove(); });
      flash.appendChild(button);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(autoRefresh);
    swatches();
    dismissibles();
  });
})();
