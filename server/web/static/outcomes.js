// Draws each outcome chart from the table it names (the table is the data; the chart is a view of it).
// A chart element carries data-table (the table's id), data-series (what to draw from which
// data-* attribute of each body row) and data-scales (axis labels, fixed ranges).
(function () {
  "use strict";
  if (typeof uPlot === "undefined") {
    return;
  }
  function value(row, attr) {
    var text = row.getAttribute("data-" + attr);
    return text === null || text === "" ? null : parseFloat(text);
  }
  function draw(target) {
    var table = document.getElementById(target.dataset.table);
    if (!table) {
      return;
    }
    var specs = JSON.parse(target.dataset.series);
    var scales = JSON.parse(target.dataset.scales || "{}");
    var rows = table.querySelectorAll("tbody tr[data-x]");
    var data = [[]];
    specs.forEach(function () { data.push([]); });
    rows.forEach(function (row) {
      data[0].push(Date.parse(row.dataset.x + "T00:00:00Z") / 1000);
      specs.forEach(function (spec, i) { data[i + 1].push(value(row, spec.attr)); });
    });
    var series = [{}].concat(specs.map(function (spec) {
      var s = { label: spec.label, stroke: spec.color, scale: spec.scale || "y", spanGaps: false };
      if (spec.kind === "bars") {
        s.fill = spec.fill || spec.color;
        s.paths = uPlot.paths.bars({ size: [spec.size || 0.6, 40], align: spec.align || 0 });
        s.points = { show: false };
      } else if (spec.kind === "points") {
        s.paths = function () { return null; };
        s.points = { show: true, size: 9, stroke: spec.color, fill: spec.color };
      } else {
        s.width = spec.width || 2;
        if (spec.dash) { s.dash = spec.dash; }
      }
      return s;
    }));
    var axes = [{}];
    var uScales = {};
    Object.keys(scales).forEach(function (name, i) {
      var scale = scales[name];
      axes.push({ scale: name, label: scale.label, side: i === 0 ? 3 : 1, grid: { show: i === 0 } });
      uScales[name] = scale.range ? { range: scale.range } : { range: function (u, min, max) { return [Math.min(0, min), max > 0 ? max * 1.1 : 1]; } };
    });
    var width = Math.max(320, Math.min(target.clientWidth || 900, 1100));
    new uPlot({
      width: width,
      height: parseInt(target.dataset.height || "240", 10),
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      scales: uScales,
      axes: axes,
      series: series,
    }, data, target);
    target.dataset.points = String(rows.length);
  }
  document.querySelectorAll(".chart[data-table]").forEach(draw);
})();
