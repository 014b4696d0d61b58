// Resolution Chromatography: client-side niceties only (nothing the server needs to know).
// - the header readout: the server writes the readout into the accordion body; this mirrors it into the
//   accordion's header, so it is visible while the accordion is closed; its "off · " prefix follows the checkbox
//   at once, and while the accordion is closed and an input changed since the last preview, it is marked stale;
// - preview updates: every input's change calls rcPreviewChanged (a browser-only event, see lib_chroma/webui/ui.py);
//   a burst of changes (a paste sets some twenty components) becomes one click of the hidden refresh button, the
//   one server event that computes the preview; none while the accordion is closed: it refreshes once on opening.
//   Gradio 3.41 drops a click whose event is still pending, so changes that arrive while an update is in flight
//   are kept and sent once it has come back (the readout's data-serial changes) or after IN_FLIGHT_MS;
// - tooltips on the readout and the curve preview.
(function () {
    var TABS = ["txt2img", "img2img"];
    var DEBOUNCE_MS = 200;
    var IN_FLIGHT_MS = 15000;  // give up waiting for an update that never came back (a server error)
    var OFF = "off · ";
    var state = {};

    function prefix(tab) {
        return "script_" + tab + "_resolution_chromatography_";
    }

    function tabState(tab) {
        if (!state[tab]) state[tab] = {timer: null, dirty: false, sentAt: 0, sentSerial: null};
        return state[tab];
    }

    function serial(tab) {
        var mark = gradioApp().querySelector("#" + prefix(tab) + "readout .rc-readout-text");
        return mark ? mark.getAttribute("data-serial") : null;
    }

    function inFlight(tab) {
        var st = tabState(tab);
        if (st.sentAt && (serial(tab) !== st.sentSerial || Date.now() - st.sentAt > IN_FLIGHT_MS)) st.sentAt = 0;
        return st.sentAt !== 0;
    }

    function isOpen(tab) {
        var acc = gradioApp().getElementById(prefix(tab) + "enabled");
        var label = acc && acc.querySelector(".label-wrap");
        return !!(label && label.classList.contains("open"));
    }

    function refresh(tab) {
        var st = tabState(tab);
        st.timer = null;
        if (inFlight(tab)) return;  // still dirty: rcSync sends it when the pending update is back
        var button = gradioApp().getElementById(prefix(tab) + "refresh");
        if (!button) return;
        st.dirty = false;
        st.sentAt = Date.now();
        st.sentSerial = serial(tab);
        button.click();
    }

    function schedule(tab) {
        var st = tabState(tab);
        if (st.timer) clearTimeout(st.timer);
        st.timer = setTimeout(function () { refresh(tab); }, DEBOUNCE_MS);
    }

    // Called by every input's change event (gradio runs it in the browser only). enable: the enable checkbox,
    // whose only effect on a closed accordion, the header's "off · " prefix, rcSync shows at once.
    window.rcPreviewChanged = function (tab, enable) {
        var open = isOpen(tab);
        if (open || !enable) tabState(tab).dirty = true;
        if (open) schedule(tab);
        rcSync();
    };

    function rcSync() {
        TABS.forEach(function (tab) {
            var app = gradioApp();
            var p = prefix(tab);
            var st = tabState(tab);
            // opened with a stale preview, or changed while an update was in flight
            if (st.dirty && !st.timer && !inFlight(tab) && isOpen(tab)) schedule(tab);
            // the inner .prose element: the outer block also holds gradio's progress overlay text
            var readout = app.querySelector("#" + p + "readout.prose") ||
                app.querySelector("#" + p + "readout .prose") || app.getElementById(p + "readout");
            var acc = app.getElementById(p + "enabled");
            if (!readout || !acc) return;
            var label = acc.querySelector(".label-wrap");
            if (!label) return;
            var span = label.querySelector(".rc-header-readout");
            if (!span) {
                span = document.createElement("span");
                span.className = "rc-header-readout";
                var first = label.querySelector("span");
                if (first && first.nextSibling) label.insertBefore(span, first.nextSibling); else label.appendChild(span);
            }
            var text = (readout.textContent || "").trim();
            var box = app.getElementById(p + "enabled-visible-checkbox");
            if (box && text && text.indexOf("⚠") !== 0) {  // the on/off prefix follows the checkbox at once
                var bare = text.indexOf(OFF) === 0 ? text.slice(OFF.length) : text;
                text = box.checked ? bare : OFF + bare;
            }
            if (span.textContent !== text) span.textContent = text;
            var stale = st.dirty && !isOpen(tab);
            span.classList.toggle("rc-stale", stale);
            span.title = stale ? "inputs changed: open the accordion to update" :
                "low-res size → requested size (factor per axis) · steps with upsample guidance";
            var curves = app.getElementById(p + "curves");
            if (curves && !curves.title) {
                curves.title = "Top: share of each level generated, by step (dotted: guidance weight). Bottom: " +
                    "generated in each step. Level m = details of m latent pixels (8m image pixels). " +
                    "Grey: guided steps. Dashed: the first step with the detail prompt.";
            }
        });
    }

    onUiLoaded(function () {
        TABS.forEach(function (tab) {
            var box = gradioApp().getElementById(prefix(tab) + "enabled-visible-checkbox");
            if (box) box.addEventListener("change", rcSync);
        });
        rcSync();
    });
    onUiUpdate(rcSync);
})();
