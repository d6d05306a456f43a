// sluice's console: times in the viewer's zone (UTC stays on hover), a
// page of work under way kept current, a run's log followed live. The
// pages work without it (they reload themselves instead).
function localTimes(root) {
  root.querySelectorAll("time[datetime]").forEach(function (t) {
    var d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) { t.textContent = d.toLocaleString(); }
  });
}
localTimes(document);

var log = document.querySelector("ol[data-follow]");
var reload = document.body.getAttribute("data-reload");
if (log) {
  // Follow the log: ask for the lines after the last one shown; once the
  // run has ended, load the page again (its status, attempts, buttons).
  var after = log.getAttribute("data-after") || "0";
  var follow = function () {
    fetch(log.getAttribute("data-follow") + "?after=" + after, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (page) {
        page.events.forEach(function (e) {
          var li = document.createElement("li");
          var t = document.createElement("time");
          t.setAttribute("datetime", e.time);
          t.setAttribute("title", e.utc);
          t.textContent = e.utc;
          var m = document.createElement("span");
          m.className = "msg";
          m.textContent = e.message;
          li.appendChild(t);
          li.appendChild(document.createTextNode(" "));
          li.appendChild(m);
          log.appendChild(li);
          localTimes(li);
          after = String(e.seq);
        });
        if (page.events.length) { log.lastElementChild.scrollIntoView({ block: "nearest" }); }
        if (page.final && !page.more) { location.reload(); }
        else { setTimeout(follow, page.more ? 0 : 1000); }
      })
      .catch(function () { setTimeout(follow, 3000); });
  };
  setTimeout(follow, 500);
} else if (reload) {
  setTimeout(function () { location.reload(); }, Number(reload) * 1000);
}
