// Draws the dose chart from the page's own dose table (the table is the data; the chart is a view of it).
(function () {
  "use strict";
  var table = document.getElementById("dose-table");
  var target = document.getElementById("dose-chart");
  if (!table || !target || typeof uPlot === "undefined") {
    return;
  }
  var days = [], daily = [], rolling = [], allowance = [];
  table.querySelectorAll("tbody tr").forEach(function (row) {
    days.push(Date.parse(row.dataset.day + "T00:00:00Z") / 1000);
    daily.push(parseFloat(row.dataset.dose) * 100);
    rolling.push(parseFloat(row.dataset.rolling) * 100);
    allowance.push(100);
  });
  var width = Math.max(320, Math.min(target.clientWidth || 900, 1100));
  var chart = new uPlot({
    width: width,
    height: 300,
    tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
    scales: { y: { range: function (u, min, max) { return [0, Math.max(110, max * 1.1)]; } } },
    axes: [{}, { label: "% of weekly allowance" }],
    series: [
      {},
      { label: "Daily dose %", stroke: "#0b5cad", fill: "rgba(11,92,173,0.15)", paths: uPlot.paths.bars({ size: [0.7, 40] }) },
      { label: "Rolling 7 days %", stroke: "#9a3412", width: 2 },
      { label: "Allowance", stroke: "#166534", dash: [6, 4], width: 1.5 },
    ],
  }, [days, daily, rolling, allowance], target);
  target.dataset.points = String(days.length);
  window.resoneraDoseChart = chart;
})();
