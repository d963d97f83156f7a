/* failured console: small progressive enhancements; every page works without them. */
"use strict";

/* Pattern workbench: preview while typing (the form's Preview button does the same without script). */
function liveWorkbench() {
  var form = document.getElementById("bench-form");
  if (!form) { return; }
  var timer = null;
  var refresh = function () {
    var params = new URLSearchParams(new FormData(form));
    if (!params.get("pattern")) { return; }
    fetch("/ui/unknown?" + params.toString(), {credentials: "same-origin"})
      .then(function (answer) { return answer.text(); })
      .then(function (text) {
        var page = new DOMParser().parseFromString(text, "text/html");
        var fresh = page.getElementById("bench-result") || page.getElementById("bench-problem");
        var old = document.getElementById("bench-result") || document.getElementById("bench-problem");
        if (fresh && old) { old.replaceWith(document.importNode(fresh, true)); }
        else if (fresh) { form.after(document.importNode(fresh, true)); }
      });
  };
  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 400);
  });
}

/* A task that is waiting or running: reload its page every 2 s until it settles, unless a form is being filled. */
function followTask() {
  var facts = document.getElementById("facts");
  if (!facts || ["new", "scheduled", "running"].indexOf(facts.dataset.status) < 0) { return; }
  setTimeout(function () {
    var typing = Array.prototype.some.call(document.querySelectorAll("#actions input[name=note]"),
      function (input) { return input.value !== ""; });
    if (!typing && document.activeElement.tagName !== "SELECT") { window.location.reload(); }
    else { followTask(); }
  }, 2000);
}

document.addEventListener("DOMContentLoaded", function () {
  liveWorkbench();
  followTask();
});
