// sluice's console: times in the viewer's zone (UTC stays on hover).
// The pages work without it.
document.querySelectorAll("time[datetime]").forEach(function (t) {
  var d = new Date(t.getAttribute("datetime"));
  if (!isNaN(d)) { t.textContent = d.toLocaleString(); }
});
