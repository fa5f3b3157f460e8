// The Easel tab's Cancel button (#easel_interrupt) is shown only while a job runs, as the WebUI shows
// its own Interrupt buttons: the WebUI's script.js reads its style.display to decide what Esc and
// Ctrl+Enter do in the current tab. A job runs while the progress line is marked busy (jobs.markdown):
// also while its connection is being made again, when a Cancel is sent once it is back.
(function() {
    function follow() {
        var app = gradioApp();
        var cancel = app.querySelector('#easel_interrupt');
        var progress = app.querySelector('#easel_progress');
        if (!cancel || !progress) {
            return;
        }
        var update = function() {
            cancel.style.display = progress.querySelector('.easel-busy') ? 'block' : 'none';
        };
        update();
        new MutationObserver(update).observe(progress, {subtree: true, childList: true, characterData: true});
    }

    onUiLoaded(follow);
})();

// "Send to Easel" (the WebUI's paste buttons call switch_to_<tab> after copying the fields).
function switch_to_easel() {
    var buttons = gradioApp().querySelectorAll('#tabs > .tab-nav > button, #tabs > div > .tab-nav > button');
    for (var i = 0; i < buttons.length; i++) {
        if (buttons[i].textContent.trim() === 'Easel') {
            buttons[i].click();
        }
    }
}

// Called by the WebUI after it pastes infotext into a tab's fields (it recounts prompt tokens in its
// own tabs; the Easel tab has no token counter).
function recalculate_prompts_easel() {
}
