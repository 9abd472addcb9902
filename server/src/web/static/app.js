// wharf web UI: the only script. Reading works without it; it adds the copy
// buttons and keeps the relative times ("3 hours ago") current.
(function () {
  "use strict";

  function relative(then, now) {
    var secs = Math.round((now - then) / 1000);
    var future = secs < 0;
    secs = Math.abs(secs);
    if (secs < 45) return "just now";
    var n, unit;
    if (secs < 90) { n = 1; unit = "minute"; }
    else if (secs < 45 * 60) { n = Math.min(44, Math.max(2, Math.ceil(secs / 60))); unit = "minute"; }
    else if (secs < 90 * 60) { n = 1; unit = "hour"; }
    else if (secs < 22 * 3600) { n = Math.floor((secs + 1800) / 3600); unit = "hour"; }
    else if (secs < 36 * 3600) { n = 1; unit = "day"; }
    else if (secs < 26 * 86400) { n = Math.floor((secs + 43200) / 86400); unit = "day"; }
    else if (secs < 46 * 86400) { n = 1; unit = "month"; }
    else if (secs < 320 * 86400) { n = Math.floor((secs + 15 * 86400) / (30 * 86400)); unit = "month"; }
    else if (secs < 548 * 86400) { n = 1; unit = "year"; }
    else { n = Math.floor((secs + 182 * 86400) / (365 * 86400)); unit = "year"; }
    var text = n + " " + unit + (n === 1 ? "" : "s");
    return future ? "in " + text : text + " ago";
  }

  function refreshTimes() {
    var now = Date.now();
    document.querySelectorAll("time[data-relative]").forEach(function (el) {
      var t = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(t)) el.textContent = relative(t, now);
    });
  }

  function copied(button, ok) {
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    button.textContent = ok ? "Copied" : "Press Ctrl+C";
    button.classList.toggle("ok", ok);
    setTimeout(function () {
      button.textContent = label;
      button.classList.remove("ok");
    }, 1500);
  }

  function fallbackCopy(source) {
    var range = document.createRange();
    range.selectNodeContents(source);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    try { return document.execCommand("copy"); } catch (e) { return false; }
  }

  function setupCopy() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) return;
      button.hidden = false;
      button.addEventListener("click", function () {
        var text = source.textContent;
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(
            function () { copied(button, true); },
            function () { copied(button, fallbackCopy(source)); });
        } else {
          copied(button, fallbackCopy(source));
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupCopy();
    refreshTimes();
    setInterval(refreshTimes, 30000);
  });
})();
