// Runnel dashboard: live run statuses. Every element with data-run-id is watched; the
// server's event stream (/dashboard/events) sends {id, status, updatedAt} when one of
// them changes, and the [data-field="status"] elements inside it are updated in place.
// On a run page, a final status hides the "Cancel run" form (and a run no longer
// DELAYED its reschedule form) and shows the notice that the rest of the page is stale.
// The page is never reloaded.
(function () {
  "use strict";
  var FINAL = ["COMPLETED", "FAILED", "CANCELED", "CRASHED", "SYSTEM_FAILURE", "EXPIRED", "TIMED_OUT", "INTERRUPTED"];
  var MAX_IDS = 200;
  var ID = /^run_[A-Za-z0-9]+$/;

  function start() {
    if (!window.EventSource) return;
    var ids = [];
    var nodes = document.querySelectorAll("[data-run-id]");
    for (var i = 0; i < nodes.length && ids.length < MAX_IDS; i++) {
      var id = nodes[i].getAttribute("data-run-id");
      if (ID.test(id) && ids.indexOf(id) < 0) ids.push(id);
    }
    if (!ids.length) return;
    var query = ids.map(function (id) { return "run=" + encodeURIComponent(id); }).join("&");
    var source = new EventSource("/dashboard/events?" + query);
    source.addEventListener("run", function (event) {
      var run;
      try { run = JSON.parse(event.data); } catch (e) { return; }
      if (!run || !ID.test(run.id) || typeof run.status !== "string") return;
      apply(run);
    });
  }

  function apply(run) {
    var changed = false;
    var holders = document.querySelectorAll('[data-run-id="' + run.id + '"]');
    for (var i = 0; i < holders.length; i++) {
      var cells = holders[i].querySelectorAll('[data-field="status"]');
      for (var j = 0; j < cells.length; j++) {
        if (cells[j].textContent !== run.status) {
          cells[j].textContent = run.status;
          cells[j].setAttribute("data-status", run.status);
          changed = true;
        }
      }
    }
    if (!changed) return;
    if (FINAL.indexOf(run.status) >= 0) {
      var forms = document.querySelectorAll('[data-cancel-for="' + run.id + '"]');
      for (var k = 0; k < forms.length; k++) forms[k].hidden = true;
    }
    if (run.status !== "DELAYED") {
      var later = document.querySelectorAll('[data-reschedule-for="' + run.id + '"]');
      for (var m = 0; m < later.length; m++) later[m].hidden = true;
    }
    var notice = document.querySelector('[data-live-notice="' + run.id + '"]');
    if (notice) notice.hidden = false;
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
