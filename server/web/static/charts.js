// Draws each chart from the table it names (the table is the data; the chart is a view of it).
// A chart element carries data-table (the table's id), data-series (what to draw from which
// data-* attribute of each body row), data-scales (axis labels, fixed ranges) and data-first /
// data-last: the period asked for (UTC days), which bounds the time axis whatever the data
// (one day of data in a 30-day view is one bar in a 30-day axis, not an axis of its own making).
// Drawn, it says what it shows: data-points (rows drawn), data-xmin / data-xmax (the time axis's
// ends, Unix seconds).
(function () {
  "use strict";
  if (typeof uPlot === "undefined") {
    return;
  }
  var DAY = 86400;
  function value(row, attr) {
    var text = row.getAttribute("data-" + attr);
    return text === null || text === "" ? null : parseFloat(text);
  }
  function day(text) {
    return Date.parse(text + "T00:00:00Z") / 1000;
  }
  function draw(target) {
    var table = document.getElementById(target.dataset.table);
    if (!table) {
      return;
    }
    var specs = JSON.parse(target.dataset.series);
    var scales = JSON.parse(target.dataset.scales || "{}");
    var rows = Array.prototype.slice.call(table.querySelectorAll("tbody tr[data-x]"));
    rows.sort(function (a, b) { return day(a.dataset.x) - day(b.dataset.x); });
    var data = [[]];
    specs.forEach(function () { data.push([]); });
    rows.forEach(function (row) {
      data[0].push(day(row.dataset.x));
      specs.forEach(function (spec, i) { data[i + 1].push(value(row, spec.attr)); });
    });
    // Half a day either side: the first and the last day's bars are drawn whole.
    var xmin = day(target.dataset.first) - DAY / 2;
    var xmax = day(target.dataset.last) + DAY / 2;
    if (data[0].length) {
      xmin = Math.min(xmin, data[0][0] - DAY / 2);
    }
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
    var uScales = { x: { time: true, auto: false, range: [xmin, xmax] } };
    Object.keys(scales).forEach(function (name, i) {
      var scale = scales[name];
      axes.push({ scale: name, label: scale.label, side: i === 0 ? 3 : 1, grid: { show: i === 0 } });
      uScales[name] = scale.range ? { range: scale.range } : { range: function (u, min, max) { return [Math.min(0, min), Math.max(scale.atLeast || 1, max * 1.1)]; } };
    });
    // The chart keeps to its box: a phone's screen, a printed page.
    var width = Math.max(280, Math.min(target.clientWidth || 900, 1100));
    new uPlot({
      width: width,
      height: parseInt(target.dataset.height || "240", 10),
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      scales: uScales,
      axes: axes,
      series: series,
      hooks: {
        ready: [function (u) {
          target.dataset.xmin = String(u.scales.x.min);
          target.dataset.xmax = String(u.scales.x.max);
        }],
      },
    }, data, target);
    target.dataset.points = String(rows.length);
  }
  document.querySelectorAll(".chart[data-table]").forEach(draw);
})();
