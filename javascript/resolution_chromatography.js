// Resolution Chromatography: client-side niceties only (nothing the server needs to know).
// - the header readout: the server writes the readout into the accordion body; this mirrors it into the
//   accordion's header, so it is visible while the accordion is closed;
// - tooltips on the readout and the curve preview.
(function () {
    function rcSync() {
        ["txt2img", "img2img"].forEach(function (tab) {
            var prefix = "script_" + tab + "_resolution_chromatography_";
            var app = gradioApp();
            // the inner .prose element: the outer block also holds gradio's progress overlay text
            var readout = app.querySelector("#" + prefix + "readout.prose") ||
                app.querySelector("#" + prefix + "readout .prose") || app.getElementById(prefix + "readout");
            var acc = app.getElementById(prefix + "enabled");
            if (!readout || !acc) return;
            var label = acc.querySelector(".label-wrap");
            if (!label) return;
            var span = label.querySelector(".rc-header-readout");
            if (!span) {
                span = document.createElement("span");
                span.className = "rc-header-readout";
                span.title = "low-res size → requested size (factor per axis) · steps with upsample guidance";
                var first = label.querySelector("span");
                if (first && first.nextSibling) label.insertBefore(span, first.nextSibling); else label.appendChild(span);
            }
            var text = (readout.textContent || "").trim();
            if (span.textContent !== text) span.textContent = text;
            var curves = app.getElementById(prefix + "curves");
            if (curves && !curves.title) {
                curves.title = "Top: signal ratio r_m per level (dotted: guidance weight). Bottom: generated per step. " +
                    "Grey: guidance window. Dashed: prompt switch.";
            }
        });
    }
    onUiLoaded(rcSync);
    onUiUpdate(rcSync);
})();
