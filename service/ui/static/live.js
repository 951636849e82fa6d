// Live updates by polling the log's head (the read-your-writes position): when new events
// arrived since the page was drawn, say so, and redraw at once unless someone is typing.
(function () {
  "use strict";
  var main = document.querySelector("main[data-live]");
  if (!main || location.pathname === "/ui/login") return;
  var seen = null;
  function poll() {
    fetch(main.dataset.live, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body) return;
        if (seen === null) { seen = body.position; return; }
        if (body.position > seen) {
          seen = body.position;
          var typing = document.activeElement && /INPUT|SELECT|TEXTAREA/.test(document.activeElement.tagName);
          if (typing) { main.querySelector(".live").hidden = false; } else { location.reload(); }
        }
      })
      .catch(function () { /* offline for a moment: the next poll tries again */ });
  }
  poll();
  setInterval(poll, 5000);
})();
