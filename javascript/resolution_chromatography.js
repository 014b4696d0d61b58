// Resolution Chromatography: client-side niceties only (nothing the server needs to know).
// - the header readout must not toggle the accordion when clicked;
// - tooltips on the readout and the curve preview.
(function () {
    function rcSetup() {
        ["txt2img", "img2img"].forEach(function (tab) {
            var prefix = "script_" + tab + "_resolution_chromatography_";
            var readout = gradioApp().getElementById(prefix + "readout");
            if (readout && !readout.dataset.rcReady) {
                readout.dataset.rcReady = "1";
                readout.title = "native size → requested size (factor per axis) · steps with upsample guidance";
                readout.addEventListener("click", function (e) { e.stopPropagation(); });
            }
            var curves = gradioApp().getElementById(prefix + "curves");
            if (curves && !curves.dataset.rcReady) {
                curves.dataset.rcReady = "1";
                curves.title = "Top: signal ratio r_m per level (dotted: guidance weight). Bottom: generated per step. " +
                    "Grey: guidance window. Dashed: prompt switch.";
            }
        });
    }
    onUiLoaded(rcSetup);
    onAfterUiUpdate(rcSetup);
})();
