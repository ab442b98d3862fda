// Sorting and filtering of the tables and the image cards; state mirrored in the URL hash
// (#sort=alignment-asc&generator=NAME&category=color&q=text&only=missing|distorted|errors, and the
// layers over the thumbnails when not at their defaults: heat=0, outlines=0, truth=1) so a view can be
// shared. With a category, "missing elements" keeps images missing an element of that category.
// The layers are switched by classes on <body> (CSS does the rest), so thousands of cards stay fast.
(function () {
  "use strict";
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card"));
  var grid = document.getElementById("cards");
  var sortSel = document.getElementById("sort");
  var genSel = document.getElementById("generator");
  var catSel = document.getElementById("category");  // absent when no image has elements
  var query = document.getElementById("query");
  var only = document.getElementById("only");
  var heat = document.getElementById("heat");          // these three exist only with structure scores,
  var outlines = document.getElementById("outlines");  // "truth" only when some image has a true mask
  var truth = document.getElementById("truth");
  var count = document.getElementById("count");

  function num(card, key, fallback) {
    var v = card.dataset[key];
    return v === undefined || v === "" ? fallback : parseFloat(v);
  }

  function apply() {
    if (!grid) { return; }
    var parts = (sortSel.value || "index-asc").split("-");
    var key = parts[0], dir = parts[1] === "desc" ? -1 : 1;
    var missing = dir === 1 ? Infinity : -Infinity;
    var sorted = cards.slice().sort(function (a, b) {
      var d = num(a, key, missing) - num(b, key, missing);
      if (isNaN(d) || d === 0) { return num(a, "index", 0) - num(b, "index", 0); }
      return dir * d;
    });
    var g = genSel.value, q = query.value.trim().toLowerCase(), o = only.value, shown = 0;
    var c = catSel ? catSel.value : "";
    sorted.forEach(function (card) {
      var cats = (o === "missing" ? card.dataset.missingCategories : card.dataset.categories) || "";
      var visible = (!g || card.dataset.generator === g) &&
        (!c || cats.indexOf("|" + c + "|") !== -1) &&
        (!q || card.dataset.text.indexOf(q) !== -1) &&
        (!o || (o === "errors" ? card.classList.contains("error") : o === "distorted" ? num(card, "regions", 0) > 0 :
          o === "missing" ? num(card, "missing", 0) > 0 : true));
      card.classList.toggle("hidden", !visible);
      if (visible) { shown += 1; }
      grid.appendChild(card);
    });
    count.textContent = "showing " + shown + " of " + cards.length + " images";
    writeHash();
  }

  function layers() {
    document.body.classList.toggle("no-heat", !!heat && !heat.checked);
    document.body.classList.toggle("no-outlines", !!outlines && !outlines.checked);
    document.body.classList.toggle("show-truth", !!truth && truth.checked);
  }

  function writeHash() {
    var g = genSel.value, q = query.value.trim().toLowerCase(), o = only.value, c = catSel ? catSel.value : "";
    var hash = "sort=" + sortSel.value + (g ? "&generator=" + encodeURIComponent(g) : "") +
      (c ? "&category=" + encodeURIComponent(c) : "") +
      (q ? "&q=" + encodeURIComponent(q) : "") + (o ? "&only=" + o : "") +
      (heat && !heat.checked ? "&heat=0" : "") + (outlines && !outlines.checked ? "&outlines=0" : "") +
      (truth && truth.checked ? "&truth=1" : "");
    if (window.history && window.history.replaceState) { window.history.replaceState(null, "", "#" + hash); }
  }

  function fromHash() {
    var params = {};
    window.location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) { params[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1)); }
    });
    if (params.sort && sortSel.querySelector('option[value="' + params.sort + '"]')) { sortSel.value = params.sort; }
    if (params.generator !== undefined) { genSel.value = params.generator; }
    if (params.category !== undefined && catSel) { catSel.value = params.category; }
    if (params.q !== undefined) { query.value = params.q; }
    if (params.only !== undefined) { only.value = params.only; }
    if (heat && params.heat !== undefined) { heat.checked = params.heat !== "0"; }
    if (outlines && params.outlines !== undefined) { outlines.checked = params.outlines !== "0"; }
    if (truth && params.truth !== undefined) { truth.checked = params.truth === "1"; }
  }

  // Tables (per generator, per category): click a header to sort by that column.
  Array.prototype.slice.call(document.querySelectorAll("table.leaderboard")).forEach(function (table) {
    var headers = Array.prototype.slice.call(table.querySelectorAll("th"));
    headers.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var asc = !th.classList.contains("sorted-asc");
        headers.forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
        th.classList.add(asc ? "sorted-asc" : "sorted-desc");
        var body = table.tBodies[0];
        Array.prototype.slice.call(body.rows).sort(function (a, b) {
          var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
          var fx = parseFloat(x), fy = parseFloat(y);
          var d = (isNaN(fx) || isNaN(fy)) ? String(x).localeCompare(String(y)) : fx - fy;
          return asc ? d : -d;
        }).forEach(function (row) { body.appendChild(row); });
      });
    });
  });

  if (grid) {
    fromHash();
    [sortSel, genSel, catSel, only].forEach(function (el) { if (el) { el.addEventListener("change", apply); } });
    query.addEventListener("input", apply);
    [heat, outlines, truth].forEach(function (el) {
      if (el) { el.addEventListener("change", function () { layers(); writeHash(); }); }
    });
    layers();
    apply();
  }
  document.body.setAttribute("data-ready", "1");
})();
