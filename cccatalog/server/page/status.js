// Shows the copy buttons (hidden without JavaScript: the URL is selectable text) and copies on click.
// navigator.clipboard needs a secure context; plain-HTTP sites fall back to selecting and execCommand.
document.querySelectorAll("button[data-copy]").forEach(function (b) { b.hidden = false; });
document.addEventListener("click", function (e) {
  var b = e.target.closest("button[data-copy]");
  if (!b) return;
  var c = document.getElementById(b.dataset.copy), r = document.createRange(), s = getSelection();
  r.selectNodeContents(c);
  s.removeAllRanges();
  s.addRange(r);
  var done = function () {
    b.textContent = "Copied";
    setTimeout(function () { b.textContent = "Copy"; }, 1500);
  };
  var old = function () { document.execCommand("copy"); done(); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(c.textContent).then(done, old);
  } else {
    old();
  }
});
