// The dashboard's one script: the live alarm feed. New alarms in the signed-in scope arrive as
// server-sent events from /ui/alarms/feed (the session cookie authenticates it; on a reconnect the browser
// sends Last-Event-ID and the node replays what was missed) and are announced in a polite live region.
(function () {
  "use strict";
  var region = document.getElementById("live-alarms");
  if (!region || !window.EventSource) {
    return;
  }
  var list = region.querySelector("ol");
  var labels = {};
  var labelsNode = document.getElementById("kind-labels");
  if (labelsNode) {
    try {
      labels = JSON.parse(labelsNode.textContent);
    } catch (e) {
      labels = {};
    }
  }
  var source = new EventSource("/ui/alarms/feed");
  source.addEventListener("anomaly", function (e) {
    var a;
    try {
      a = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    var kind = a.anomaly && a.anomaly.kind ? String(a.anomaly.kind) : "";
    var li = document.createElement("li");
    li.setAttribute("data-seq", String(a.event_seq));
    // `text`: the description in the page's language, which the dashboard's feed adds to each event.
    li.textContent = [labels[kind] || kind, a.enterprise_id || "", a.text || ""]
      .filter(function (s) { return s; })
      .join(" · ");
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 50) {
      list.removeChild(list.lastChild);
    }
  });
})();

// The weights chart of a terminal's page: the server already thinned the series to the pixels shown
// (#weights-data: seconds and kilograms, and the range `from`..`to` in seconds); uPlot draws it on a time
// axis fixed to that range — never one derived from the points, which may all share one instant (a
// zero-width range uPlot would widen by years). The table beside it says the same in words. The uPlot
// instance is left on the element (`.uplot`) for the browser tests to read the axis.
(function () {
  "use strict";
  var el = document.getElementById("weights-chart");
  var dataNode = document.getElementById("weights-data");
  if (!el || !dataNode || !window.uPlot) {
    return;
  }
  var d;
  try {
    d = JSON.parse(dataNode.textContent);
  } catch (e) {
    return;
  }
  var width = Math.min(el.parentElement.clientWidth || d.width, d.width);
  // uPlot shows times in the browser's zone; the pages are in China Standard Time.
  var opts = {
    width: width,
    height: 320,
    tzDate: function (ts) { return window.uPlot.tzDate(new Date(ts * 1000), "Asia/Shanghai"); },
    scales: {
      x: {
        time: true,
        range: function () { return [d.from, d.to]; }
      }
    },
    series: [{ label: d.time_label }, { label: d.label, stroke: "#0969da", width: 1.5 }],
    axes: [{}, { label: d.unit }]
  };
  el.uplot = new window.uPlot(opts, [d.t, d.v], el);
  // uPlot's legend is a table of its own: it gets a name like every other table on the page.
  var legend = el.querySelector("table.u-legend");
  if (legend && d.legend) {
    legend.setAttribute("aria-label", d.legend);
  }
})();
